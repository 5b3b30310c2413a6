"""CE / mCE / relative mCE (DESIGN §8) against values written from the definition, and the summary
of stored cells: means, clean accuracy, and why mCE is not given."""

import pytest

from alignsam_diag.analysis.robustness import corruption_errors, summarise, summaries
from alignsam_diag.data.robustness_constants import (ALEXNET_CLEAN_ERROR, ALEXNET_ERRORS, BENCHMARK_CORRUPTIONS,
                                                     EXTRA_CORRUPTIONS, GROUPS, IMAGENET_R_INDICES, IMAGENET_R_WNIDS)
from alignsam_diag.errors import UserError
from alignsam_diag.store.robustness import CellScore, SuiteRecord


def test_alexnets_own_errors_give_100_and_uniform_half_gives_64_6726():
    own = corruption_errors(ALEXNET_ERRORS, ALEXNET_CLEAN_ERROR)
    assert own.mce == pytest.approx(100.0, abs=1e-12) and own.relative_mce == pytest.approx(100.0, abs=1e-12)
    assert set(own.ce) == set(BENCHMARK_CORRUPTIONS) and all(v == pytest.approx(1.0) for v in own.ce.values())
    half = corruption_errors({c: [0.5] * 5 for c in BENCHMARK_CORRUPTIONS})
    assert half.mce == pytest.approx(64.6726, abs=5e-5) and half.relative_mce is None
    # from the definition, per corruption: 5 × 0.5 / Σ_s E_AlexNet
    assert half.ce["fog"] == pytest.approx(2.5 / (0.67474 + 0.7605 + 0.84378 + 0.8726 + 0.945))


def test_relative_mce_subtracts_the_clean_errors_on_both_sides():
    errors = {c: [0.3, 0.4, 0.5, 0.6, 0.7] for c in BENCHMARK_CORRUPTIONS}
    result = corruption_errors(errors, clean_error=0.2)
    expected = [sum(e - 0.2 for e in errors[c]) / sum(a - 0.43478 for a in ALEXNET_ERRORS[c])
                for c in BENCHMARK_CORRUPTIONS]
    assert result.relative_mce == pytest.approx(100 * sum(expected) / 15, rel=1e-12)
    assert result.mce == pytest.approx(100 * sum(2.5 / sum(ALEXNET_ERRORS[c]) for c in BENCHMARK_CORRUPTIONS) / 15)


@pytest.mark.parametrize("change, fragment", [
    (lambda e: e.pop("fog"), "missing fog"),
    (lambda e: e.update(speckle_noise=[0.5] * 5), "not a benchmark corruption: speckle_noise"),
    (lambda e: e.update(fog=[0.5] * 4), "all 5 severities"),
])
def test_a_missing_or_extra_corruption_is_a_clear_error(change, fragment):
    errors = {c: [0.5] * 5 for c in BENCHMARK_CORRUPTIONS}
    change(errors)
    with pytest.raises(UserError, match=fragment):
        corruption_errors(errors)


def test_the_constants_are_consistent_with_the_references_other_numbers():
    """The reference also lists AlexNet's mean error over the severities (a few copied here) and
    the 200 ImageNet-R classes in sorted-wnid order."""
    for c, mean in {"gaussian_noise": 0.886428, "glass_blur": 0.826268, "brightness": 0.564592,
                    "jpeg_compression": 0.6065}.items():
        assert sum(ALEXNET_ERRORS[c]) / 5 == pytest.approx(mean, abs=1e-9)
    assert set(ALEXNET_ERRORS) == set(BENCHMARK_CORRUPTIONS) and not set(EXTRA_CORRUPTIONS) & set(BENCHMARK_CORRUPTIONS)
    assert sorted(c for group in GROUPS.values() for c in group) == sorted(BENCHMARK_CORRUPTIONS + EXTRA_CORRUPTIONS)
    assert list(IMAGENET_R_WNIDS) == sorted(set(IMAGENET_R_WNIDS)) and len(IMAGENET_R_WNIDS) == 200
    assert list(IMAGENET_R_INDICES) == sorted(set(IMAGENET_R_INDICES)) and IMAGENET_R_INDICES[-1] < 1000


def _cells(top1: float, corruptions, severities=(1, 2, 3, 4, 5), n: int = 1000) -> list[CellScore]:
    """Cells of ``n`` images with accuracy ``top1`` and top-5 accuracy ``top1`` + 0.2 (at most 1)."""
    top5 = min(1.0, top1 + 0.2)
    return [CellScore(c, s, round(top1 * n), round(top5 * n), n) for c in corruptions for s in severities]


def test_summary_means_clean_and_mce_of_a_whole_imagenet_c_record():
    cells = _cells(0.5, BENCHMARK_CORRUPTIONS) + _cells(0.9, ["saturate"])
    record = SuiteRecord("net.pt", "imagenet-c", {}, cells=cells)
    clean = SuiteRecord("net.pt", "imagenet", {}, cells=[CellScore("clean", 0, 760, 930, 1000)])
    summary_c, = [s for s in summaries([clean, record]) if s.suite == "imagenet-c"]
    assert summary_c.clean.top1 == 0.76
    # the mean covers every cell (the extra corruption too); mCE only the benchmark ones
    assert summary_c.top1 == pytest.approx((75 * 0.5 + 5 * 0.9) / 80)
    assert summary_c.top5 == pytest.approx((75 * 0.7 + 5 * 1.0) / 80)
    assert summary_c.errors.mce == pytest.approx(64.6726, abs=5e-5)
    rce = [sum(0.5 - 0.24 for _ in range(5)) / sum(a - ALEXNET_CLEAN_ERROR for a in ALEXNET_ERRORS[c])
           for c in BENCHMARK_CORRUPTIONS]
    assert summary_c.errors.relative_mce == pytest.approx(100 * sum(rce) / 15) and summary_c.note is None
    alone = summarise(record)  # no clean ImageNet results: mCE yes, relative mCE no
    assert alone.errors.relative_mce is None and "relative mCE" in alone.note and "--suite imagenet" in alone.note


def test_summary_says_why_mce_is_not_defined():
    partial = summarise(SuiteRecord("n.pt", "imagenet-c", {}, cells=_cells(0.5, BENCHMARK_CORRUPTIONS[:-1])))
    assert partial.errors is None and "jpeg_compression/1" in partial.note and "5 cells are missing" in partial.note
    other = summarise(SuiteRecord("n.pt", "cifar10-c", {}, cells=_cells(0.5, ["fog"], (1,))))
    assert other.errors is None and "ImageNet-C only" in other.note and other.top1 == 0.5 and other.clean is None
