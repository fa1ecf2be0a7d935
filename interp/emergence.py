"""When a concept emerges along the trajectory: the one computation behind emergence.csv and emergence_steps.csv in
both spaces (stage 6's embedding-space probes and its activation-space probes), plus the drift of the clips.

The primary metric, declared before any run, is AUROC; its null is "no information": the probe's scores carry
nothing about the yardstick's labels, which are then exchangeable between prompts (a prompt's samples are
correlated, so whole prompts are exchanged, statistics.clustered_auroc_test). Per yardstick, concept and
position (emergence_table): AUROC with a prompt-resampled CI, its exact permutation mean and spread, a two-sided
p-value; the other metrics (accuracy, TPR, TNR, balanced accuracy) are secondary: values and CIs, no test. One
Holm family over every AUROC p-value the table holds, every concept, position and yardstick (multiple_testing).
Per concept then (emergence_steps): the status over distinct positions from where the AUROC is significantly
above chance, and the emergence step, where the AUROC first reaches, for good, half of its final distance from
chance (statistics.level_crossings), with an interval from the same prompt resamples.

The random probes (random-concept probes in embedding space, probes on permuted labels in activation space) are a
secondary specificity check beside it: is the concept's probe better than a random one? `auroc_specific` says
whether the AUROC exceeds their 95th percentile; statuses never read it.
"""
import numpy as np
import pandas as pd
from tqdm import tqdm

from interp import statistics
from interp.records import ProbeScores, Yardstick

PRIMARY_METRIC = "auroc"
SECONDARY_METRICS = ("accuracy", "tpr", "tnr", "balanced_accuracy")
# The random probes' percentile a specific AUROC exceeds (the secondary check).
RANDOM_PERCENTILE = 95.0
# When two consecutive positions count as one (statistics.distinct_positions): with realised content, when the
# content of every trajectory is the same to CONTENT_ATOL (the parts are written with 9 decimals) — the
# generator has committed to the same clips; without, when every clip's embedding is the same to
# EMBEDDING_RTOL (float32 round-off of a deterministic embedder).
CONTENT_ATOL = 1e-6
EMBEDDING_RTOL = 1e-5


def emergence(probe_scores: ProbeScores, yardsticks: list[Yardstick], clip_prompt: np.ndarray,
              clip_position: np.ndarray, concept_names, axis_name: str, n_resamples: int, alpha: float, seed: int,
              progress: bool = True) -> tuple[pd.DataFrame, int, dict]:
    """emergence.csv: every yardstick's concept x position table, AUROC corrected as one family of tests.

    clip_prompt: per clip, its prompt's row in the sorted prompt ids (np.unique's inverse); clip_position: per
    clip, its position on the trajectory axis. Returns (table in emergence_columns() order, number of tests,
    {(yardstick, concept): resampled AUROC [n_resamples, n_positions]} for emergence_steps)."""
    prompt_weights = statistics.cluster_weights(int(clip_prompt.max()) + 1, n_resamples,
                                                np.random.default_rng([seed, 3]))
    tables, resampled = [], {}
    for yardstick in yardsticks:
        table, curves = emergence_table(probe_scores, yardstick, clip_prompt, clip_position, concept_names,
                                        prompt_weights, 1.0 - alpha, progress)
        tables.append(table)
        resampled.update({(yardstick.name, name): curve for name, curve in curves.items()})
    table = pd.concat(tables, ignore_index=True)
    table["trajectory_axis"] = axis_name
    table, n_tests = multiple_testing(table, alpha)
    return table[emergence_columns()], n_tests, resampled


