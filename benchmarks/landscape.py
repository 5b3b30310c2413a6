"""Loss-landscape throughput (grid points per second): ours against `loss-landscapes` and the floor.

Same model, same samples (fixed batches), same number of points, one process:

- floor: a plain no-grad forward pass over the samples, once per point (no parameter update,
  no loss) — what any landscape tool must at least pay;
- ours: `evaluate_surface` with the points per pass `choose_points_per_pass` picks (K > 1:
  several grid points per forward through vmap), and with K = 1 (parameters written in place);
- loss-landscapes 3.0.6 `random_plane(..., normalization="filter", deepcopy_model=True)` with a
  metric that evaluates the same batches under no_grad (its stock `Loss` metric would also
  build an autograd graph, which is not the engine's fault).

Contenders take turns, a whole grid each, and the median over rounds is reported (the first
round includes one-time costs such as kernel selection for every contender alike). Targets: ours
≥ 0.9 × floor and ≥ loss-landscapes; above the floor where batching applies.

    python benchmarks/landscape.py --device cpu --threads 1
    python benchmarks/landscape.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from loss_landscapes import random_plane
from loss_landscapes.metrics import Metric

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, timed, write_results  # noqa: E402

from alignsam_diag.analysis.directions import random_directions  # noqa: E402
from alignsam_diag.analysis.landscape import LandscapeSpec, choose_points_per_pass, evaluate_surface  # noqa: E402
from alignsam_diag.data import DataSpec, fixed_batches, load_data, sample_subset  # noqa: E402
from alignsam_diag.models import ModelSpec, build_model  # noqa: E402
from alignsam_diag.store.landscape import Surface  # noqa: E402

Batches = list[tuple[torch.Tensor, torch.Tensor]]


class SameBatchesLoss(Metric):
    """loss-landscapes metric: mean cross-entropy over our fixed batches, without gradients."""

    def __init__(self, batches: Batches):
        super().__init__()
        self.batches, self.count = batches, sum(len(y) for _, y in batches)

    def __call__(self, model_wrapper) -> float:
        with torch.no_grad():
            total = sum(F.cross_entropy(model_wrapper.forward(x), y, reduction="sum") for x, y in self.batches)
        return float(total) / self.count


def contenders(model: torch.nn.Module, batches: Batches, steps: int, chosen: int,
               device: torch.device) -> dict[str, Callable[[], None]]:
    points = steps * steps
    grid = LandscapeSpec(grid=steps).make_grid()
    directions = random_directions(model, seed=0)

    def floor() -> None:
        with torch.no_grad():
            for _ in range(points):
                for x, _ in batches:
                    model(x)

    def ours(k: int) -> Callable[[], None]:
        return lambda: evaluate_surface(model, directions, Surface.empty(grid), batches, points_per_pass=k)

    runs = {"floor (plain no-grad forward)": floor, f"ours, {chosen} points/pass (auto)": ours(chosen)}
    if chosen != 1:
        runs["ours, 1 point/pass (in place)"] = ours(1)
    def peer() -> None:
        with device:  # its random directions are made with torch.rand on the default device
            random_plane(model, SameBatchesLoss(batches), distance=1, steps=steps, normalization="filter",
                         deepcopy_model=True)

    runs["loss-landscapes random_plane"] = peer
    return runs


def bench_model(arch: str, data, args, device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch, data.num_classes, data.in_channels, data.image_size)).to(device).eval()
    with torch.no_grad():  # loss-landscapes' filter normalisation divides by zero on all-zero (fresh BN) biases
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.01 * torch.randn_like(p))
    samples = sample_subset(data.train, args.samples, seed=0)
    batches = fixed_batches(samples, args.batch_size)
    chosen = choose_points_per_pass(model, random_directions(model, seed=0), batches[0][0])
    runs = contenders(model, batches, args.steps, chosen, device)
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():  # warm-up: allocator, kernels
        model(batches[0][0])
    for _ in range(args.rounds):
        for name, run in runs.items():
            times[name].append(timed(run, device))
    points = args.steps ** 2
    floor_rate = points / statistics.median(next(iter(times.values())))
    return [{"arch": arch, "contender": name, "points_per_s": points / statistics.median(t),
             "vs_floor": points / statistics.median(t) / floor_rate, "points_per_pass": chosen}
            for name, t in times.items()]


def verdicts(rows: list[dict]) -> list[list[str]]:
    out = []
    for arch in dict.fromkeys(r["arch"] for r in rows):
        mine = [r for r in rows if r["arch"] == arch]
        auto = next(r for r in mine if "(auto)" in r["contender"])
        peer = next(r for r in mine if "loss-landscapes" in r["contender"])
        out.append([arch, "ours ≥ 0.9 × floor", f"{auto['vs_floor']:.2f}", "yes" if auto["vs_floor"] >= 0.9 else "no"])
        out.append([arch, "ours ≥ loss-landscapes", f"{auto['points_per_s'] / peer['points_per_s']:.2f}×",
                    "yes" if auto["points_per_s"] >= peer["points_per_s"] else "no"])
        if auto["points_per_pass"] > 1:
            out.append([arch, "above the floor (batched)", f"{auto['vs_floor']:.2f}",
                        "yes" if auto["vs_floor"] > 1 else "no"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", nargs="+", default=None,
                        help="models (default: mlp cnn-small on cpu; mlp cnn-small resnet32 on cuda)")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-root", default=None, help="folder of the data set's files")
    parser.add_argument("--samples", type=int, default=None, help="default 1024 on cpu, 2048 on cuda")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=None, help="points per axis (default 5 on cpu, 11 on cuda)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU intra-op threads (1 gives steadier numbers on a shared machine)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    archs = args.arch or (["mlp", "cnn-small", "resnet32"] if cuda else ["mlp", "cnn-small"])
    args.steps = args.steps or (11 if cuda else 5)
    args.samples = args.samples or (2048 if cuda else 1024)
    data = load_data(DataSpec(args.dataset, args.data_root), device)
    rows = [row for arch in archs for row in bench_model(arch, data, args, device)]
    table = markdown_table(["model", "contender", "points/s", "× floor"], [
        [r["arch"], r["contender"], f"{r['points_per_s']:.2f}", f"{r['vs_floor']:.2f}"] for r in rows])
    table += "\n" + markdown_table(["model", "target", "measured", "met"], verdicts(rows))
    note = (f"{args.dataset}, {args.samples} training samples in batches of {args.batch_size}, "
            f"{args.steps}×{args.steps} grid (2-D, filter-normalised directions); median of {args.rounds} "
            "rounds, contenders taking turns in one process. loss-landscapes evaluates the same batches "
            "under no_grad, its directions made on the device, the models' 1-D tensors nudged off zero (its "
            "filter normalisation divides by zero on fresh BatchNorm biases). Ours computes loss and accuracy; the floor and loss-landscapes only the "
            "forward pass / loss." + ("" if cuda else f" CPU: {torch.get_num_threads()} thread(s)."))
    path = write_results("landscape", device, rows, table, note)
    print(table + "\n" + note + f"\n(written to {path})")


if __name__ == "__main__":
    main()
