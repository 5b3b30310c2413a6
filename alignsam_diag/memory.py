"""How much memory a device has free, and refusing work that cannot fit before it allocates."""

from __future__ import annotations

import os

import torch

from .errors import UserError


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
    return f"{n / 2 ** 30:.1f} GiB" if n >= 2 ** 28 else f"{n / 2 ** 20:.1f} MiB"


def require_memory(needed: int, what: str, hint: str, device: torch.device | str = "cpu") -> None:
    """Raise a one-line :class:`UserError` when ``needed`` bytes (for ``what``) exceed what
    ``device`` has free; ``hint`` says which option makes it smaller."""
    free = available_bytes(device)
    if needed > free:
        where = "the GPU" if torch.device(device).type == "cuda" else "this machine"
        raise UserError(f"{what} would need {gib(needed)} but {where} has {gib(free)} free; {hint}.")
