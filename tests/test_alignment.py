"""The alignment quantities of appendix A.3 (cosine_b, cosine_a, change, norms, dot products)
against a hand computation in float64 — softmax regression with its gradient and every
optimizer's step written out here from the formulas, in numpy — and the guarantees around the
measurement: a step measured during training leaves everything (parameters, BatchNorm buffers,
.grad, optimizer state, RNG) bit for bit as the plain step does, a post-hoc one touches nothing,
the same seed gives the same numbers."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from alignsam_diag import optim
from alignsam_diag.analysis.alignment import Alignment, change, draw_pair, measure, measure_step
from alignsam_diag.data import ArrayDataset
from alignsam_diag.store.alignment import QUANTITIES

D, C, N_TRAIN, N_AUX = 5, 3, 12, 4
LR, MOMENTUM, WD, RHO, LAM = 0.3, 0.9, 5e-4, 0.05, 2.0
ASAM_RHO, ETA = 0.5, 0.01
SETTINGS = {"sgd": {}, "sam": {"rho": RHO}, "align-sam": {"rho": RHO, "lam": LAM},
            "asam": {"rho": ASAM_RHO, "eta": ETA}, "align-asam": {"rho": ASAM_RHO, "lam": LAM, "eta": ETA}}


def data(seed):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(N_TRAIN, D)), rng.integers(0, C, N_TRAIN),
            rng.normal(size=(N_AUX, D)), rng.integers(0, C, N_AUX))


def grad(theta, x, y):
    """∇ of the mean cross-entropy of softmax(x Wᵀ + b), θ = [W (C×D) row by row, b (C)]."""
    w, b = theta[:C * D].reshape(C, D), theta[C * D:]
    logits = x @ w.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    r = (p - np.eye(C)[y]) / len(y)
    return np.concatenate([(r.T @ x).ravel(), r.sum(0)])


def unit(v):
    return v / np.linalg.norm(v)


def ascent(name, g, theta, rho):
    """ρ g/‖g‖, or ASAM's ρ T²g/‖Tg‖ with T = |w| + η on the weight, 1 on the bias."""
    if "asam" not in name:
        return rho * unit(g)
    t = np.concatenate([np.abs(theta[:C * D]) + ETA, np.ones(C)])
    return rho * t * t * g / np.linalg.norm(t * g)


def descent_gradient(name, theta, batches):
    """The gradient each variant hands to SGD (Algorithm 1 for Align-SAM)."""
    xt, yt, xa, ya = batches
    g_t = grad(theta, xt, yt)
    rho = SETTINGS[name].get("rho", 0.0)
    if name == "sgd":
        return g_t
    if name in ("sam", "asam"):
        return grad(theta + ascent(name, g_t, theta, rho), xt, yt)
    g_a_tilde = grad(theta + ascent(name, grad(theta, xa, ya), theta, rho), xa, ya)
    offset = ascent(name, g_t, theta, LAM * rho) - ascent(name, g_a_tilde, theta, rho)
    return grad(theta + offset, xt, yt)


def sgd_steps(name, theta, batch_list):
    """θ after SGD with momentum and weight decay on each batch in turn (buffer = first d)."""
    buf = None
    for batches in batch_list:
        d = descent_gradient(name, theta, batches) + WD * theta
        buf = d if buf is None else MOMENTUM * buf + d
        theta = theta - LR * buf
    return theta


def by_hand(name, theta, after, batches):
    """cosine_b/a, the norms and dot products at θ_l = ``theta`` and θ_{l+1} = ``after``, straight
    from appendix A.3's definitions."""
    xt, yt, xa, ya = batches
    rho = SETTINGS[name].get("rho", RHO)
    out = {}
    for when, at in (("b", theta), ("a", after)):
        g_t = grad(at, xt, yt)
        g_a = grad(at + ascent(name, grad(at, xa, ya), at, rho), xa, ya)
        out.update({f"cosine_{when}": g_t @ g_a / (np.linalg.norm(g_t) * np.linalg.norm(g_a)),
                    f"train_norm_{when}": np.linalg.norm(g_t), f"aux_norm_{when}": np.linalg.norm(g_a),
                    f"dot_{when}": g_t @ g_a})
    out["change"] = (out["cosine_a"] - out["cosine_b"]) / out["cosine_a"]
    return out


def linear(theta):
    model = nn.Linear(D, C).double()
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(theta[:C * D].reshape(C, D)))
        model.bias.copy_(torch.from_numpy(theta[C * D:]))
    return model


def closure_for(model, batches):
    xt, yt, xa, ya = (torch.from_numpy(a) for a in batches)

    def closure(which="train"):
        x, y = (xt, yt) if which == "train" else (xa, ya)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss
    return closure


