"""Helpers shared by the benchmark scripts: device choice, synchronised timing, result files."""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of one call of ``fn``, with the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median_time(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn, device) for _ in range(repeats))


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def write_results(name: str, device: torch.device, rows: list[dict[str, Any]], table: str, note: str = "") -> Path:
    """Write ``results/<name>-<device>.json`` and the Markdown table ``results/<name>-<device>.md``."""
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"{name}-{device.type}"
    header = f"Device: {machine(device)}; torch {torch.__version__}.\n\n"
    stem.with_suffix(".json").write_text(json.dumps({"device": machine(device), "rows": rows}, indent=2))
    stem.with_suffix(".md").write_text(header + table + ("\n" + note + "\n" if note else ""))
    return stem.with_suffix(".md")


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
