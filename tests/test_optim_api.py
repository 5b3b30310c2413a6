"""The protocol the training loop relies on: names, hyper-parameters and their validation, the
passes a step makes, LR schedulers, and an exact resume from ``state_dict``."""

from __future__ import annotations

import io

import pytest
import torch

from alignsam_diag import optim
from alignsam_diag.errors import UserError
from test_optim_common import (BN_SHAPE, EXERCISE, MLP_SHAPE, SGD_SETTINGS, VARIANTS, bn_net, closure_for, flat,
                               make_batches, mlp, train)

#: DESIGN §5's reference defaults.
DEFAULTS = {
    "sgd": {},
    "sam": {"rho": 0.05},
    "asam": {"rho": 0.5, "eta": 0.01},
    "align-sam": {"rho": 0.05, "lam": 2.0},
    "align-asam": {"rho": 0.5, "lam": 2.0, "eta": 0.01},
    "gsam": {"rho": 0.05, "rho_min": 0.0, "alpha": 0.4},
    "fsam": {"rho": 0.05, "sigma": 1.0, "lam": 0.9},
    "vasso": {"rho": 0.05, "theta": 0.9},
    "looksam": {"rho": 0.05, "k": 5, "alpha": 0.7},
    "lookbehind-sam": {"rho": 0.05, "k": 2, "alpha": 0.5, "adaptive_alpha": False},
}


def test_every_variant_is_registered_with_its_reference_defaults() -> None:
    assert {name: optim.hyperparameters(name) for name in VARIANTS} == DEFAULTS


def test_variants_are_torch_optimizers_and_only_align_needs_aux() -> None:
    for name in VARIANTS:
        optimizer = optim.create(name, mlp().parameters(), lr=0.1)
        assert isinstance(optimizer, torch.optim.Optimizer)
        assert optimizer.needs_aux == name.startswith("align-")


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UserError, match="align-sam.*lookbehind-sam"):
        optim.create("adam-sam", mlp().parameters(), lr=0.1)
    with pytest.raises(UserError, match="adamw"):
        optim.create("sam", mlp().parameters(), base="lion", lr=0.1)


def test_a_hyperparameter_the_variant_does_not_take_is_an_error() -> None:
    with pytest.raises(UserError, match="sam does not take --lam.*--rho"):
        optim.create("sam", mlp().parameters(), lr=0.1, lam=2.0)
    with pytest.raises(UserError, match="--rho-min.*are: none"):
        optim.create("sgd", mlp().parameters(), lr=0.1, rho_min=0.0)


@pytest.mark.parametrize("name,hyper,message", [
    ("sam", {"rho": -0.1}, "rho = -0.1: must be at least 0"),
    ("looksam", {"k": 0}, "k = 0: must be at least 1"),
    ("lookbehind-sam", {"k": 2.5}, "k = 2.5: must be an integer"),
    ("gsam", {"alpha": 1.5}, "alpha = 1.5: must be in"),
    ("gsam", {"rho": 0.05, "rho_min": 0.1}, "rho_min = 0.1"),
    ("vasso", {"theta": 2.0}, "theta = 2.0"),
    ("fsam", {"lam": 1.5}, "lam = 1.5"),
    ("asam", {"eta": -1.0}, "eta = -1.0"),
])
def test_out_of_range_hyperparameters_are_errors(name: str, hyper: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        optim.create(name, mlp().parameters(), lr=0.1, **hyper)


def test_nesterov_needs_momentum_and_the_sgd_base() -> None:
    with pytest.raises(UserError, match="--nesterov"):
        optim.create("sam", mlp().parameters(), lr=0.1, nesterov=True)
    with pytest.raises(UserError, match="--nesterov"):
        optim.create("sam", mlp().parameters(), base="adamw", lr=0.1, momentum=0.9, nesterov=True)


PASSES = {  # the closure calls of each step: SAM's cost is two train passes
    "sgd": [["train"]] * 2,
    "sam": [["train", "train"]] * 2,
    "align-sam": [["train", "aux", "aux", "train"]] * 2,
    "looksam": [["train", "train"], ["train"]],  # k = 2: SAM on step 0, reuse on step 1
    "lookbehind-sam": [["train", "train", "train"]] * 2,  # k = 2 ascent points + the clean pass
}


@pytest.mark.parametrize("name", list(PASSES))
def test_passes_per_step_and_gradients_zeroed_before_each(name: str) -> None:
    model = mlp()
    batches = make_batches(2, MLP_SHAPE)
    optimizer = optim.create(name, model.parameters(), model=model, **SGD_SETTINGS, **EXERCISE.get(name, {}))
    for t in range(2):
        calls: list[str] = []
        inner = closure_for(model, batches.train[t], batches.aux[t], calls)

        def closure(which: str) -> torch.Tensor:
            assert all(p.grad is None for p in model.parameters())
            return inner(which)

        optimizer.step(closure)
        assert calls == PASSES[name][t]


@pytest.mark.parametrize("name", VARIANTS)
def test_step_returns_the_loss_at_the_unperturbed_parameters(name: str) -> None:
    model = mlp()
    batches = make_batches(1, MLP_SHAPE)
    x, y = batches.train[0]
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(x), y)
    optimizer = optim.create(name, model.parameters(), model=model, **SGD_SETTINGS)
    assert optimizer.step(closure_for(model, batches.train[0], batches.aux[0])) == expected


