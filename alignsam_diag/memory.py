"""How much memory a device has free, refusing work that cannot fit before it allocates, and
memory budgets ("8GiB", "50%") for choosing between a fast and a frugal way of working."""

from __future__ import annotations

import os
import re
from typing import Union

import torch

from .errors import OptionError, UserError

DEFAULT_BUDGET_SHARE = 0.5  # of the free memory, when no budget is given
UNITS = {"": 1, "b": 1, "k": 2 ** 10, "kib": 2 ** 10, "kb": 10 ** 3, "m": 2 ** 20, "mib": 2 ** 20, "mb": 10 ** 6,
         "g": 2 ** 30, "gib": 2 ** 30, "gb": 10 ** 9, "t": 2 ** 40, "tib": 2 ** 40, "tb": 10 ** 12}
Budget = Union[int, str, None]


def available_bytes(device: torch.device | str = "cpu") -> int:
    """Free memory on ``device`` in bytes: the CUDA allocator's free memory, or the host's
    MemAvailable (/proc/meminfo; free physical pages where that file does not exist)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def gib(n: float) -> str:
    """``n`` bytes for a message: GiB from 256 MiB up, MiB from 100 KiB up, else KiB."""
    if n >= 2 ** 28:
        return f"{n / 2 ** 30:.1f} GiB"
    return f"{n / 2 ** 20:.1f} MiB" if n >= 100 * 2 ** 10 else f"{n / 2 ** 10:.1f} KiB"


def budget_bytes(budget: Budget, device: torch.device | str = "cpu") -> int:
    """The bytes a memory budget allows on ``device``.

    budget: an int (bytes); a size such as "8GiB", "512MB" or "1.5G" (K, M, G, T and KiB … TiB
    are powers of 1024, KB … TB powers of 1000); a share of the free memory such as "50%"; or
    None: ``DEFAULT_BUDGET_SHARE`` of the free memory (:func:`available_bytes`).
    """
    if budget is None:
        return int(DEFAULT_BUDGET_SHARE * available_bytes(device))
    if isinstance(budget, int) and budget > 0:
        return budget
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(%|[a-zA-Z]*)\s*", str(budget))
    unit = match.group(2).lower() if match else ""
    value = float(match.group(1)) if match else 0.0
    if match and unit == "%" and 0 < value <= 100:
        return int(value / 100 * available_bytes(device))
    if match and unit in UNITS and value * UNITS[unit] >= 1:
        return int(value * UNITS[unit])
    raise OptionError("memory_budget", budget, "give a size such as 8GiB or 512MB, or a share of the free "
                      "memory such as 50%.")


def require_memory(needed: int, what: str, hint: str, device: torch.device | str = "cpu") -> None:
    """Raise a one-line :class:`UserError` when ``needed`` bytes (for ``what``) exceed what
    ``device`` has free; ``hint`` says which option makes it smaller."""
    free = available_bytes(device)
    if needed > free:
        where = "the GPU" if torch.device(device).type == "cuda" else "this machine"
        raise UserError(f"{what} would need {gib(needed)} but {where} has {gib(free)} free; {hint}.")
