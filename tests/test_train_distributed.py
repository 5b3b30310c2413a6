"""`train` under a real torchrun with 2 CPU ranks (gloo): |B^t| and |B^a| are global, each rank
takes its block of every global batch of the single-process order and perturbs with its own
gradient, Align-SAM's auxiliary batches come from rank-keyed streams (rank 0's is the
single-process one), only rank 0 writes, and --resume continues exactly.

Oracles: the same command in one process; SAM by hand on the flat parameter vector; Align-SAM
as each rank's slice fed by hand to the library optimizer in a real 2-rank DDP group."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.parallel import DistributedDataParallel

from alignsam_diag import optim
from alignsam_diag.data import DataSpec, load_data
from alignsam_diag.models import ModelSpec, build_model
from alignsam_diag.store.history import read_history
from alignsam_diag.train import cosine_schedule, epoch_generator
from conftest import invoke
from distributed_harness import first_error, run_ranks, torchrun

SEED, SUBSET, BATCH, LR, RHO = 0, 501, 64, 0.05, 0.1  # 501 = 7 × 64 + 53: the last batch splits 26/27
STEPS = math.ceil(SUBSET / BATCH)
TINY = ["--dataset", "digits", "--subset", SUBSET, "--arch", "mlp", "--batch-size", BATCH, "--lr", LR,
        "--warmup-epochs", "0", "--seed", SEED, "--device", "cpu", "--quiet"]
SGD = {"momentum": 0.9, "weight_decay": 5e-4}  # the CLI's defaults


def weights(run: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return torch.load(run / name, weights_only=True)["state_dict"]


def flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.flatten() for v in state.values()])


def ran(result) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def sgd_run(tmp_path_factory) -> Path:
    """2 epochs of SGD under torchrun, 2 ranks, epoch_001.pt kept."""
    out = tmp_path_factory.mktemp("sgd") / "run"
    ran(torchrun("train", *TINY, "--optimizer", "sgd", "--epochs", 2, "--save-every", 1, "--out", out))
    return out


def test_sgd_on_two_ranks_equals_one_process(sgd_run, tmp_path):
    single = invoke("train", *TINY, "--optimizer", "sgd", "--epochs", 2, "--out", tmp_path / "one")
    assert single.exit_code == 0, single.stderr
    ours, theirs = weights(sgd_run), weights(tmp_path / "one")
    for k in theirs:  # the same samples per step: only the float summation order differs
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=1e-5)
    two, one = read_history(sgd_run / "history.h5"), read_history(tmp_path / "one" / "history.h5")
    assert two["epoch"].tolist() == one["epoch"].tolist() == [1, 2]
    assert two["lr"].tolist() == one["lr"].tolist()
    for column in ("train_loss", "train_acc", "test_loss", "test_acc"):  # sums over both ranks
        torch.testing.assert_close(torch.as_tensor(two[column]), torch.as_tensor(one[column]), rtol=0, atol=1e-5)


def test_only_rank_0_writes_and_the_checkpoint_records_the_spread(sgd_run):
    assert sorted(p.name for p in sgd_run.iterdir()) == ["epoch_001.pt", "epoch_002.pt", "history.h5", "last.pt"]
    stored = torch.load(sgd_run / "last.pt", weights_only=True)
    assert stored["optimizer"]["distributed"] == {"world_size": 2, "batch_size": "global",
                                                  "per_rank_batch_size": BATCH // 2, "per_rank_aux_batch_size": None}
    assert stored["config"]["batch_size"] == BATCH and stored["step"] == 2 * STEPS
    shown = invoke("inspect", sgd_run / "last.pt", "--json")
    assert '"world_size": 2' in shown.stdout, shown.stderr


def test_resume_under_torchrun_continues_to_the_uninterrupted_run(sgd_run, tmp_path):
    run = shutil.copytree(sgd_run, tmp_path / "run")
    shutil.copyfile(run / "epoch_001.pt", run / "last.pt")
    ran(torchrun("train", "--resume", "--out", run, "--device", "cpu", "--quiet"))
    resumed, straight = weights(run), weights(sgd_run)
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    # a run started on 2 ranks resumes in one process (the global batch keeps the steps)
    alone = shutil.copytree(sgd_run, tmp_path / "alone")
    shutil.copyfile(alone / "epoch_001.pt", alone / "last.pt")
    done = invoke("train", "--resume", "--out", alone, "--device", "cpu", "--quiet")
    assert done.exit_code == 0, done.stderr
    assert "distributed" not in torch.load(alone / "last.pt", weights_only=True)["optimizer"]
    assert all(torch.allclose(weights(alone)[k], straight[k], rtol=0, atol=1e-5) for k in straight)


def setup() -> tuple:
    """The data, the initial model and the epoch's order as one process sees them (by hand)."""
    data = load_data(DataSpec("digits", None, SUBSET, 0.0, SEED, None))
    torch.manual_seed(SEED)
    model = build_model(ModelSpec("mlp", data.num_classes, data.in_channels, data.image_size, {}))
    order = torch.randperm(SUBSET, generator=torch.Generator().manual_seed(((SEED * 1_000_003 + 0) * 4 + 0)))
    return data, model, order


