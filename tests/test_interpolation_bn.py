"""Interpolation between two checkpoints moves BatchNorm statistics with the weights: the loss at
x = 0 and x = 1 is each model's own loss on the same samples (1-D and 2-D, in-place and batched
paths, library and CLI), the point halfway is the model whose weights and statistics are both
halfway, and a pair of plain state dicts loads the target like the first checkpoint."""

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import typer

from alignsam_diag.analysis.directions import (Direction, checkpoint_loader, directions_from_source,
                                               interpolation_direction)
from alignsam_diag.analysis.landscape import evaluate_surface
from alignsam_diag.data import DataSpec, load_data
from alignsam_diag.landscape_types import LandscapeSpec, Surface
from alignsam_diag.models import ModelSpec, build_model
from alignsam_diag.store.landscape import read_landscape, write_landscape
from cli.app import app
from conftest import error_line, invoke

SPEC = ModelSpec("cnn-small", 10, 1, 8, {"width": 4})


def bn_model(seed: int, inputs: torch.Tensor) -> torch.nn.Module:
    """A cnn-small with seeded weights whose BatchNorm statistics are the cumulative average over
    ``inputs`` (train-mode forward passes), in eval mode."""
    torch.manual_seed(seed)
    model = build_model(SPEC)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    model.train()
    with torch.no_grad():
        for chunk in inputs.split(100):
            model(chunk)
    return model.eval()


@pytest.fixture(scope="module")
def pair():
    """Two models with other weights and BatchNorm statistics from other data (the second's
    inputs scaled and shifted), and 200 evaluation samples."""
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(400, 1, 8, 8, generator=gen)
    a, b = bn_model(0, data), bn_model(1, 3.0 * data + 2.0)
    x, y = torch.randn(200, 1, 8, 8, generator=gen), torch.randint(0, 10, (200,), generator=gen)
    return a, b, x, y


@torch.no_grad()
def own_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The oracle: the model's own mean cross-entropy in eval mode (a copy, so nothing changes)."""
    return F.cross_entropy(copy.deepcopy(model).eval()(x), y).item()


def blend(a: torch.nn.Module, b: torch.nn.Module, t: float) -> torch.nn.Module:
    """A model whose weights and floating-point buffers are (1 − t)·a + t·b (integer ones: a's;
    a running variance that would be negative: 0)."""
    state_b = b.state_dict()
    mixed = {k: v.lerp(state_b[k], t) if v.is_floating_point() else v for k, v in a.state_dict().items()}
    mixed = {k: v.clamp_min(0.0) if k.endswith("running_var") else v for k, v in mixed.items()}
    model = build_model(SPEC)
    model.load_state_dict(mixed)
    return model.eval()


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def surface_of(model, directions, x, y, points_per_pass, **ranges) -> Surface:
    surface = Surface.empty(LandscapeSpec(dim=len(directions), grid=5, **ranges).make_grid())
    batches = [(x[:128], y[:128]), (x[128:], y[128:])]
    before = snapshot(model)
    evaluate_surface(model, directions, surface, batches, points_per_pass=points_per_pass)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # parameters and buffers bit-identical
    return surface


@pytest.mark.parametrize("points_per_pass", [1, 5])
def test_1d_ends_are_each_models_own_loss_and_the_middle_is_halfway(pair, points_per_pass):
    a, b, x, y = pair
    direction = interpolation_direction(a, b.state_dict())
    surface = surface_of(a, [direction], x, y, points_per_pass, xrange=(-0.5, 1.5))
    assert surface.grid.x.tolist() == [-0.5, 0.0, 0.5, 1.0, 1.5]
    loss = surface.loss
    assert loss[1] == pytest.approx(own_loss(a, x, y), rel=1e-5)
    assert loss[3] == pytest.approx(own_loss(b, x, y), rel=1e-5)
    assert loss[2] == pytest.approx(own_loss(blend(a, b, 0.5), x, y), rel=1e-5)
    assert loss[4] == pytest.approx(own_loss(blend(a, b, 1.5), x, y), rel=1e-5)
    assert loss[0] == pytest.approx(own_loss(blend(a, b, -0.5), x, y), rel=1e-5)
    assert np.isfinite(loss).all()  # b's variances are 9× a's: past a they would be negative

    # the statistics matter here: moving the weights alone does not reach the other model
    weights_only = surface_of(a, [Direction(direction.names, direction.tensors)], x, y, points_per_pass,
                              xrange=(-0.5, 1.5))
    assert abs(weights_only.loss[3] - own_loss(b, x, y)) > 0.1 * own_loss(b, x, y)


