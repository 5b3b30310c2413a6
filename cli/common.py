"""What every command module shares: option types, device choice, JSON output, the Rich
progress bar that fills the library's progress callback, and analysis-input loading.

Command modules import only this, Typer and the standard library when they load; torch, the
analyses and matplotlib are imported inside the commands that need them, so ``--help`` and
``--version`` answer at once (tests/test_startup.py measures it)."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Iterator, Optional, TextIO

import typer

from alignsam_diag.data.sources import usages as dataset_usages
from alignsam_diag.errors import OptionError, UserError
from alignsam_diag.models.registry import MODELS
from alignsam_diag.progress import ProgressFn, ProgressUpdate

if TYPE_CHECKING:
    import torch

    from alignsam_diag.inputs import AnalysisInputs

debug_mode = {"on": False}  # set by the root callback's --debug
dist_timeout = {"s": 600.0}  # set by the root callback's --dist-timeout


def rank_label() -> str:
    """``"rank 1 of 2: "`` in a process torchrun started as one of several, else ``""`` (read from
    the environment torchrun sets, so it needs no torch import)."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    return f"rank {os.environ.get('RANK', '0')} of {world}: " if world > 1 else ""


def is_main_rank() -> bool:
    """Whether this process prints: always alone, rank 0 only under torchrun."""
    return rank_label() == "" or rank_label().startswith("rank 0 ")

#: Library parameter names whose flag is not ``--`` + the name with ``-`` for ``_``: the trace and
#: density functions' own arguments, which ``eigs`` prefixes, and the spectrum options' ``trace``
#: (the method; ``--trace`` is the switch that turns the estimate on), the figures' ``fmt``.
FLAG_NAMES = {
    "probes": "--trace-probes", "products": "--trace-probes",
    "steps": "--density-steps", "runs": "--density-runs",
    "trace": "--trace-method", "fmt": "--format",
}


def flag(option: str) -> str:
    """The command-line flag of library parameter ``option``: ``max_iter`` → ``--max-iter``."""
    return FLAG_NAMES.get(option, "--" + option.replace("_", "-"))


def message(err: UserError) -> str:
    """``err`` as the command line says it: an :class:`OptionError` names the flag
    (``--k 0: must be at least 1.``), any other error is its own message."""
    return err.render(flag) if isinstance(err, OptionError) else str(err)


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one clear line and a non-zero exit (traceback with --debug).

    A :class:`UserError` exits with 2, an interrupt with 130 (finished work is kept), anything
    else is a bug: one line, exit 1. SIGTERM (what batch schedulers and ``kill`` send) counts as
    an interrupt, so a job stopped that way also ends with the rerun hint."""
    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            with _sigterm_as_interrupt():
                return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except UserError as err:
            if debug_mode["on"]:
                raise
            text = message(err)  # a rank's own errors (distributed.PeerLost) already say which rank
            sys.stderr.write(f"error: {'' if text.startswith(rank_label()) else rank_label()}{text}\n")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            sys.stderr.write("interrupted; finished work is saved — rerun the same command to continue.\n")
            raise typer.Exit(130) from None
        except Exception as err:  # a bug, not a user mistake
            if debug_mode["on"]:
                raise
            sys.stderr.write(f"internal error: {rank_label()}{type(err).__name__}: {err}. Rerun with --debug for the "
                             "traceback and please report it.\n")
            raise typer.Exit(1) from None
    return run


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises KeyboardInterrupt (only the main thread can set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


# Options shared by several commands (Annotated, so each command declares them in one line).
# The data sets and architectures --help names: what the registries hold (read without torch).
DATASET_NAMES = " | ".join(dataset_usages())
ARCH_NAMES = " | ".join([*MODELS.names(), "timm:NAME", "package.module:factory"])
Dataset = Annotated[Optional[str], typer.Option(
    "--dataset", help=f"{DATASET_NAMES} (default for analyses: the data set stored in the checkpoint).")]
DataRoot = Annotated[Optional[str], typer.Option("--data-root", help="Folder holding the data set's files.")]
Arch = Annotated[Optional[str], typer.Option("--arch", "--model", help=ARCH_NAMES)]
ArchKwargs = Annotated[Optional[str], typer.Option("--arch-kwargs", help="JSON object of extra model arguments.")]
NumClasses = Annotated[Optional[int], typer.Option("--num-classes", help="Classes of a third-party checkpoint's head.")]
Trust = Annotated[bool, typer.Option("--trust-checkpoint", help="Allow full unpickling (can run code in the file!).")]
Device = Annotated[str, typer.Option("--device", help="cpu | cuda | auto")]
Split = Annotated[str, typer.Option("--split", help="train | test")]
Samples = Annotated[int, typer.Option("--samples", help="Number of samples (seeded subset of the split).")]
Full = Annotated[bool, typer.Option("--full", help="Use the whole split instead of --samples.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Samples per forward pass.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for the sample subset and random directions.")]
Json = Annotated[bool, typer.Option("--json", help="Print results as JSON on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress output (by default a live bar on a terminal, "
                                                     "plain lines in a log).")]
Checkpoints = Annotated[list[Path], typer.Argument(help="Checkpoint files (ours or third-party).")]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without one is an error. Under torchrun
    a bare ``cuda`` is this rank's GPU, ``cuda:LOCAL_RANK``."""
    import torch

    from alignsam_diag.distributed import local_device

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"--device {name}: choose cpu, cuda or auto.")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here; use --device cpu.")
    return local_device(torch.device(name))


