"""Shared test settings: one intra-op thread in the test process (small models are far
slower with more threads on a busy 2-core machine) and helpers to run the CLI."""

import os
import sys
from pathlib import Path

import pytest
import torch

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
