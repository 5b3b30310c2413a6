"""The landscape engine against direct evaluations: grid values, centre cell, the in-place and
batched (vmap) paths, exact restoration of the model, BatchNorm re-estimation."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alignsam_diag.analysis.directions import random_directions
from alignsam_diag.analysis.landscape import choose_points_per_pass, evaluate_surface
from alignsam_diag.landscape_types import LandscapeSpec, Surface
from alignsam_diag.models import ModelSpec, build_model


def setup(arch="cnn-small", n=300, batch=128):
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch, 10, 1, 8, {"width": 4} if arch == "cnn-small" else {}))
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen)
    batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]
    return model, x, y, batches


def direct(model, params, x, y):
    """The oracle: a fresh copy of the model with its parameters set to ``params``."""
    other = copy.deepcopy(model).eval()
    with torch.no_grad():
        for p, v in zip(other.parameters(), params):
            p.copy_(v)
        logits = other(x)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).double().mean().item()


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_identical(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(after[k], before[k]), k


@pytest.mark.parametrize("arch,points_per_pass", [("cnn-small", 1), ("cnn-small", 5), ("mlp", 1), ("mlp", 8)])
def test_grid_equals_direct_evaluation(arch, points_per_pass):
    model, x, y, batches = setup(arch)
    model.train()  # the engine evaluates in eval mode and restores the mode
    d1, d2 = random_directions(model, seed=0)
    grid = LandscapeSpec(grid=5, xrange=(-1.0, 1.0), yrange=(-0.5, 1.5)).make_grid()
    surface = Surface.empty(grid)
    before = snapshot(model)
    assert evaluate_surface(model, [d1, d2], surface, batches, points_per_pass=points_per_pass) == grid.size
    assert model.training
    assert_identical(model, before)
    assert surface.done.all()
    for cell in np.random.default_rng(0).choice(grid.size, 6, replace=False):
        i, j = divmod(cell, len(grid.x))
        cx, cy = grid.x[j], grid.y[i]  # rows follow y, columns x
        params = [w.detach() + cx * a + cy * b for w, a, b in zip(model.parameters(), d1.tensors, d2.tensors)]
        loss, acc = direct(model, params, x, y)
        assert surface.loss[i, j] == pytest.approx(loss, rel=1e-5)
        assert surface.acc[i, j] == pytest.approx(acc, abs=1e-12)


def test_centre_cell_is_the_models_own_loss_on_both_paths():
    model, x, y, batches = setup()
    directions = random_directions(model, seed=0)
    grid = LandscapeSpec(grid=5).make_grid()
    own_loss, own_acc = direct(model, [p.detach() for p in model.parameters()], x, y)
    surfaces = []
    for points_per_pass in (1, 4):
        surface = Surface.empty(grid)
        evaluate_surface(model, directions, surface, batches, points_per_pass=points_per_pass)
        centre = surface.loss.reshape(-1)[grid.origin_cell()]
        assert centre == pytest.approx(own_loss, rel=1e-6)
        assert surface.acc.reshape(-1)[grid.origin_cell()] == own_acc
        surfaces.append(surface)
    np.testing.assert_allclose(surfaces[0].loss, surfaces[1].loss, rtol=1e-5)
    np.testing.assert_allclose(surfaces[0].acc, surfaces[1].acc, atol=1e-12)
    assert np.ptp(surfaces[0].loss) > 0.1  # the surface is not flat: directions do move the model


def test_one_dimensional_line():
    model, x, y, batches = setup("mlp")
    (d,) = random_directions(model, seed=2, count=1)
    spec = LandscapeSpec(dim=1, grid=7, xrange=(-2.0, 1.0))
    surface = Surface.empty(spec.make_grid())
    evaluate_surface(model, [d], surface, batches, points_per_pass=3)
    assert surface.loss.shape == (7,)
    for j in (0, 4, 6):
        params = [w.detach() + surface.grid.x[j] * t for w, t in zip(model.parameters(), d.tensors)]
        assert surface.loss[j] == pytest.approx(direct(model, params, x, y)[0], rel=1e-5)


def test_model_restored_exactly_after_an_interruption():
    model, x, y, batches = setup()
    before = snapshot(model)
    surface = Surface.empty(LandscapeSpec(grid=4).make_grid())

    def interrupt(update):
        if update.completed >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate_surface(model, random_directions(model, 0), surface, batches, progress=interrupt,
                         sync_every_s=0)
    assert_identical(model, before)
    assert surface.done.sum() == 3


def test_bn_recompute_matches_a_manual_reestimate_and_restores_buffers():
    model, x, y, batches = setup()
    directions = random_directions(model, seed=0)
    bn_inputs = [x[:100], x[100:200]]
    grid = LandscapeSpec(grid=3).make_grid()
    surface = Surface.empty(grid)
    before = snapshot(model)
    evaluate_surface(model, directions, surface, batches, bn_inputs=bn_inputs)
    assert_identical(model, before)  # running statistics and num_batches_tracked included
    for cell in (grid.origin_cell(), 0):
        cx, cy = grid.points([cell])[0]
        oracle = copy.deepcopy(model)
        with torch.no_grad():
            for p, a, b in zip(oracle.parameters(), *[d.tensors for d in directions]):
                p.add_(cx * a + cy * b)
            for m in oracle.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.reset_running_stats()
                    m.momentum = None
            oracle.train()
            for inputs in bn_inputs:
                oracle(inputs)
        loss, _ = direct(oracle, [p.detach() for p in oracle.parameters()], x, y)
        assert surface.loss.reshape(-1)[cell] == pytest.approx(loss, rel=1e-5)
    # re-estimated statistics differ from the stored ones, so the centre moves
    stored = Surface.empty(grid)
    evaluate_surface(model, directions, stored, batches)
    assert abs(stored.loss[1, 1] - surface.loss[1, 1]) > 1e-4


def test_choice_of_points_per_pass_leaves_the_model_alone():
    model, x, y, batches = setup("mlp")
    before = snapshot(model)
    chosen = choose_points_per_pass(model, random_directions(model, 0), batches[0][0], candidates=(1, 4))
    assert chosen in (1, 4)
    assert_identical(model, before)


class Unbatchable(torch.nn.Module):
    """A model whose forward cannot run under vmap (a Python number from a tensor)."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x) * float(self.linear.weight.abs().sum() > -1)


def test_a_model_that_cannot_be_batched_over_points_gets_one_point_per_pass():
    model = Unbatchable()
    x = torch.randn(8, 4)
    directions = random_directions(model, 0)
    assert choose_points_per_pass(model, directions, x, candidates=(1, 4, 16)) == 1
    assert choose_points_per_pass(model, directions, x, candidates=(1,)) == 1
