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


def test_direction_says_which_side_of_the_baseline_mean():
    directions = statistics.directions([0.9, 0.2, 0.5, np.nan, 0.7], [0.5, 0.5, 0.5, 0.5, np.nan])
    assert directions.tolist() == ["above", "below", "", "", ""]


def test_emergence_status_classifies_curves():
    steps = [0, 10, 20, 30, 40]
    threshold = [0.6] * 5
    emerged = statistics.emergence_status(steps, [0.4, 0.8, 0.5, 0.9, 0.95], threshold)
    assert emerged == statistics.Emergence("emerged", 30, 10, 40, 2, 5)
    # Above in the middle, below at the end: transient, with its first and last crossing.
    transient = statistics.emergence_status(steps, [0.4, 0.8, 0.9, 0.7, 0.5], threshold)
    assert transient == statistics.Emergence("transient", None, 10, 30, 0, 5)
    assert statistics.emergence_status(steps, [0.1] * 5, threshold) == statistics.Emergence("never", None, None,
                                                                                            None, 0, 5)
    assert statistics.emergence_status(steps, [np.nan] * 5, threshold).status == "undefined"
    # Equal to the threshold is not above; a missing final value is not above either.
    assert statistics.emergence_status(steps, [0.6] * 5, threshold).status == "never"
    assert statistics.emergence_status(steps, [0.9, 0.9, 0.9, 0.9, np.nan], threshold).status == "transient"


def test_identical_positions_collapse_into_one_distinct_position():
    """Two trajectories over positions 0, 10, 20, 30, 40: from 30 on the clips stop changing in both, so
    30 and 40 are one distinct position; 10 and 20 are identical in one trajectory only, so they stay apart."""
    rng = np.random.default_rng(0)
    positions = np.array([0, 10, 20, 30, 40] * 2)
    trajectory = np.repeat([0, 1], 5)
    embeddings = rng.standard_normal((10, 4))
    embeddings[4] = embeddings[3]
    embeddings[9] = embeddings[8] * (1 + 1e-7)  # float round-off still counts as identical
    embeddings[2] = embeddings[1]               # identical in trajectory 0 only
    runs = statistics.distinct_positions(embeddings, trajectory, positions, rtol=1e-5)
    assert runs == {0: 0, 10: 10, 20: 20, 30: 30, 40: 30}
    assert statistics.distinct_positions(embeddings, trajectory, positions)[40] == 40   # exact: round-off differs
    embeddings[9] = embeddings[8] + 1e-3
    assert statistics.distinct_positions(embeddings, trajectory, positions, rtol=1e-5)[40] == 40
    assert statistics.distinct_positions(embeddings, trajectory, positions, atol=1e-2)[40] == 30
    # A position missing from one trajectory cannot be shown identical.
    keep = np.arange(10) != 9
    assert statistics.distinct_positions(embeddings[keep], trajectory[keep], positions[keep], atol=1)[40] == 40


def test_emergence_counts_a_run_of_identical_positions_once():
    steps = [0, 10, 20, 30, 40, 45, 49]
    runs = {0: 0, 10: 10, 20: 20, 30: 30, 40: 40, 45: 40, 49: 40}
    threshold = [0.5] * 7
    late = statistics.emergence_status(steps, [0.1, 0.1, 0.1, 0.1, 0.9, 0.9, 0.9], threshold, runs)
    assert late == statistics.Emergence("emerged", 40, 40, 49, 1, 5)   # one distinct position, not three
    early = statistics.emergence_status(steps, [0.1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9], threshold, runs)
    assert early.emergence_step == 10 and early.distinct_above == 4 and early.n_distinct == 5
    assert statistics.emergence_status(steps, [0.1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9], threshold).distinct_above == 6


def test_random_instrument_sets_match_the_number_of_instruments():
    instrument_of_row = np.repeat(np.arange(12), [3, 5, 2, 4, 6, 1, 3, 3, 2, 5, 4, 2])
    train_rows = np.flatnonzero(instrument_of_row < 10)       # instruments 10, 11 are test instruments
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(50):
        rows, labels = statistics.random_instrument_sets(train_rows, instrument_of_row, 3, 4, rng)
        positive, negative = set(instrument_of_row[rows[labels == 1]]), set(instrument_of_row[rows[labels == 0]])
        assert len(positive) == 3 and len(negative) == 4 and not positive & negative
        assert (positive | negative) <= set(range(10))
        # Whole instruments: every train note of a drawn instrument is in, with its side's label.
        for instrument in positive | negative:
            assert set(rows[instrument_of_row[rows] == instrument]) == set(np.flatnonzero(instrument_of_row == instrument))
        assert len(rows) == len(set(rows))
        seen.add(frozenset(positive))
    assert len(seen) > 20   # random subsets, not one fixed draw
    # Capped so both sides keep an instrument and stay disjoint.
    rows, labels = statistics.random_instrument_sets(train_rows, instrument_of_row, 10, 5, rng)
    assert len(set(instrument_of_row[rows[labels == 1]])) == 9 and len(set(instrument_of_row[rows[labels == 0]])) == 1


def test_random_note_sets_match_the_number_of_notes():
    rows, labels = statistics.random_note_sets(np.arange(100, 160), 7, 25, np.random.default_rng(1))
    assert len(rows) == 25 == len(set(rows)) and labels.sum() == 7 and set(rows) <= set(range(100, 160))
