"""interp/statistics.py: metrics equal scikit-learn's, the bootstrap resamples clusters, the clustered AUROC test
has its exact permutation moments and keeps its error rate, Holm, emergence status and steps, and drift."""
import itertools

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


def _exact_permutation_aurocs(y, scores, clusters):
    """Every AUROC the null can produce: label blocks exchanged among clusters of one size, and within a block
    every assignment of its labels to the cluster's clips (the test's own enumeration, done by brute force)."""
    ranks = stats.rankdata(scores)
    ids = np.unique(clusters)
    members = [np.flatnonzero(clusters == c) for c in ids]
    blocks = [y[index] for index in members]
    by_size = {}
    for c, index in enumerate(members):
        by_size.setdefault(len(index), []).append(c)
    n_positive, n_negative = int(y.sum()), int((~y).sum())
    values = []
    for permutation in itertools.product(*(itertools.permutations(group) for group in by_size.values())):
        donor = dict(zip([c for group in by_size.values() for c in group], [c for group in permutation for c in group]))
        orders = [list(itertools.permutations(range(len(members[c])))) for c in range(len(ids))]
        for choice in itertools.product(*orders):
            total = sum(ranks[members[c]][blocks[donor[c]][list(order)]].sum() for c, order in enumerate(choice))
            values.append((total - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative))
    return np.array(values)


def test_clustered_auroc_null_moments_are_the_exact_permutation_moments():
    """Clusters of two sizes, labels varying within clusters, tied scores: the mean and standard deviation the
    test uses equal those of every arrangement the null allows, enumerated."""
    rng = np.random.default_rng(3)
    clusters = np.repeat(np.arange(6), [2, 2, 2, 2, 3, 3])
    scores = np.round(rng.standard_normal(len(clusters)), 1)
    y = rng.random(len(clusters)) < 0.45
    auroc, mean, sd = statistics.clustered_auroc_test(y, scores, clusters)
    exact = _exact_permutation_aurocs(y, scores, clusters)
    assert auroc == pytest.approx(roc_auc_score(y, scores))
    assert mean == pytest.approx(exact.mean(), abs=1e-12) and sd == pytest.approx(exact.std(), abs=1e-12)


def test_clustered_auroc_with_one_clip_per_cluster_is_mann_whitney():
    rng = np.random.default_rng(4)
    y = np.arange(30) < 12
    scores = rng.standard_normal(30)
    auroc, mean, sd = statistics.clustered_auroc_test(y, scores, np.arange(30))
    # Mann-Whitney: E(AUROC) = 1/2, Var(U) = n+ n- (N + 1) / 12 without ties.
    assert mean == pytest.approx(0.5)
    assert sd == pytest.approx(np.sqrt(12 * 18 * 31 / 12) / (12 * 18), rel=1e-12)
    p = statistics.two_sided_p(auroc, mean, sd)
    assert p == pytest.approx(stats.mannwhitneyu(scores[y], scores[~y], method="asymptotic",
                                                 use_continuity=False).pvalue, rel=1e-9)


def test_clustered_auroc_test_keeps_its_rate_where_a_clip_test_does_not():
    """No information, but the two samples of a prompt share its score and its label: the prompt-level test
    rejects about 5% of the time at 0.05; Mann-Whitney over clips, which treats them as independent, far more."""
    rng = np.random.default_rng(6)
    clusters = np.repeat(np.arange(60), 2)
    rejected, naive = [], []
    for _ in range(1000):
        shared = rng.standard_normal(60)[clusters] + 0.3 * rng.standard_normal(120)
        y = (rng.random(60) < 0.4)[clusters]
        auroc, mean, sd = statistics.clustered_auroc_test(y, shared, clusters)
        rejected.append(statistics.two_sided_p(auroc, mean, sd) < 0.05)
        _, mean, sd = statistics.clustered_auroc_test(y, shared, np.arange(120))
        naive.append(statistics.two_sided_p(auroc, mean, sd) < 0.05)
    assert 0.03 <= np.mean(rejected) <= 0.07
    assert np.mean(naive) > 0.1


