"""`alignsam-diag robustness` and `figures robustness` as a user runs them: JSON values against the
model run by hand on the same images, the Table-6 text, a killed run that resumes with only the
missing cells, CIFAR-C without its clean split, and bad input as one line."""

import json

import numpy as np
import pytest
import torch

from alignsam_diag.analysis import robustness as robustness_module
from alignsam_diag.data import DataSpec
from alignsam_diag.inputs import load_inputs
from alignsam_diag.models import ModelSpec, build_model
from alignsam_diag.models.checkpoint import load_checkpoint, save_checkpoint
from alignsam_diag.store.robustness import read_records
from conftest import assert_one_clear_line, invoke

FAST = ["--workers", "0", "--device", "cpu", "--quiet"]


def scores(model, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Top-1 and top-5 accuracy of ``model`` on uint8 N×H×W×C images, un-normalised pixels in [0, 1]."""
    with torch.no_grad():
        logits = model(torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 255)
    y = torch.from_numpy(np.array(labels))
    top5 = (logits.topk(5, dim=1).indices == y[:, None]).any(1)
    return float((logits.argmax(1) == y).float().mean()), float(top5.float().mean())


def test_json_matches_the_model_on_the_cached_corruptions(tmp_path, checkpoints):
    cache, out = tmp_path / "cache", tmp_path / "digits.h5"
    result = invoke("robustness", *checkpoints, "--corruptions", "gaussian_noise,contrast", "--severities", "1,5",
                    "--cache-dir", cache, "--out", out, "--json", *FAST)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [(r["checkpoint"], r["suite"]) for r in report] == [(str(c), "corrupt:digits") for c in checkpoints]
    for r, path in zip(report, checkpoints):
        assert {"checkpoint", "suite", "clean_top1", "top1", "top5", "mce", "cells", "settings"} <= set(r)
        assert r["mce"] is None and "ImageNet-C only" in r["note"] and r["cells_computed"] == 5
        test = load_inputs(path, split="test", samples=None)  # the clean split as training loads it
        with torch.no_grad():
            own = float((test.checkpoint.model(test.data.x).argmax(1) == test.data.y).float().mean())
        assert r["clean_top1"] == pytest.approx(own)
        labels = test.data.y.numpy()
        cells = {(c["corruption"], c["severity"]): c for c in r["cells"]}
        assert sorted(cells) == [("contrast", 1), ("contrast", 5), ("gaussian_noise", 1), ("gaussian_noise", 5)]
        for (corruption, severity), cell in cells.items():
            images = np.load(next(cache.rglob(f"{corruption}/severity{severity}-seed0.npy")))
            top1, top5 = scores(test.checkpoint.model, images, labels)
            assert cell["samples"] == 360
            assert (cell["top1"], cell["top5"]) == (pytest.approx(top1), pytest.approx(top5))
        assert r["top1"] == pytest.approx(np.mean([c["top1"] for c in r["cells"]]))
    assert len(read_records(out)) == 2


def test_table_resume_after_a_kill_and_other_settings(tmp_path, checkpoints, monkeypatch):
    out = tmp_path / "resume.h5"
    args = ["robustness", *checkpoints, "--corruptions", "gaussian_noise", "--cache-dir", tmp_path / "cache",
            "--out", out, *FAST]
    first = invoke(*args, "--severities", "1")
    assert first.exit_code == 0, first.stderr
    header, *rows = first.stdout.splitlines()[:3]
    assert header.split() == ["Method", "digits", "top-1", "digits-C", "top-1", "digits", "top-5", "digits-C", "top-5"]
    assert [row.split()[0] for row in rows] == ["sgd-last", "sam-last"] and "written to" in first.stdout
    done = {r.checkpoint: r.cells for r in read_records(out)}

    real, calls = robustness_module.score_cell, []

    def killed_after_one(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(robustness_module, "score_cell", killed_after_one)
    stopped = invoke(*args, "--severities", "1-3")
    assert stopped.exit_code == 130 and "rerun the same command" in stopped.stderr
    kept = {r.checkpoint: r.cells for r in read_records(out)}
    assert len(kept[str(checkpoints[0])]) == 3 and kept[str(checkpoints[1])] == done[str(checkpoints[1])]
    monkeypatch.undo()

    resumed = invoke(*args, "--severities", "1-3", "--json")
    assert resumed.exit_code == 0, resumed.stderr
    assert [r["cells_computed"] for r in json.loads(resumed.stdout)] == [1, 2]
    final = {r.checkpoint: r.cells for r in read_records(out)}
    assert all(final[c][:len(kept[c])] == kept[c] for c in kept)  # finished cells are never recomputed
    assert [len(cells) for cells in final.values()] == [4, 4]
    assert_one_clear_line(invoke(*args, "--seed", "1"), "made with other settings: seed 0 (now 1)")


def test_figures_robustness_writes_markdown_and_latex(tmp_path, checkpoints):
    out = tmp_path / "r.h5"
    assert invoke("robustness", *checkpoints, "--corruptions", "contrast", "--severities", "2", "--cache-dir",
                  tmp_path / "cache", "--out", out, *FAST).exit_code == 0
    made = invoke("figures", "robustness", out, "--labels", "SGD,SAM", "--out", tmp_path / "tables")
    assert made.exit_code == 0, made.stderr
    markdown = (tmp_path / "tables" / "r-table6.md").read_text()
    latex = (tmp_path / "tables" / "r-table6.tex").read_text()
    stored = robustness_module.summaries(read_records(out))
    assert markdown.splitlines()[0] == "| Method | digits top-1 | digits-C top-1 | digits top-5 | digits-C top-5 |"
    assert markdown.splitlines()[2] == (f"| SGD | {100 * stored[0].clean.top1:.2f} | {100 * stored[0].top1:.2f} | "
                                        f"{100 * stored[0].clean.top5:.2f} | {100 * stored[0].top5:.2f} |")
    assert r"\multicolumn{2}{c}{Top-1 Acc (\%)}" in latex and r"\toprule" in latex and "\nSAM & " in latex
    only = invoke("figures", "robustness", out, "--out", tmp_path / "t.tex")
    assert only.exit_code == 0 and (tmp_path / "t.tex").read_text() == latex.replace("SGD", "sgd-last").replace(
        "SAM &", "sam-last &")
    assert_one_clear_line(invoke("figures", "robustness", out, "--out", tmp_path / "t.md", "--format", "tex"),
                          "--format tex: contradicts --out")


@pytest.fixture(scope="module")
def cifar_c(tmp_path_factory):
    """A CIFAR-10-C folder (two corruptions, 3 images per severity) and a 3×32×32 cnn-small
    checkpoint that records no data set."""
    root = tmp_path_factory.mktemp("CIFAR-10-C")
    rng = np.random.default_rng(0)
    for name in ("fog", "snow"):
        np.save(root / f"{name}.npy", rng.integers(0, 256, (15, 32, 32, 3), dtype=np.uint8))
    np.save(root / "labels.npy", rng.integers(0, 10, 15))
    torch.manual_seed(0)
    spec = ModelSpec("cnn-small", 10, 3, 32, {"width": 8})
    save_checkpoint(root / "net.pt", {"state_dict": build_model(spec).state_dict(), "model": spec.to_dict()})
    spec_data = {"state_dict": build_model(spec).state_dict(), "model": spec.to_dict(),
                 "data": DataSpec("cifar10", str(root / "nowhere")).to_dict()}
    save_checkpoint(root / "cifar10.pt", spec_data)
    return root


def test_cifar_c_without_its_clean_split(tmp_path, cifar_c):
    result = invoke("robustness", cifar_c / "net.pt", "--suite", "cifar10-c", "--data-root", cifar_c, "--normalise",
                    "none", "--severities", "2", "--out", tmp_path / "c.h5", "--json", *FAST)
    assert result.exit_code == 0, result.stderr
    (r,) = json.loads(result.stdout)
    assert r["clean_top1"] is None and r["settings"]["clean"] is None and r["suite"] == "cifar10-c"
    model = load_checkpoint(cifar_c / "net.pt").model
    labels = np.load(cifar_c / "labels.npy")[3:6]
    for cell in r["cells"]:
        top1, top5 = scores(model, np.load(cifar_c / f"{cell['corruption']}.npy")[3:6], labels)
        assert cell["severity"] == 2 and cell["samples"] == 3
        assert (cell["top1"], cell["top5"]) == (pytest.approx(top1), pytest.approx(top5))


CASES = [
    (["--suite", "imagenet-x"], "--suite imagenet-x: choose one of imagenet, imagenet-c"),
    (["--corruptions", "fog,fogg"], "'fogg' is not a corruption"),
    (["--severities", "0-7"], "--severities 0-7: write severities between 1 and 5"),
    (["--severities", "a"], "--severities a:"),
    (["--suite", "imagenet-c"], "--suite imagenet-c: needs --data-root"),
    (["--suite", "corrupt", "--suite", "imagenet", "--data-root", "x"], "--data-root: give one per --suite"),
    (["--suite", "imagenet-c", "--data-root", "{dir}"], "no ImageNet-C corruption folders"),
    (["--suite", "imagenet", "--data-root", "{dir}/missing"], "no such folder"),
    (["--suite", "cifar10-c", "--data-root", "{cifar}", "--normalise", "none"], "the model cannot take these samples"),
    (["--suite", "cifar10-c", "--data-root", "{dir}"], "no labels.npy"),
    (["--amp", "fp16"], "--amp fp16: choose none or bf16"),
    (["--normalise", "1,2/0"], "--normalise 1,2/0: write auto, none, imagenet, or MEAN/STD"),
    (["--normalise", "0.5/0.5", "--suite", "cifar10-c", "--data-root", "{cifar}"], "1 channel(s) but cifar10-c's"),
    (["--workers", "-1"], "--workers -1: must be 0"),
    (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["--preprocess", "crop"], "--preprocess crop: choose center-crop-224 or resize256-crop224"),
    (["--dataset", "npz:{dir}/x.npz"], "the corrupt suite needs 8-bit images"),
    (["--out", "{dir}"], "is a folder"),
]


@pytest.mark.parametrize("extra, fragment", CASES, ids=[c[1][:30] for c in CASES])
def test_bad_input_is_one_clear_line(tmp_path, checkpoints, cifar_c, extra, fragment):
    np.savez(tmp_path / "x.npz", x=np.zeros((4, 1, 8, 8), np.float32), y=np.arange(4))
    args = [a.format(dir=tmp_path, cifar=cifar_c) for a in extra]
    result = invoke("robustness", checkpoints[0], "--cache-dir", tmp_path / "cache", *FAST,
                    *(["--out", tmp_path / "r.h5"] if "--out" not in args else []), *args)
    assert_one_clear_line(result, fragment)


@pytest.mark.parametrize("checkpoint, fragment", [
    ("net.pt", "does not record its data normalisation and cifar10-c has no standard one"),
    ("cifar10.pt", "its normalisation comes from its data set cifar10, which cannot be read here"),
    ("missing.pt", "no such checkpoint file"),
])
def test_normalisation_that_cannot_be_known_is_one_clear_line(tmp_path, cifar_c, checkpoint, fragment):
    result = invoke("robustness", cifar_c / checkpoint, "--suite", "cifar10-c", "--data-root", cifar_c,
                    "--out", tmp_path / "r.h5", *FAST)
    assert_one_clear_line(result, fragment)
