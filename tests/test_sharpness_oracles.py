"""The sharpness measures against closed forms: for a quadratic ½(w − w*)ᵀA(w − w*) at w*,
worst-case ℓ2 = ½ρ²λ_max(A) with the top eigenvector as maximiser (adaptive: of DAD, D = |w*|),
average-case = ½ρ²tr(A) within 3 standard errors, ℓ∞ with diagonal A at the box's corners;
adaptive = standard after the reparameterisation w = |w₀| ⊙ u; the ellipsoid projection against
brute force; m-sharpness of a loss linear in w, ρ·Σ_g (n_g/N)·‖∇L_g‖, with m = N the plain
measure; the model bit-identical afterwards, also after an error."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import nn

from alignsam_diag.analysis.balls import Ball, project_ellipsoid
from alignsam_diag.analysis.sharpness_average import DrawsPerPass, average_case_sharpness
from alignsam_diag.analysis.sharpness_core import SharpnessOptions
from alignsam_diag.analysis.sharpness_worst import worst_case_sharpness
from alignsam_diag.models import build_model
from conftest import SMALL_CNN

P = 10
RHO = 0.1
NO_DATA = [(torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.long))]


def mean_output(out, y):
    """The loss of the quadratic models: their (identical) per-sample outputs."""
    return out.mean()


class Quadratic(nn.Module):
    """½(w − w*)ᵀA(w − w*) with w = scale ⊙ u (u the parameter; scale = 1: w itself), as a
    (B, 1) output per sample."""

    def __init__(self, u0, A, w_star, scale=None):
        super().__init__()
        self.u = nn.Parameter(u0.clone())
        self.register_buffer("A", A)
        self.register_buffer("w_star", w_star)
        self.register_buffer("scale", torch.ones_like(u0) if scale is None else scale)

    def forward(self, x):
        d = self.scale * self.u - self.w_star
        return (0.5 * d @ self.A @ d).expand(len(x), 1)


def spd(seed, eigenvalues):
    q, _ = torch.linalg.qr(torch.randn(P, P, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return q @ torch.diag(eigenvalues) @ q.T


@pytest.fixture(scope="module")
def problem():
    """A with distinct eigenvalues 0.1 … 3 and w* with entries of very different size."""
    gen = torch.Generator().manual_seed(1)
    w_star = torch.randn(P, dtype=torch.float64, generator=gen) * torch.logspace(-1, 0.5, P, dtype=torch.float64)
    return spd(0, torch.linspace(0.1, 3.0, P, dtype=torch.float64)), w_star


@pytest.mark.parametrize("adaptive", [False, True])
def test_worst_l2_at_the_minimum_is_half_rho2_lambda_max_along_the_top_eigenvector(problem, adaptive):
    A, w_star = problem
    D = torch.diag(w_star.abs()) if adaptive else torch.eye(P, dtype=torch.float64)
    values, vectors = torch.linalg.eigh(D @ A @ D)  # the maximisation in u = δ ⊘ |w*|
    result = worst_case_sharpness(Quadratic(w_star, A, w_star), NO_DATA, RHO,
                                  SharpnessOptions(adaptive=adaptive, steps=100, restarts=2), mean_output,
                                  keep_delta=True)
    e = result.estimate
    assert e.loss_increase == pytest.approx(0.5 * RHO ** 2 * float(values[-1]), rel=1e-4)
    assert e.loss_increase <= 0.5 * RHO ** 2 * float(values[-1]) * (1 + 1e-12)  # never outside the ball
    assert e.delta_norm == pytest.approx(RHO, rel=1e-6) and e.groups == 1 and e.ascent_steps == 200
    u = result.deltas[0] / torch.diag(D)
    assert abs(float(u @ vectors[:, -1])) / float(u.norm()) > 0.999


def test_worst_case_at_a_maximum_of_the_loss_is_zero(problem):
    """Every perturbation of −½(w − w*)ᵀA(w − w*) at w* lowers it: no step beats w, the ascent
    returns to w (with its gradient, 0) at the first checkpoint and stays there."""
    A, w_star = problem
    result = worst_case_sharpness(Quadratic(w_star, -A, w_star), NO_DATA, RHO, SharpnessOptions(steps=30),
                                  mean_output, keep_delta=True)
    assert result.estimate.loss_increase == 0 and result.estimate.delta_norm == 0
    assert torch.equal(result.deltas[0], torch.zeros(P, dtype=torch.float64))


@pytest.mark.parametrize("norm, adaptive", [("l2", False), ("l2", True), ("linf", False), ("linf", True)])
def test_average_is_half_rho2_trace_within_three_standard_errors(problem, norm, adaptive):
    """E[½δᵀAδ] = ½ Σ_i A_ii E[δ_i²]: E[δ_i²] = ρ²a_i² (Gaussian) or ρ²a_i²/3 (uniform on [−ρa_i, ρa_i])."""
    A, w_star = problem
    a2 = w_star ** 2 if adaptive else torch.ones(P, dtype=torch.float64)
    exact = 0.5 * RHO ** 2 * float((torch.diag(A) * a2).sum()) / (3 if norm == "linf" else 1)
    result = average_case_sharpness(Quadratic(w_star, A, w_star), NO_DATA, RHO,
                                    SharpnessOptions(norm=norm, adaptive=adaptive, draws=400), mean_output)
    e = result.estimate
    assert 0 < e.loss_stderr < 0.1 * exact and e.draws == 400 and np.isnan(e.delta_norm)
    assert abs(e.loss_increase - exact) <= 3 * e.loss_stderr


@pytest.mark.parametrize("adaptive", [False, True])
def test_worst_linf_with_diagonal_A_is_reached_at_the_corners(problem, adaptive):
    """max over |δ_i| ≤ ρa_i of ½Σ_i d_i δ_i² = ½ρ² Σ_i max(d_i, 0)·a_i²; a negative d_i pins δ_i to 0."""
    _, w_star = problem
    d = torch.linspace(-0.5, 2.0, P, dtype=torch.float64)
    a2 = w_star ** 2 if adaptive else torch.ones(P, dtype=torch.float64)
    exact = 0.5 * RHO ** 2 * float((d.clamp_min(0) * a2).sum())
    result = worst_case_sharpness(Quadratic(w_star, torch.diag(d), w_star), NO_DATA, RHO,
                                  SharpnessOptions(norm="linf", adaptive=adaptive, steps=60), mean_output,
                                  keep_delta=True)
    assert result.estimate.loss_increase == pytest.approx(exact, rel=1e-3)
    assert result.estimate.delta_norm == pytest.approx(RHO, rel=1e-12)
    corners = (d > 0).nonzero().squeeze(1)
    np.testing.assert_allclose(result.deltas[0][corners].abs(), RHO * a2[corners].sqrt(), rtol=1e-6)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_adaptive_equals_standard_after_reparameterisation(problem, norm):
    """Adaptive at w₀ on L(w) = the standard measure on L̃(u) = L(|w₀| ⊙ u) at u₀ = sign(w₀), away
    from the minimum (a gradient, no closed form): average-case draw for draw, worst-case at the
    maximum (ℓ∞ step for step)."""
    A, w_star = problem
    w0 = w_star + 0.3 * torch.randn(P, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    direct = Quadratic(w0, A, w_star)
    reparameterised = Quadratic(torch.sign(w0), A, w_star, scale=w0.abs())
    worst = SharpnessOptions(norm=norm, steps=150, restarts=2)
    average = SharpnessOptions(norm=norm, draws=8)
    for options, measure, rtol in ((worst, worst_case_sharpness, 1e-6 if norm == "l2" else 1e-12),
                                   (average, average_case_sharpness, 1e-12)):
        adaptive = measure(direct, NO_DATA, 0.2, SharpnessOptions(**{**options.__dict__, "adaptive": True}),
                           mean_output).estimate
        standard = measure(reparameterised, NO_DATA, 0.2, options, mean_output).estimate
        assert adaptive.loss_increase == pytest.approx(standard.loss_increase, rel=rtol)
        assert adaptive.loss_increase > 0.01


def test_ellipsoid_projection_against_brute_force():
    gen = torch.Generator().manual_seed(3)
    # 2-D: the nearest of a million points on the boundary (x, y) = ρ(a_1 cos t, a_2 sin t)
    a, v = torch.tensor([0.3, 2.0], dtype=torch.float64), torch.tensor([0.9, -1.7], dtype=torch.float64)
    t = torch.linspace(0, 2 * np.pi, 1_000_001, dtype=torch.float64)
    boundary = RHO * torch.stack([a[0] * t.cos(), a[1] * t.sin()], 1)
    nearest = boundary[(boundary - v).norm(dim=1).argmin()]
    np.testing.assert_allclose(project_ellipsoid(v, a, RHO), nearest, atol=1e-6)
    # 8-D with scales over four decades: a general-purpose constrained solver
    a = torch.logspace(-3, 1, 8, dtype=torch.float64)
    v = torch.randn(8, dtype=torch.float64, generator=gen) * a
    a_np, v_np = a.numpy(), v.numpy()
    solved = minimize(lambda d: ((d - v_np) ** 2).sum(), np.zeros(8), jac=lambda d: 2 * (d - v_np), method="SLSQP",
                      constraints=[{"type": "ineq", "fun": lambda d: RHO ** 2 - ((d / a_np) ** 2).sum(),
                                    "jac": lambda d: -2 * d / a_np ** 2}], options={"ftol": 1e-15, "maxiter": 500})
    ours = project_ellipsoid(v, a, RHO)
    assert float(((ours - v) ** 2).sum()) <= solved.fun * (1 + 1e-9)
    np.testing.assert_allclose(ours, solved.x, atol=1e-6)
    assert float((ours / a).norm()) == pytest.approx(RHO, rel=1e-12)
    # inside: unchanged; a zero scale pins its coordinate
    inside = 0.5 * RHO * a / 3
    assert torch.equal(project_ellipsoid(inside, a, RHO), inside)
    pinned = project_ellipsoid(torch.tensor([1.0, 1.0], dtype=torch.float64), torch.tensor([0.0, 1.0]).double(), RHO)
    np.testing.assert_allclose(pinned, [0.0, RHO], rtol=1e-12)
    assert Ball("l2", RHO, torch.tensor([0.0, 1.0]).double()).size(pinned) == pytest.approx(RHO)


class Linear(nn.Module):
    """Outputs x·w + b, loss mean((x·w + b)·s) with s = ±1 from the label: linear in (w, b)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
        self.b = nn.Parameter(torch.tensor([0.5], dtype=torch.float64))

    def forward(self, x):
        return (x @ self.w + self.b).unsqueeze(1)


