"""Per-epoch training history (``<run>/history.h5``).

One dataset per column, each of shape (epochs,): ``epoch``, ``train_loss``, ``train_acc``,
``test_loss``, ``test_acc`` (accuracies in [0, 1]), ``lr`` (at the end of the epoch),
``epoch_seconds``. Root attributes hold the run's configuration as JSON. Beside them, the
step-indexed logs of ``train --track-...`` (groups ``cosine/``, ``sharpness/``: see
:mod:`.tracking`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

import numpy as np

from .h5io import atomic_h5, open_h5
from .tracking import StepLog, write_logs

COLUMNS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_seconds")


def write_history(path: str | os.PathLike, history: dict[str, list[float]], config: dict[str, Any],
                  logs: Optional[Mapping[str, StepLog]] = None) -> None:
    """Replace ``path`` atomically with the per-epoch ``history``, the run's ``config`` and the
    step ``logs`` (kind -> log; none: no groups)."""
    with atomic_h5(path) as f:
        for k in COLUMNS:
            f.create_dataset(k, data=np.asarray(history[k], dtype=np.float64))
        f.attrs.update(config=json.dumps(config), kind="history")
        write_logs(f, logs or {})


def history_optimizer(path: str | os.PathLike) -> Optional[str]:
    """The optimizer name in a ``history.h5``'s stored run configuration (None if it has none)."""
    name = history_config(path).get("optimizer")
    return name if isinstance(name, str) else None


def history_config(path: str | os.PathLike) -> dict[str, Any]:
    """The run configuration a ``history.h5`` stores (``{}`` if none)."""
    with open_h5(path, "history", "train") as f:
        config = json.loads(f.attrs.get("config", "{}"))
    return config if isinstance(config, dict) else {}


def read_history(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The columns of a ``history.h5`` (one value per epoch each); a file that lacks one, or whose
    columns differ in length, is a one-line :class:`~alignsam_diag.errors.UserError`."""
    with open_h5(path, "history", "train") as f:
        columns = {k: f[k][()] for k in COLUMNS}
        if len({len(v) for v in columns.values()}) != 1:
            raise ValueError("its columns have different lengths")
    return columns
