"""Median time per optimizer step: SGD, SAM, Align-SAM and pytorch-optimizer's SAM.

Same model (resnet32, each contender a copy of one initialisation), same random data, one
process. The contenders take turns step by step, so drift on a shared machine hits all alike.
Align-SAM uses |B^a| = |B^t|/4, so in theory it costs 1.25× SAM (2.5 passes of |B^t| against
2). Targets: Align-SAM/SAM ≤ 1.30, SAM/SGD ≤ 2.1, our SAM no slower than pytorch-optimizer's.
The floor (one bare forward+backward pass on B^t and on B^a, timed alongside) shows what the
passes themselves allow: a small batch that leaves the GPU waiting on kernel launches costs
more than a quarter of a large one.

    python benchmarks/optimizer_step.py --device cpu
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from pytorch_optimizer.optimizer.sam import SAM as ReferenceSAM
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, timed, write_results  # noqa: E402

from alignsam_diag import optim  # noqa: E402
from alignsam_diag.models import ModelSpec, build_model  # noqa: E402

SETTINGS = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
RHO = 0.05
Batch = tuple[torch.Tensor, torch.Tensor]


def random_batch(n: int, device: torch.device, gen: torch.Generator) -> Batch:
    x = torch.randn(n, 3, 32, 32, generator=gen).to(device)
    return x, torch.randint(0, 10, (n,), generator=gen).to(device)


def ours(name: str, model: nn.Module, train: Batch, aux: Batch, **hyper) -> Callable[[], None]:
    """One step of our optimizer ``name``, with the training loop's closure."""
    optimizer = optim.create(name, model.parameters(), model=model, **SETTINGS, **hyper)

    def closure(which: str) -> torch.Tensor:
        x, y = train if which == "train" else aux
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return lambda: optimizer.step(closure)


def one_pass(model: nn.Module, batch: Batch) -> Callable[[], None]:
    """The floor: zero the gradients, one forward and backward pass."""
    x, y = batch

    def run() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    return run


def reference_sam(model: nn.Module, train: Batch) -> Callable[[], None]:
    """One step of pytorch-optimizer's SAM, used as its documentation shows."""
    optimizer = ReferenceSAM(model.parameters(), torch.optim.SGD, rho=RHO, **SETTINGS)
    x, y = train

    def closure() -> torch.Tensor:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    def step() -> None:
        optimizer.zero_grad()
        closure()
        optimizer.step(closure)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, help="|B^t| (default 512 on cuda, 128 on cpu)")
    parser.add_argument("--steps", type=int, help="timed steps per contender (default 60 on cuda, 5 on cpu)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per contender first")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch_size = args.batch_size or (512 if cuda else 128)
    steps = args.steps or (60 if cuda else 5)

    gen = torch.Generator().manual_seed(0)
    train, aux = random_batch(batch_size, device, gen), random_batch(batch_size // 4, device, gen)
    torch.manual_seed(0)
    initial = build_model(ModelSpec("resnet32", num_classes=10, in_channels=3, image_size=32)).to(device)
    contenders = {
        "SGD (ours, `sgd`)": ours("sgd", copy.deepcopy(initial), train, aux),
        "SAM (ours, `sam`)": ours("sam", copy.deepcopy(initial), train, aux, rho=RHO),
        f"Align-SAM (ours, `align-sam`, aux {batch_size // 4})": ours("align-sam", copy.deepcopy(initial), train, aux, rho=RHO),
        "SAM (pytorch-optimizer 4.1.0)": reference_sam(copy.deepcopy(initial), train),
        f"floor: one forward+backward on B^t ({batch_size})": one_pass(copy.deepcopy(initial), train),
        f"floor: one forward+backward on B^a ({batch_size // 4})": one_pass(copy.deepcopy(initial), aux),
    }
    for step in contenders.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(steps):
        for name, step in contenders.items():
            times[name].append(timed(step, device))

    ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    sgd, sam, align, reference, pass_train, pass_aux = ms.values()
    ratios = [("Align-SAM / SAM", align / sam, 1.30), ("SAM / SGD", sam / sgd, 2.1),
              ("our SAM / pytorch-optimizer SAM", sam / reference, 1.0)]
    # what the measured pass times allow: Align-SAM is SAM plus two passes on B^a
    floors = [("Align-SAM / SAM from the pass times, (2 t_t + 2 t_a) / 2 t_t", (pass_train + pass_aux) / pass_train),
              ("SAM / its two passes, 2 t_t", sam / (2 * pass_train)),
              ("Align-SAM / its four passes, 2 t_t + 2 t_a", align / (2 * pass_train + 2 * pass_aux))]
    table = markdown_table(["optimizer", "ms/step (median)", "× SGD"],
                           [[name, f"{value:.1f}", f"{value / sgd:.2f}"] for name, value in ms.items()])
    table += "\n" + markdown_table(["ratio", "measured", "target", "met"],
                                   [[name, f"{value:.3f}", f"≤ {target:.2f}", "yes" if value <= target else "no"]
                                    for name, value, target in ratios]
                                   + [[name, f"{value:.3f}", "(floor)", ""] for name, value in floors])
    note = (f"resnet32, random CIFAR-shaped data, |B^t| = {batch_size}, |B^a| = {batch_size // 4}, SGD momentum 0.9, "
            f"ρ = {RHO}; median of {steps} steps per optimizer after {args.warmup} warm-up steps, optimizers "
            f"taking turns step by step in one process.")
    if not cuda:
        note += (f" CPU run with {torch.get_num_threads()} threads on cores shared with other jobs: "
                 "ratios are indicative, absolute times noisy.")
    rows = [{"optimizer": name, "ms_per_step": value, "steps": times[name]} for name, value in ms.items()]
    rows += [{"ratio": name, "value": value, "target": target} for name, value, target in ratios]
    rows += [{"ratio": name, "value": value} for name, value in floors]
    path = write_results("optimizer_step", device, rows, table, note)
    print(table + "\n" + note + f"\n(written to {path})")


if __name__ == "__main__":
    main()