def emergence_table(probe_scores: ProbeScores, yardstick: Yardstick, clip_prompt: np.ndarray,
                    clip_position: np.ndarray, concept_names, prompt_weights: np.ndarray, level: float,
                    progress: bool = False) -> tuple[pd.DataFrame, dict]:
    """Concept x position metrics against one yardstick, with prompt-resampled CIs and the AUROC's test
    (uncorrected; multiple_testing() corrects over every yardstick at once). Also returns, per concept, the
    resampled AUROC curve [n_resamples, n_positions] (NaN where undefined).

    prompt_weights: [n_resamples, n_prompts] from statistics.cluster_weights. The CIs resample prompts, not
    clips, because the samples of one prompt share its text and are correlated; one set of draws serves every
    concept and position, so a resample is the same prompts at every position (what the emergence step's
    interval needs) and the cost stays at one weight matrix.
    """
    scores, decisions = probe_scores.scores, probe_scores.decisions
    positions = np.unique(clip_position)
    curves = {name: np.full((len(prompt_weights), len(positions)), np.nan) for name in concept_names}
    rows = []
    for p, position in enumerate(tqdm(positions, desc=f"positions ({yardstick.name})", disable=not progress)):
        here = np.flatnonzero(clip_position == position)
        prompts_here = clip_prompt[here]
        weights = prompt_weights[:, prompts_here]
        for k, name in enumerate(concept_names):
            y_true = yardstick.clip_labels[here, k]
            y_pred = None if decisions is None else decisions[here, k]
            row = {"yardstick": yardstick.name, "concept": name, "step": int(position),
                   "n_prompts": int(len(np.unique(prompts_here))),
                   "n_positive_prompts": int(len(np.unique(prompts_here[y_true]))),
                   "n_clips": int(len(here)), "n_positive_clips": int(y_true.sum())}
            rows.append(row)
            if np.isnan(scores[here, k]).all():
                continue
            point = statistics.point_metrics(y_true, scores[here, k], None if y_pred is None else y_pred[None])
            resampled = statistics.binary_metrics(weights, y_true, scores[here, k], y_pred)
            curves[name][:, p] = resampled["auroc"]
            metrics = (PRIMARY_METRIC,) + SECONDARY_METRICS
            lows, highs = statistics.percentile_interval(np.stack([resampled[metric] for metric in metrics]), level)
            for m, metric in enumerate(metrics):
                row.update({metric: float(point[metric][0]), f"{metric}_low": lows[m], f"{metric}_high": highs[m]})
            _, row["auroc_null_mean"], row["auroc_null_sd"] = statistics.clustered_auroc_test(
                y_true, scores[here, k], prompts_here)
            present = ~np.isnan(probe_scores.baseline_scores[k, :, here[0]])
            random = statistics.point_metrics(y_true, probe_scores.baseline_scores[k][present][:, here])["auroc"]
            random = random[np.isfinite(random)]
            if random.size:
                row["auroc_random_mean"] = float(random.mean())
                row["auroc_random_p95"] = float(np.percentile(random, RANDOM_PERCENTILE))
    table = pd.DataFrame(rows).reindex(columns=[column for column in emergence_columns()
                                                if column not in ("trajectory_axis", "note")])
    table["auroc_p"] = statistics.two_sided_p(table["auroc"], table["auroc_null_mean"], table["auroc_null_sd"])
    table["auroc_specific"] = (table["auroc"] > table["auroc_random_p95"]).where(table["auroc_random_p95"].notna())
    notes = []
    for _, row in table.iterrows():
        if row["n_positive_clips"] == 0:
            notes.append(f"no {yardstick.subject} {yardstick.verb} this concept: metrics needing positives are "
                         "undefined")
        elif row["n_positive_clips"] == row["n_clips"]:
            notes.append(f"every {yardstick.subject} {yardstick.verb} this concept: metrics needing negatives are "
                         "undefined")
        elif np.isnan(row["auroc"]):
            notes.append("no probe for this concept (see probe_quality.csv)")
        else:
            notes.append("")
    table["note"] = notes
    return table, curves


def multiple_testing(table: pd.DataFrame, alpha: float) -> tuple[pd.DataFrame, int]:
    """Holm over every AUROC p-value in the table — every concept, position and yardstick — and the resulting
    significance and its side of chance. Returns (table, number of tests)."""
    n_tests = int(table["auroc_p"].notna().sum())
    table["auroc_p_holm"] = statistics.holm(table["auroc_p"].to_numpy(float))
    table["auroc_significant"] = table["auroc_p_holm"] < alpha
    table["auroc_direction"] = statistics.directions(table["auroc"], table["auroc_null_mean"])
    return table, n_tests


def emergence_columns() -> list[str]:
    leading = ["yardstick", "concept", "trajectory_axis", "step", "n_prompts", "n_positive_prompts", "n_clips",
               "n_positive_clips"]
    primary = ["auroc", "auroc_low", "auroc_high", "auroc_null_mean", "auroc_null_sd", "auroc_p", "auroc_p_holm",
               "auroc_significant", "auroc_direction", "auroc_random_mean", "auroc_random_p95", "auroc_specific"]
    secondary = [f"{metric}{suffix}" for metric in SECONDARY_METRICS for suffix in ("", "_low", "_high")]
    return leading + primary + secondary + ["note"]


def above_chance(rows: pd.DataFrame) -> np.ndarray:
    """Where the AUROC is significantly above chance (Holm), the positions a concept counts as readable at."""
    return rows["auroc_significant"].fillna(False).to_numpy(bool) & (rows["auroc_direction"] == "above").to_numpy()


