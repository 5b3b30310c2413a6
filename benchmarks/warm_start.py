"""Whole-training-set top-5: Lanczos from a random vector against Lanczos started from the
eigenvectors of a subsample's Hessian (``eigs --start-vectors``), in one process.

A model is trained briefly; the top-k eigenvectors of the Hessian on --subsample training
samples (kept graph, tol 1e-2) start the run on --samples samples (default: all), which uses
data-set mode as ``eigs --full`` does. Reported per start: products, seconds and the largest
relative eigenvalue difference from the cold run; the subsample's own cost is reported apart
(it is paid once and its products are cheaper).

    python benchmarks/warm_start.py --device cpu       # mlp, all 60,000 Fashion-MNIST samples
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_results  # noqa: E402
from eigs import briefly_trained, relative_error, timed_call  # noqa: E402

from alignsam_diag.analysis.curvature import HessianOperator  # noqa: E402
from alignsam_diag.analysis.lanczos import lanczos, warm_start  # noqa: E402
from alignsam_diag.data import DataSpec, fixed_batches, load_data, sample_subset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", default="mlp")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--checkpoint", type=Path, default=None, help="use this model instead of training one")
    parser.add_argument("--train-epochs", type=int, default=1)
    parser.add_argument("--train-subset", type=int, default=10000)
    parser.add_argument("--subsample", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=None, help="default: the whole training set")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--tol", type=float, default=1e-3)
    args = parser.parse_args()
    device = torch.device(args.device)
    inputs = briefly_trained(argparse.Namespace(**{**vars(args), "samples": args.subsample}), device)
    model = inputs.checkpoint.model.eval()
    train_set = load_data(DataSpec(args.dataset), device).train  # all of it, not the training subset
    whole = fixed_batches(sample_subset(train_set, args.samples, 0), args.batch_size)
    sub = fixed_batches(sample_subset(train_set, args.subsample, 0), args.batch_size)

    with HessianOperator(model, F.cross_entropy, sub, keep_graph=True) as op:
        guess, guess_seconds = timed_call(lambda: lanczos(op, k=args.k, tol=1e-2, eigenvectors=True), device)
    with HessianOperator(model, F.cross_entropy, whole) as op:
        cold, cold_seconds = timed_call(lambda: lanczos(op, k=args.k, tol=args.tol), device)
        start = warm_start(guess.eigenvectors)
        warm, warm_seconds = timed_call(lambda: lanczos(op, k=args.k, tol=args.tol, start=start), device)
        samples = op.num_samples

    rows = [
        {"run": f"subsample ({args.subsample}, kept graph, tol 1e-2)", "products": guess.num_products,
         "seconds": guess_seconds, "diff": relative_error(guess.eigenvalues, cold.eigenvalues)},
        {"run": f"cold ({samples} samples)", "products": cold.num_products, "seconds": cold_seconds, "diff": 0.0},
        {"run": f"warm ({samples} samples)", "products": warm.num_products, "seconds": warm_seconds,
         "diff": relative_error(warm.eigenvalues, cold.eigenvalues)},
    ]
    table = markdown_table(["run", "HVPs", "seconds", "max rel. diff. of λ1..λ5 from cold"],
                           [[r["run"], r["products"], f"{r['seconds']:.1f}", f"{r['diff']:.1e}"] for r in rows])
    ratios = (f"{args.arch}, {args.dataset}; warm / cold: products {warm.num_products / cold.num_products:.2f}, "
              f"seconds {warm_seconds / cold_seconds:.2f}; (subsample + warm) / cold seconds "
              f"{(guess_seconds + warm_seconds) / cold_seconds:.2f}. Cold eigenvalues: "
              + ", ".join(f"{v:.4g}" for v in cold.eigenvalues))
    print(table + "\n" + ratios)
    write_results("warm_start", device, rows, table, ratios)


if __name__ == "__main__":
    main()
