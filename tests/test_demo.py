"""``demo --quick`` end to end from an empty folder: every stage's results, every figure and
table of ``figures all`` (valid PNG, PDF, LaTeX, Markdown), a REPORT.md whose links resolve,
and a second run that skips every finished stage."""

import json
import re
import struct
from pathlib import Path

import pytest

from conftest import invoke

PNG = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG, path
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    first = invoke("demo", "--quick", "--out", out, "--device", "cpu", "--quiet")
    assert first.exit_code == 0, first.stderr
    return out, first


def test_every_stage_writes_its_results(demo):
    out, first = demo
    for name in ("eigs.h5", "landscape.h5", "cosine.h5", "robustness.h5", "sharpness.h5", "train/sweep.h5",
                 "lambda/sweep.h5"):
        assert (out / name).is_file(), name
    for optimizer in ("sgd", "sam", "align-sam"):
        run = out / "train" / "runs" / f"optimizer={optimizer}"
        assert (run / "last.pt").is_file() and (run / "epoch_001.pt").is_file()
    state = json.loads((out / "demo.json").read_text())
    assert set(state["stages"]) == {"train", "eigs", "landscape", "cosine", "robustness", "sharpness",
                                       "lambda"}
    # the summary table names each optimizer with its accuracy, λ1 and corrupted top-1
    rows = {line.split()[0]: line.split()[1:] for line in first.stdout.splitlines()[1:4]}
    assert set(rows) == {"SGD", "SAM", "Align-SAM"}
    assert all(len(cells) == 3 and "–" not in cells for cells in rows.values()), first.stdout


def test_every_figure_and_table_is_valid_and_in_the_report(demo):
    out, _ = demo
    figures = out / "figures"
    expected = ["training-curves-train", "figure1-cosine-tracked-train", "sharpness-trajectory-train",
                "figure1-cosine-cosine", "figure2-lambda-lambda", "density-eigs", "figure3-landscape-landscape",
                "figure4-landscape-landscape", "sharpness-radius-sharpness"]
    for stem in expected:
        width, height = png_size(figures / f"{stem}.png")
        assert width > 300 and height > 200
        assert (figures / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
    for stem in ("table10-eigs", "table6-robustness"):
        tex = (figures / f"{stem}.tex").read_text()
        assert r"\begin{tabular}" in tex and r"\toprule" in tex and r"\bottomrule" in tex
        assert tex.count(r"\begin{") == tex.count(r"\end{")
        assert "| SGD" in (figures / f"{stem}.md").read_text()
    report = (figures / "REPORT.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert len(links) >= 2 * len(expected) + 2
    for link in links:
        assert (figures / link).is_file(), link
    for stem in expected:
        assert f"({stem}.png)" in report


def test_a_second_run_skips_every_finished_stage(demo):
    out, _ = demo
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    again = invoke("demo", "--quick", "--out", out, "--device", "cpu", "--quiet")
    assert again.exit_code == 0, again.stderr
    assert "skipped (finished before): train, eigs, landscape, cosine, robustness, sharpness, lambda" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")} == before
