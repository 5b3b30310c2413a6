"""Choosing the Hessian operator's mode from a measured memory estimate: the estimate against the
bytes the kept graphs really hold (found independently, by walking every batch's graph), the
decision against budgets, both modes against the dense Hessian, and memory budgets as text."""

import numpy as np
import pytest
import torch

from alignsam_diag import memory
from alignsam_diag.analysis.curvature import GraphPlan, HessianOperator
from alignsam_diag.analysis.lanczos import lanczos
from alignsam_diag.errors import UserError
from test_hessian_lanczos import exact_top
from test_hessian_operator import batches_of, dense_hessian, tiny_case


def storages_held_by(grads: tuple[torch.Tensor, ...]) -> dict[int, int]:
    """data pointer -> bytes of every storage the graph behind ``grads`` holds: the tensors each
    node saved (its ``_saved_*`` attributes), found by walking ``next_functions``, and ``grads``."""
    held = {g.untyped_storage().data_ptr(): g.untyped_storage().nbytes() for g in grads}
    seen, todo = set(), [g.grad_fn for g in grads]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for name in dir(node):
            if not name.startswith("_saved_"):
                continue
            saved = getattr(node, name)
            for tensor in saved if isinstance(saved, (tuple, list)) else [saved]:
                if isinstance(tensor, torch.Tensor):
                    held[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        todo.extend(next_node for next_node, _ in node.next_functions)
    return held


def bytes_of_kept_graphs(model, loss, batches) -> int:
    """What keeping every batch's first-order graph holds, beyond the model and the samples:
    built here with ``create_graph`` (within an operator, so BatchNorm is in its eval form)."""
    with HessianOperator(model, loss, batches) as op:
        total = sum(len(y) for _, y in batches)
        held: dict[int, int] = {}
        kept = []
        for x, y in batches:
            grads = torch.autograd.grad(loss(model(x), y) * (len(y) / total), op.params, create_graph=True)
            kept.append(grads)  # every graph stays alive, as in the kept-graph mode
            held.update(storages_held_by(grads))
        for resident in (*model.parameters(), *model.buffers(), *(t for batch in batches for t in batch)):
            held.pop(resident.untyped_storage().data_ptr(), None)
        return sum(held.values())


@pytest.mark.parametrize("name", ["cnn-bn", "mlp-tanh"])
def test_estimate_is_close_to_what_the_kept_graphs_hold(name):
    model, loss, x, y = tiny_case(name, n=60)
    batches = batches_of(x, y, 16)  # 16 + 16 + 16 + 12 samples
    truth = bytes_of_kept_graphs(model, loss, batches)
    with HessianOperator(model, loss, batches) as op:
        plan = op.plan_graphs(budget=10 * truth)
    assert plan.keep_graph and not plan.forced and plan.budget_bytes == 10 * truth
    assert 0.8 <= plan.estimate_bytes / truth <= 1.25, (plan.estimate_bytes, truth)
    with HessianOperator(model, loss, batches_of(x, y, 30)) as halves:  # twice the batch size, same samples
        assert 0.8 <= halves.plan_graphs(budget=10 * truth).estimate_bytes / truth <= 1.25


def test_the_budget_decides_unless_a_mode_is_forced():
    model, loss, x, y = tiny_case("cnn-bn", n=40)
    batches = batches_of(x, y, 10)
    with HessianOperator(model, loss, batches) as op:
        estimate = op.plan_graphs(budget=2 ** 40).estimate_bytes
    for budget, keep_graph, chosen in [(estimate, None, True), (estimate - 1, None, False),
                                       (1, True, True), (2 ** 40, False, False)]:
        with HessianOperator(model, loss, batches) as op:
            plan = op.plan_graphs(budget, keep_graph)
            assert (plan.keep_graph, op.keep_graph, plan.forced) == (chosen, chosen, keep_graph is not None)
            assert plan.estimate_bytes == estimate


def test_both_modes_give_the_dense_eigenvalues_and_the_same_products():
    model, loss, x, y = tiny_case("cnn-bn", n=23)
    batches = batches_of(x, y, 8)
    dense = dense_hessian(model, loss, x, y)
    results = {}
    for budget in (2 ** 40, 1):
        with HessianOperator(model, loss, batches) as op:
            plan = op.plan_graphs(budget)
            results[plan.mode] = lanczos(op, k=4, tol=1e-8, max_iter=op.shape[0])
    kept, rebuilt = results["kept-graph"], results["data-set"]
    np.testing.assert_allclose(kept.eigenvalues, exact_top(dense, "LM", 4), rtol=1e-7)
    np.testing.assert_allclose(rebuilt.eigenvalues, kept.eigenvalues, rtol=1e-12)
    assert kept.num_products == rebuilt.num_products


def test_plan_text_and_plain_data():
    chosen = GraphPlan(True, 3 * 2 ** 20, 8 * 2 ** 30)
    assert chosen.describe() == "kept-graph mode (graphs estimated at 3.0 MiB of the 8.0 GiB budget)"
    over = GraphPlan(False, 12 * 2 ** 30, 8 * 2 ** 30)
    assert over.describe() == ("data-set mode, graphs rebuilt for every product (kept graphs estimated at 12.0 GiB, "
                               "over the 8.0 GiB budget)")
    forced = GraphPlan(False, 2048, 8 * 2 ** 30, forced=True)
    assert forced.describe() == "data-set mode, as asked (kept graphs estimated at 2.0 KiB; budget 8.0 GiB)"
    assert forced.as_dict() == {"mode": "data-set", "estimate_bytes": 2048, "budget_bytes": 8 * 2 ** 30,
                                "forced": True}


def test_budgets_as_text(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 10 * 2 ** 30)
    assert memory.budget_bytes("8GiB") == memory.budget_bytes("8G") == 8 * 2 ** 30
    assert memory.budget_bytes("512MB") == 512 * 10 ** 6 and memory.budget_bytes(" 1.5 kib ") == 1536
    assert memory.budget_bytes(4096) == memory.budget_bytes("4096") == 4096
    assert memory.budget_bytes("25%") == memory.budget_bytes(None) // 2 == int(2.5 * 2 ** 30)
    for bad in ("lots", "0%", "150%", "-1GiB", "8 GiBs", "0", "", 0):
        with pytest.raises(UserError, match="memory_budget = ") as caught:
            memory.budget_bytes(bad)
        assert "\n" not in str(caught.value)


def test_forced_kept_graphs_that_cannot_fit_are_refused_before_they_allocate(tmp_path):
    """2,000 images of 64×64 through 512 channels: tens of GB of kept graphs (measured on a batch
    of 4), more than this machine has; --keep-graph is refused with what it would need, and the
    automatic choice rebuilds graphs instead."""
    from conftest import assert_one_clear_line, invoke
    from alignsam_diag.models import ModelSpec, build_model
    from alignsam_diag.models.checkpoint import save_checkpoint
    from alignsam_diag.memory import available_bytes

    spec = ModelSpec("cnn-small", 10, 1, 64, {"width": 512})
    save_checkpoint(tmp_path / "wide.pt", {"state_dict": build_model(spec).state_dict(), "model": spec.to_dict()})
    np.savez(tmp_path / "big.npz", x=np.zeros((2000, 1, 64, 64), np.float32), y=np.arange(2000) % 10)
    args = ["eigs", tmp_path / "wide.pt", "--dataset", f"npz:{tmp_path / 'big.npz'}", "--full", "--batch-size", "4",
            "--k", "1", "--max-iter", "1", "--device", "cpu", "--quiet"]
    assert 2000 * 20 * 2 ** 20 > available_bytes()  # the premise: ≥ 20 MiB per sample cannot fit here
    assert_one_clear_line(invoke(*args, "--keep-graph"), "kept graphs of 2,000 samples would need")
