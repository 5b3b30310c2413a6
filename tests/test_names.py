"""The library speaks its own names, the command line its flags, through one error
(:class:`alignsam_diag.errors.OptionError`): ``optim.create("sam", ..., rho=-1)`` says ``rho``,
``alignsam-diag train --rho -1`` says ``--rho``; and every flag the command line names in such an
error is one of that command's own options."""

from __future__ import annotations

import pytest
import torch
import typer
from torch import nn

from conftest import error_line, invoke
from alignsam_diag import optim
from alignsam_diag.analysis.curvature import HessianOperator
from alignsam_diag.analysis.lanczos import lanczos
from alignsam_diag.errors import OptionError, UserError
from cli.app import app
from cli.common import flag, message
from test_bad_inputs import CASES, workspace  # noqa: F401  (the fixture)
from test_hessian_operator import tiny_case


def test_optimizer_error_names_the_parameter():
    params = [nn.Parameter(torch.zeros(3))]
    with pytest.raises(OptionError) as caught:
        optim.create("sam", params, lr=0.1, rho=-1)
    text = str(caught.value)
    assert "rho" in text and "--rho" not in text
    assert text.startswith("rho = -1: must be at least 0")
    assert message(caught.value).startswith("--rho -1: must be at least 0")


def test_lanczos_error_names_the_parameter():
    model, loss, x, y = tiny_case("least-squares")
    with HessianOperator(model, loss, [(x, y)]) as op:
        with pytest.raises(UserError) as caught:
            lanczos(op, k=0)
        with pytest.raises(OptionError) as other:
            lanczos(op, k=5, max_iter=3)
    assert str(caught.value) == "k = 0: must be at least 1." and "--k" not in str(caught.value)
    assert str(other.value) == "max_iter = 3: must be at least k (5)."
    assert message(other.value) == "--max-iter 3: must be at least --k (5)."


def test_flags_follow_the_names_with_a_few_exceptions():
    assert flag("max_iter") == "--max-iter" and flag("label_noise") == "--label-noise"
    assert flag("warmup_epochs") == "--warmup-epochs" and flag("subset") == "--subset"
    assert flag("probes") == "--trace-probes" and flag("steps") == "--density-steps"
    assert message(UserError("not about an option")) == "not about an option"


def test_cli_shows_the_flags(tmp_path, workspace):  # noqa: F811
    train = invoke("train", "--optimizer", "sam", "--rho", "-1", "--out", tmp_path / "run", "--device", "cpu")
    assert "error: --rho -1" in error_line(train) and "rho = " not in error_line(train)
    eigs = invoke("eigs", workspace / "model.pt", "--k", "0", "--device", "cpu")
    assert error_line(eigs) == "error: --k 0: must be at least 1."


def _command(words: list[str]):
    """The click command a command line runs, and the words that named it."""
    command = typer.main.get_command(app)
    for word in words:
        sub = getattr(command, "commands", {}).get(word)  # a group's sub-command, else the command
        if sub is None:
            break
        command = sub
    return command


def _options(command) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


OPTION_CASES = [c for c in CASES if c[2].startswith("--")] + [
    ("sam rho", "train --optimizer sam --rho -1 --out {dir}/run", "--rho -1"),
    ("looksam k", "train --optimizer looksam --k 0 --out {dir}/run", "--k 0"),
    ("eigs max-iter", "eigs {ckpt} --k 5 --max-iter 3", "--max-iter 3"),
    ("eigs probes", "eigs {ckpt} --trace --trace-probes 1 --samples 8", "--trace-probes 1"),
    ("eigs density", "eigs {ckpt} --density --density-runs 0 --samples 8 --out {dir}/e.h5", "--density-runs 0"),
    ("landscape grid", "landscape {ckpt} --grid 1 --out {dir}/s.h5", "--grid 1"),
    ("train warmup", "train --warmup-epochs -1 --out {dir}/run", "--warmup-epochs -1"),
]


@pytest.mark.parametrize("command,fragment", [c[1:] for c in OPTION_CASES], ids=[c[0] for c in OPTION_CASES])
def test_every_flag_named_is_the_commands_own(workspace, command, fragment):  # noqa: F811
    args = command.format(ckpt=workspace / "model.pt", dir=workspace).split()
    device = [] if args[0] in ("figures", "inspect") or "--device" in args else ["--device", "cpu"]
    result = invoke(*args, *device)
    assert result.exit_code == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]  # eigs reports its progress before a trace or density error
    assert line.startswith("error: ") and fragment in line, result.stderr
    said = line.removeprefix("error: ")
    if said.startswith("--"):
        named = said.split()[0].rstrip(":")
        assert named in _options(_command(args)), (named, sorted(_options(_command(args))))
    assert " = " not in said.split(":")[0], said  # never the library's form on the command line
