"""Sweeps: a grid of training runs from one spec, resumable, summarised in one HDF5 file.

A spec (:class:`SweepSpec`) holds ``base`` options, fixed for every run, and one or more
``grids``; each grid is a set of options with a list of values each, and every combination of
one value per option is a run (the runs of several grids are joined, a run named twice is run
once). Options are :class:`~alignsam_diag.train.TrainConfig` names, dotted into its parts:
``lr``, ``epochs``, ``seed``, ``optimizer``, ``aux_batch_size``, ``hyper.lam``, ``data.subset``,
``arch_kwargs.width`` (a bare hyper-parameter name, ``lam``, means ``hyper.lam``). A spec comes
from a TOML file (:func:`read_spec`)::

    [base]                      # fixed for every run
    data.subset = 500
    epochs = 10

    [[grid]]                    # Figure 2: λ with three seeds
    optimizer = ["align-sam"]
    hyper.lam = [0.5, 1, 2, 4]
    seed = [0, 1, 2]

    [[grid]]                    # SAM as the baseline, same seeds
    optimizer = ["sam"]
    seed = [0, 1, 2]

or from ``KEY=V1,V2,...`` texts (the CLI's ``--set``, :func:`parse_set`), combined by
:func:`build_spec`.

Each run trains into ``<out>/runs/<name>``, its name made of the swept options and their values
(``hyper.lam=0.5,optimizer=align-sam,seed=1``), so a rerun finds it: a finished run is skipped
(read from its ``history.h5``), an interrupted one resumed from its ``last.pt`` (train's own
resume), and a folder holding a run with other options is refused. After each run the summary
``<out>/sweep.h5`` (:mod:`alignsam_diag.store.sweep`) is rewritten with every finished run.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from .data import DataSpec
from .errors import DivergedError, OptionError, UserError
from .files import output_lock
from .optim.variants import takers
from .progress import ProgressFn, report
from .store.h5io import open_h5
from .store.history import read_history
from .store.sweep import FILE_NAME, SEED_KEYS, SweepRecord, SweepSummary, write_summary
from .train import TrainConfig, resume, train

#: Options that are whole tables of a run; they are swept by their entries (``hyper.lam``).
TABLES = ("data", "hyper", "arch_kwargs")
MAX_NAME = 120  # characters of a run folder's name before it is shortened with a hash


@dataclass(frozen=True)
class Key:
    """A sweepable option: its dotted ``name``, the ``kind`` of its values (bool, int, float,
    str; None: any value, for ``arch_kwargs.*``) and whether it may be unset (None)."""

    name: str
    kind: Optional[type]
    optional: bool = False

    def expected(self) -> str:
        kinds = {bool: "true or false", int: "a whole number", float: "a number", str: "a text"}
        kind = kinds.get(self.kind, "a value")
        return kind + (" or none" if self.optional else "")

    def typed(self, value: Any, where: str) -> Any:
        """``value`` (from TOML or Python) as the option takes it; a wrong type is a :class:`UserError`."""
        if value is None or (self.optional and isinstance(value, str) and value.lower() == "none"):
            if self.optional:
                return None
        elif self.kind is None:
            return value
        elif self.kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        elif isinstance(value, self.kind) and not (self.kind is int and isinstance(value, bool)):
            return value
        raise UserError(f"{where}: {self.name} {value!r} is not {self.expected()}.")

    def parsed(self, text: str, where: str) -> Any:
        """``text`` (from ``--set``) as the option takes it; one that does not parse is a :class:`UserError`."""
        text = text.strip()
        if self.optional and text.lower() in ("none", "null"):
            return None
        if self.kind is None:
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return text
        if self.kind is str:
            return text
        try:
            if self.kind is bool:
                return {"true": True, "false": False}[text.lower()]
            return self.kind(text)
        except (KeyError, ValueError):
            raise UserError(f"{where}: {self.name} {text!r} is not {self.expected()}.") from None


def _key_of(name: str, hint: Any) -> Key:
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) is typing.Union and type(None) in args
    kind = next((a for a in args if a is not type(None)), None) if optional else hint
    return Key(name, kind if kind in (bool, int, float, str) else None, optional)


@cache
def known_keys() -> dict[str, Key]:
    """Every sweepable option but the free ``arch_kwargs.*``: the TrainConfig fields, ``data.*``
    (``download`` is a runtime choice, not a run's option) and ``hyper.*`` of every variant."""
    keys = {name: _key_of(name, hint) for name, hint in typing.get_type_hints(TrainConfig).items()
            if name not in TABLES}
    keys.update({f"data.{name}": _key_of(f"data.{name}", hint)
                 for name, hint in typing.get_type_hints(DataSpec).items() if name != "download"})
    keys.update({f"hyper.{name}": Key(f"hyper.{name}", described[0][1].kind) for name, described in takers().items()})
    return keys


def key(name: str, where: str) -> Key:
    """The option ``name`` (a bare hyper-parameter name is taken as ``hyper.<name>``); one that
    no run has is a one-line :class:`UserError` listing them."""
    keys = known_keys()
    name = f"hyper.{name}" if f"hyper.{name}" in keys and name not in keys else name
    if name in keys:
        return keys[name]
    if name.startswith("arch_kwargs.") and len(name) > len("arch_kwargs."):
        return Key(name, None)
    raise UserError(f"{where}: {name!r} is not an option of a training run; choose one of "
                    f"{', '.join(keys)} or arch_kwargs.NAME.")


@dataclass
class PlannedRun:
    """One run of a sweep: its folder ``name``, its seed ``group`` (the name without the seed
    keys), the swept options' resolved ``values``, the ``config`` as given and ``resolved``
    (:meth:`TrainConfig.resolved`)."""

    name: str
    group: str
    values: dict[str, Any]
    config: TrainConfig
    resolved: TrainConfig


@dataclass
class SweepSpec:
    """``base``: option -> value, fixed for every run; ``grids``: each option -> values, every
    combination a run. Values are checked and typed (:meth:`Key.typed`)."""

    base: dict[str, Any] = field(default_factory=dict)
    grids: list[dict[str, list[Any]]] = field(default_factory=list)

    def keys(self) -> list[str]:
        """The swept options (those named in any grid), sorted: they name the runs."""
        return sorted({name for grid in self.grids for name in grid})

    def to_dict(self) -> dict[str, Any]:
        return {"base": dict(self.base), "grids": [dict(grid) for grid in self.grids]}

    def plan(self) -> list[PlannedRun]:
        """Every run of the spec, grid after grid (the first option of a grid varies slowest), each
        checked as ``train`` would check it (a one-line :class:`UserError` naming the run and the
        option). A run is named by its resolved values of the swept options (defaults written out:
        λ = 2 where a grid leaves it to Align-SAM's default), so one setting reached twice is one run."""
        if not any(self.grids):
            raise UserError("nothing to sweep: give options to vary (--set KEY=V1,V2,... or a [[grid]] table "
                            "in the spec).")
        swept, runs = self.keys(), {}
        for grid in self.grids:
            for combination in itertools.product(*grid.values()):
                given = dict(zip(grid, combination))
                config = _config({**self.base, **given})
                resolved = _checked(config, run_name(given))
                values = {name: resolved.option(name) for name in swept}
                name = run_name(values)
                if name not in runs:
                    group = run_name({k: v for k, v in values.items() if k not in SEED_KEYS})
                    runs[name] = PlannedRun(name, group, values, config, resolved)
        return list(runs.values())


def _config(options: Mapping[str, Any]) -> TrainConfig:
    """The TrainConfig of the defaults with ``options`` (dotted names) set."""
    stored = TrainConfig().to_dict()
    for name, value in options.items():
        *tables, last = name.split(".")
        target = stored
        for table in tables:
            target = target.setdefault(table, {})
        target[last] = value
    return TrainConfig.from_dict(stored)


def _checked(config: TrainConfig, run: str) -> TrainConfig:
    """``config`` resolved, after the checks ``train`` makes; an invalid option is a one-line
    :class:`UserError` naming the run and the option as the spec does (``data.subset``, ``hyper.lam``)."""
    try:
        try:
            config.validate()
        except OptionError as err:
            raise UserError(str(err)) from None
        try:
            config.data.validate()
        except OptionError as err:
            raise UserError(f"data.{err}") from None
        try:
            return config.resolved()
        except OptionError as err:
            raise UserError(f"hyper.{err}") from None
    except UserError as err:
        raise UserError(f"sweep run {run}: {err}") from None


def value_text(value: Any) -> str:
    """A value as a run name spells it: ``none``, ``true``, ``0.5``, ``2.0``, ``align-sam``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (int, str)):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def run_name(values: Mapping[str, Any]) -> str:
    """The folder name of the run with these swept ``values``: ``key=value`` pairs in key order,
    joined by commas; characters other than letters, digits and ``._+=,-`` become ``-`` and a
    name so changed (or longer than :data:`MAX_NAME`) ends in a hash of the values, so two runs
    never share a folder."""
    name = ",".join(f"{k}={value_text(v)}" for k, v in sorted(values.items()))
    safe = re.sub(r"[^A-Za-z0-9._+=,-]", "-", name)
    if safe == name and len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha1(json.dumps(sorted(values.items()), default=str).encode()).hexdigest()[:10]
    return f"{safe[:MAX_NAME - 11]}-{digest}"


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A TOML table's entries by dotted name (``{"hyper": {"lam": 2}}`` -> ``{"hyper.lam": 2}``)."""
    flat: dict[str, Any] = {}
    for name, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def _typed_options(options: Mapping[str, Any], where: str) -> dict[str, Any]:
    typed = {}
    for name, value in options.items():
        k = key(name, where)
        typed[k.name] = k.typed(value, where)
    return typed


def _typed_grid(options: Mapping[str, Any], where: str) -> dict[str, list[Any]]:
    grid = {}
    for name, values in options.items():
        k = key(name, where)
        values = values if isinstance(values, list) else [values]
        if not values:
            raise UserError(f"{where}: {k.name} has no values; give at least one.")
        grid[k.name] = [k.typed(v, where) for v in values]
    return grid


def read_spec(path: str | Path) -> SweepSpec:
    """The spec in the TOML file ``path``: a ``[base]`` table of fixed options and ``[grid]`` or
    ``[[grid]]`` tables of options to vary (a list of values each; one value alone is a list of one)."""
    path = Path(path)
    try:
        stored = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such sweep spec.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read it ({err}).") from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: not valid TOML ({err}).") from None
    unknown = sorted(set(stored) - {"base", "grid"})
    if unknown:
        raise UserError(f"{path}: unknown entry {unknown[0]!r}; a sweep spec has a [base] table (options fixed for "
                        "every run) and [[grid]] tables (options to vary).")
    base, grids = stored.get("base", {}), stored.get("grid", [])
    grids = [grids] if isinstance(grids, dict) else grids
    if not isinstance(base, dict) or not isinstance(grids, list) or not all(isinstance(g, dict) for g in grids):
        raise UserError(f"{path}: write [base] and [grid] (or [[grid]]) as tables of options.")
    spec = SweepSpec(_typed_options(_flatten(base), f"{path} [base]"),
                     [_typed_grid(_flatten(g), f"{path} [[grid]] #{i + 1}") for i, g in enumerate(grids)])
    _no_overlap(spec, f"{path} [base]")
    return spec


