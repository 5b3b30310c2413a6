"""The CLI as a user meets it: help for every command, clear one-line errors with exit code 2,
no traceback, no partial outputs."""

import json
import signal
import subprocess
import threading

import torch

from conftest import invoke
from alignsam_diag.models import ModelSpec, build_model
from cli.app import COMMANDS
from cli.common import handle_errors


def run(cli, env, *args, cwd=None):
    return subprocess.run(cli + list(args), env=env, capture_output=True, text=True, cwd=cwd)


def test_help_for_every_registered_command():
    top = invoke("--help")
    assert top.exit_code == 0
    for name in COMMANDS:
        assert name in top.stdout
        sub = invoke(name, "--help")
        assert sub.exit_code == 0 and "Usage" in sub.stdout, name


def test_debug_shows_the_traceback(cli, cli_env):
    result = run(cli, cli_env, "--debug", "inspect", "/nonexistent/model.pt")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_train_json_and_inspect(tmp_path):
    result = invoke("train", "--epochs", "2", "--subset", "300", "--arch", "mlp", "--device", "cpu",
                    "--out", tmp_path / "r", "--json")
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["epoch"] == 2 and 0 <= metrics["test_acc"] <= 1
    shown = invoke("inspect", tmp_path / "r" / "last.pt")
    assert shown.exit_code == 0
    for text in ("mlp", "Linear", "training history", "sgd"):
        assert text in shown.stdout
    as_json = json.loads(invoke("inspect", tmp_path / "r" / "last.pt", "--json").stdout)
    assert as_json["arch"] == "mlp" and as_json["history"]["epoch"] == [1.0, 2.0]


def test_inspect_third_party_state_dict(tmp_path):
    model = build_model(ModelSpec("resnet32", num_classes=100, in_channels=3, image_size=32))
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "ddp.pth")
    no_arch = invoke("inspect", tmp_path / "ddp.pth")
    assert no_arch.exit_code == 2 and "--arch" in no_arch.stderr
    shown = json.loads(invoke("inspect", tmp_path / "ddp.pth", "--arch", "resnet32", "--json").stdout)
    assert shown["num_classes"] == 100 and shown["parameters"] == sum(p.numel() for p in model.parameters())


def test_sigterm_handling_is_scoped_to_the_command():
    """Commands see SIGTERM as an interrupt only while they run (the caller's handler comes back),
    and a command called from a worker thread, where handlers cannot be set, still runs."""
    seen = []
    command = handle_errors(lambda: seen.append(signal.getsignal(signal.SIGTERM)) or "ran")
    before = signal.getsignal(signal.SIGTERM)
    assert command() == "ran"
    assert seen[-1] is signal.default_int_handler and signal.getsignal(signal.SIGTERM) is before

    result = []
    worker = threading.Thread(target=lambda: result.append(command()))
    worker.start()
    worker.join()
    assert result == ["ran"] and seen[-1] is before
