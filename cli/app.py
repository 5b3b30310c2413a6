"""The ``alignsam-diag`` command: a registry of command modules, plus error handling.

A :class:`~alignsam_diag.errors.UserError` becomes one line on stderr and exit code 2; any
other exception is a bug and says so in one line (exit 1). ``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import typer

from alignsam_diag import __version__

from . import cosine as cosine_cmd
from . import demo as demo_cmd
from . import eigs as eigs_cmd
from . import figures, inspect_cmd, train
from . import landscape as landscape_cmd
from . import robustness as robustness_cmd
from . import sharpness as sharpness_cmd
from . import sweep as sweep_cmd
from .common import debug_mode, dist_timeout, handle_errors, scaled_out, single_process

COMMANDS: dict[str, Callable[..., Any]] = {
    "train": train.train,
    "inspect": inspect_cmd.inspect,
    "eigs": eigs_cmd.eigs,
    "landscape": landscape_cmd.landscape,
    "robustness": robustness_cmd.robustness,
    "cosine": cosine_cmd.cosine,
    "sweep": sweep_cmd.sweep,
    "sharpness": sharpness_cmd.sharpness,
    "demo": demo_cmd.demo,
}
#: The commands that run unchanged under ``torchrun`` (the others refuse there).
SCALED_OUT = ("train", "eigs", "landscape", "robustness", "cosine")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train with SGD or any SAM-family optimizer (Align-SAM included) and run the "
                       "Align-SAM paper's diagnostics. Every command has --help.")
for _name, _command in COMMANDS.items():
    app.command(_name)(handle_errors(scaled_out(_command) if _name in SCALED_OUT else single_process(_command, _name)))
app.add_typer(figures.app, name="figures")


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"alignsam-diag {__version__}\n")
        raise typer.Exit()


@app.callback()
def root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks."),
         version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit."),
         timeout: float = typer.Option(600.0, "--dist-timeout", metavar="SECONDS",
                                       help="Under torchrun: how long a rank waits for the others before the "
                                            "job stops with an error (a rank died or hangs).")) -> None:
    debug_mode["on"] = debug
    dist_timeout["s"] = timeout


def main() -> None:
    app()