def parse_set(text: str) -> tuple[str, list[Any]]:
    """``KEY=V1,V2,...`` (the CLI's ``--set``) as the option and its typed values."""
    where = f"--set {text}"
    name, sep, values = text.partition("=")
    if not sep or not name.strip():
        raise UserError(f"{where}: write KEY=V1,V2,... (e.g. hyper.lam=0.5,1,2).")
    k = key(name.strip(), where)
    parts = [v for v in values.split(",") if v.strip()]
    if not parts:
        raise UserError(f"{where}: {k.name} has no values; give at least one.")
    return k.name, [k.parsed(v, where) for v in parts]


def _no_overlap(spec: SweepSpec, where: str) -> None:
    both = sorted(set(spec.base) & set(spec.keys()))
    if both:
        raise UserError(f"{both[0]} is both fixed ({where}) and varied (a grid); give it in one place.")


def build_spec(path: Optional[str | Path] = None, sets: Sequence[str] = (),
               base: Optional[Mapping[str, Any]] = None, base_source: str = "base options") -> SweepSpec:
    """The spec of the file ``path`` (none: an empty one), then ``sets`` (``KEY=V1,V2,...``,
    :func:`parse_set`): each replaces that option in every grid (making one if there is none) and
    takes it out of the base, then ``base`` (option -> value): each replaces the base option. A
    ``base`` option that a grid varies is a :class:`UserError` (``base_source`` names where it
    came from, e.g. the command line)."""
    spec = read_spec(path) if path is not None else SweepSpec()
    seen: set[str] = set()
    for text in sets:
        name, values = parse_set(text)
        if name in seen:
            raise UserError(f"--set {text}: {name} is set twice; give all its values in one --set.")
        seen.add(name)
        spec.base.pop(name, None)
        spec.grids = [{**grid, name: values} for grid in spec.grids or [{}]]
    spec.base.update(_typed_options(base or {}, base_source))
    _no_overlap(spec, base_source)
    return spec


