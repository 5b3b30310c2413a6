"""Evaluating a cached corruption suite against the floor: a plain forward pass over the same images.

Same model, same corrupted images (the ``corrupt`` suite's cache, generated once into a temporary
folder), same batch size, one process:

- floor: the images already decoded, normalised and on the device as one float32 tensor; a
  no-grad forward over it in batches, nothing else;
- ours: :func:`~alignsam_diag.analysis.robustness.score_cell` over the suite's cells — rows read
  from the memory-mapped cache, uint8 → float, normalised, forward, top-1/top-5 counted.

Contenders take turns, a whole pass each; the ratio reported is the median over rounds of each
round's ours / floor (the two ran back to back, so load from other processes affects both alike).
Target: ours ≤ 1.2 × the floor's time. The generation itself (worker processes, images/s) is timed once.

    python benchmarks/robustness.py --device cpu --threads 1
    python benchmarks/robustness.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, timed, write_results  # noqa: E402

from alignsam_diag.analysis.robustness import model_input, score_cell  # noqa: E402
from alignsam_diag.data.suite_types import SuiteRequest  # noqa: E402
from alignsam_diag.data.suites import open_suite  # noqa: E402
from alignsam_diag.models import ModelSpec, build_model  # noqa: E402


def bench_model(arch: str, suite, cells, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch, suite.num_classes, suite.channels, suite.image_size)).to(device).eval()
    tensors = [torch.cat([model_input(x, device, suite.normalisation) for x, _ in suite.batches(cell, 4096)])
               for cell in cells]
    images = sum(len(t) for t in tensors)

    def floor() -> None:
        with torch.no_grad():
            for x in tensors:
                for i in range(0, len(x), args.batch_size):
                    model(x[i:i + args.batch_size])

    def ours() -> None:
        for cell in cells:
            score_cell(model, suite.batches(cell, args.batch_size), device=device, normalisation=suite.normalisation)

    times: dict[str, list[float]] = {"floor": [], "ours": []}
    floor()  # warm-up: allocator, kernels, page cache
    for _ in range(args.rounds):
        times["floor"].append(timed(floor, device))
        times["ours"].append(timed(ours, device))
    floor_s, ours_s = statistics.median(times["floor"]), statistics.median(times["ours"])
    ratios = [o / f for o, f in zip(times["ours"], times["floor"])]  # each round's pair ran back to back
    return {"arch": arch, "images": images, "floor_images_per_s": images / floor_s,
            "ours_images_per_s": images / ours_s, "ratio": statistics.median(ratios)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", nargs="+", default=["cnn-small", "mlp"])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-root", default=None, help="folder of the data set's files")
    parser.add_argument("--corruptions", default="gaussian_noise,contrast")
    parser.add_argument("--severity", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2, help="processes that generate the corruptions")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU intra-op threads (1 gives steadier numbers on a shared machine)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as cache:
        request = SuiteRequest(name="corrupt", dataset=args.dataset, root=args.data_root, cache_dir=cache,
                               corruptions=tuple(args.corruptions.split(",")), severities=(args.severity,))
        suite = open_suite(request)
        cells = [cell for cell in suite.cells if cell.severity]
        start = time.perf_counter()
        suite.prepare(cells, workers=args.workers)
        generation = len(cells) * suite.size(cells[0]) / (time.perf_counter() - start)
        rows = [bench_model(arch, suite, cells, args, device) for arch in args.arch]
    columns = ["model", "images", "floor (images/s)", "ours (images/s)", "ours / floor (median of rounds)", "≤ 1.2×"]
    table = markdown_table(columns, [
        [r["arch"], r["images"], f"{r['floor_images_per_s']:.0f}", f"{r['ours_images_per_s']:.0f}", f"{r['ratio']:.3f}",
         "yes" if r["ratio"] <= 1.2 else "no"] for r in rows])
    note = (f"{args.dataset} test split, corrupted ({args.corruptions} at severity {args.severity}) into a fresh "
            f"cache by {args.workers} worker process(es) at {generation:.0f} images/s (once, before timing); batches "
            f"of {args.batch_size}; images/s: medians of {args.rounds} rounds, the two taking turns in one process; "
            "ratio: the median of the rounds' ours / floor. Ours reads the memory-mapped cache and normalises on the "
            "device; the floor's images are already float tensors there."
            + ("" if device.type == "cuda" else f" CPU: {torch.get_num_threads()} thread(s)."))
    path = write_results("robustness", device, rows + [{"generation_images_per_s": generation}], table, note)
    print(table + "\n" + note + f"\n(written to {path})")


if __name__ == "__main__":
    main()
