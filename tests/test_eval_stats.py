"""CIs against hand calculations; McNemar against the binomial by hand and scipy; hard classes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from llava_ablate.eval.hard import HardClassSelector
from llava_ablate.eval.stats import bootstrap_accuracy, mcnemar_exact, paired_comparison
from llava_ablate.eval_config import HardCfg


def test_bootstrap_two_samples_by_hand():
    # n=2, one right: resampled means are 0 (1/4), 0.5 (1/2), 1 (1/4) -> the 95% percentile
    # interval is [0, 1].
    est = bootstrap_accuracy([1, 0], n_boot=20000, seed=0)
    assert est.value == 0.5 and est.ci_low == 0.0 and est.ci_high == 1.0


def test_bootstrap_matches_normal_approximation_and_explicit_resampling():
    correct = np.array([1] * 300 + [0] * 100)  # p = 0.75, n = 400
    est = bootstrap_accuracy(correct, n_boot=20000, seed=1)
    half = 1.96 * math.sqrt(0.75 * 0.25 / 400)  # 0.04243 by hand
    assert est.ci_low == pytest.approx(0.75 - half, abs=0.006)
    assert est.ci_high == pytest.approx(0.75 + half, abs=0.006)
    # The same bootstrap done the slow way (resampling indices) agrees.
    rng = np.random.default_rng(2)
    slow = correct[rng.integers(0, 400, size=(4000, 400))].mean(axis=1)
    lo, hi = np.quantile(slow, [0.025, 0.975])
    assert est.ci_low == pytest.approx(lo, abs=0.006) and est.ci_high == pytest.approx(
        hi, abs=0.006
    )


def test_mcnemar_exact_by_hand_and_scipy():
    # 3 vs 12 discordant pairs: p = 2 * P(X <= 3), X ~ Bin(15, 1/2)
    by_hand = 2 * (1 + 15 + 105 + 455) / 2**15
    assert mcnemar_exact(3, 12) == pytest.approx(by_hand)  # 0.03515625
    assert mcnemar_exact(12, 3) == pytest.approx(sps.binomtest(3, 15, 0.5).pvalue)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == pytest.approx(1.0)


def test_paired_comparison_counts_delta_and_ci():
    a = np.array([1] * 50 + [1] * 3 + [0] * 12 + [0] * 35, dtype=bool)
    b = np.array([1] * 50 + [0] * 3 + [1] * 12 + [0] * 35, dtype=bool)
    cmp = paired_comparison(a, b, n_boot=20000, seed=0)
    assert (cmp.a_only, cmp.b_only, cmp.n) == (3, 12, 100)
    assert cmp.delta == pytest.approx(0.09)
    assert cmp.mcnemar_p == pytest.approx(0.03515625)
    # Paired SE by hand: sqrt((p10 + p01 - (p01 - p10)^2) / n) = sqrt((0.15 - 0.0081)/100)
    se = math.sqrt((0.15 - 0.0081) / 100)
    assert cmp.delta_ci_low == pytest.approx(0.09 - 1.96 * se, abs=0.01)
    assert cmp.delta_ci_high == pytest.approx(0.09 + 1.96 * se, abs=0.01)
    assert cmp.delta_ci_low > 0  # this difference is significant, as McNemar says


def test_paired_bootstrap_matches_explicit_paired_resampling():
    # The shortcut (a multinomial over the four right/wrong cells) must give the interval that
    # resampling question indices -- the same index for both runs -- gives.
    rng = np.random.default_rng(3)
    a = rng.random(300) < 0.6
    b = np.where(rng.random(300) < 0.8, a, ~a)  # correlated runs: pairing narrows the CI
    cmp = paired_comparison(a, b, n_boot=20000, seed=0)
    idx = np.random.default_rng(4).integers(0, 300, size=(4000, 300))
    slow = b[idx].mean(axis=1) - a[idx].mean(axis=1)
    lo, hi = np.quantile(slow, [0.025, 0.975])
    assert cmp.delta_ci_low == pytest.approx(lo, abs=0.006)
    assert cmp.delta_ci_high == pytest.approx(hi, abs=0.006)


def test_paired_comparison_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="same questions"):
        paired_comparison([1, 0], [1])


def test_hard_classes_bottom_q_list_and_exposure(tmp_path):
    names = ["a", "b", "c", "d", "e"]
    ref = tmp_path / "per_class.csv"
    ref.write_text("class_name,n,accuracy\na,5,0.9\nb,5,0.1\nc,5,0.5\nd,5,0.1\ne,5,0.8\n")
    sel = HardClassSelector(HardCfg(mode="bottom_q", q=0.4, reference=str(ref)))
    assert sel.select(names) == {"b", "d"}
    assert HardClassSelector(HardCfg(mode="list", classes=["c", "zz"])).select(names) == {"c"}
    table = tmp_path / "toy" / "exposure.csv"
    table.parent.mkdir()
    table.write_text("class_name,exposure,mentions\na,0,0\nb,10,12\nc,3,3\nd,0,0\ne,7,9\n")
    cfg = HardCfg(
        mode="exposure", q=0.2, exposure_table=str(tmp_path / "{dataset}" / "exposure.csv")
    )
    assert HardClassSelector(cfg).select(names, "toy") == {"a"}  # tie at 0 broken by name
    assert HardClassSelector(HardCfg(mode="none")).select(names) == set()
