"""Landscape directions: Li et al.'s filter normalisation, seeding, interpolation, eigenvectors."""

import h5py
import numpy as np
import pytest
import torch

from alignsam_diag.analysis.directions import (directions_from_source, interpolation_direction,
                                               random_directions, split_flat)
from alignsam_diag.errors import UserError
from alignsam_diag.landscape_types import LandscapeSpec
from alignsam_diag.models import ModelSpec, build_model


def cnn(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelSpec("cnn-small", 10, 1, 8, {"width": 4}))


def test_filter_normalisation_per_filter():
    model = cnn(0)
    for direction in random_directions(model, seed=3, count=2, norm="filter"):
        assert direction.names == [n for n, _ in model.named_parameters()]
        for d, (name, w) in zip(direction.tensors, model.named_parameters()):
            assert d.shape == w.shape
            if w.dim() <= 1:  # BatchNorm weights/biases, the linear bias: ignored
                assert torch.count_nonzero(d) == 0, name
                continue
            for i in range(w.shape[0]):  # every output filter has its weight filter's norm
                torch.testing.assert_close(d[i].norm(), w[i].detach().norm(), rtol=1e-5, atol=0)


def test_layer_and_none_norms_and_kept_biases():
    model = cnn(0)
    raw_gen = torch.Generator().manual_seed(5)
    raw = [torch.randn(p.shape, generator=raw_gen) for p in model.parameters()]
    (none,) = random_directions(model, seed=5, count=1, norm="none", ignore_biasbn=False)
    (layer,) = random_directions(model, seed=5, count=1, norm="layer", ignore_biasbn=False)
    for r, n, d, w in zip(raw, none.tensors, layer.tensors, model.parameters()):
        assert torch.equal(n, r)  # the seeded Gaussian, untouched
        if w.dim() <= 1:  # kept: Li et al.'s net_plotter uses the weights themselves
            assert torch.equal(d, w.detach())
        else:
            torch.testing.assert_close(d.norm(), w.detach().norm(), rtol=1e-5, atol=0)
            torch.testing.assert_close(d / d.norm(), r / r.norm())


def test_seeded_and_shared_across_checkpoints():
    """Same seed: same Gaussian draws for two checkpoints of one architecture, each scaled to
    its own filters; another seed gives other draws."""
    a, b = cnn(0), cnn(1)
    da, db = random_directions(a, seed=7), random_directions(b, seed=7)
    again = random_directions(a, seed=7)
    other = random_directions(a, seed=8)
    for k in range(2):
        assert all(torch.equal(x, y) for x, y in zip(da[k].tensors, again[k].tensors))
        for x, y, wa in zip(da[k].tensors, db[k].tensors, a.parameters()):
            if wa.dim() > 1:
                unit_a = x.flatten(1) / x.flatten(1).norm(dim=1, keepdim=True)
                unit_b = y.flatten(1) / y.flatten(1).norm(dim=1, keepdim=True)
                torch.testing.assert_close(unit_a, unit_b)
    assert not torch.equal(da[0].flat(), other[0].flat())
    assert not torch.equal(da[0].flat(), da[1].flat())


def test_interpolation_reaches_the_other_checkpoint():
    a, b = cnn(0), cnn(1)
    d = interpolation_direction(a, b.state_dict())
    for t, pa, pb in zip(d.tensors, a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.detach() + t, pb.detach())
    with pytest.raises(UserError, match="same architecture"):
        interpolation_direction(a, {"0.weight": torch.zeros(3)})


def test_eigenvector_directions_from_an_eigs_file(tmp_path):
    """A file in the layout `eigs --save-vectors` writes (store/spectrum.py): eigenvectors (k, P)
    flattened over param_names (here the weight tensors only)."""
    model = cnn(0)
    names = [n for n, p in model.named_parameters() if p.dim() > 1]
    sizes = [dict(model.named_parameters())[n].numel() for n in names]
    vectors = np.random.default_rng(0).standard_normal((3, sum(sizes))).astype(np.float32)
    path = tmp_path / "eigs.h5"
    with h5py.File(path, "w") as f:
        f.attrs["kind"] = "eigs"
        for checkpoint, rows in (("runs|a.pt", vectors), ("runs|b.pt", -vectors)):
            g = f.create_group(checkpoint)
            g.attrs["checkpoint"] = checkpoint.replace("|", "/")
            g["param_names"] = np.array(names, dtype=h5py.string_dtype())
            g["eigenvectors"] = rows
    d1, d2 = directions_from_source(model, f"eigs:{path}", count=2, seed=0, checkpoint="runs/b.pt")
    for direction, row in ((d1, -vectors[0]), (d2, -vectors[1])):
        offsets = np.cumsum([0] + sizes)
        by_name = dict(zip(direction.names, direction.tensors))
        for name, start, stop in zip(names, offsets[:-1], offsets[1:]):
            np.testing.assert_array_equal(by_name[name].reshape(-1).numpy(), row[start:stop])
        assert all(torch.count_nonzero(by_name[n]) == 0 for n, p in model.named_parameters() if p.dim() <= 1)
    with pytest.raises(UserError, match="at least 4"):
        directions_from_source(model, f"eigs:{path}", count=4, seed=0, checkpoint="runs/a.pt")


def test_unknown_source_and_bad_norm_are_user_errors():
    model = cnn(0)
    with pytest.raises(UserError, match="directions = sideways"):
        directions_from_source(model, "sideways", 2, 0)
    with pytest.raises(UserError, match="norm = weight"):
        random_directions(model, 0, norm="weight")
    with pytest.raises(UserError, match="another model"):
        split_flat(model, ["0.weight"], np.zeros(5))


@pytest.mark.parametrize("source", ["sideways", "random:3", "eigs:", "surface", "interpolate:"])
def test_the_options_and_the_resolver_refuse_a_source_alike(source):
    """One parser: what ``LandscapeSpec.validate`` refuses up front, the resolver refuses with the
    same message."""
    with pytest.raises(UserError, match="directions = ") as by_options:
        LandscapeSpec(directions=source).validate()
    with pytest.raises(UserError) as by_resolver:
        directions_from_source(cnn(0), source, 2, 0)
    assert str(by_options.value) == str(by_resolver.value)