@dataclass
class SweepResult:
    """What :func:`run_sweep` did: the ``summary`` it wrote to ``summary_path``, the runs it
    ``trained`` (or resumed) and those it ``skipped`` (finished before)."""

    summary_path: Path
    summary: SweepSummary
    trained: list[str]
    skipped: list[str]


def _flat(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A stored config's options by dotted name, its ``data`` and ``hyper`` tables opened."""
    flat: dict[str, Any] = {}
    for name, value in stored.items():
        if name in ("data", "hyper"):
            flat.update({f"{name}.{k}": v for k, v in value.items()})
        else:
            flat[name] = value
    return flat


def _done_epochs(run: PlannedRun, run_dir: Path) -> int:
    """Epochs the run folder holds (its ``history.h5``; 0 without one), after checking that it
    holds this run: other options, or more epochs than planned, are a one-line :class:`UserError`."""
    history = run_dir / "history.h5"
    if not history.exists():
        return 0
    with open_h5(history, "history", "train") as f:
        stored = _flat(TrainConfig.from_dict(json.loads(f.attrs["config"])).resolved().to_dict())
    wanted = _flat(run.resolved.to_dict())
    conflicts = [f"{name} {value_text(value)} (stored: {value_text(stored.get(name))})"
                 for name, value in wanted.items() if name != "epochs" and stored.get(name) != value]
    if conflicts:
        raise UserError(f"{run_dir} holds a run with other options: {', '.join(conflicts)}. Run folders are named by "
                        "the swept options only: give this sweep another --out, or remove the folder.")
    if stored["epochs"] > run.config.epochs:
        raise UserError(f"{run_dir} holds a run of {stored['epochs']} epochs and the sweep asks for "
                        f"{run.config.epochs}; give epochs = {stored['epochs']} or more, or another --out.")
    return len(read_history(history)["epoch"])


def _record(run: PlannedRun, run_dir: Path, out: Path, diverged: bool = False) -> SweepRecord:
    """The summary row of ``run`` from its folder's ``history.h5`` (metrics NaN if it diverged)."""
    history = read_history(run_dir / "history.h5") if (run_dir / "history.h5").exists() else None
    seconds = [] if history is None else [float(s) for s in history["epoch_seconds"]]
    metrics = {k: math.nan if diverged or history is None else float(history[k][-1])
               for k in ("train_loss", "train_acc", "test_loss", "test_acc")}
    return SweepRecord(
        name=run.name, group=run.group, run_dir=run_dir.relative_to(out).as_posix(), values=run.values,
        config=run.resolved.to_dict(), optimizer=run.config.optimizer, seed=run.config.seed, epochs=len(seconds),
        epoch_seconds=sum(seconds) / len(seconds) if seconds else math.nan, total_seconds=sum(seconds),
        status="diverged" if diverged else "finished", **metrics)


def _train(run: PlannedRun, run_dir: Path, device: torch.device, progress: Optional[ProgressFn]) -> None:
    """Train ``run`` into ``run_dir``, continuing the run there if it has a ``last.pt``."""
    if (run_dir / "last.pt").exists():
        expect = {name: value for name, value in _flat(run.resolved.to_dict()).items() if name != "epochs"}
        resume(run_dir, device, epochs=run.config.epochs, expect=expect, download=run.config.data.download,
               progress=progress)
    else:
        train(run.config, run_dir, device, progress=progress)


def run_sweep(spec: SweepSpec, out: str | Path, device: str | torch.device = "cpu",
              progress: Optional[ProgressFn] = None, download: bool = False) -> SweepResult:
    """Run every run of ``spec`` (:meth:`SweepSpec.plan`) into ``out/runs/<name>`` and write the
    summary ``out/sweep.h5`` after each one.

    Runs already finished are skipped (their rows come from their ``history.h5``), interrupted
    ones resumed. A run whose loss becomes NaN/inf is recorded as diverged and the sweep goes on
    (a rerun tries it again). ``out`` has one writer at a time. progress: a ``"sweep"`` update
    (runs done of all, and the name of the run that starts) before each run trained and at the
    end, between them the updates of the run being trained. download: fetch a missing data set."""
    plan, out, device = spec.plan(), Path(out), torch.device(device)
    for run in plan:
        run.config.data.download = download
    summary = SweepSummary(spec.keys(), [run.name for run in plan], spec=spec.to_dict())
    records: dict[str, SweepRecord] = {}
    trained: list[str] = []

    def save() -> None:
        summary.records = [records[run.name] for run in plan if run.name in records]
        write_summary(out / FILE_NAME, summary)

    with output_lock(out, folder=True):
        for run in plan:
            if _done_epochs(run, out / "runs" / run.name) == run.config.epochs:
                records[run.name] = _record(run, out / "runs" / run.name, out)
        skipped = list(records)
        if records:
            save()
        for run in plan:
            if run.name in records:
                continue
            report(progress, "sweep", len(records), len(plan), log=True, run=run.name)
            run_dir = out / "runs" / run.name
            try:
                _train(run, run_dir, device, progress)
                records[run.name] = _record(run, run_dir, out)
            except DivergedError:
                records[run.name] = _record(run, run_dir, out, diverged=True)
            trained.append(run.name)
            save()
        report(progress, "sweep", len(plan), len(plan), log=True)
    return SweepResult(out / FILE_NAME, summary, trained, skipped)
