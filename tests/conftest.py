"""Shared test settings: one intra-op thread in the test process (small models are far
slower with more threads on a busy 2-core machine), helpers to run the CLI, and two small
untrained checkpoints for the analysis commands."""

import os
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from alignsam_diag.data import DataSpec
from alignsam_diag.models import ModelSpec, build_model
from alignsam_diag.models.checkpoint import save_checkpoint
from cli.app import app

torch.set_num_threads(1)

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def cli_env() -> dict[str, str]:
    """Environment for running the installed CLI in a subprocess."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def cli() -> list[str]:
    """The command prefix that runs ``alignsam-diag`` with this interpreter."""
    return [sys.executable, "-m", "alignsam_diag.cli"]


SMALL_CNN = ModelSpec("cnn-small", 10, 1, 8, {"width": 8})


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> list[Path]:
    """Two small untrained digits checkpoints (seeds 0 and 1, ``SMALL_CNN``) in folders named
    like training runs: ``sgd/last.pt`` and ``sam/last.pt``."""
    root = tmp_path_factory.mktemp("runs")
    paths = []
    for seed, name in ((0, "sgd"), (1, "sam")):
        torch.manual_seed(seed)
        save_checkpoint(root / name / "last.pt", {"state_dict": build_model(SMALL_CNN).state_dict(),
                                                 "model": SMALL_CNN.to_dict(), "data": DataSpec("digits").to_dict()})
        paths.append(root / name / "last.pt")
    return paths


def invoke(*args):
    """The CLI in this process: exit_code, stdout and stderr as a user would see them."""
    return CliRunner().invoke(app, [str(a) for a in args])


def error_line(result) -> str:
    """The one ``error: …`` line of a refused command (exit 2, no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.exit_code, result.stderr, repr(result.exception))
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


def assert_one_clear_line(result, fragment: str) -> None:
    """Exit 2 and one ``error: …`` line on stderr that names ``fragment``, no traceback."""
    assert fragment in error_line(result), result.stderr