@pytest.mark.parametrize("name", list(SETTINGS))
def test_values_match_the_definitions_computed_by_hand(name):
    """On the second step (so the momentum buffer of step one takes part), every variant."""
    theta0 = np.random.default_rng(7).normal(size=C * D + C) * 0.5
    first, second = data(1), data(2)
    theta1 = sgd_steps(name, theta0, [first])
    model = linear(theta0)
    optimizer = optim.create(name, model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD, model=model,
                             **SETTINGS[name])
    optimizer.step(closure_for(model, first))
    np.testing.assert_allclose(torch.cat([model.weight.detach().ravel(), model.bias.detach()]).numpy(), theta1,
                               rtol=1e-12, atol=1e-14)
    got = measure_step(model, optimizer, closure_for(model, second))
    theta2 = sgd_steps(name, theta0, [first, second])
    expected = by_hand(name, theta1, theta2, second)
    for q in QUANTITIES:
        assert getattr(got, q) == pytest.approx(expected[q], rel=1e-10, abs=1e-13), q
    assert got.passes == (3 if name.startswith("align") else 5)
    np.testing.assert_allclose(torch.cat([model.weight.detach().ravel(), model.bias.detach()]).numpy(), theta2,
                               rtol=1e-12, atol=1e-14)


def test_the_change_formula():
    assert change(0.2, 0.4) == pytest.approx(0.5) and change(0.5, 0.25) == pytest.approx(-1.0)
    assert change(0.3, 0.3) == 0.0 and math.isnan(change(0.3, 0.0))
    row = Alignment(0.1, 0.4, change(0.1, 0.4), 1, 1, 1, 1, 1, 1, 5)
    assert row.change == pytest.approx((0.4 - 0.1) / 0.4) and row.values()[:3] == [0.1, 0.4, row.change]


class Net(nn.Module):
    """BatchNorm and dropout: the buffers a pass moves and the RNG a pass draws from."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.drop, self.head = nn.Dropout(0.3), nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


def images(seed, n):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def torch_closure(model, train, aux):
    def closure(which="train"):
        x, y = train if which == "train" else aux
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss
    return closure


def snapshot(model, optimizer):
    """Every tensor a step may touch, copied: parameters, buffers, .grad, optimizer state, RNG."""
    state = optimizer.state_dict()
    return {"model": copy.deepcopy(model.state_dict()),
            "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            "optimizer": copy.deepcopy(state), "rng": torch.get_rng_state()}


def assert_same(a, b):
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(a["grad"], b["grad"]))
    assert torch.equal(a["rng"], b["rng"])
    flat = [(k, v) for part in (a["optimizer"], b["optimizer"]) for k, v in _tensors(part)]
    half = len(flat) // 2
    assert half and all(ka == kb and torch.equal(va, vb) for (ka, va), (kb, vb) in zip(flat[:half], flat[half:]))


def _tensors(tree, prefix=""):
    if torch.is_tensor(tree):
        return [(prefix, tree)]
    if isinstance(tree, dict):
        return [item for k in sorted(tree, key=str) for item in _tensors(tree[k], f"{prefix}/{k}")]
    if isinstance(tree, (list, tuple)):
        return [item for i, v in enumerate(tree) for item in _tensors(v, f"{prefix}/{i}")]
    return [(prefix, torch.tensor(float(tree)))] if isinstance(tree, (int, float)) else []


@pytest.mark.parametrize("name", ["sgd", "sam", "align-sam", "align-asam", "looksam"])
def test_a_measured_step_leaves_everything_as_the_plain_step(name):
    torch.manual_seed(0)
    model = Net()
    optimizer = optim.create(name, model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, model=model)
    model.train()
    optimizer.step(torch_closure(model, images(1, 16), images(2, 4)))  # momentum and variant state exist
    twin = copy.deepcopy(model)
    twin_optimizer = optim.create(name, twin.parameters(), lr=0.05, model=twin)
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    batches = images(3, 16), images(4, 4)
    torch.manual_seed(5)
    optimizer.step(torch_closure(model, *batches))
    plain = snapshot(model, optimizer)
    torch.manual_seed(5)
    result = measure_step(twin, twin_optimizer, torch_closure(twin, *batches))
    assert_same(plain, snapshot(twin, twin_optimizer))
    assert -1 <= result.cosine_b <= 1 and -1 <= result.cosine_a <= 1


def test_post_hoc_touches_nothing_and_the_same_seed_gives_the_same_numbers():
    torch.manual_seed(0)
    model = Net()
    optimizer = optim.create("align-sam", model.parameters(), lr=0.05, momentum=0.9, model=model)
    model.train()
    optimizer.step(torch_closure(model, images(1, 16), images(2, 4)))
    model.eval()
    before = snapshot(model, optimizer)
    x, y = images(9, 64)
    data = ArrayDataset(x, y, y)
    pairs = [draw_pair(data, 16, 4, seed=3, index=i) for i in (0, 0, 1)]
    assert all(torch.equal(a, b) for a, b in zip([*pairs[0][0], *pairs[0][1]], [*pairs[1][0], *pairs[1][1]]))
    assert not torch.equal(pairs[0][0][0], pairs[2][0][0])
    first, again, other = (measure(model, optimizer, *pair) for pair in pairs)
    assert first == again and first != other
    assert_same(before, snapshot(model, optimizer))
    assert not model.training
    twin = copy.deepcopy(model).train()  # post hoc = the step a copy would take
    twin_optimizer = optim.create("align-sam", twin.parameters(), lr=0.05, model=twin)
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    torch.manual_seed(0)  # measure's default seed: the same dropout masks
    assert measure_step(twin, twin_optimizer, torch_closure(twin, *pairs[0])) == first
