"""Sharpness measures: cost per ascent step and per random draw against the floor, and against the
reference code's algorithms (tml-epfl/sharpness-vs-generalization ``sharpness.py``, ported as a
peer in ``_reference_sharpness.py``) on the same model and batches.

One process, one briefly trained model (or --checkpoint), --samples fixed training samples in
groups of --m (m-sharpness, the reference's per-batch evaluation), ρ = --rho:

- floor F: one no-grad forward pass (and the loss) over the samples, in the groups' chunks;
- floor FB: one forward+backward pass over the same chunks;
- ours, worst case (standard ℓ2, adaptive ℓ2 — the exact ellipsoid projection —, adaptive ℓ∞):
  ``worst_case_sharpness`` seconds / (--steps × restarts), everything included (the pass at w,
  the last iterate's forward, projections); target ≤ 1.2 × FB;
- ours, average case (ℓ2): ``average_case_sharpness`` seconds / --draws, with the draws per pass
  it chooses from its first timed blocks (vmap) and with one draw per pass; target ≤ 1.1 × F,
  below F where batching draws pays;
- the reference's algorithms (on CUDA, where its code runs; ``--peer`` also on the CPU): the
  same worst-case and average-case settings (its default zero start), seconds per step and per
  draw, and the values it reaches.

Contenders take turns, a whole measure each, each right after as many floor passes as it has
steps or draws; a ratio is the median over --rounds rounds of the contender's time over that of
the floor passes beside it (a shared machine's load then weighs on both alike).

    python benchmarks/sharpness.py --device cpu --threads 1 --clock process --samples 512 --rounds 5
    python benchmarks/sharpness.py --device cuda          # resnet32, with the reference peer
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _reference_sharpness as reference  # noqa: E402
from _common import markdown_table, sync, write_results  # noqa: E402

from alignsam_diag.analysis.sharpness_average import average_case_sharpness  # noqa: E402
from alignsam_diag.analysis.sharpness_core import SharpnessOptions, sample_groups  # noqa: E402
from alignsam_diag.analysis.sharpness_worst import worst_case_sharpness  # noqa: E402
from alignsam_diag.data import DataSpec  # noqa: E402
from alignsam_diag.inputs import load_inputs  # noqa: E402
from alignsam_diag.train import TrainConfig, train  # noqa: E402

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def briefly_trained(args: argparse.Namespace, device: torch.device, folder: Path):
    """The model in --checkpoint, or one trained for --train-epochs on a --train-subset (SGD), and
    --samples fixed training samples."""
    path = args.checkpoint
    if path is None:
        config = TrainConfig(data=DataSpec(args.dataset, subset=args.train_subset), arch=args.arch,
                             epochs=args.train_epochs, batch_size=128, lr=0.05, seed=0)
        path = train(config, folder, device).run_dir / "last.pt"
    return load_inputs(path, samples=args.samples, batch_size=args.batch_size, device=device)


def floors(model: torch.nn.Module, chunks: Batches) -> dict[str, Callable[[], None]]:
    """One no-grad forward (with the loss) and one forward+backward over ``chunks``, by the unit
    they are the floor of: a draw, an ascent step."""
    def forward() -> None:
        with torch.no_grad():
            for x, y in chunks:
                F.cross_entropy(model(x), y)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        for x, y in chunks:
            F.cross_entropy(model(x), y).backward()

    return {"draw": forward, "step": forward_backward}


def timed(fn: Callable[[], Any], device: torch.device, clock: Callable[[], float]) -> float:
    """Seconds of one call of ``fn`` on ``clock`` (wall or this process's CPU time), the device
    synchronised before and after."""
    sync(device)
    start = clock()
    fn()
    sync(device)
    return clock() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: torch's)")
    parser.add_argument("--arch", default=None, help="default: resnet32 on cuda, cnn-small on cpu")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--checkpoint", type=Path, default=None, help="use this model instead of training one")
    parser.add_argument("--train-epochs", type=int, default=1)
    parser.add_argument("--train-subset", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--m", type=int, default=128)
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clock", choices=("wall", "process"), default="wall",
                        help="process: this process's CPU time (CPU runs on a shared machine: waiting for a core "
                             "then counts for no one)")
    parser.add_argument("--peer", action=argparse.BooleanOptionalAction, default=None,
                        help="run the reference's algorithms (default: on cuda only, where its code runs)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.arch = args.arch or ("resnet32" if device.type == "cuda" else "cnn-small")
    args.peer = device.type == "cuda" if args.peer is None else args.peer
    with tempfile.TemporaryDirectory(prefix="sharpness-bench-") as folder:
        measure(args, device, Path(folder))


def measure(args: argparse.Namespace, device: torch.device, folder: Path) -> None:
    """Every contender, alternated over rounds; writes and prints the table and the ratios."""
    inputs = briefly_trained(args, device, folder)
    model, batches = inputs.checkpoint.model.eval(), inputs.batches
    groups = sample_groups(batches, args.m)
    chunks = [chunk for group in groups for chunk in group]  # the reference's batches: one per group
    worst = {"standard ℓ2": SharpnessOptions(m=args.m, steps=args.steps),
             "adaptive ℓ2": SharpnessOptions(m=args.m, steps=args.steps, adaptive=True),
             "adaptive ℓ∞": SharpnessOptions(m=args.m, steps=args.steps, adaptive=True, norm="linf")}
    average = {"ℓ2, draws per pass by timing": SharpnessOptions(m=args.m, draws=args.draws),
               "ℓ2, one draw per pass": SharpnessOptions(m=args.m, draws=args.draws, draws_per_pass=1),
               f"ℓ2, draws per pass by timing, {2 * args.draws} draws": SharpnessOptions(m=args.m, draws=2 * args.draws)}
    runs: dict[str, tuple[str, int, Callable[[], Any]]] = {}  # name -> (unit, units, run returning the value)
    for name, options in worst.items():
        runs[f"ours, worst case, {name}"] = ("step", args.steps, lambda o=options: worst_case_sharpness(
            model, batches, args.rho, o).estimate.loss_increase)
    for name, options in average.items():
        runs[f"ours, average case, {name}"] = ("draw", options.draws, lambda o=options: average_case_sharpness(
            model, batches, args.rho, o).estimate.loss_increase)
    if args.peer:
        for name, adaptive in (("standard ℓ2", False), ("adaptive ℓ2", True)):
            runs[f"reference, worst case, {name}"] = ("step", args.steps, lambda a=adaptive: reference.worst_case(
                model, chunks, F.cross_entropy, args.rho, args.steps, adaptive=a)[0])
        runs["reference, average case, ℓ2"] = ("draw", args.draws, lambda: reference.average_case(
            model, chunks, F.cross_entropy, args.rho, args.draws)[0])
    floor = floors(model, chunks)
    clock = time.process_time if args.clock == "process" else time.perf_counter
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    ratios_by_round: dict[str, list[float]] = {name: [] for name in runs}
    floor_seconds: dict[str, list[float]] = {"step": [], "draw": []}
    values: dict[str, Any] = {}
    for _ in range(args.rounds):
        for name, (unit, units, run) in runs.items():
            below = timed(lambda f=floor[unit], n=units: [f() for _ in range(n)], device, clock)  # as many floor passes
            holder: list[Any] = []
            spent = timed(lambda r=run, h=holder: h.append(r()), device, clock)
            values[name] = holder[0]
            seconds[name].append(spent)
            ratios_by_round[name].append(spent / below)
            floor_seconds[unit].append(below / units)
    model.zero_grad(set_to_none=True)
    rows = [dict(contender=name, unit=unit, seconds=statistics.median(seconds[name]),
                 seconds_per_unit=statistics.median(seconds[name]) / units,
                 over_floor=statistics.median(ratios_by_round[name]), loss_increase=float(values[name]))
            for name, (unit, units, _) in runs.items()]
    floor_pass = {unit: statistics.median(t) for unit, t in floor_seconds.items()}
    table = markdown_table(
        ["contender", "seconds", "per", "seconds per unit", "/ floor", "loss increase"],
        [[r["contender"], f"{r['seconds']:.3f}", r["unit"], f"{r['seconds_per_unit']:.4f}", f"{r['over_floor']:.2f}",
          f"{r['loss_increase']:.5g}"] for r in rows])
    by_name = {r["contender"]: r for r in rows}
    ratios = {f"worst case, {name}, per step / forward+backward (target ≤ 1.2)":
              by_name[f"ours, worst case, {name}"]["over_floor"] for name in worst}
    ratios.update({f"average case, {name}, per draw all-in / no-grad forward":
                   by_name[f"ours, average case, {name}"]["over_floor"] for name in average})
    twice, once = (by_name[f"ours, average case, ℓ2, draws per pass by timing{suffix}"]["seconds"]
                   for suffix in (f", {2 * args.draws} draws", ""))
    ratios["average case, ℓ2, marginal seconds per draw (T(2D) − T(D)) / D over a no-grad forward (target ≤ 1.1)"] = (
        (twice - once) / args.draws / floor_pass["draw"])
    if args.peer:
        for name in ("standard ℓ2", "adaptive ℓ2"):
            ratios[f"reference / ours, worst case {name}, seconds per step"] = (
                by_name[f"reference, worst case, {name}"]["seconds_per_unit"]
                / by_name[f"ours, worst case, {name}"]["seconds_per_unit"])
        ratios["reference / ours, average case ℓ2, seconds per draw"] = (
            by_name["reference, average case, ℓ2"]["seconds_per_unit"]
            / by_name["ours, average case, ℓ2, draws per pass by timing"]["seconds_per_unit"])
    note = (f"{args.arch} trained {args.train_epochs} epoch(s) on {args.train_subset} {args.dataset} samples (SGD) "
            f"unless a checkpoint was given; {len(inputs.data)} fixed training samples in {len(groups)} groups of m = "
            f"{args.m}; ρ = {args.rho}, {args.steps} ascent steps × 1 restart, {args.draws} draws; medians of "
            f"{args.rounds} rounds, {'CPU time of the process' if args.clock == 'process' else 'wall time'}. "
            f"Floors (medians): a no-grad forward + loss {floor_pass['draw']:.4f} s, a forward + "
            f"backward {floor_pass['step']:.4f} s, over all samples in the groups' chunks; a step and a draw also "
            "cover all samples (every group). Each contender's run is timed right after as many floor passes as it "
            "has units, and '/ floor' is the median over rounds of its time over theirs, so that the load of a "
            "shared machine weighs on both alike. Ours includes everything (the pass at w, the last iterate's "
            "forward, projections, the timed blocks that choose the draws per pass). The average case's all-in "
            "time per draw carries the one pass at w per group (1/D of a pass per draw, D = --draws); its "
            "marginal cost per draw, (T(2D) − T(D)) / D, is what one more draw costs. "
            + ("The reference's algorithms start at δ = 0 (its default); its adaptive ℓ2 steps along a ⊙ g/‖g‖ "
               "with a Euclidean projection, whose fixed points are not maximisers, so it may stop lower."
               if args.peer else "The reference's code is CUDA-only: its comparison runs with --device cuda "
                                 "(or --peer).")
            + "\n\n" + "\n".join(f"- {name}: **{value:.2f}**" for name, value in ratios.items()))
    path = write_results("sharpness", device, rows + [{"ratios": ratios, "floor_seconds": floor_pass}], table, note)
    print(table + "\n" + note + f"\n\nwritten to {path}")


if __name__ == "__main__":
    main()
