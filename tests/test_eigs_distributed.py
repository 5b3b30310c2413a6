"""`eigs` under torchrun: each rank applies the operator to its block of the samples and the
products are summed over the ranks, so the operator, the eigenvalues, the trace and the density
equal a single process's.

Oracles: the same operator and analysis in one process (this test process), on the same samples.
Library tests run a real 2-rank gloo group (``run_ranks``) in float64; the CLI tests run the real
command under ``torchrun`` (float32, the CLI's dtype) against the same command in this process."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alignsam_diag.analysis.curvature import shard_batches
from alignsam_diag.analysis.ggn import CURVATURES
from alignsam_diag.analysis.spectrum import EigsOptions, analyse
from alignsam_diag.data import DataSpec, fixed_batches, load_data, sample_subset
from alignsam_diag.distributed import Group
from alignsam_diag.models import build_model
from alignsam_diag.store.spectrum import read_records
from conftest import SMALL_CNN, invoke
from distributed_harness import first_error, run_ranks, torchrun

SAMPLES, BATCH = 7, 3  # 7 samples over 2 ranks: blocks of 3 and 4; batches (3) and (3, 1)
DATA = {"split": "train", "samples": SAMPLES, "dataset": "digits"}


def problem():
    """A float64 cnn-small (BatchNorm included) and 7 digits in batches of 3, the same in every process."""
    torch.manual_seed(0)
    model = build_model(SMALL_CNN).double()
    data = sample_subset(load_data(DataSpec("digits")).train, SAMPLES, 0)
    return model, [(x.double(), y) for x, y in fixed_batches(data, BATCH)]


def vectors(size: int) -> torch.Tensor:
    return torch.randn(2, size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


CASES = [("hessian", True), ("hessian", False), ("ggn", True), ("ggn", False)]


def _products(rank, folder):
    model, batches = problem()
    found = {}
    for curvature, keep in CASES:
        with CURVATURES[curvature](model, F.cross_entropy, batches, keep_graph=keep, sharded=True) as op:
            op.check_determinism()  # collective: every rank compares the summed passes
            found[curvature, keep] = op.matmat(vectors(op.shape[0]))
            sizes = [len(y) for _, y in op.batches]
        with CURVATURES[curvature](model, F.cross_entropy, batches, sharded=True) as op:
            found[curvature, "plan"] = op.plan_graphs("1TiB").keep_graph, op.matvec(vectors(op.shape[0])[0])
    torch.save({"products": found, "sizes": sizes}, folder / f"products{rank}.pt")


def test_sharded_operator_products_equal_one_process(tmp_path):
    run_ranks(_products, tmp_path, tmp_path)
    ranks = [torch.load(tmp_path / f"products{r}.pt") for r in range(2)]
    assert [r["sizes"] for r in ranks] == [[3], [3, 1]]  # contiguous blocks, batches of at most 3
    model, batches = problem()
    for curvature, keep in CASES:
        with CURVATURES[curvature](model, F.cross_entropy, batches, keep_graph=keep) as op:
            expected = op.matmat(vectors(op.shape[0]))
        for r in ranks:
            torch.testing.assert_close(r["products"][curvature, keep], expected, rtol=1e-10, atol=1e-12)
        # the memory plan agrees across ranks, and the kept-graph products it leads to are the same
        for r in ranks:
            kept, product = r["products"][curvature, "plan"]
            assert kept is True
            torch.testing.assert_close(product, expected[0], rtol=1e-10, atol=1e-12)


def test_shard_batches_covers_the_samples_in_order():
    x, y = torch.arange(10.0).view(10, 1), torch.arange(10)
    batches = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 10, 4)]
    shards = [shard_batches(batches, Group(rank, 3)) for rank in range(3)]
    assert [[b[1].tolist() for b in s] for s in shards] == [[[0, 1, 2]], [[3, 4, 5]], [[6, 7, 8, 9]]]
    assert shard_batches(batches, Group()) == batches
    assert [shard_batches(batches[:1], Group(r, 8)) for r in (0, 7)] == [[], [(x[3:4], y[3:4])]]


def options(**changes) -> EigsOptions:
    return EigsOptions(**{"k": 3, "tol": 1e-8, "max_iter": 40, "seed": 1, **changes})


ANALYSES = {
    "kept": options(keep_graph=True, trace="hutchinson", trace_probes=6),
    "dataset": options(keep_graph=False, density=True, density_steps=5, density_runs=2),
    "ggn": options(curvature="ggn", save_vectors=True),
}


def _analyses(rank, folder):
    model, batches = problem()
    found = {}
    for name, chosen in ANALYSES.items():
        record = analyse("model.pt", model, batches, chosen, DATA, out=folder / f"{name}.h5", check_determinism=True)
        found[name] = (record.spectrum.eigenvalues, record.spectrum.num_products,
                       record.trace.value if record.trace else None,
                       record.density.nodes if record.density else None)
    resumed = analyse("model.pt", model, batches, options(), DATA, out=folder / "resumed.h5")
    found["resumed"] = (resumed.spectrum.eigenvalues, resumed.spectrum.num_products, None, None)
    torch.save(found, folder / f"analyses{rank}.pt")


class Interrupt(Exception):
    pass


def test_sharded_analyses_equal_one_process_and_resume(tmp_path):
    model, batches = problem()

    def stop_after_four_products(update):
        if update.task == "lanczos" and update.completed >= 4:
            raise Interrupt

    with pytest.raises(Interrupt):  # a single-process run stopped mid-way: its file holds 4 products
        analyse("model.pt", model, batches, options(), DATA, out=tmp_path / "resumed.h5",
                progress=stop_after_four_products)
    assert read_records(tmp_path / "resumed.h5")["model.pt"].state.steps == 4

    run_ranks(_analyses, tmp_path, tmp_path)
    ranks = [torch.load(tmp_path / f"analyses{r}.pt", weights_only=False) for r in range(2)]
    for name, chosen in [*ANALYSES.items(), ("resumed", options())]:
        alone = analyse("model.pt", model, batches, chosen, DATA, out=tmp_path / f"alone-{name}.h5")
        stored = read_records(tmp_path / f"{name}.h5")["model.pt"]  # what rank 0 wrote
        for values, products, trace, nodes in (r[name] for r in ranks):
            np.testing.assert_allclose(values, alone.spectrum.eigenvalues, rtol=1e-6)
            assert products == alone.spectrum.num_products
            np.testing.assert_array_equal(stored.spectrum.eigenvalues, values)
            if alone.trace is not None:
                assert trace == pytest.approx(alone.trace.value, rel=1e-6)
            if alone.density is not None:
                np.testing.assert_allclose(nodes, alone.density.nodes, rtol=1e-6, atol=1e-9)
        assert stored.state is None


FAST = ["--k", "3", "--samples", "301", "--batch-size", "100", "--tol", "1e-6", "--device", "cpu"]
CLI_CASES = {
    "kept": ["--keep-graph", "--check-determinism"],
    "ggn-dataset": ["--no-keep-graph", "--curvature", "ggn", "--trace", "--trace-method", "hutchinson",
                    "--trace-probes", "6"],
}


@pytest.mark.parametrize("case", CLI_CASES)
def test_torchrun_eigs_equals_one_process(tmp_path, checkpoints, case):
    extra = [*FAST, *CLI_CASES[case], "--json"]
    run = torchrun("eigs", checkpoints[0], *extra, "--out", tmp_path / "ranks.h5")
    assert run.returncode == 0, first_error(run.stderr) or run.stderr[-3000:]
    assert run.stderr.count("eigs: ") <= 1  # the plan line comes from rank 0 only
    alone = invoke("eigs", checkpoints[0], *extra, "--out", tmp_path / "alone.h5")
    assert alone.exit_code == 0, alone.stderr
    (ranks,), (single,) = json.loads(run.stdout), json.loads(alone.stdout)
    np.testing.assert_allclose(ranks["eigenvalues"], single["eigenvalues"], rtol=1e-5)
    assert ranks["samples"] == single["samples"] == 301 and ranks["graphs"]["mode"] == single["graphs"]["mode"]
    if "trace" in single:
        assert ranks["trace"]["value"] == pytest.approx(single["trace"]["value"], rel=1e-5)
    stored = read_records(tmp_path / "ranks.h5")[str(checkpoints[0])]
    np.testing.assert_array_equal(stored.spectrum.eigenvalues, ranks["eigenvalues"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alone.h5", "ranks.h5"]  # no lock or stray file left


def test_torchrun_refuses_pyhessian_in_one_line(tmp_path, checkpoints):
    run = torchrun("eigs", checkpoints[0], *FAST, "--backend", "pyhessian")
    assert run.returncode != 0
    assert "--backend pyhessian" in first_error(run.stderr) and "without torchrun" in first_error(run.stderr)