def emergence_steps(table: pd.DataFrame, runs: dict | None, resampled: dict, level: float) -> pd.DataFrame:
    """Per yardstick and concept: the AUROC's emergence status over distinct positions (statistics.Emergence),
    the emergence step (the half-way crossing, statistics.level_crossings) with its resampled interval at
    `level`, and the final position's value, CI, significance and specificity. `runs`: the first position of
    every position's run of identical positions (None: every position is distinct); `resampled`: emergence()'s
    resampled curves."""
    rows = []
    for (yardstick, concept), group in table.groupby(["yardstick", "concept"], sort=False):
        group = group.sort_values("step")
        final = group.iloc[-1]
        positions = group["step"].to_numpy()
        result = statistics.emergence_status(positions, above_chance(group), group["auroc"].notna().to_numpy(), runs)
        step = low = high = None
        if result.status == "emerged":
            step = statistics.level_crossings(positions, group["auroc"].to_numpy(float), runs)[0]
            low, high = statistics.crossing_interval(
                statistics.level_crossings(positions, resampled[(yardstick, concept)], runs), level)
        rows.append({"yardstick": yardstick, "concept": concept, "metric": PRIMARY_METRIC,
                     "trajectory_axis": final["trajectory_axis"], "status": result.status,
                     "emergence_step": _position(step), "emergence_low": _position(low),
                     "emergence_high": _position(high), "significant_from": result.significant_from,
                     "first_above": result.first_above, "last_above": result.last_above,
                     "distinct_above": result.distinct_above, "n_distinct": result.n_distinct,
                     "final_step": int(final["step"]), "final_value": final["auroc"], "final_low": final["auroc_low"],
                     "final_high": final["auroc_high"], "final_p_holm": final["auroc_p_holm"],
                     "final_significant": bool(final["auroc_significant"]),
                     "final_direction": final["auroc_direction"] if final["auroc_significant"] else "",
                     "final_random_p95": final["auroc_random_p95"], "final_specific": final["auroc_specific"],
                     "note": _step_note(final["note"], result.status, high)})
    frame = pd.DataFrame(rows)
    for column in ("emergence_step", "emergence_low", "emergence_high", "significant_from", "first_above",
                   "last_above"):
        frame[column] = pd.array(frame[column].tolist(), dtype="Int64")
    return frame


def _position(value):
    return None if value is None or not np.isfinite(value) else int(value)


def _step_note(note, status: str, high) -> str:
    if status == "emerged" and high is not None and np.isinf(high):
        extra = "in more than alpha/2 of the prompt resamples the AUROC ends at or below chance: no upper bound"
        return "; ".join(filter(None, [note if isinstance(note, str) else "", extra]))
    return note if isinstance(note, str) else ""


# ------------------------------------------------------------------------------------------ trajectory

def trajectories(clips: pd.DataFrame) -> np.ndarray:
    """Per clip, the number of its (prompt, sample) trajectory."""
    return clips.groupby(["prompt_id", "sample"], sort=False).ngroup().to_numpy()


def distinct_positions(clips: pd.DataFrame, embeddings: np.ndarray, content_mass: np.ndarray | None):
    """({position: first position of its run of identical positions}, what decided it: "content" or
    "embeddings"). The realised content decides when the generator records it (statistics.distinct_positions)."""
    if content_mass is not None:
        return statistics.distinct_positions(content_mass, trajectories(clips), clips["step"].to_numpy(),
                                             atol=CONTENT_ATOL), "content"
    return statistics.distinct_positions(embeddings, trajectories(clips), clips["step"].to_numpy(),
                                         rtol=EMBEDDING_RTOL), "embeddings"


def drift_tables(clips: pd.DataFrame, embeddings: np.ndarray, runs: dict, n_resamples: int, alpha: float, seed: int):
    """Per clip distance to its trajectory's final position, and per position the mean with a prompt-resampled
    CI and the first position of its run of identical positions (statistics.distinct_positions)."""
    cosine, l2 = statistics.trajectory_drift(embeddings, trajectories(clips), clips["step"].to_numpy())
    per_clip = clips[["prompt_id", "sample", "step"]].assign(cosine_distance=cosine, l2_distance=l2)
    prompt = pd.factorize(clips["prompt_id"])[0]
    prompt_weights = statistics.cluster_weights(prompt.max() + 1, n_resamples, np.random.default_rng([seed, 4]))
    rows = []
    for position in np.unique(clips["step"]):
        here = np.flatnonzero(clips["step"].to_numpy() == position)
        row = {"step": int(position), "n_clips": int(len(here)), "distinct_position": runs[int(position)]}
        for name, values in (("cosine_distance", cosine), ("l2_distance", l2)):
            row[name] = float(values[here].mean())
            row[f"{name}_low"], row[f"{name}_high"] = statistics.percentile_interval(
                statistics.weighted_mean(prompt_weights[:, prompt[here]], values[here]), 1.0 - alpha)
        rows.append(row)
    return per_clip, pd.DataFrame(rows)
