"""pipeline.stats against independent references: scipy's exact binomial test, scipy's bootstrap, known truths."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from pipeline.stats import format_mean_std, mcnemar_exact, mean_std, paired_bootstrap


def _pairs(n01: int, n10: int, n11: int = 7, n00: int = 3) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([1] * n01 + [0] * n10 + [1] * n11 + [0] * n00, bool)
    b = np.array([0] * n01 + [1] * n10 + [1] * n11 + [0] * n00, bool)
    return a, b


@pytest.mark.parametrize("n01,n10", [(1, 0), (3, 0), (5, 9), (9, 5), (12, 12), (50, 70), (200, 150), (1000, 1100)])
def test_mcnemar_is_scipy_exact_binomial_test_on_the_discordant_pairs(n01, n10):
    a, b = _pairs(n01, n10)
    r = mcnemar_exact(a, b)
    assert (r.n01, r.n10) == (n01, n10)
    ref = sps.binomtest(n01, n01 + n10, 0.5, alternative="two-sided").pvalue
    assert r.p_value == pytest.approx(ref, rel=1e-12, abs=0)


def test_mcnemar_published_value_and_edge_cases():
    # by hand: 2 vs 6 discordant pairs, p = 2 * (C(8,0) + C(8,1) + C(8,2)) / 2^8 = 74 / 256; concordant pairs ignored
    a, b = _pairs(n01=2, n10=6, n11=59, n00=4)
    assert mcnemar_exact(a, b).p_value == 74 / 256
    assert mcnemar_exact(a, b) == mcnemar_exact(*_pairs(n01=2, n10=6, n11=0, n00=0))
    assert mcnemar_exact(*_pairs(0, 0)).p_value == 1.0  # no discordant pairs: no evidence either way
    assert mcnemar_exact(*_pairs(4, 4)).p_value == 1.0  # symmetric: capped at 1
    with pytest.raises(ValueError, match="same 1-D shape"):
        mcnemar_exact(np.ones(3, bool), np.ones(4, bool))
    with pytest.raises(ValueError, match="bool or 0/1"):
        mcnemar_exact(np.array([0, 2]), np.array([0, 1]))


def _synthetic(rng: np.random.Generator, S: int, N: int, p_a: float, p_b: float) -> tuple[np.ndarray, np.ndarray]:
    """Seeds x samples correctness with per-sample difficulty and per-seed quality (crossed random effects);
    the population difference E[a] - E[b] is p_a - p_b exactly (both effects have mean 0 on the logit-free scale)."""
    difficulty = rng.uniform(-0.05, 0.05, N)         # per test sample, shared by both methods
    seed_a = rng.uniform(-0.02, 0.02, S)              # per training seed
    seed_b = rng.uniform(-0.02, 0.02, S)
    u = rng.random((S, N))                            # shared noise: the two methods are correlated, as paired runs
    a = u < (p_a + difficulty[None] + seed_a[:, None])
    b = u < (p_b + difficulty[None] + seed_b[:, None])
    return a, b


def test_bootstrap_interval_covers_the_true_difference_at_about_the_nominal_rate():
    rng = np.random.default_rng(2026)
    covered, excluded_zero, trials = 0, 0, 120
    for k in range(trials):
        a, b = _synthetic(rng, S=5, N=250, p_a=0.80, p_b=0.76)
        r = paired_bootstrap(a, b, n_boot=400, seed=k)
        covered += r.lo <= 0.04 <= r.hi
        excluded_zero += r.excludes_zero
    assert 0.88 <= covered / trials <= 1.0, covered  # 95 % nominal; the two-way bootstrap errs on the safe side
    assert excluded_zero / trials > 0.5  # and it is not vacuous: a real 4 pt difference is detected mostly


def test_bootstrap_under_the_null_rarely_excludes_zero():
    """10 seeds, no difference: a false "beats" in about 5 % of studies (with 3-5 seeds and seed-dominated
    variance it is ~11 %: the bootstrap sees only S seed values; module doc)."""
    rng = np.random.default_rng(7)
    false = sum(paired_bootstrap(*_synthetic(rng, 10, 200, 0.8, 0.8), n_boot=400, seed=k).excludes_zero
                for k in range(80))
    assert false <= 9  # 80 studies at 5 %: 4 expected, P(>= 10) < 1 %


def test_bootstrap_is_deterministic_per_seed_and_independent_of_the_block_size():
    a, b = _synthetic(np.random.default_rng(0), S=3, N=200, p_a=0.9, p_b=0.88)
    r1 = paired_bootstrap(a, b, n_boot=2000, seed=5)
    assert r1 == paired_bootstrap(a, b, n_boot=2000, seed=5)
    assert r1 == paired_bootstrap(a, b, n_boot=2000, seed=5, block=2000)
    assert (r1.lo, r1.hi) != (paired_bootstrap(a, b, n_boot=2000, seed=6).lo,
                              paired_bootstrap(a, b, n_boot=2000, seed=6).hi)
    assert r1.delta == pytest.approx(a.mean() - b.mean()) and r1.lo <= r1.delta <= r1.hi
    assert (r1.n_seeds, r1.n_samples, r1.n_boot, r1.ci) == (3, 200, 2000, 0.95)


def test_one_seed_bootstrap_matches_scipys_paired_percentile_bootstrap():
    """S = 1 is the ordinary paired bootstrap over samples: scipy.stats.bootstrap (percentile) on the per-sample
    differences is an independent implementation of the same interval (different random streams: ~0.3 pt apart)."""
    a, b = _synthetic(np.random.default_rng(3), S=1, N=400, p_a=0.85, p_b=0.8)
    ours = paired_bootstrap(a[0], b[0], n_boot=20_000, seed=1)
    ref = sps.bootstrap((a[0].astype(float) - b[0].astype(float),), np.mean, n_resamples=20_000,
                        method="percentile", random_state=np.random.default_rng(1)).confidence_interval
    assert ours.lo == pytest.approx(ref.low, abs=0.004) and ours.hi == pytest.approx(ref.high, abs=0.004)


def test_seed_resampling_widens_the_interval_when_seeds_disagree():
    """Seeds that disagree (one seed +10 pt, one -10 pt) must give a wider interval than the samples alone."""
    rng = np.random.default_rng(11)
    u = rng.random((2, 500))
    a = np.stack([u[0] < 0.9, u[1] < 0.7])
    b = np.stack([u[0] < 0.8, u[1] < 0.8])
    both = paired_bootstrap(a, b, n_boot=2000)
    per_seed = [paired_bootstrap(a[s], b[s], n_boot=2000) for s in range(2)]
    assert both.hi - both.lo > max(r.hi - r.lo for r in per_seed)
    assert not both.excludes_zero


def test_bootstrap_refuses_unpaired_shapes():
    with pytest.raises(ValueError, match="same non-empty"):
        paired_bootstrap(np.ones((2, 5), bool), np.ones((3, 5), bool))


def test_mean_std_is_the_sample_standard_deviation():
    vals = [0.9496, 0.9525, 0.9468]
    m, s = mean_std(vals)
    assert m == pytest.approx(np.mean(vals)) and s == pytest.approx(np.std(vals, ddof=1))
    assert mean_std([0.5]) == (0.5, 0.0)
    assert format_mean_std([0.9, 0.92]) == f"{91.0:.2f} ± {np.std([90, 92], ddof=1):.2f}"
    assert format_mean_std([0.9]) == "90.00" and format_mean_std([]) == "–" and format_mean_std([None]) == "–"
