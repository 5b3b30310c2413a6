"""Progress a user can see: plain, flushed lines when stderr is not a terminal (a batch job's
log), a live Rich bar when it is, nothing with --quiet."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess

import pytest

from alignsam_diag.progress import ProgressUpdate
from cli.common import progress_lines
from conftest import invoke

LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] (.+?) (\d+(?:/\d+)?)(?:  (.*))?$")  # [time] task done/total  info


def lines_of(stderr: str) -> list[tuple[str, str, str]]:
    """(task, count, info) of every progress line; any other line fails the test."""
    parsed = []
    for line in stderr.strip().splitlines():
        match = LINE.match(line)
        assert match, f"not a progress line: {line!r}"
        task, count, info = match.groups()
        parsed.append((task, count, info or ""))
    return parsed


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-epoch digits run, trained with the plain lines going to the (non-terminal) stderr."""
    out = tmp_path_factory.mktemp("progress") / "run"
    result = invoke("train", "--arch", "mlp", "--subset", "128", "--epochs", "3", "--device", "cpu", "--out", out)
    assert result.exit_code == 0, result.stderr
    return out, result


def test_train_writes_one_line_per_epoch(run):
    _, result = run
    lines = lines_of(result.stderr)
    assert [(task, count) for task, count, _ in lines] == [("epoch", "1/3"), ("epoch", "2/3"), ("epoch", "3/3")]
    for _, _, info in lines:
        for key in ("train_loss=", "train_acc=", "test_loss=", "test_acc=", "epoch_seconds="):
            assert key in info


def test_eigs_writes_one_line_per_product_with_the_ritz_values(run):
    out, _ = run
    result = invoke("eigs", out / "last.pt", "--samples", "64", "--k", "2", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    products = json.loads(result.stdout)[0]["hvps"]
    mode, rest = result.stderr.split("\n", 1)
    assert mode.startswith("eigs: kept-graph mode")  # the mode it chose, then the progress
    lines = lines_of(rest)
    counts = [int(count.split("/")[0]) for task, count, _ in lines if task == "lanczos"]
    assert counts == list(range(products + 1))  # the start, then one line after each product
    last = lines[-1][2]
    assert "lambda1=" in last and re.search(r"ritz=\S+ \S+", last)


def test_landscape_lines_end_with_every_cell_done(run, tmp_path):
    out, _ = run
    result = invoke("landscape", out / "last.pt", "--samples", "32", "--grid", "21", "--points-per-pass", "1",
                    "--device", "cpu", "--out", tmp_path / "s.h5")
    assert result.exit_code == 0, result.stderr
    lines = lines_of(result.stderr)
    assert {task for task, _, _ in lines} == {"landscape last"}
    done = [int(count.split("/")[0]) for _, count, _ in lines]
    assert done[-1] == 441 and len(done) <= 21 and done == sorted(done)


def test_plain_lines_policy():
    """Milestones always, fine-grained steps never, the rest at each 5 % of the total and the end."""
    stream = io.StringIO()
    with progress_lines(stream) as update:
        for i in range(1, 201):
            update(ProgressUpdate("cells", i, 200))
            update(ProgressUpdate("batch", i, 200, log=False))
        for i in range(3):
            update(ProgressUpdate("product", i, 100, {"lambda1": 1.5}, log=True))
    lines = lines_of(stream.getvalue())
    assert [count for task, count, _ in lines if task == "cells"] == [f"{10 * k}/200" for k in range(1, 21)]
    assert [(count, info) for task, count, info in lines if task == "product"] == [
        ("0/100", "lambda1=1.5"), ("1/100", "lambda1=1.5"), ("2/100", "lambda1=1.5")]
    assert not [line for line in lines if line[0] == "batch"]


@pytest.mark.parametrize("command", ["train", "eigs", "landscape"])
def test_quiet_writes_nothing(run, tmp_path, command):
    out, _ = run
    args = {"train": ["train", "--arch", "mlp", "--subset", "64", "--epochs", "1", "--out", tmp_path / "r"],
            "eigs": ["eigs", out / "last.pt", "--samples", "32", "--k", "1"],
            "landscape": ["landscape", out / "last.pt", "--samples", "16", "--grid", "3", "--out", tmp_path / "s.h5"]}
    result = invoke(*args[command], "--device", "cpu", "--quiet")
    assert result.exit_code == 0 and result.stderr == ""


def test_a_terminal_gets_the_live_bar_not_lines(run, cli, cli_env, tmp_path):
    """A real process whose stderr is a pseudo-terminal: Rich draws (and then clears) its bar."""
    out, _ = run
    leader, follower = pty.openpty()
    env = {**cli_env, "COLUMNS": "120", "TERM": "xterm"}
    process = subprocess.run(cli + ["eigs", str(out / "last.pt"), "--samples", "32", "--k", "1", "--device", "cpu"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=follower, env=env, timeout=300)
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal has no writer left
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    text = screen.decode(errors="replace")
    assert process.returncode == 0
    assert "lanczos" in text and "\x1b[" in text, text[-2000:]  # the bar, drawn with terminal control sequences
    assert not re.search(r"^\[\d\d:\d\d:\d\d\] lanczos", text, re.M)