@pytest.mark.parametrize("points_per_pass", [1, 5])
def test_2d_interpolate_and_random_plane_from_a_plain_state_dict(pair, tmp_path, points_per_pass):
    a, b, x, y = pair
    path = tmp_path / "b.pt"
    torch.save(b.state_dict(), path)
    towards, sideways = directions_from_source(a, f"interpolate:{path}", 2, seed=0,
                                               load_target=checkpoint_loader(SPEC))
    assert not sideways.buffers  # the random direction leaves the statistics
    surface = surface_of(a, [towards, sideways], x, y, points_per_pass, xrange=(-0.5, 1.5), yrange=(-1.0, 1.0))
    assert surface.grid.y.tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    loss = surface.loss  # rows follow y, columns x
    assert loss[2, 1] == pytest.approx(own_loss(a, x, y), rel=1e-5)
    assert loss[2, 3] == pytest.approx(own_loss(b, x, y), rel=1e-5)
    beside_b = copy.deepcopy(b)  # b's weights one step along the random direction, b's statistics
    with torch.no_grad():
        for p, d in zip(beside_b.parameters(), sideways.tensors):
            p.add_(d)
    assert loss[4, 3] == pytest.approx(own_loss(beside_b, x, y), rel=1e-5)


@pytest.fixture(scope="module")
def digits_pair(tmp_path_factory):
    """Two plain state dicts (no model spec) of cnn-small models with BatchNorm statistics from
    other data, and the digits training split the CLI evaluates with --full."""
    train = load_data(DataSpec("digits")).train
    root = tmp_path_factory.mktemp("pair")
    models = [bn_model(0, train.x[:600]), bn_model(1, 2.0 * train.x[600:1200] + 0.5)]
    for name, model in zip("ab", models):
        torch.save(model.state_dict(), root / f"{name}.pt")
    return root, models, train


def landscape_json(*args):
    result = invoke("landscape", *args, "--full", "--batch-size", "512", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    return np.array(json.loads(result.stdout)["results"][0]["loss"])


def test_cli_interpolates_a_pair_of_plain_state_dicts(digits_pair):
    root, (a, b), train = digits_pair
    options = ["--arch", "cnn-small", "--arch-kwargs", '{"width": 4}', "--num-classes", "10", "--dataset", "digits"]
    loss = landscape_json(root / "a.pt", *options, "--dim", "1", "--directions", f"interpolate:{root / 'b.pt'}",
                          "--xrange", "-0.5:1.5", "--grid", "5", "--out", root / "line.h5")
    assert loss[1] == pytest.approx(own_loss(a, train.x, train.y), rel=1e-5)
    assert loss[3] == pytest.approx(own_loss(b, train.x, train.y), rel=1e-5)
    # the stored directions carry the statistics' motion: reusing them gives the same line
    again = landscape_json(root / "a.pt", *options, "--dim", "1", "--directions", f"surface:{root / 'line.h5'}",
                           "--xrange", "-0.5:1.5", "--grid", "5", "--out", root / "again.h5")
    np.testing.assert_allclose(again, loss, rtol=1e-6)


def test_resuming_a_file_whose_interpolation_kept_the_first_statistics_is_refused(digits_pair, tmp_path):
    """A file started before interpolations moved the statistics: directions over parameters only."""
    root, _, _ = digits_pair
    args = ["landscape", root / "a.pt", "--arch", "cnn-small", "--arch-kwargs", '{"width": 4}', "--dataset", "digits",
            "--dim", "1", "--directions", f"interpolate:{root / 'b.pt'}", "--grid", "3", "--samples", "100",
            "--device", "cpu", "--out", tmp_path / "old.h5"]
    assert invoke(*args).exit_code == 0
    old = read_landscape(tmp_path / "old.h5")
    group = old.groups[0]
    params = [n for n in group.direction_names if not n.endswith(("running_mean", "running_var"))]
    assert len(params) < len(group.direction_names)  # the new file stores the statistics' motion
    size = sum(p.numel() for p in build_model(SPEC).parameters())
    group.direction_names, group.directions = params, group.directions[:, :size]
    group.surface.done[-1] = False
    write_landscape(tmp_path / "old.h5", old)
    assert "started by an earlier version" in error_line(invoke(*args))


def test_every_bn_mode_says_what_it_means_for_each_direction_kind():
    command = typer.main.get_command(app).commands["landscape"]
    text = next(p.help for p in command.params if p.name == "bn")
    for mode in ("eval:", "recompute:"):
        assert mode in text
    for kind in ("random", "eigs", "interpolate:CKPT", "surface:FILE", "every kind"):
        assert kind in text