def test_clustered_auroc_tail_agrees_with_a_monte_carlo_permutation():
    """Where it matters (p ~ 1e-3, the scale of a Holm threshold), the normal tail of the exact moments agrees
    with 100,000 random permutations of whole prompts to within Monte Carlo error."""
    rng = np.random.default_rng(7)
    clusters = np.repeat(np.arange(50), 2)
    y = (rng.random(50) < 0.4)[clusters]
    scores = rng.standard_normal(100) + 0.75 * y
    auroc, mean, sd = statistics.clustered_auroc_test(y, scores, clusters)
    p = statistics.two_sided_p(auroc, mean, sd)
    ranks = stats.rankdata(scores).reshape(50, 2)
    blocks = y.reshape(50, 2)
    draws = 100_000
    donors = rng.permuted(np.tile(np.arange(50), (draws, 1)), axis=1)
    flips = rng.random((draws, 50)) < 0.5
    labels = blocks[donors]
    labels = np.where(flips[..., None], labels[..., ::-1], labels)
    n_positive = int(y.sum())
    null = ((labels * ranks[None]).sum(axis=(1, 2)) - n_positive * (n_positive + 1) / 2) / (n_positive * (100 - n_positive))
    monte_carlo = np.mean(np.abs(null - mean) >= abs(auroc - mean) - 1e-12)
    assert 2e-4 < p < 2e-2
    assert abs(monte_carlo - p) < 4 * np.sqrt(p / draws) + 0.35 * p


def test_clustered_auroc_undefined_and_constant_cases():
    assert np.isnan(statistics.clustered_auroc_test(np.zeros(6, bool), np.arange(6.0), np.arange(6))[0])
    auroc, mean, sd = statistics.clustered_auroc_test(np.arange(6) < 3, np.ones(6), np.arange(6))
    assert auroc == 0.5 and sd == 0 and statistics.two_sided_p(auroc, mean, sd) == 1.0
    assert np.isnan(statistics.two_sided_p(np.nan, 0.5, 0.1))


def test_holm_against_a_worked_example():
    """p = (0.01, 0.04, 0.03, 0.005) over 4 tests: sorted 0.005*4, 0.01*3, 0.03*2, 0.04*1, made monotone."""
    adjusted = statistics.holm(np.array([0.01, 0.04, np.nan, 0.03, 0.005]))
    np.testing.assert_allclose(adjusted, [0.03, 0.06, np.nan, 0.06, 0.02])
    assert statistics.holm(np.array([0.5, 0.9]))[1] == 1.0
    # Never more than Bonferroni, and rejects at least as much.
    p = np.random.default_rng(0).random(50) ** 3
    assert (statistics.holm(p) <= np.minimum(p * 50, 1) + 1e-15).all()


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


def _above(values, threshold=0.6):
    values = np.asarray(values, float)
    return np.nan_to_num(values, nan=-1) > threshold, np.isfinite(values)


def test_emergence_status_classifies_curves():
    steps = [0, 10, 20, 30, 40]
    emerged = statistics.emergence_status(steps, *_above([0.4, 0.8, 0.5, 0.9, 0.95]))
    assert emerged == statistics.Emergence("emerged", 30, 10, 40, 2, 5)
    # Above in the middle, below at the end: transient, with its first and last crossing.
    transient = statistics.emergence_status(steps, *_above([0.4, 0.8, 0.9, 0.7, 0.5]))
    assert transient == statistics.Emergence("transient", None, 10, 30, 0, 5)
    assert statistics.emergence_status(steps, *_above([0.1] * 5)) == statistics.Emergence("never", None, None, None,
                                                                                          0, 5)
    assert statistics.emergence_status(steps, *_above([np.nan] * 5)).status == "undefined"
    # A missing final value is not above.
    assert statistics.emergence_status(steps, *_above([0.9, 0.9, 0.9, 0.9, np.nan])).status == "transient"
    # Unsorted positions are sorted first.
    assert statistics.emergence_status([30, 0, 10, 20, 40], *_above([0.9, 0.4, 0.8, 0.5, 0.95])).significant_from == 30


def test_level_crossing_on_a_planted_curve():
    """A curve that rises from chance to 0.9: half way is 0.7, first held from step 30. The oracle's curve
    (final 1) is held to 0.75, the planted rule of data/truth.py."""
    steps = np.array([0, 10, 20, 30, 40, 50])
    probe = [0.5, 0.52, 0.65, 0.72, 0.85, 0.9]
    oracle = [0.5, 0.6, 0.74, 0.75, 0.98, 1.0]
    dip = [0.5, 0.8, 0.6, 0.75, 0.85, 0.9]          # above early, dips below, then stays: the later crossing
    crossings = statistics.level_crossings(steps, np.array([probe, oracle, dip]))
    np.testing.assert_array_equal(crossings, [30, 30, 30])
    # Ends at or below chance: no crossing (+inf); undefined at the end: NaN.
    assert statistics.level_crossings(steps, [0.5, 0.6, 0.7, 0.6, 0.55, 0.45])[0] == np.inf
    assert np.isnan(statistics.level_crossings(steps, [0.5, 0.6, 0.7, 0.6, 0.55, np.nan])[0])
    # A crossing inside a run of identical positions (the same content) moves back to the run's first position.
    runs = {0: 0, 10: 10, 20: 20, 30: 30, 40: 30, 50: 30}
    assert statistics.level_crossings(steps, [0.5, 0.5, 0.8, 0.65, 0.72, 0.9])[0] == 40
    assert statistics.level_crossings(steps, [0.5, 0.5, 0.8, 0.65, 0.72, 0.9], runs)[0] == 30
    assert statistics.level_crossings(steps, [0.5, 0.5, 0.8, 0.75, 0.72, 0.9], runs)[0] == 20


