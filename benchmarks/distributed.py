"""Scale-out: `landscape` and `eigs` in one process against the same command under
``torchrun --nproc_per_node N`` (gloo on the CPU, NCCL on GPUs), in one run, and the ratio.

Each contender is the real CLI in fresh processes (start-up included on both sides: about 3 s of
importing torch per process, in parallel under torchrun), on the same checkpoint, samples and
grid; they take turns over --rounds rounds and the table gives the median wall seconds. On the
CPU every rank gets --threads intra-op threads; the single process is timed with the same
threads per process and also with N × threads (what one process could use of the same cores
instead). Results must agree: the surfaces' largest relative difference and the eigenvalues'
are printed next to the times.

    python benchmarks/distributed.py --device cpu --nproc 2 --threads 1
    python benchmarks/distributed.py --device cuda --nproc 4        # one GPU per rank
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_results  # noqa: E402

from alignsam_diag.data import DataSpec  # noqa: E402
from alignsam_diag.train import TrainConfig, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def command(nproc: int, args: list[str]) -> list[str]:
    """The CLI alone (nproc 1) or under ``torchrun --standalone --nproc_per_node nproc``."""
    cli = ["-m", "alignsam_diag.cli", *args]
    if nproc == 1:
        return [sys.executable, *cli]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *cli]


def run(nproc: int, threads: int, args: list[str]) -> float:
    """Wall seconds of one run; stops the benchmark with the command's stderr if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    done = subprocess.run(command(nproc, args), env=env, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command(nproc, args))} failed:\n{done.stderr[-3000:]}")
    return seconds


def stored_values(path: Path, name: str) -> np.ndarray:
    """Every dataset of an HDF5 file whose path ends with ``name``, flattened and concatenated
    (a landscape file's ``train_loss`` surfaces, an eigs file's ``eigenvalues``)."""
    values = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda key, item: values.append(np.asarray(item).ravel())
                     if isinstance(item, h5py.Dataset) and key.endswith(name) else None)
    return np.concatenate(values)


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--nproc", type=int, default=2, help="ranks under torchrun (GPUs: one per rank)")
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads per process")
    parser.add_argument("--arch", default="cnn-small")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--landscape-samples", type=int, default=1024)
    parser.add_argument("--grid", type=int, default=11)
    parser.add_argument("--eigs-samples", type=int, default=2048)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="distributed-bench-") as tmp:
        folder = Path(tmp)
        config = TrainConfig(data=DataSpec(args.dataset, subset=2000), arch=args.arch, epochs=1, seed=0)
        checkpoint = train(config, folder / "run", device).run_dir / "last.pt"
        common = ["--device", args.device, "--quiet"]
        workloads = {
            "landscape": lambda out: ["landscape", checkpoint, "--grid", args.grid, "--samples",
                                      args.landscape_samples, "--out", out, *common],
            "eigs": lambda out: ["eigs", checkpoint, "--k", args.k, "--samples", args.eigs_samples,
                                 "--out", out, *common],
        }
        contenders = {"1 process": (1, args.threads), f"torchrun × {args.nproc}": (args.nproc, args.threads)}
        if device.type == "cpu":
            contenders[f"1 process, {args.nproc * args.threads} threads"] = (1, args.nproc * args.threads)
        seconds = {(w, c): [] for w in workloads for c in contenders}
        outputs: dict[tuple[str, str], Path] = {}
        for round_ in range(args.rounds):
            for work, arguments in workloads.items():
                for name, (nproc, threads) in contenders.items():
                    out = folder / f"{work}-{nproc}-{threads}-{round_}.h5"
                    seconds[work, name].append(run(nproc, threads, [str(a) for a in arguments(out)]))
                    outputs[work, name] = out
        single, scaled = "1 process", f"torchrun × {args.nproc}"
        stored = {"landscape": "train_loss", "eigs": "eigenvalues"}
        agreement = {work: relative_difference(stored_values(outputs[work, scaled], name),
                                               stored_values(outputs[work, single], name))
                     for work, name in stored.items()}
    rows = [{"workload": w, "contender": c, "seconds": statistics.median(seconds[w, c]),
             "speed_up": statistics.median(seconds[w, single]) / statistics.median(seconds[w, c])}
            for w in workloads for c in contenders]
    table = markdown_table(["workload", "contender", "median seconds", "speed-up over 1 process"],
                           [[r["workload"], r["contender"], f"{r['seconds']:.1f}", f"{r['speed_up']:.2f}"]
                            for r in rows])
    note = (f"{args.arch} trained 1 epoch on 2,000 {args.dataset} samples. landscape: {args.grid}×{args.grid} grid "
            f"on {args.landscape_samples} samples; eigs: top-{args.k} on {args.eigs_samples} samples. Wall seconds of "
            f"the whole command (process start included), medians of {args.rounds} rounds; {args.threads} intra-op "
            f"thread(s) per process. Largest relative difference from the single process: "
            + ", ".join(f"{w} {d:.1e}" for w, d in agreement.items()) + ".")
    path = write_results("distributed", device, rows + [{"agreement": agreement}], table, note)
    print(table + "\n" + note + f"\n\nwritten to {path}")
    print(json.dumps(agreement))


if __name__ == "__main__":
    main()