def test_lr_scheduler_drives_the_base_optimizer() -> None:
    """Our ``sgd`` under LambdaLR steps bit for bit like torch's SGD under the same schedule."""
    batches = make_batches(3, MLP_SHAPE)
    ours, theirs = mlp(), mlp()
    optimizer = optim.create("sgd", ours.parameters(), **SGD_SETTINGS)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 ** s)
    train("sgd", ours, batches, optimizer=optimizer, scheduler=scheduler)
    sgd = torch.optim.SGD(theirs.parameters(), **SGD_SETTINGS)
    their_scheduler = torch.optim.lr_scheduler.LambdaLR(sgd, lambda s: 0.5 ** s)
    for x, y in batches.train:
        sgd.zero_grad()
        torch.nn.functional.cross_entropy(theirs(x), y).backward()
        sgd.step()
        their_scheduler.step()
    assert optimizer.param_groups[0]["lr"] == SGD_SETTINGS["lr"] / 8
    assert torch.equal(flat(ours), flat(theirs))


def roundtrip(obj: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("name,base", [(name, "sgd") for name in VARIANTS] + [("looksam", "adamw"), ("fsam", "adamw")])
def test_resume_from_state_dict_is_exact(name: str, base: str) -> None:
    """k steps, save, load into a fresh model/optimizer/scheduler, continue: bit for bit the
    uninterrupted run, including every variant's own state (FSAM's m, VaSSO's d, LookSAM's g_v
    and step counter) and the base optimizer's (momentum buffers, AdamW moments and steps)."""
    batches = make_batches(4, BN_SHAPE, dtype=torch.float32)
    settings = {**SGD_SETTINGS, "base": base, **({"lr": 0.01} if base == "adamw" else {}), **EXERCISE.get(name, {})}

    def fresh(seed: int = 0):
        model = bn_net(seed)
        optimizer = optim.create(name, model.parameters(), model=model, **settings)
        return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))

    model, optimizer, scheduler = fresh()
    train(name, model, batches, optimizer=optimizer, scheduler=scheduler)

    first, first_optimizer, first_scheduler = fresh()
    train(name, first, batches, steps=3, optimizer=first_optimizer, scheduler=first_scheduler)
    saved = roundtrip({"model": first.state_dict(), "optimizer": first_optimizer.state_dict(),
                       "scheduler": first_scheduler.state_dict()})
    resumed, resumed_optimizer, resumed_scheduler = fresh(seed=1)
    resumed.load_state_dict(saved["model"])
    resumed_optimizer.load_state_dict(saved["optimizer"])
    resumed_scheduler.load_state_dict(saved["scheduler"])
    assert resumed_optimizer.base.param_groups is resumed_optimizer.param_groups
    train(name, resumed, batches, first=3, optimizer=resumed_optimizer, scheduler=resumed_scheduler)

    assert torch.equal(flat(resumed), flat(model))
    for (buffer_name, a), b in zip(resumed.named_buffers(), model.buffers()):
        assert torch.equal(a, b), buffer_name
    state, expected = resumed_optimizer.state_dict(), optimizer.state_dict()
    assert state["param_groups"] == expected["param_groups"]
    for part in (state, state["base"]):
        other = expected if part is state else expected["base"]
        assert part["state"].keys() == other["state"].keys()
        for index, values in part["state"].items():
            for key, value in values.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(other["state"][index][key])), (index, key)
