"""Per-epoch training history (``<run>/history.h5``).

One dataset per column, each of shape (epochs,): ``epoch``, ``train_loss``, ``train_acc``,
``test_loss``, ``test_acc`` (accuracies in [0, 1]), ``lr`` (at the end of the epoch),
``epoch_seconds``. Root attributes hold the run's configuration as JSON.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import numpy as np

from .h5io import open_h5, write_atomic

COLUMNS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_seconds")


def write_history(path: str | os.PathLike, history: dict[str, list[float]], config: dict[str, Any]) -> None:
    write_atomic(path, {k: np.asarray(history[k], dtype=np.float64) for k in COLUMNS},
                 {"config": json.dumps(config), "kind": "history"})


def history_optimizer(path: str | os.PathLike) -> Optional[str]:
    """The optimizer name in a ``history.h5``'s stored run configuration (None if it has none)."""
    with open_h5(path, "history", "train") as f:
        config = json.loads(f.attrs.get("config", "{}"))
    name = config.get("optimizer") if isinstance(config, dict) else None
    return name if isinstance(name, str) else None


def read_history(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The columns of a ``history.h5`` (one value per epoch each); a file that lacks one, or whose
    columns differ in length, is a one-line :class:`~alignsam_diag.errors.UserError`."""
    with open_h5(path, "history", "train") as f:
        columns = {k: f[k][()] for k in COLUMNS}
        if len({len(v) for v in columns.values()}) != 1:
            raise ValueError("its columns have different lengths")
    return columns
