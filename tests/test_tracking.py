"""Tracking during training (``train --track-cosine-every``, ``--track-sharpness-every``): the run
ends with the same parameters bit for bit as without it, for each kind; SGD and SAM draw the
auxiliary batch as Align-SAM does; a run interrupted mid-epoch and resumed writes the same step
logs as one that was not; the logged λ_max is the top eigenvalue of a dense Hessian."""

import shutil

import numpy as np
import pytest
import torch
from torch.autograd.functional import hessian
from torch.func import functional_call

from alignsam_diag.data import DataSpec, load_data
from alignsam_diag.models.checkpoint import read_file
from alignsam_diag.store.tracking import read_logs
from alignsam_diag.train import Run, TrainConfig, resume, train

# 128 digits, batch 32: 4 steps per epoch; every 3 steps: logs at 0, 3, 6 (and one mid-epoch 2)
TINY = dict(data=DataSpec("digits", subset=128, augment=True), arch="cnn-small", arch_kwargs={"width": 4},
            epochs=2, batch_size=32, lr=0.05, seed=4)
KINDS = {"cosine": {"track_cosine_every": 3}, "sharpness": {"track_sharpness_every": 3, "track_samples": 48}}


def final(run_dir):
    ckpt = read_file(run_dir / "last.pt")
    return ckpt["state_dict"], ckpt["optimizer_state"]


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The untracked runs, by optimizer (trained on first use)."""
    root, done = tmp_path_factory.mktemp("plain"), {}

    def get(optimizer):
        if optimizer not in done:
            train(TrainConfig(**TINY, optimizer=optimizer), root / optimizer)
            done[optimizer] = final(root / optimizer)
        return done[optimizer]
    return get


@pytest.mark.parametrize("optimizer, kind", [("sam", "cosine"), ("align-sam", "cosine"), ("sgd", "sharpness"),
                                             ("align-sam", "sharpness")])
def test_training_is_bit_identical_with_and_without_tracking(tmp_path, plain, optimizer, kind):
    train(TrainConfig(**TINY, optimizer=optimizer, **KINDS[kind]), tmp_path / "run")
    state, optimizer_state = final(tmp_path / "run")
    plain_state, plain_optimizer_state = plain(optimizer)
    assert state.keys() == plain_state.keys() and all(torch.equal(state[k], plain_state[k]) for k in state)
    momentum = [s["momentum_buffer"] for s in optimizer_state["base"]["state"].values()]
    assert momentum and all(torch.equal(a, s["momentum_buffer"]) for a, s in
                            zip(momentum, plain_optimizer_state["base"]["state"].values()))
    log = read_logs(tmp_path / "run" / "history.h5")[kind]
    assert log.columns["step"].tolist() == [0, 3, 6] and log.every == 3 and log.steps_per_epoch == 4
    assert log.columns["epoch"].tolist() == [0.0, 0.75, 1.5]
    assert read_file(tmp_path / "run" / "last.pt")["config"][f"track_{kind}_every"] == 3


def test_sam_and_align_sam_see_the_same_auxiliary_batches(tmp_path):
    """At ρ = 0 both take the plain SGD step, so their logs agree exactly iff B^a agrees at every step."""
    logs = {}
    for optimizer in ("sam", "align-sam"):
        config = TrainConfig(**TINY, optimizer=optimizer, hyper={"rho": 0.0}, track_cosine_every=2)
        train(config, tmp_path / optimizer)
        logs[optimizer] = read_logs(tmp_path / optimizer / "history.h5")["cosine"]
    sam, align = logs["sam"], logs["align-sam"]
    assert sam.settings["reuses_step_passes"] is False and align.settings["reuses_step_passes"] is True
    assert sam.settings["aux_batch_size"] == align.settings["aux_batch_size"] == 8
    assert len(sam) == 4  # steps 0, 2, 4, 6: B^a is drawn at the steps between too
    for name in ("cosine_b", "cosine_a", "aux_norm_b", "aux_norm_a", "dot_a"):
        np.testing.assert_array_equal(sam.columns[name], align.columns[name], err_msg=name)
    assert np.ptp(sam.columns["aux_norm_b"]) > 0  # the batches differ from step to step


class Interrupt(Exception):
    pass


def stop_in_epoch_2(update):
    if update.task == "train" and update.info.get("epoch") == 2:
        raise Interrupt  # after the first step of epoch 2, with epoch 1 saved


def test_resume_mid_run_keeps_the_step_logs_continuous(tmp_path):
    config = TrainConfig(**TINY, optimizer="sam", track_cosine_every=3, track_sharpness_every=3, track_samples=48,
                         save_every=1)
    train(config, tmp_path / "straight")
    with pytest.raises(Interrupt):
        train(config, tmp_path / "cut", progress=stop_in_epoch_2)
    assert read_logs(tmp_path / "cut" / "history.h5")["cosine"].columns["step"].tolist() == [0, 3]
    resume(tmp_path / "cut")
    older = shutil.copytree(tmp_path / "straight", tmp_path / "older")  # history.h5 ahead of the checkpoint resumed
    shutil.copyfile(older / "epoch_001.pt", older / "last.pt")
    resume(older)
    straight = read_logs(tmp_path / "straight" / "history.h5")
    for resumed, exact in ((read_logs(tmp_path / "cut" / "history.h5"), True),
                           (read_logs(older / "history.h5"), False)):
        for kind in ("cosine", "sharpness"):
            assert resumed[kind].columns.keys() == straight[kind].columns.keys()
            assert resumed[kind].columns["step"].tolist() == [0, 3, 6]
            for name, values in straight[kind].columns.items():
                if name in ("seconds", "products", "residual") and not exact:  # another warm start (step 6's own)
                    continue
                if name != "seconds":
                    np.testing.assert_allclose(resumed[kind].columns[name], values, rtol=0 if exact else 1e-3,
                                               err_msg=f"{kind} {name}")


def dense_top_eigenvalue(model, state, x, y):
    """λ_max of the float64 Hessian of the mean cross-entropy of ``model`` with weights and
    (eval-mode) BatchNorm statistics ``state``, over the flat parameters, by numpy."""
    state = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    names = [n for n, _ in model.named_parameters()]

    def loss(theta):
        pieces = dict(zip(names, theta.split([state[n].numel() for n in names])))
        params = {n: pieces[n].view_as(state[n]) for n in names}
        buffers = {k: v for k, v in state.items() if k not in params}
        return torch.nn.functional.cross_entropy(functional_call(model, {**params, **buffers}, (x,)), y)

    flat = torch.cat([state[n].reshape(-1) for n in names])
    return np.linalg.eigvalsh(hessian(loss, flat, vectorize=True).numpy())[-1]


def test_logged_sharpness_is_the_top_eigenvalue_of_the_dense_hessian(tmp_path):
    """Logs at steps 0 and 2 (θ_0 and θ_2 = epoch_001.pt); all 64 samples, BatchNorm in eval mode."""
    config = TrainConfig(data=DataSpec("digits", subset=64), arch="cnn-small", arch_kwargs={"width": 2}, epochs=2,
                         batch_size=32, lr=0.05, seed=1, track_sharpness_every=2, track_samples=500, save_every=1)
    run = Run(config, tmp_path / "run", torch.device("cpu"))
    start = {k: v.clone() for k, v in run.model.state_dict().items()}
    run.run()
    log = read_logs(tmp_path / "run" / "history.h5")["sharpness"]
    assert log.columns["step"].tolist() == [0, 2] and log.settings["samples"] == 64
    data = load_data(config.data).train
    model = run.model.double().eval()
    for row, state in ((0, start), (1, read_file(tmp_path / "run" / "epoch_001.pt")["state_dict"])):
        top = dense_top_eigenvalue(model, state, data.x.double(), data.y)
        assert log.columns["lambda_max"][row] == pytest.approx(top, rel=2e-3)
        assert log.columns["residual"][row] <= 1e-3 * top * 1.01 and log.columns["converged"][row]
    assert log.columns["products"][0] > 0 and log.columns["lr"][1] == pytest.approx(0.05)
    assert log.arrays["vector"].shape == (sum(p.numel() for p in model.parameters()),)
