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


def clustered_auroc_test(y_true, scores, clusters) -> tuple[float, float, float]:
    """AUROC, its mean and its standard deviation under "no information": the labels are exchangeable between
    clusters (prompts), the scores fixed. Returns (auroc, null_mean, null_sd).

    The null permutes whole label blocks among clusters of the same size and, inside a block, which clip gets
    which label (the samples of a prompt are interchangeable); the samples of one prompt are correlated, so
    exchanging clips one by one (Mann-Whitney's null) would understate the variance. AUROC is linear in the
    positives' rank sum U = sum_p sum_j r_pj y_pj, whose permutation mean and variance are exact: per cluster
    size m with n clusters, rank sums R_p, positives S_q and within-cluster rank variance v_p,
        E[U]   = sum_p R_p * mean(S) / m,
        Var(U) = Var_q(S) * sum_p (R_p/m - mean R/m)^2 * n / (n - 1)          (which block goes where; Wald and
                 + sum_p v_p * mean_q[S_q (m - S_q) / (m - 1)]                  Wolfowitz 1944; Hoeffding 1951)
    (the second term: S_q of the m ranks drawn without replacement). With one clip per cluster and no ties this
    is Mann-Whitney's n+ n- (N + 1) / 12. Mid-ranks make ties exact. NaN where a class is missing.
    """
    y = np.asarray(y_true, bool)
    scores = np.asarray(scores, np.float64)
    n_positive, n_negative = int(y.sum()), int((~y).sum())
    if not n_positive or not n_negative:
        return np.nan, np.nan, np.nan
    ranks = stats.rankdata(scores)
    _, cluster, sizes = np.unique(np.asarray(clusters), return_inverse=True, return_counts=True)
    rank_sums = np.bincount(cluster, ranks)
    square_sums = np.bincount(cluster, ranks ** 2)
    positives = np.bincount(cluster, y.astype(np.float64))
    mean = variance = 0.0
    for m in np.unique(sizes):
        same = sizes == m
        n = int(same.sum())
        block_means, block_positives = rank_sums[same] / m, positives[same]
        mean += block_means.sum() * block_positives.mean()
        if n > 1:
            variance += (np.sum((block_means - block_means.mean()) ** 2) * np.sum((block_positives - block_positives.mean()) ** 2)
                         / (n - 1))
        if m > 1:
            within = square_sums[same] / m - block_means ** 2
            variance += within.sum() * np.mean(block_positives * (m - block_positives) / (m - 1))
    pairs = n_positive * n_negative
    offset = n_positive * (n_positive + 1) / 2.0
    return ((ranks[y].sum() - offset) / pairs, (mean - offset) / pairs, float(np.sqrt(max(variance, 0.0))) / pairs)


