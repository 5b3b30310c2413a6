"""A peer for benchmarks/sharpness.py only (never imported by the package): the algorithms of
``sharpness.py`` in tml-epfl/sharpness-vs-generalization (Andriushchenko et al. 2023, "A modern
look at the relationship between sharpness and generalization"), re-expressed operation for
operation so that the same model and batches can be timed and compared with ours.

What is kept as that code does it, because it is what is being measured: per ascent step a
``zero_grad`` + forward + ``backward`` into ``.grad``, per-tensor Python loops for the step, the
projection (ℓ2: rescaling, adaptive ℓ2: bisection on the multiplier to 1e-5, ℓ∞: clamping) and the
averaging δ ← 0.75·z + 0.25·δ_{k−1}, then a second no-grad forward for the loss and error and a
``.item()`` of ‖δ‖, a deep copy of the state dict whenever the loss improves, the step-size
checkpoints (halving and reloading the best weights); per draw of the average case, new noise per
tensor, ``param.data = w + δ`` on a deep copy of the model and a forward with ``.item()``.
The reference hard-codes ``.cuda()``; here the device is that of the model. Its default start
(``--sharpness_rand_init`` off) is δ = 0. Batches are (x, y) pairs.
"""

from __future__ import annotations

import copy
import math

import torch


def _loss_and_error(model, loss_fn, x, y):
    with torch.no_grad():
        out = model(x)
        return loss_fn(out, y).item(), (out.max(1)[1] != y).float().mean().item()


def _weighted_norm(delta, origin, adaptive):
    return sum(((delta[p] / (origin[p].abs() if adaptive else 1)) ** 2).sum() for p in delta) ** 0.5


def _project(delta, origin, rho, adaptive, norm):
    if norm == "linf":
        for p in delta:
            bound = origin[p].abs() if adaptive else torch.ones_like(origin[p])
            delta[p] = torch.max(torch.min(delta[p], bound * rho), -bound * rho)
        return delta
    if not adaptive:
        size = _weighted_norm(delta, origin, False)
        if size > rho:
            for p in delta:
                delta[p] *= rho / size
        return delta
    lmbd, limit = 0.1, 10.0
    low, high = 0.0, limit
    trial = {p: delta[p].clone() for p in delta}
    new = _weighted_norm(trial, origin, True)
    if new > rho:
        while (new - rho).abs() > 1e-5:
            for p in delta:
                trial[p] = delta[p] / (1 + 2 * lmbd / origin[p].abs() ** 2)
            new = _weighted_norm(trial, origin, True)
            if new > rho:
                lmbd, low = (lmbd + high) / 2, lmbd
            else:
                lmbd, high = (low + lmbd) / 2, lmbd
            if limit - high < 1e-2:
                limit, high = 2 * limit, 2 * high
    return {p: trial[p].clone() for p in trial}


def _ascent_step(model, x, y, loss_fn, origin, delta, previous, step, rho, adaptive, norm, momentum=0.75):
    backup = {p: delta[p].clone() for p in delta}
    model.zero_grad()
    loss_fn(model(x), y).backward()
    with torch.no_grad():
        params = list(model.parameters())
        if norm == "l2":
            grad_norm = sum(p.grad.norm() ** 2 for p in params) ** 0.5
            for p in params:
                delta[p] += step / (grad_norm + 1e-12) * p.grad * (origin[p].abs() if adaptive else 1)
        else:
            for p in params:
                delta[p] += step * p.grad.sign() * (origin[p].abs() if adaptive else 1)
    model.zero_grad()
    with torch.no_grad():
        delta = _project(delta, origin, rho, adaptive, norm)
        for p in params:
            delta[p] = momentum * delta[p] + (1 - momentum) * previous[p]
        for p in params:
            p.data = origin[p] + delta[p]
        for p in params:
            previous[p] = backup[p]
    return delta, previous


def worst_case(model, batches, loss_fn, rho, steps=20, restarts=1, adaptive=False, norm="l2"):
    """(loss increase, error increase, ‖δ‖) averaged over ``batches``, as ``eval_APGD_sharpness``."""
    shares, marks = [0, 0.22], [0, math.ceil(steps * 0.22)]
    while marks[-1] < steps and marks[-1] != marks[-2]:
        shares.append(shares[-1] + max(shares[-1] - shares[-2] - 0.03, 0.06))
        marks.append(math.ceil(shares[-1] * steps))
    marks = marks[1:]
    saved = copy.deepcopy(model.state_dict())
    origin = {p: p.clone() for p in model.parameters()}
    total_loss = total_error = total_init_loss = total_init_error = 0.0
    delta_norm = 0.0
    for x, y in batches:
        init_loss, init_error = _loss_and_error(model, loss_fn, x, y)
        total_init_loss, total_init_error = total_init_loss + init_loss, total_init_error + init_error
        best_loss, best_error, best_norm = init_loss, init_error, 0.0
        for _ in range(restarts):
            delta = {p: torch.zeros_like(p) for p in model.parameters()}
            previous = {p: delta[p].clone() for p in delta}
            worst_state = copy.deepcopy(model.state_dict())
            last_worst = worst = init_loss
            worst_error, worst_norm = init_error, 0.0
            step = last_step = 2 * rho
            last_mark = updates = 0
            for i in range(steps):
                delta, previous = _ascent_step(model, x, y, loss_fn, origin, delta, previous, step, rho, adaptive,
                                               norm)
                with torch.no_grad():
                    loss, error = _loss_and_error(model, loss_fn, x, y)
                    size = torch.cat([d.flatten() for d in delta.values()]).norm().item()
                    if loss > worst:
                        worst, worst_error, worst_norm = loss, error, size
                        worst_state = copy.deepcopy(model.state_dict())
                        updates += 1
                    if i in marks:
                        few = updates < 0.75 * (i - last_mark)
                        still = last_step == step and last_worst == worst
                        last_step, last_worst, last_mark, updates = step, worst, i, 0
                        if few or still:
                            step *= 0.5
                            model.load_state_dict(worst_state)
            if worst > best_loss:
                best_loss, best_error, best_norm = worst, worst_error, worst_norm
            model.load_state_dict(saved)
        total_loss, total_error = total_loss + best_loss, total_error + best_error
        delta_norm = max(delta_norm, best_norm)
    n = len(batches)
    return (total_loss - total_init_loss) / n, (total_error - total_init_error) / n, delta_norm


def average_case(model, batches, loss_fn, rho, draws=20, adaptive=False, norm="l2"):
    """(loss increase, error increase) averaged over ``batches``, as ``eval_average_sharpness``."""
    origin = {name: p.clone() for name, p in model.named_parameters()}
    noisy = copy.deepcopy(model)
    total_loss = total_error = total_init_loss = total_init_error = 0.0
    with torch.no_grad():
        for x, y in batches:
            init_loss, init_error = _loss_and_error(model, loss_fn, x, y)
            total_init_loss, total_init_error = total_init_loss + init_loss, total_init_error + init_error
            batch_loss = batch_error = 0.0
            for _ in range(draws):
                for name, p in noisy.named_parameters():
                    noise = torch.randn_like(p) if norm == "l2" else 2 * torch.rand_like(p) - 1
                    p.data = origin[name] + noise * rho * (origin[name].abs() if adaptive else 1)
                loss, error = _loss_and_error(noisy, loss_fn, x, y)
                batch_loss, batch_error = batch_loss + loss, batch_error + error
            total_loss, total_error = total_loss + batch_loss / draws, total_error + batch_error / draws
    n = len(batches)
    return (total_loss - total_init_loss) / n, (total_error - total_init_error) / n
