"""interp/statistics.py: metrics equal scikit-learn's, the bootstrap resamples clusters, the baseline test
keeps its error rate, Bonferroni, emergence steps and drift."""
import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, balanced_accuracy_score, recall_score, roc_auc_score

from interp import statistics


def _labelled(rng, n=60, ties=False):
    y = rng.random(n) < 0.4
    scores = rng.standard_normal(n) + y
    if ties:
        scores = np.round(scores, 0)
    return y, scores, scores > 0.3


@pytest.mark.parametrize("ties", [False, True])
def test_point_estimates_match_sklearn(ties):
    rng = np.random.default_rng(1)
    y, scores, decisions = _labelled(rng, ties=ties)
    expected = {"auroc": roc_auc_score(y, scores), "accuracy": accuracy_score(y, decisions),
                "tpr": recall_score(y, decisions), "tnr": recall_score(y, decisions, pos_label=False),
                "balanced_accuracy": balanced_accuracy_score(y, decisions)}
    weighted = statistics.binary_metrics(statistics.point_weights(len(y)), y, scores, decisions)
    ranked = statistics.point_metrics(y, np.stack([scores, -scores]), np.stack([decisions, ~decisions]))
    for metric, value in expected.items():
        assert weighted[metric][0] == pytest.approx(value, abs=1e-12), metric
        assert ranked[metric][0] == pytest.approx(value, abs=1e-12), metric
    assert ranked["auroc"][1] == pytest.approx(1 - expected["auroc"])


def test_weights_mean_repetition():
    """A bootstrap weight of 3 is the same as the item appearing three times (what resampling means)."""
    rng = np.random.default_rng(2)
    y, scores, decisions = _labelled(rng, n=40, ties=True)
    counts = rng.integers(0, 4, size=40)
    weighted = statistics.binary_metrics(counts[None].astype(float), y, scores, decisions)
    repeated = np.repeat(np.arange(40), counts)
    assert weighted["auroc"][0] == pytest.approx(roc_auc_score(y[repeated], scores[repeated]))
    assert weighted["balanced_accuracy"][0] == pytest.approx(
        balanced_accuracy_score(y[repeated], decisions[repeated]))


def test_one_class_gives_nan_not_error():
    y = np.zeros(10, bool)
    result = statistics.binary_metrics(statistics.point_weights(10), y, np.arange(10.0), y)
    assert np.isnan(result["auroc"][0]) and np.isnan(result["tpr"][0]) and result["tnr"][0] == 1.0
    assert np.isnan(statistics.point_metrics(y, np.arange(10.0))["auroc"][0])


def test_cluster_weights_draw_whole_clusters():
    weights = statistics.cluster_weights(7, 500, np.random.default_rng(0))
    assert weights.shape == (500, 7)
    assert np.all(weights.sum(axis=1) == 7) and np.all(weights == np.round(weights))
    # Every cluster is drawn 1 time in expectation.
    assert weights.mean() == pytest.approx(1.0, abs=0.05)


def test_prompt_bootstrap_is_not_narrowed_by_duplicate_samples():
    """Samples of one prompt are correlated; in the extreme, identical. Resampling prompts must then give
    the same interval with 1 or 4 samples per prompt, whereas resampling clips would narrow it ~2x."""
    rng = np.random.default_rng(3)
    n_prompts = 50
    y = rng.random(n_prompts) < 0.5
    scores = rng.standard_normal(n_prompts) + 0.8 * y
    prompt_weights = statistics.cluster_weights(n_prompts, 2000, np.random.default_rng(4))
    single = statistics.RankedScores(y, scores).auroc(prompt_weights)
    clip_prompt = np.repeat(np.arange(n_prompts), 4)
    grouped = statistics.RankedScores(y[clip_prompt], scores[clip_prompt]).auroc(prompt_weights[:, clip_prompt])
    np.testing.assert_allclose(grouped, single)
    clip_weights = statistics.cluster_weights(len(clip_prompt), 2000, np.random.default_rng(4))
    naive = statistics.RankedScores(y[clip_prompt], scores[clip_prompt]).auroc(clip_weights)
    assert np.std(naive) < 0.7 * np.std(grouped)