def two_sided_p(values, null_means, null_sds) -> np.ndarray:
    """Normal two-sided p-values of (value - null mean) / null sd; 1 where the null has no spread (the statistic
    is then constant under the null), NaN where the value is undefined."""
    values, means, sds = (np.asarray(x, np.float64) for x in (values, null_means, null_sds))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(sds > 0, (values - means) / np.where(sds > 0, sds, 1.0), 0.0)
    p = 2.0 * stats.norm.sf(np.abs(z))
    return np.where(np.isfinite(values) & np.isfinite(sds), p, np.nan)


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values over every finite p-value passed in (NaN stays NaN).

    Holm (1979) controls the family-wise error rate under any dependence between the tests, as Bonferroni does,
    and rejects everything Bonferroni rejects and more: the k-th smallest p-value is multiplied by (m - k + 1),
    not m, and the adjusted values are made monotone."""
    pvalues = np.asarray(pvalues, np.float64)
    adjusted = np.full(pvalues.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(pvalues.ravel()))
    if finite.size:
        order = finite[np.argsort(pvalues.ravel()[finite], kind="stable")]
        scaled = pvalues.ravel()[order] * (finite.size - np.arange(finite.size))
        flat = adjusted.ravel()
        flat[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
        adjusted = flat.reshape(pvalues.shape)
    return adjusted


def directions(values, references) -> np.ndarray:
    """'above' / 'below' the reference (chance, or the null's mean) per value ('' where either is undefined)."""
    values = np.asarray(values, np.float64)
    references = np.asarray(references, np.float64)
    result = np.full(values.shape, "", dtype=object)
    result[values > references] = "above"
    result[values < references] = "below"
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
# The emergence step is where a curve first reaches, for good, this fraction of the way from chance to its final
# value (a relative criterion: the probe's own final readability is the scale, as a half-maximum latency).
HALFWAY = 0.5
CHANCE = 0.5


@dataclass(frozen=True)
class Emergence:
    """Where a concept's curve is *above* (its test is significant above chance) along the trajectory.

    status: 'emerged' (above at the final distinct position; significant_from = first position of the run of
    distinct positions above that reaches the end), 'transient' (above at some position, not at the end),
    'never' (never above), 'undefined' (no value at any position: no probe, or no positive/negative clip).
    first_above / last_above: the first and last captured positions that are above (None if never).
    distinct_above: distinct positions in the final run above (0 unless emerged); n_distinct: distinct
    positions with a value.
    """
    status: str
    significant_from: int | None
    first_above: int | None
    last_above: int | None
    distinct_above: int
    n_distinct: int


def _runs_of(positions: np.ndarray, runs: dict | None) -> tuple[np.ndarray, list]:
    """Per position the first position of its run of identical positions, and the runs in order."""
    runs = runs or {}
    run_of = np.array([runs.get(int(position), int(position)) for position in positions])
    return run_of, list(dict.fromkeys(run_of))


def emergence_status(positions, above, defined, runs: dict | None = None) -> Emergence:
    """Classify a curve from which positions are above (bool) and which have a value (bool).

    `runs` maps each position to the first position of its run of identical positions (distinct_positions);
    a run counts as one position, and it is above only when every position in it is. Positions without a
    value count as not above; they are left out of n_distinct.
    """
    order = np.argsort(np.asarray(positions), kind="stable")
    positions = np.asarray(positions)[order]
    defined = np.asarray(defined, bool)[order]
    above = np.asarray(above, bool)[order] & defined
    run_of, run_ids = _runs_of(positions, runs)
    # One entry per distinct position (run): above only if all its positions are, defined if any is.
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


def level_crossings(positions, curves, runs: dict | None = None, fraction: float = HALFWAY) -> np.ndarray:
    """Per curve (row of `curves` [n_curves, n_positions], positions ascending): the first position from which
    the curve stays at or above chance + fraction * (its final value - chance) to the end, moved back to the first
    position of its run of identical positions. +inf where the final value is not above chance (the curve never
    leaves chance for good), NaN where it is undefined (one class drawn).

    For the exact posterior, whose final AUROC against the final content is 1, this is the planted emergence
    step's rule (data/truth.py: AUROC >= 0.75 from that step on); a probe's final AUROC is lower, and its curve
    is held to its own final value rather than to a level it may never reach.
    """
    positions = np.asarray(positions)
    curves = np.atleast_2d(np.asarray(curves, np.float64))
    final = curves[:, -1]
    level = CHANCE + fraction * (final - CHANCE)
    at_or_above = np.nan_to_num(curves, nan=-np.inf) >= level[:, None]
    # The final stretch of positions at or above: its first position, snapped to the first position of its run
    # of identical positions (the clips there are the same content, so the crossing happened by then).
    below = ~at_or_above
    last_below = np.where(below.any(axis=1), curves.shape[1] - 1 - np.argmax(below[:, ::-1], axis=1), -1)
    start = np.clip(last_below + 1, 0, curves.shape[1] - 1)
    run_of, _ = _runs_of(positions, runs)
    crossing = run_of[start].astype(np.float64)
    crossing[~(final > CHANCE)] = np.inf
    crossing[~np.isfinite(final)] = np.nan
    return crossing


def crossing_interval(crossings, level: float) -> tuple[float, float]:
    """Percentile interval of resampled crossing positions (level_crossings over bootstrap rows). Positions are
    discrete, so the bounds are observed positions (the lower quantile rounds down, the upper up); +inf (the
    curve stayed at chance) counts as later than every position, so an upper bound of +inf says that in more
    than (1 - level)/2 of the resamples the concept did not emerge. NaN rows (undefined) are left out."""
    crossings = np.asarray(crossings, np.float64)
    crossings = crossings[~np.isnan(crossings)]
    if not crossings.size:
        return np.nan, np.nan
    tail = (1.0 - level) / 2.0
    return (float(np.quantile(crossings, tail, method="lower")),
            float(np.quantile(crossings, 1.0 - tail, method="higher")))


def random_note_sets(train_rows: np.ndarray, n_positive: int, n_total: int, rng: np.random.Generator):
    """A random concept drawn note by note: `n_total` train notes, `n_positive` of them labelled positive."""
    rows = rng.choice(train_rows, n_total, replace=False)
    labels = np.zeros(n_total, int)
    labels[rng.choice(n_total, n_positive, replace=False)] = 1
    return rows, labels


def random_instrument_sets(train_rows: np.ndarray, memberships: np.ndarray, n_positive_instruments: int,
                           n_negative_instruments: int, rng: np.random.Generator):
    """A random concept drawn instrument by instrument, matched in NUMBER OF INSTRUMENTS.

    `memberships` int [n_examples, max_parts]: every instrument an example sounds (a mix: each part's; -1
    pads). Draws n_positive_instruments of the train instruments as positives and n_negative_instruments of
    the others as negatives: an example is positive when one of its parts is a positive instrument and every
    part was drawn, negative when every part is a negative instrument (as a family concept reads a mix);
    examples sounding an undrawn instrument are left out. Probes are trained and tested on disjoint
    instruments, so the null they are compared with must also vary by instrument: a note-by-note draw mixes
    every instrument into both classes and gives a narrower null. The counts are capped so that both sides
    have at least one instrument and do not overlap.
    """
    parts = np.asarray(memberships)[train_rows]
    instruments = np.unique(parts[parts >= 0])
    n_positive = int(np.clip(n_positive_instruments, 1, len(instruments) - 1))
    n_negative = int(np.clip(n_negative_instruments, 1, len(instruments) - n_positive))
    drawn = rng.permutation(instruments)[:n_positive + n_negative]
    padding = parts < 0
    in_positive = np.isin(parts, drawn[:n_positive])
    in_negative = np.isin(parts, drawn[n_positive:])
    positive = in_positive.any(axis=1) & (in_positive | in_negative | padding).all(axis=1)
    negative = (in_negative | padding).all(axis=1) & ~padding.all(axis=1)
    rows = np.concatenate([train_rows[positive], train_rows[negative]])
    labels = np.concatenate([np.ones(positive.sum(), int), np.zeros(negative.sum(), int)])
    return rows, labels


def multi_cluster_weights(memberships: np.ndarray, n_clusters: int, n_resamples: int,
                          rng: np.random.Generator) -> np.ndarray:
    """[n_resamples, n_items] weights of a cluster bootstrap where an item belongs to several clusters (a mix
    sounds several instruments): clusters are drawn as in cluster_weights and an item's weight is the product
    of its clusters' multiplicities, as in Owen's (2007) pigeonhole bootstrap for crossed factors: a mix of
    instruments A and B appears once for every draw of A together with every draw of B. `memberships` int
    [n_items, max_parts], -1 pads."""
    memberships = np.asarray(memberships)
    drawn = np.concatenate([cluster_weights(n_clusters, n_resamples, rng), np.ones((n_resamples, 1))], axis=1)
    # The padding (-1) reads the column of ones.
    return np.prod(drawn[:, np.where(memberships >= 0, memberships, n_clusters)], axis=2)


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
