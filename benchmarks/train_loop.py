"""Our training loop's throughput against a bare hand-written PyTorch loop.

Same model (fresh copy with the same initial weights), same data on the device, same batch
size, same SGD + cosine schedule, one process. Each contender trains whole epochs; the two are
alternated and the median epoch time of each is compared. Target: overhead ≤ 5 %.

    python benchmarks/train_loop.py --device cpu
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, timed, write_results  # noqa: E402

from alignsam_diag.data import DataSpec, load_data  # noqa: E402
from alignsam_diag.train import Run, TrainConfig, cosine_schedule  # noqa: E402


def bare_epoch(model, optimizer, scheduler, x, y, batch_size, generator) -> None:
    """The loop a researcher would write by hand."""
    model.train()
    order = torch.randperm(len(y), generator=generator).to(y.device)
    for start in range(0, len(y), batch_size):
        index = order[start:start + batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[index]), y[index])
        loss.backward()
        optimizer.step()
        scheduler.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--arch", default="cnn-small")
    parser.add_argument("--subset", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per contender")
    args = parser.parse_args()
    device = torch.device(args.device)

    config = TrainConfig(data=DataSpec(args.dataset, subset=args.subset), arch=args.arch,
                         epochs=args.epochs + 1, batch_size=args.batch_size, lr=0.05, momentum=0.9,
                         weight_decay=5e-4)
    data = load_data(config.data, device)
    ours = Run(config, Path("/nonexistent-benchmark-run"), device, data=data)
    model = copy.deepcopy(ours.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    steps = math.ceil(len(data.train) / args.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule((args.epochs + 1) * steps, 0))
    generator = torch.Generator().manual_seed(0)

    ours.train_epoch(None)  # warm-up both (allocator, kernels)
    bare_epoch(model, optimizer, scheduler, data.train.x, data.train.y, args.batch_size, generator)
    ours_times, bare_times = [], []
    for _ in range(args.epochs):
        ours_times.append(timed(lambda: ours.train_epoch(None), device))
        ours.epoch += 1
        bare_times.append(timed(lambda: bare_epoch(model, optimizer, scheduler, data.train.x, data.train.y,
                                                   args.batch_size, generator), device))
    n = len(data.train)
    ours_ips, bare_ips = n / statistics.median(ours_times), n / statistics.median(bare_times)
    overhead = bare_ips / ours_ips - 1
    rows = [{"loop": "bare PyTorch", "images_per_s": bare_ips}, {"loop": "alignsam-diag", "images_per_s": ours_ips}]
    table = markdown_table(["loop", "images/s", "relative"], [
        ["bare hand-written PyTorch", f"{bare_ips:,.0f}", "1.000"],
        ["alignsam-diag `train`", f"{ours_ips:,.0f}", f"{ours_ips / bare_ips:.3f}"],
    ])
    note = (f"{args.arch} on {args.dataset} ({n} samples), batch {args.batch_size}, SGD momentum 0.9, "
            f"median of {args.epochs} alternating epochs. Overhead of our loop: {overhead:+.1%} (target ≤ 5 %).")
    path = write_results("train_loop", device, rows, table, note)
    print(table + "\n" + note + f"\n(written to {path})")


if __name__ == "__main__":
    main()
