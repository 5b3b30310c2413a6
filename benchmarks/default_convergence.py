"""Do `train`'s defaults converge for every built-in model? (issue 12 point 4)

Trains every registered architecture with SGD, SAM and Align-SAM on digits and on a seeded
Fashion-MNIST subset with nothing but the defaults (lr 0.1, momentum 0.9, batch 128, one warm-up
epoch, cosine decay, the variants' default ρ/λ/|B^a|, the models' default stems), and records
the first epoch's mean train loss against chance (ln 10 = 2.303) and the last epoch's test
accuracy. Epoch 1 is the warm-up, identical for any epoch count, so a short run says how the
default run starts; ``--epochs 10`` is the default run itself. The table is rewritten after
every run, so a long sweep can be stopped and read at any time.

    python benchmarks/default_convergence.py --device cpu --datasets digits --epochs 10
    python benchmarks/default_convergence.py --device cpu --datasets fashion-mnist --epochs 2 --fmnist-subset 2000
    python benchmarks/default_convergence.py --datasets fashion-mnist --fmnist-subset 20000 --epochs 10 \
        --first-epoch-only --models resnet50        # epoch 1 of the default 10-epoch run, then stop
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_results  # noqa: E402

from alignsam_diag.data import DataSpec  # noqa: E402
from alignsam_diag.errors import UserError  # noqa: E402
from alignsam_diag.models import MODELS  # noqa: E402
from alignsam_diag.progress import ProgressUpdate  # noqa: E402
from alignsam_diag.train import TrainConfig, train  # noqa: E402

OPTIMIZERS = ("sgd", "sam", "align-sam")
CHANCE = math.log(10)


class FirstEpochDone(Exception):
    """Raised from the progress callback once epoch 1 is reported (``--first-epoch-only``)."""

    def __init__(self, row: dict) -> None:
        super().__init__("epoch 1 done")
        self.row = row


def stop_after_first_epoch(update: ProgressUpdate) -> None:
    if update.task == "epoch":
        raise FirstEpochDone(update.info)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--fmnist-subset", type=int, default=5000)
    parser.add_argument("--models", default=",".join(MODELS.names()))
    parser.add_argument("--datasets", default="digits,fashion-mnist")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--name", default="default-convergence", help="Result file stem.")
    parser.add_argument("--first-epoch-only", action="store_true",
                        help="stop each run after epoch 1 (of an --epochs schedule); its test accuracy is epoch 1's")
    args = parser.parse_args()
    device = torch.device(args.device)
    known = {"digits": DataSpec("digits"), "fashion-mnist": DataSpec("fashion-mnist", subset=args.fmnist_subset)}
    datasets = {name: known[name] for name in args.datasets.split(",")}
    rows: list[dict] = []
    for arch in args.models.split(","):
        for name, data in datasets.items():
            for optimizer in args.optimizers.split(","):
                config = TrainConfig(data=data, arch=arch, optimizer=optimizer, epochs=args.epochs)
                start = time.perf_counter()
                with tempfile.TemporaryDirectory() as run:
                    try:
                        history = train(config, Path(run) / "run", device,
                                        stop_after_first_epoch if args.first_epoch_only else None).history
                        row = {"first_loss": history["train_loss"][0], "test_acc": history["test_acc"][-1]}
                    except FirstEpochDone as done:
                        row = {"first_loss": done.row["train_loss"], "test_acc": done.row["test_acc"]}
                    except UserError as err:  # a divergence is a result here
                        row = {"first_loss": float("nan"), "test_acc": float("nan"), "error": str(err)}
                rows.append({"arch": arch, "dataset": name, "optimizer": optimizer,
                             "seconds": time.perf_counter() - start, **row})
                table = markdown_table(
                    ["model", "data", "optimizer", "epoch-1 train loss", "below chance",
                     "epoch-1 test acc %" if args.first_epoch_only else "final test acc %", "seconds"],
                    [[r["arch"], r["dataset"], r["optimizer"], f"{r['first_loss']:.3f}",
                      "yes" if r["first_loss"] < CHANCE else "NO", f"{100 * r['test_acc']:.1f}", f"{r['seconds']:.0f}"]
                     for r in rows])
                fmnist = (f" Fashion-MNIST: {args.fmnist_subset} seeded training samples, the full test set."
                          if "fashion-mnist" in datasets else "")
                length = (f"epoch 1 of a {args.epochs}-epoch schedule (test accuracy after epoch 1)"
                          if args.first_epoch_only else f"{args.epochs} epochs")
                note = f"Defaults only; {length}.{fmnist} Chance: loss {CHANCE:.3f}, accuracy 10 %."
                path = write_results(args.name, device, rows, table, note)
                print(f"{arch} {name} {optimizer}: first loss {row['first_loss']:.3f}, "
                      f"test acc {row['test_acc']:.3f} -> {path}", flush=True)


if __name__ == "__main__":
    main()
