"""The training loop on real data: accuracy, history, exact resume after a real SIGKILL,
divergence handling."""

import json
import signal
import subprocess
import time

import numpy as np
import pytest
import torch

from alignsam_diag.data import DataSpec
from alignsam_diag.errors import DivergedError, UserError
from alignsam_diag.models.checkpoint import load_checkpoint, read_file
from alignsam_diag.store.history import read_history
from alignsam_diag.train import Run, TrainConfig, cosine_schedule, train

DIGITS = TrainConfig(data=DataSpec("digits"), arch="cnn-small", epochs=12, batch_size=64, lr=0.05, seed=0)


def test_cnn_small_reaches_95_percent_on_digits(tmp_path):
    result = train(DIGITS, tmp_path / "run")
    assert result.metrics["test_acc"] >= 0.95
    history = read_history(tmp_path / "run" / "history.h5")
    assert history["epoch"].tolist() == list(range(1, 13))
    assert np.all(np.diff(history["lr"]) < 0) and history["lr"][-1] < 1e-3
    assert np.all(history["epoch_seconds"] > 0)
    ckpt = read_file(tmp_path / "run" / "last.pt")  # weights_only=True load
    assert ckpt["epoch"] == 12 and ckpt["step"] == 12 * 23
    assert ckpt["data"]["name"] == "digits" and ckpt["model"]["arch"] == "cnn-small"
    assert ckpt["optimizer"]["name"] == "sgd" and ckpt["version"]
    assert ckpt["metrics"]["test_acc"] == result.metrics["test_acc"]
    # the checkpoint reproduces the reported test accuracy
    loaded = load_checkpoint(tmp_path / "run" / "last.pt")
    from alignsam_diag.data import load_data
    from alignsam_diag.train import evaluate
    assert evaluate(loaded.model, load_data(DataSpec("digits")).test, 512)[1] == result.metrics["test_acc"]


def test_save_every_and_refusing_to_overwrite(tmp_path):
    cfg = TrainConfig(data=DataSpec("digits", subset=200), arch="mlp", epochs=4, batch_size=50, save_every=2)
    train(cfg, tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["epoch_002.pt", "epoch_004.pt", "last.pt"]
    with pytest.raises(UserError, match="--resume"):
        train(cfg, tmp_path)


def test_cosine_schedule_with_warmup():
    f = cosine_schedule(total_steps=110, warmup_steps=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0)


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = TrainConfig(data=DataSpec("digits", subset=256), arch="mlp", epochs=1, batch_size=64, lr=0.01)
    run = Run(cfg, tmp_path, torch.device("cpu"))
    run.run()
    good = read_file(tmp_path / "last.pt")
    run.config.epochs = 2
    run.scheduler.base_lrs = [1e30]
    run.scheduler.lr_lambdas = [lambda step: 1.0]
    with pytest.raises(DivergedError, match=f"lower --lr .*The last good checkpoint is kept in {tmp_path}"):
        run.run()
    kept = read_file(tmp_path / "last.pt")
    assert kept["epoch"] == 1
    assert all(torch.equal(kept["state_dict"][k], good["state_dict"][k]) for k in good["state_dict"])


def test_divergence_in_epoch_1_says_nothing_was_saved(tmp_path):
    cfg = TrainConfig(data=DataSpec("digits", subset=128), arch="mlp", epochs=1, batch_size=64, lr=1e30)
    with pytest.raises(DivergedError) as caught:
        train(cfg, tmp_path / "run")
    message = str(caught.value)
    assert "in epoch 1" in message and "before the first checkpoint, so nothing was saved" in message
    assert "--warmup-epochs" in message and "kept" not in message
    assert not (tmp_path / "run").exists()  # the folder made for the run is removed again


def _final_state(run_dir):
    return read_file(run_dir / "last.pt")["state_dict"]


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path, cli, cli_env):
    # small, but five epochs: the victim is killed early in epoch 2, with three more to spare
    args = ["train", "--dataset", "fashion-mnist", "--subset", "2000", "--arch", "cnn-small", "--epochs", "5",
            "--batch-size", "100", "--lr", "0.05", "--seed", "3", "--device", "cpu", "--quiet"]
    subprocess.run(cli + args + ["--out", str(tmp_path / "straight")], check=True, env=cli_env,
                   capture_output=True)

    victim = tmp_path / "killed"
    proc = subprocess.Popen(cli + args + ["--out", str(victim)], env=cli_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600  # only against a hang: the wait is for a state
    while not (victim / "history.h5").exists() and time.monotonic() < deadline:  # epoch 1 saved, epoch 2 begun
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert read_file(victim / "last.pt")["epoch"] == 1
    assert all(p.name.endswith(f".tmp-{proc.pid}") for p in victim.glob("*.tmp-*"))  # only the victim's own

    done = subprocess.run(cli + args + ["--out", str(victim), "--resume", "--json"], env=cli_env,
                          capture_output=True, text=True, check=True)
    assert json.loads(done.stdout)["epoch"] == 5
    straight, resumed = _final_state(tmp_path / "straight"), _final_state(victim)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_align_sam_draws_one_aux_batch_per_step_of_the_right_size(tmp_path, monkeypatch):
    from alignsam_diag.train import BatchStream
    draws = []
    real = BatchStream.aux_batch

    def spy(self):
        batch = real(self)
        draws.append(len(batch[1]))
        return batch
    monkeypatch.setattr(BatchStream, "aux_batch", spy)
    cfg = TrainConfig(data=DataSpec("digits"), arch="cnn-small", optimizer="align-sam", epochs=6,
                      batch_size=64, lr=0.05)
    result = train(cfg, tmp_path)
    assert draws == [16] * (6 * 23)  # |B^a| = |B^t|/4, one B^a per step for both aux passes
    assert result.metrics["test_acc"] >= 0.95
    stored = read_file(tmp_path / "last.pt")["optimizer"]  # the defaults as used, written out
    assert stored["hyper"] == {"rho": 0.05, "lam": 2.0} and stored["aux_batch_size"] == 16