def test_crossing_interval_uses_observed_positions_and_infinity():
    draws = np.array([20.0] * 10 + [30.0] * 80 + [40.0] * 10)
    assert statistics.crossing_interval(draws, 0.9) == (20.0, 40.0)
    assert statistics.crossing_interval(draws, 0.5) == (30.0, 30.0)
    never = np.concatenate([draws, [np.inf] * 20, [np.nan] * 50])
    assert statistics.crossing_interval(never, 0.95)[1] == np.inf
    assert np.isnan(statistics.crossing_interval([np.nan, np.nan], 0.95)[0])


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
    late = statistics.emergence_status(steps, *_above([0.1, 0.1, 0.1, 0.1, 0.9, 0.9, 0.9], 0.5), runs)
    assert late == statistics.Emergence("emerged", 40, 40, 49, 1, 5)   # one distinct position, not three
    early = statistics.emergence_status(steps, *_above([0.1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9], 0.5), runs)
    assert early.significant_from == 10 and early.distinct_above == 4 and early.n_distinct == 5
    assert statistics.emergence_status(steps, *_above([0.1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9], 0.5)).distinct_above == 6


def test_random_instrument_sets_match_the_number_of_instruments():
    instrument_of_row = np.repeat(np.arange(12), [3, 5, 2, 4, 6, 1, 3, 3, 2, 5, 4, 2])
    memberships = instrument_of_row[:, None]
    train_rows = np.flatnonzero(instrument_of_row < 10)       # instruments 10, 11 are test instruments
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(50):
        rows, labels = statistics.random_instrument_sets(train_rows, memberships, 3, 4, rng)
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
    rows, labels = statistics.random_instrument_sets(train_rows, memberships, 10, 5, rng)
    assert len(set(instrument_of_row[rows[labels == 1]])) == 9 and len(set(instrument_of_row[rows[labels == 0]])) == 1


def test_random_instrument_sets_read_every_part_of_a_mix():
    """Mixes of instruments 0+1, 0+2 and 1+2 beside single notes of 0, 1, 2: with {0} positive and {1} negative,
    the mix 0+1 is positive (it sounds a positive instrument, every part drawn), 1 alone negative, and
    everything sounding the undrawn 2 is left out."""
    memberships = np.array([[0, -1], [1, -1], [2, -1], [0, 1], [0, 2], [1, 2]])
    rows = np.arange(6)
    for seed in range(40):
        drawn_rows, labels = statistics.random_instrument_sets(rows, memberships, 1, 1, np.random.default_rng(seed))
        positive = {int(i) for i in memberships[drawn_rows[labels == 1]].ravel() if i >= 0}
        single_positive = memberships[drawn_rows[labels == 1]][:, 1] < 0
        (p,) = {int(memberships[r, 0]) for r in drawn_rows[labels == 1][single_positive]}
        negatives = memberships[drawn_rows[labels == 0]]
        assert len(negatives) == 1 and negatives[0, 1] == -1 and negatives[0, 0] != p
        mixes = drawn_rows[labels == 1][~single_positive]
        assert len(mixes) == 1 and set(memberships[mixes[0]]) == {p, int(negatives[0, 0])}
        assert positive == {p, int(negatives[0, 0])}


def test_multi_cluster_weights_multiply_the_parts_multiplicities():
    memberships = np.array([[0, -1], [1, -1], [0, 1], [2, 2]])
    rng = np.random.default_rng(0)
    weights = statistics.multi_cluster_weights(memberships, 3, 200, rng)
    clusters = statistics.cluster_weights(3, 200, np.random.default_rng(0))
    np.testing.assert_array_equal(weights[:, 0], clusters[:, 0])
    np.testing.assert_array_equal(weights[:, 2], clusters[:, 0] * clusters[:, 1])
    np.testing.assert_array_equal(weights[:, 3], clusters[:, 2] ** 2)


def test_random_note_sets_match_the_number_of_notes():
    rows, labels = statistics.random_note_sets(np.arange(100, 160), 7, 25, np.random.default_rng(1))
    assert len(rows) == 25 == len(set(rows)) and labels.sum() == 7 and set(rows) <= set(range(100, 160))