def test_bootstrap_interval_covers_the_true_auroc():
    """Positives ~ N(d, 1), negatives ~ N(0, 1): AUROC = Phi(d / sqrt 2). 95% intervals cover it ~95%."""
    rng = np.random.default_rng(5)
    shift, truth, covered, trials = 1.0, stats.norm.cdf(1.0 / np.sqrt(2)), 0, 100
    for _ in range(trials):
        y = np.arange(80) < 40
        scores = rng.standard_normal(80) + shift * y
        weights = statistics.cluster_weights(80, 400, rng)
        low, high = statistics.percentile_interval(statistics.RankedScores(y, scores).auroc(weights), 0.95)
        covered += low <= truth <= high
    assert 0.85 <= covered / trials <= 1.0


def test_percentile_interval_drops_undefined_resamples_and_stacks():
    values = np.array([np.nan, 0.1, 0.2, 0.3, 0.4, np.nan])
    low, high = statistics.percentile_interval(values, 0.5)
    assert (low, high) == pytest.approx(tuple(np.percentile([0.1, 0.2, 0.3, 0.4], [25, 75])))
    lows, highs = statistics.percentile_interval(np.stack([values, np.full(6, np.nan)]), 0.5)
    assert lows[0] == pytest.approx(low) and np.isnan(lows[1]) and np.isnan(highs[1])


def test_baseline_test_keeps_its_rate_for_a_random_concept():
    """A random concept's value is one more draw from the baselines: p < 0.05 about 5% of the time.
    TCAV's ttest_1samp against the same value would say so far more often."""
    rng = np.random.default_rng(6)
    draws = rng.normal(0.5, 0.1, size=(4000, 21))
    pvalues = statistics.baseline_test(draws[:, 0], draws[:, 1:])
    assert 0.035 <= np.mean(pvalues < 0.05) <= 0.065
    one_sample = stats.ttest_1samp(draws[:, 1:], draws[:, :1], axis=1).pvalue
    assert np.mean(one_sample < 0.05) > 0.5
    near, far = statistics.baseline_test([0.52, 1.5], draws[:2, 1:])
    assert near > 0.5 and far < 1e-6


def test_baseline_test_nan_cases():
    pvalues = statistics.baseline_test([0.9, 0.9, np.nan], [[0.5, np.nan, np.nan, np.nan], [0.5] * 4, [0.4, 0.5, 0.6, 0.5]])
    assert np.isnan(pvalues).all()


def test_bonferroni_counts_finite_tests():
    adjusted = statistics.bonferroni(np.array([0.01, 0.2, np.nan, 0.0001]))
    np.testing.assert_allclose(adjusted, [0.03, 0.6, np.nan, 0.0003])
    assert statistics.bonferroni(np.array([0.5, 0.9]))[1] == 1.0


def test_emergence_step_needs_every_later_step_above():
    steps = [30, 0, 10, 20, 40]          # unsorted on purpose
    lower = [0.9, 0.4, 0.8, 0.5, 0.95]   # above at 10, dips at 20, above from 30 on
    assert statistics.emergence_step(steps, lower, [0.6] * 5) == 30
    assert statistics.emergence_step(steps, [0.9, 0.9, 0.9, 0.9, 0.5], [0.6] * 5) is None
    assert statistics.emergence_step(steps, [0.9] * 5, [0.6] * 5) == 0
    assert statistics.emergence_step(steps, [np.nan] * 5, [0.6] * 5) is None


def test_trajectory_drift_is_zero_at_the_final_step():
    embeddings = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 1.0], [3.0, 4.0], [6.0, 8.0]])
    trajectory = np.array([0, 0, 0, 1, 1])
    steps = np.array([0, 20, 10, 5, 0])
    cosine, l2 = statistics.trajectory_drift(embeddings, trajectory, steps)
    np.testing.assert_allclose(cosine, [1.0, 0.0, 0.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(l2, [np.sqrt(5), 0.0, 1.0, 0.0, 5.0])
