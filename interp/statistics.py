"""Cluster bootstrap, random-concept baselines and their tests, emergence status and trajectory drift for stage 6.

Every metric here takes a weight matrix `weights` [n_resamples, n_items]: row b says how many times item i
appears in resample b. Row of ones = the plain point estimate (it equals scikit-learn's metric, which the
tests check); rows drawn by `cluster_weights` = a cluster bootstrap. Computing all resamples as one matrix
operation is what keeps 28 concepts x 11 steps x 1,000 resamples within a minute on two cores
(bench/bench_analysis.py); scipy.stats.bootstrap resamples one statistic at a time and cannot resample
clusters, so the resampling is ours and the rest (t distribution, PCA, metrics in tests) is the libraries'.
"""
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

METRICS = ("accuracy", "tpr", "tnr", "balanced_accuracy", "auroc")
# Metrics that need a hard decision; AUROC needs only scores.
DECISION_METRICS = ("accuracy", "tpr", "tnr", "balanced_accuracy")


def cluster_weights(n_clusters: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """[n_resamples, n_clusters] multiplicities: each resample draws n_clusters clusters with replacement.

    Drawing clusters (prompts, instruments) rather than items (clips, notes) is the point: the samples of one
    prompt share its text and the notes of one instrument share its timbre, so they are not independent and
    an item bootstrap would give intervals that are too narrow.
    """
    if n_clusters == 0:
        return np.zeros((n_resamples, 0))
    return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_resamples).astype(np.float64)


def point_weights(n_items: int) -> np.ndarray:
    return np.ones((1, n_items))


def _ratio(numerator, denominator):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


def decision_metrics(weights: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, np.ndarray]:
    """Weighted accuracy, TPR, TNR and balanced accuracy, one value per weight row (NaN where undefined)."""
    y_true = np.asarray(y_true, bool)
    y_pred = np.asarray(y_pred, bool)
    positives = weights @ y_true.astype(np.float64)
    negatives = weights @ (~y_true).astype(np.float64)
    true_positives = weights @ (y_true & y_pred).astype(np.float64)
    true_negatives = weights @ (~y_true & ~y_pred).astype(np.float64)
    tpr = _ratio(true_positives, positives)
    tnr = _ratio(true_negatives, negatives)
    return {
        "accuracy": _ratio(true_positives + true_negatives, positives + negatives),
        "tpr": tpr,
        "tnr": tnr,
        "balanced_accuracy": (tpr + tnr) / 2.0,
    }


class RankedScores:
    """Scores sorted once, so that AUROC under any number of weightings costs one cumulative sum each."""

    def __init__(self, y_true: np.ndarray, scores: np.ndarray):
        scores = np.asarray(scores, np.float64)
        self.order = np.argsort(scores, kind="stable")
        sorted_scores = scores[self.order]
        self.positive = np.asarray(y_true, bool)[self.order]
        # Tied scores count one half, as in the Mann-Whitney statistic: for every item, the sorted positions
        # where its tie group starts and ends.
        _, group, counts = np.unique(sorted_scores, return_inverse=True, return_counts=True)
        ends = np.cumsum(counts) - 1
        starts = ends - counts + 1
        self.group_start = starts[group]
        self.group_end = ends[group]

    def auroc(self, weights: np.ndarray) -> np.ndarray:
        """Weighted AUROC per weight row: P(score of a positive > score of a negative), ties counted 1/2."""
        sorted_weights = weights[:, self.order]
        negative_weights = sorted_weights * ~self.positive
        cumulative = np.cumsum(negative_weights, axis=1)
        padded = np.concatenate([np.zeros((len(weights), 1)), cumulative], axis=1)
        below = padded[:, self.group_start[self.positive]]
        tied = padded[:, self.group_end[self.positive] + 1] - below
        positive_weights = sorted_weights[:, self.positive]
        wins = np.sum(positive_weights * (below + 0.5 * tied), axis=1)
        return _ratio(wins, positive_weights.sum(axis=1) * negative_weights.sum(axis=1))