def signed_mean(out, y):
    return (out[:, 0] * (2 * y - 1)).mean()


def test_m_sharpness_of_a_linear_loss_and_m_equal_to_n_is_the_plain_measure():
    """Worst ℓ2: L_g(w + δ) − L_g(w) = ∇L_gᵀδ, whose maximum is ρ‖∇L_g‖ (ℓ∞: ρ‖∇L_g‖₁), so the
    m-sharpness is Σ_g (n_g/N)·ρ‖∇L_g‖ over consecutive groups of m (the last smaller); only the
    parameters --params names move. The average-case increase is 0 (within 3 s.e.)."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(23, 3, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 2, (23,), generator=gen)
    s = (2 * y - 1).double()
    batches = [(x[:10], y[:10]), (x[10:], y[10:])]

    def gradient(rows, with_bias=True):
        g = (s[rows, None] * x[rows]).mean(0)
        return torch.cat([g, s[rows].mean().reshape(1)]) if with_bias else g

    model = Linear()
    for m, norm, params in ((8, "l2", None), (8, "linf", None), (5, "l2", ["w"]), (None, "l2", None),
                            (23, "l2", None), (100, "linf", None)):
        groups = [range(i, min(i + (m or 23), 23)) for i in range(0, 23, m or 23)]
        size = 2 if norm == "l2" else 1
        exact = sum(len(g) / 23 * RHO * float(gradient(list(g), params is None).norm(p=size)) for g in groups)
        e = worst_case_sharpness(model, batches, RHO, SharpnessOptions(norm=norm, m=m, params=params, steps=30),
                                 signed_mean).estimate
        assert e.loss_increase == pytest.approx(exact, rel=1e-6)
        assert (e.groups, e.m, e.samples) == (len(groups), min(m or 23, 23), 23)
    average = average_case_sharpness(model, batches, RHO, SharpnessOptions(m=8, draws=50), signed_mean).estimate
    assert abs(average.loss_increase) <= 3 * average.loss_stderr and average.loss_stderr > 0


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    model = build_model(SMALL_CNN)
    with torch.no_grad():  # stored BatchNorm statistics that differ from a batch's
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    x = torch.randn(24, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (24,), generator=torch.Generator().manual_seed(2))
    return model, [(x[:16], y[:16]), (x[16:], y[16:])]


def test_the_model_is_bit_identical_afterwards_and_bn_train_uses_batch_statistics(cnn):
    model, batches = cnn
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    runs = [(worst_case_sharpness, SharpnessOptions(adaptive=True, steps=4, m=8, bn=bn)) for bn in ("eval", "train")]
    runs += [(average_case_sharpness, SharpnessOptions(norm="linf", draws=4, draws_per_pass=k)) for k in (1, 4)]
    results = [measure(model, batches, 0.05, options).estimate for measure, options in runs]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    # the two evaluation paths (in place, vmap over 4 draws) give the same draws' values
    assert results[2].loss_increase == pytest.approx(results[3].loss_increase, rel=1e-5)
    # --bn train evaluates w with each chunk's own statistics: the base loss is the train-mode loss
    xs, ys = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    loss = torch.nn.functional.cross_entropy
    with torch.no_grad():  # model.train(): BatchNorm on each chunk of 8 (the group size, below --batch-size)
        train_loss = sum(float(loss(model(xs[i:i + 8]), ys[i:i + 8])) / 3 for i in range(0, 24, 8))
        model.load_state_dict(before)
        eval_loss = float(loss(model.eval()(xs), ys))
    assert results[1].base_loss == pytest.approx(train_loss, rel=1e-6)
    assert results[0].base_loss == pytest.approx(eval_loss, rel=1e-6) and abs(eval_loss - train_loss) > 1e-3


def test_the_model_is_restored_after_an_error(cnn):
    model, batches = cnn
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def failing(out, y):
        calls.append(1)
        if len(calls) > 5:
            raise RuntimeError("stop")
        return torch.nn.functional.cross_entropy(out, y)

    with pytest.raises(RuntimeError, match="stop"):
        worst_case_sharpness(model, batches, 0.05, SharpnessOptions(steps=10), failing)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("timings, chosen", [
    ([(1, 1.0), (2, 0.5), (1, 1.2), (8, 0.3), (1, 1.0)], 8),  # each K against the faster single pass beside it
    ([(1, 1.0), (2, 0.5), (1, 1.0), (8, 0.8), (1, 1.0)], 2),
    ([(1, 1.0), (2, 0.95), (1, 1.0)], 1),  # a gain under 10 % is none: the trial stops before K = 8
    ([(1, 1.0), (2, 2.0), (1, 1.0)], 1),
    ([(1, 20.0)], 1),  # one pass long enough to fill the device
])
def test_draws_per_pass_is_chosen_from_the_timed_blocks(timings, chosen):
    plan = DrawsPerPass(None, torch.device("cpu"), long_forward_s=10.0, trial=True)
    for k, seconds in timings:
        assert plan.next() == k
        plan._record(k, seconds)
    assert plan.chosen == chosen and plan.next() == chosen


def test_on_the_cpu_draws_go_one_per_pass_without_a_trial():
    assert DrawsPerPass(None, torch.device("cpu")).next() == 1
    assert DrawsPerPass(None, torch.device("cpu")).chosen == 1
    assert DrawsPerPass(4, torch.device("cpu")).next() == 4  # asked for: as asked
