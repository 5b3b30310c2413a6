"""Start-up time of the command line (issue 12: `--version` and `--help` under 1.5 s on a
2-core CPU): fresh processes, median of --repeats runs, against the floor (an interpreter that
imports nothing) and against `import torch` alone, which every command used to pay.

    python benchmarks/startup.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_results  # noqa: E402

CASES = {
    "python (floor)": [sys.executable, "-c", "pass"],
    "import torch": [sys.executable, "-c", "import torch"],
    "alignsam-diag --version": [sys.executable, "-m", "alignsam_diag.cli", "--version"],
    "alignsam-diag --help": [sys.executable, "-m", "alignsam_diag.cli", "--help"],
    "alignsam-diag train --help": [sys.executable, "-m", "alignsam_diag.cli", "train", "--help"],
    "alignsam-diag eigs --help": [sys.executable, "-m", "alignsam_diag.cli", "eigs", "--help"],
}


def seconds(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    measured = {name: seconds(command, args.repeats) for name, command in CASES.items()}
    floor = measured["python (floor)"]
    rows = [{"case": name, "seconds": s, "over_floor": s / floor} for name, s in measured.items()]
    table = markdown_table(["command", "seconds (median)", "× floor", "target ≤ 1.5 s"],
                           [[r["case"], f"{r['seconds']:.3f}", f"{r['over_floor']:.1f}",
                             "" if not r["case"].startswith("alignsam") else ("yes" if r["seconds"] <= 1.5 else "NO")]
                            for r in rows])
    path = write_results("startup", torch.device("cpu"), rows, table, f"{args.repeats} runs each, fresh processes.")
    print(table)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