def binary_metrics(weights: np.ndarray, y_true, scores, y_pred=None) -> dict[str, np.ndarray]:
    """All of METRICS per weight row; decision metrics are NaN when there is no decision (y_pred None)."""
    result = decision_metrics(weights, y_true, y_pred) if y_pred is not None else {
        name: np.full(len(weights), np.nan) for name in DECISION_METRICS}
    result["auroc"] = RankedScores(y_true, scores).auroc(weights)
    return result


def point_metrics(y_true, scores: np.ndarray, decisions: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Unweighted METRICS for many probes at once: scores, decisions [n_probes, n_items] -> [n_probes] each.

    AUROC is the Mann-Whitney statistic from average ranks (ties count one half), the same number as
    scikit-learn's roc_auc_score but for every row in one call.
    """
    y_true = np.asarray(y_true, bool)
    scores = np.atleast_2d(np.asarray(scores, np.float64))
    n_positive, n_negative = int(y_true.sum()), int((~y_true).sum())
    if n_positive and n_negative:
        ranks = stats.rankdata(scores, axis=1)
        auroc = (ranks[:, y_true].sum(axis=1) - n_positive * (n_positive + 1) / 2.0) / (n_positive * n_negative)
    else:
        auroc = np.full(len(scores), np.nan)
    if decisions is None:
        result = {name: np.full(len(scores), np.nan) for name in DECISION_METRICS}
    else:
        decisions = np.atleast_2d(np.asarray(decisions, bool))
        true_positives = (decisions & y_true).sum(axis=1)
        true_negatives = (~decisions & ~y_true).sum(axis=1)
        tpr = _ratio(true_positives, np.full(len(decisions), n_positive))
        tnr = _ratio(true_negatives, np.full(len(decisions), n_negative))
        result = {"accuracy": (true_positives + true_negatives) / len(y_true), "tpr": tpr, "tnr": tnr,
                  "balanced_accuracy": (tpr + tnr) / 2.0}
    result["auroc"] = auroc
    return result


def percentile_interval(values: np.ndarray, level: float) -> tuple:
    """Percentile bootstrap interval over the last axis; resamples where the metric is undefined (one class
    drawn) are dropped. values [n_resamples] -> (low, high) floats; [k, n_resamples] -> two arrays [k]."""
    values = np.asarray(values, np.float64)
    tail = (1.0 - level) / 2.0 * 100.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN row gives NaN bounds, as it should
        low, high = np.nanpercentile(np.atleast_2d(values), [tail, 100.0 - tail], axis=-1)
    if values.ndim == 1:
        return float(low[0]), float(high[0])
    return low, high


def baseline_test(values, baselines) -> np.ndarray:
    """Two-sided p-values that each value is one more draw from its random-concept baseline distribution.

    values [m]; baselines [m, n_baselines] (NaN = missing). The null is "this concept's probe is just another
    random probe", so the statistic is the t for a new observation from the baselines' normal sample,
    t = (value - mean) / (sd * sqrt(1 + 1/n)) with n - 1 degrees of freedom. A one-sample t-test of the
    baselines' mean against the value (TCAV's ttest_1samp) shrinks its denominator with sqrt(n): with 20
    baselines a random concept, itself one such draw, would be called significant about a quarter of the
    time even after Bonferroni; this test keeps the stated rate. NaN where fewer than 3 baselines or no spread.
    """
    values = np.atleast_1d(np.asarray(values, np.float64))
    baselines = np.atleast_2d(np.asarray(baselines, np.float64))
    count = np.isfinite(baselines).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows are expected (concepts without probes)
        mean = np.nanmean(baselines, axis=1)
        spread = np.nanstd(baselines, axis=1, ddof=1)
        statistic = (values - mean) / (spread * np.sqrt(1.0 + 1.0 / count))
    usable = np.isfinite(statistic) & (count >= 3) & (spread > 0)
    pvalues = np.full(len(values), np.nan)
    pvalues[usable] = 2.0 * stats.t.sf(np.abs(statistic[usable]), df=count[usable] - 1)
    return pvalues


def bonferroni(pvalues: np.ndarray) -> np.ndarray:
    """Bonferroni-adjusted p-values; the family is every finite p-value passed in (NaN stays NaN)."""
    pvalues = np.asarray(pvalues, np.float64)
    tests = int(np.isfinite(pvalues).sum())
    return np.minimum(pvalues * tests, 1.0)


def directions(values, baseline_means) -> np.ndarray:
    """'above' / 'below' the random probes' mean per value ('' where either is undefined): the side a
    two-sided baseline test rejects on, so a significant cell says which way it differs."""
    values = np.asarray(values, np.float64)
    means = np.asarray(baseline_means, np.float64)
    result = np.full(values.shape, "", dtype=object)
    result[values > means] = "above"
    result[values < means] = "below"
    return result


def distinct_positions(values, trajectory, positions, atol: float = 0.0, rtol: float = 0.0) -> dict:
    """{position: the first position of its run of identical positions}, over the sorted captured positions.

    `values` [n_clips, d] describe each clip (its realised content, or its embedding). Two consecutive captured
    positions p < q are *identical* when every trajectory has a clip at both and, for every trajectory,
    ||v_p - v_q|| <= atol + rtol * ||v_q||. A run of positions each identical to the next is one distinct
    position: once a sampler has committed (the reference model's posterior sits on one bank clip), its later
    steps repeat the same clip and are no further evidence that a concept "stays" emerged.
    """
    values = np.asarray(values, np.float64)
    trajectory = np.asarray(trajectory)
    positions = np.asarray(positions)
    ordered = np.unique(positions)
    rows = np.full((trajectory.max() + 1 if len(trajectory) else 0, len(ordered)), -1)
    rows[trajectory, np.searchsorted(ordered, positions)] = np.arange(len(positions))
    first_of_run = {}
    for i, position in enumerate(ordered):
        same = i > 0 and (rows[:, i - 1] >= 0).all() and (rows[:, i] >= 0).all()
        if same:
            earlier, later = values[rows[:, i - 1]], values[rows[:, i]]
            distance = np.linalg.norm(earlier - later, axis=1)
            same = bool(np.all(distance <= atol + rtol * np.linalg.norm(later, axis=1)))
        first_of_run[int(position)] = first_of_run[int(ordered[i - 1])] if same else int(position)
    return first_of_run


EMERGENCE_STATUSES = ("emerged", "transient", "never", "undefined")


@dataclass(frozen=True)
class Emergence:
    """How a concept's curve relates to its random baseline along the trajectory.

    status: 'emerged' (above at the final distinct position, emergence_step = first position of the run of
    distinct positions above that reaches the end), 'transient' (above at some position, not at the end),
    'never' (never above), 'undefined' (no value at any position: no probe, or no positive/negative clip).
    first_above / last_above: the first and last captured positions that are above (None if never).
    distinct_above: distinct positions in the final run above (0 unless emerged); n_distinct: distinct
    positions with a value.
    """
    status: str
    emergence_step: int | None
    first_above: int | None
    last_above: int | None
    distinct_above: int
    n_distinct: int


def emergence_status(positions, lower_bounds, thresholds, runs: dict | None = None) -> Emergence:
    """Classify a curve: a position is *above* when the metric's lower CI bound exceeds the baseline threshold.

    `runs` maps each position to the first position of its run of identical positions (distinct_positions);
    a run counts as one position, and it is above only when every position in it is. Positions without a
    value (NaN bound or threshold) count as not above; they are left out of n_distinct.
    """
    order = np.argsort(np.asarray(positions), kind="stable")
    positions = np.asarray(positions)[order]
    lower = np.asarray(lower_bounds, np.float64)[order]
    threshold = np.asarray(thresholds, np.float64)[order]
    defined = np.isfinite(lower) & np.isfinite(threshold)
    above = defined & (np.where(defined, lower, 0.0) > np.where(defined, threshold, 0.0))
    runs = runs or {}
    run_of = np.array([runs.get(int(position), int(position)) for position in positions])
    # One entry per distinct position (run): above only if all its positions are, defined if any is.
    run_ids = list(dict.fromkeys(run_of))
    run_above = np.array([above[run_of == run].all() for run in run_ids], bool)
    run_defined = np.array([defined[run_of == run].any() for run in run_ids], bool)
    if not run_defined.any():
        return Emergence("undefined", None, None, None, 0, 0)
    above_positions = positions[above]
    first_above = int(above_positions[0]) if above_positions.size else None
    last_above = int(above_positions[-1]) if above_positions.size else None
    n_distinct = int(run_defined.sum())
    if not run_above[-1]:
        return Emergence("transient" if above.any() else "never", None, first_above, last_above, 0, n_distinct)
    start = len(run_ids) - 1
    while start > 0 and run_above[start - 1]:
        start -= 1
    return Emergence("emerged", int(run_ids[start]), first_above, last_above, len(run_ids) - start, n_distinct)


def emergence_step(steps, lower_bounds, thresholds):
    """First step from which the lower CI bound exceeds the baseline threshold at that and every later step
    (None when the final step itself is not above). Same as emergence_status(...).emergence_step."""
    return emergence_status(steps, lower_bounds, thresholds).emergence_step


def random_note_sets(train_rows: np.ndarray, n_positive: int, n_total: int, rng: np.random.Generator):
    """A random concept drawn note by note: `n_total` train notes, `n_positive` of them labelled positive."""
    rows = rng.choice(train_rows, n_total, replace=False)
    labels = np.zeros(n_total, int)
    labels[rng.choice(n_total, n_positive, replace=False)] = 1
    return rows, labels


def random_instrument_sets(train_rows: np.ndarray, instrument_of_row: np.ndarray, n_positive_instruments: int,
                           n_negative_instruments: int, rng: np.random.Generator):
    """A random concept drawn instrument by instrument, matched in NUMBER OF INSTRUMENTS.

    Draws n_positive_instruments of the train instruments as positives and n_negative_instruments of the
    others as negatives; every train note of a drawn instrument takes its side's label. Probes are trained
    and tested on disjoint instruments, so the null they are compared with must also vary by instrument: a
    note-by-note draw mixes every instrument into both classes and gives a narrower null. The counts are
    capped so that both sides have at least one instrument and do not overlap.
    """
    instruments = np.unique(instrument_of_row[train_rows])
    n_positive = int(np.clip(n_positive_instruments, 1, len(instruments) - 1))
    n_negative = int(np.clip(n_negative_instruments, 1, len(instruments) - n_positive))
    drawn = rng.permutation(instruments)[:n_positive + n_negative]
    positive = np.isin(instrument_of_row[train_rows], drawn[:n_positive])
    negative = np.isin(instrument_of_row[train_rows], drawn[n_positive:])
    rows = np.concatenate([train_rows[positive], train_rows[negative]])
    labels = np.concatenate([np.ones(positive.sum(), int), np.zeros(negative.sum(), int)])
    return rows, labels


def trajectory_drift(embeddings: np.ndarray, trajectory: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine and L2 distance of each clip's embedding to the final (largest) step of its own trajectory.

    `trajectory` labels the rows of one (prompt, sample) pair with the same integer.
    """
    embeddings = np.asarray(embeddings, np.float64)
    trajectory = np.asarray(trajectory)
    steps = np.asarray(steps)
    final_row = np.empty(trajectory.max() + 1, dtype=np.int64)
    order = np.lexsort((steps, trajectory))
    # After sorting by (trajectory, step), the last row of each trajectory is its final step.
    last = np.r_[trajectory[order][1:] != trajectory[order][:-1], True]
    final_row[trajectory[order][last]] = order[last]
    final = embeddings[final_row[trajectory]]
    l2 = np.linalg.norm(embeddings - final, axis=1)
    norms = np.linalg.norm(embeddings, axis=1) * np.linalg.norm(final, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = 1.0 - np.where(norms > 0, np.sum(embeddings * final, axis=1) / np.where(norms > 0, norms, 1.0), np.nan)
    return cosine, l2


def weighted_mean(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mean of `values` [n_items] under each weight row."""
    return _ratio(weights @ values, weights.sum(axis=1))