def scaled_out(command: Callable[..., Any]) -> Callable[..., Any]:
    """A command that also runs under ``torchrun``: as one of several processes it joins the
    process group first (on the backend its ``device`` option needs, collectives bounded by
    ``--dist-timeout``), prints only on rank 0, and leaves the group at the end. Alone it runs
    as it is."""
    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not rank_label():
            return command(*args, **kwargs)
        from alignsam_diag import distributed

        distributed.join(resolve_device(kwargs.get("device", "auto")), dist_timeout["s"])
        try:
            with contextlib.redirect_stdout(io.StringIO()) if not is_main_rank() else contextlib.nullcontext():
                return command(*args, **kwargs)
        finally:
            distributed.leave()
    return run


def single_process(command: Callable[..., Any], name: str) -> Callable[..., Any]:
    """A command that runs in one process only: under torchrun it refuses in one line."""
    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        if rank_label():
            raise UserError(f"`{name}` runs in one process; start it without torchrun (train, eigs, landscape, "
                            "robustness and cosine scale out).")
        return command(*args, **kwargs)
    return run


def parse_json_object(text: Optional[str], option: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{option} {text!r}: not valid JSON ({err.msg}).") from None
    if not isinstance(value, dict):
        raise UserError(f"{option} must be a JSON object like '{{\"small_input\": true}}'.")
    return value


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def load_analysis_inputs(checkpoint: Path, *, dataset: Optional[str], data_root: Optional[str],
                         arch: Optional[str], arch_kwargs: Optional[str], num_classes: Optional[int],
                         trust: bool, split: str, samples: int, full: bool, seed: int,
                         batch_size: int, device: torch.device) -> AnalysisInputs:
    """The model in ``checkpoint`` and the fixed samples an analysis runs on, from CLI options."""
    from alignsam_diag.data import DataSpec
    from alignsam_diag.inputs import load_inputs

    return load_inputs(checkpoint, data=DataSpec(dataset, data_root) if dataset else None,
                       data_root=data_root, split=split, samples=None if full else samples, seed=seed,
                       batch_size=batch_size, arch=arch, num_classes=num_classes,
                       arch_kwargs=parse_json_object(arch_kwargs, "--arch-kwargs"), trust=trust,
                       device=device)


def _format_info(info: dict[str, float | str]) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())


@contextlib.contextmanager
def progress_bar() -> Iterator[ProgressFn]:
    """A Rich progress bar on stderr; yields the callback to hand to library functions.
    One bar per task name; the update's ``info`` is shown next to it. The bar disappears when
    the work ends, so an error message stays the only line."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        tasks: dict[str, Any] = {}

        def update(u: ProgressUpdate) -> None:
            if u.task not in tasks:
                tasks[u.task] = bar.add_task(u.task, total=u.total, info="")
            bar.update(tasks[u.task], completed=u.completed, total=u.total, info=_format_info(u.info))

        yield update


@contextlib.contextmanager
def progress_lines(stream: TextIO) -> Iterator[ProgressFn]:
    """Plain progress lines for a log (no terminal): one per milestone update (an epoch, a
    Lanczos product), one per ~5 % of other tasks, none for fine-grained steps (see
    :class:`~alignsam_diag.progress.ProgressUpdate`), each flushed at once and stamped with the
    time since the command started."""
    start = time.monotonic()
    shown: dict[str, int] = {}  # task -> last 5 % step written (none before the first 5 %)

    def update(u: ProgressUpdate) -> None:
        if u.log is False:
            return
        if u.log is None:
            step = int(20 * u.completed / u.total) if u.total else 0
            if step <= shown.get(u.task, 0) and u.completed != u.total:
                return
            shown[u.task] = step
        seconds = int(time.monotonic() - start)
        count = f"{u.completed:g}" + (f"/{u.total:g}" if u.total else "")
        info = _format_info(u.info)
        stream.write(f"[{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}] {u.task} {count}"
                     + (f"  {info}" if info else "") + "\n")
        stream.flush()

    yield update


@contextlib.contextmanager
def progress_display(quiet: bool = False) -> Iterator[ProgressFn]:
    """The progress callback for a long command: a live Rich bar when stderr is a terminal, plain
    lines (:func:`progress_lines`) when it is not (a batch job's log, ``nohup``), nothing with
    ``quiet`` or on a rank other than 0 under torchrun."""
    if quiet or not is_main_rank():
        yield lambda update: None
    elif sys.stderr.isatty():
        with progress_bar() as update:
            yield update
    else:
        with progress_lines(sys.stderr) as update:
            yield update


InputShape = Annotated[Optional[str], typer.Option(
    "--input-shape", help="C,H,W of one input sample (e.g. 1,28,28; square images) when the file has no "
                          "model spec and no --dataset is given.")]


def parse_input_shape(text: Optional[str]) -> Optional[tuple[int, int]]:
    """``--input-shape C,H,W`` as (channels, image size); None when not given."""
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise UserError(f"--input-shape {text}: write C,H,W as three positive whole numbers, e.g. 1,28,28.")
    channels, height, width = map(int, parts)
    if height != width:
        raise UserError(f"--input-shape {text}: models here take square images; give H = W.")
    return channels, height