def rank_blocks(batch: torch.Tensor) -> list[torch.Tensor]:
    """Rank 0 and rank 1's contiguous blocks of one global batch."""
    half = len(batch) // 2
    return [batch[:half], batch[half:]]


def sam_by_hand(per_rank_perturbation: bool) -> torch.Tensor:
    """One epoch of SAM over 2 ranks: each rank's ascent from its own block's gradient, the
    descent gradient the mean over all samples of the global batch; SGD with momentum, decay
    and the cosine schedule."""
    data, model, order = setup()
    params = dict(model.named_parameters())
    sgd = torch.optim.SGD(params.values(), lr=LR, **SGD)
    schedule = torch.optim.lr_scheduler.LambdaLR(sgd, cosine_schedule(STEPS, 0))

    def loss(theta: dict[str, torch.Tensor], index: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return F.cross_entropy(functional_call(model, theta, (data.train.x[index],)), data.train.y[index],
                               reduction=reduction)

    def gradient(theta, index, reduction="mean"):
        theta = {k: v.detach().requires_grad_() for k, v in theta.items()}
        return dict(zip(theta, torch.autograd.grad(loss(theta, index, reduction), list(theta.values()))))

    for start in range(0, SUBSET, BATCH):
        batch = order[start:start + BATCH]
        blocks = rank_blocks(batch)
        clean = [gradient(params, block) for block in blocks]
        if not per_rank_perturbation:
            clean = [{k: (clean[0][k] * len(blocks[0]) + clean[1][k] * len(blocks[1])) / len(batch)
                      for k in params}] * 2
        descent = {k: torch.zeros_like(v) for k, v in params.items()}
        for g, block in zip(clean, blocks):
            norm = torch.cat([v.flatten() for v in g.values()]).norm()
            point = {k: params[k].detach() + RHO * g[k] / norm for k in params}
            for k, v in gradient(point, block, "sum").items():
                descent[k] += v / len(batch)
        for k, p in params.items():
            p.grad = descent[k]
        sgd.step()
        schedule.step()
    return torch.cat([p.detach().flatten() for p in params.values()])


def test_sam_on_two_ranks_perturbs_per_rank(tmp_path):
    ran(torchrun("train", *TINY, "--optimizer", "sam", "--rho", RHO, "--epochs", 1, "--out", tmp_path / "sam"))
    ours, expected = flat(weights(tmp_path / "sam")), sam_by_hand(per_rank_perturbation=True)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    assert (sam_by_hand(per_rank_perturbation=False) - expected).abs().max() > 1e-3


def _align_sam_rank(rank: int, folder: Path) -> None:
    """Rank ``rank`` of a 2-rank Align-SAM epoch fed by hand: its block of each global batch (loss
    sum × 2 / |batch|) and |B^a|/2 = 8 auxiliary samples per step from its own stream (rank 0's
    the single-process key, rank 1's the loop's rank-keyed one)."""
    data, model, order = setup()
    net = DistributedDataParallel(model)
    align = optim.create("align-sam", model.parameters(), model=net, lr=LR, **SGD)
    schedule = torch.optim.lr_scheduler.LambdaLR(align, cosine_schedule(STEPS, 0))
    aux_gen = torch.Generator().manual_seed((SEED * 1_000_003 + 0) * 4 + 1) if rank == 0 else \
        epoch_generator(SEED, 0, 1, rank=1)
    aux_order = torch.randperm(SUBSET, generator=aux_gen)
    torch.save(aux_order, folder / f"aux{rank}.pt")
    for step, start in enumerate(range(0, SUBSET, BATCH)):
        batch = order[start:start + BATCH]
        block = rank_blocks(batch)[rank]
        aux = aux_order[8 * step:8 * step + 8]

        def closure(which: str = "train") -> torch.Tensor:
            if which == "train":
                loss = F.cross_entropy(net(data.train.x[block]), data.train.y[block], reduction="sum") * 2 / len(batch)
            else:
                loss = F.cross_entropy(net(data.train.x[aux]), data.train.y[aux])
            loss.backward()
            return loss

        align.step(closure)
        schedule.step()
    torch.save(torch.cat([p.detach().flatten() for p in model.parameters()]), folder / f"theta{rank}.pt")


def test_align_sam_on_two_ranks_draws_per_rank_auxiliary_batches(tmp_path):
    ran(torchrun("train", *TINY, "--optimizer", "align-sam", "--epochs", 1, "--out", tmp_path / "align"))
    run_ranks(_align_sam_rank, tmp_path / "by_hand", tmp_path / "by_hand")
    aux = [torch.load(tmp_path / "by_hand" / f"aux{rank}.pt") for rank in (0, 1)]
    assert not torch.equal(aux[0][:8], aux[1][:8])  # the ranks' streams differ
    theta = torch.load(tmp_path / "by_hand" / "theta0.pt")
    torch.testing.assert_close(flat(weights(tmp_path / "align")), theta, rtol=0, atol=1e-6)
    stored = torch.load(tmp_path / "align" / "last.pt", weights_only=True)["optimizer"]
    assert stored["aux_batch_size"] == 16 and stored["distributed"]["per_rank_aux_batch_size"] == 8


def test_a_batch_size_the_ranks_do_not_divide_is_one_clear_error(tmp_path):
    done = torchrun("train", *TINY, "--batch-size", 63, "--epochs", 1, "--out", tmp_path / "odd")
    assert done.returncode != 0
    line = first_error(done.stderr)
    assert "--batch-size 63: under torchrun it is the global batch of all 2 ranks and must be a multiple of 2" in line
    ours = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert sorted(ours) == [f"error: rank {rank} of 2: {line.split(': ', 2)[2]}" for rank in (0, 1)]  # torchrun's report follows
    assert "internal error" not in done.stderr and not (tmp_path / "odd").exists()


def _train_with_batchnorm(rank: int, folder: str) -> None:
    from alignsam_diag.train import Run, TrainConfig

    config = TrainConfig(data=DataSpec("digits", subset=256), arch="cnn-small", arch_kwargs={"width": 8},
                         optimizer="sam", epochs=1, batch_size=64, seed=SEED)
    run = Run(config, Path(folder) / "run", torch.device("cpu"))
    result = run.run()
    buffers = {name: b.clone() for name, b in run.model.named_buffers()}
    torch.save({"buffers": buffers, "test_acc": result.metrics["test_acc"],
                "test_loss": result.metrics["test_loss"]}, f"{folder}/rank{rank}.pt")


def test_batchnorm_statistics_are_rank_0s_on_every_rank_and_the_sharded_evaluation_is_exact(tmp_path):
    """cnn-small has BatchNorm: after SAM on 2 ranks every rank holds the same running statistics
    (rank 0's, broadcast), the checkpoint holds them, and the epoch's test metrics — evaluated in
    shards — equal a one-process evaluation of that checkpoint."""
    from alignsam_diag.models.checkpoint import load_checkpoint
    from alignsam_diag.train import evaluate

    run_ranks(_train_with_batchnorm, tmp_path, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert any("running_mean" in name for name in ranks[0]["buffers"])
    for name, value in ranks[0]["buffers"].items():
        assert torch.equal(value, ranks[1]["buffers"][name]), name
    stored = weights(tmp_path / "run")
    for name, value in ranks[0]["buffers"].items():
        assert torch.equal(stored[name], value), name
    model = load_checkpoint(str(tmp_path / "run" / "last.pt")).model
    loss, acc = evaluate(model, load_data(DataSpec("digits"), torch.device("cpu")).test, 1024)
    assert acc == ranks[0]["test_acc"] == ranks[1]["test_acc"]
    assert loss == pytest.approx(ranks[0]["test_loss"], rel=1e-6)
