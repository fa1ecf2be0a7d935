"""When a concept emerges along the trajectory: the one computation behind emergence.csv and emergence_steps.csv in
both spaces (stage 6's embedding-space probes and its activation-space probes), plus the drift of the clips.

Per yardstick, concept and position: the probe's metrics with prompt-resampled CIs, its baselines' mean and 95th
percentile and the baseline test's p-value (emergence_table); one Bonferroni family over every p-value the table
shows — every metric, concept, position and yardstick (multiple_testing); then per concept the emergence status
over distinct positions (emergence_steps). The baselines are whatever the caller scored as ProbeScores'
baseline_*: random-concept probes in embedding space, probes on permuted labels in activation space.
"""
import numpy as np
import pandas as pd
from tqdm import tqdm

from interp import statistics
from interp.records import ProbeScores, Yardstick

# A position is "above" when its metric's lower CI bound exceeds this percentile of the baselines at that
# position; a concept has emerged when it is above from some position to the end.
BASELINE_PERCENTILE = 95.0
THRESHOLD_SUFFIX = f"_baseline_p{BASELINE_PERCENTILE:.0f}"
# Emergence is charted for the chance-corrected metrics only: accuracy, TPR and TNR alone rise for a probe
# that says "no" (or "yes") to everything.
EMERGENCE_METRICS = ("auroc", "balanced_accuracy")
# When two consecutive positions count as one (statistics.distinct_positions): with realised content, when the
# content of every trajectory is the same to CONTENT_ATOL (the parts are written with 9 decimals) — the
# generator has committed to the same clips; without, when every clip's embedding is the same to
# EMBEDDING_RTOL (float32 round-off of a deterministic embedder).
CONTENT_ATOL = 1e-6
EMBEDDING_RTOL = 1e-5


def emergence(probe_scores: ProbeScores, yardsticks: list[Yardstick], clip_prompt: np.ndarray,
              clip_position: np.ndarray, concept_names, axis_name: str, n_resamples: int, alpha: float, seed: int,
              progress: bool = True) -> tuple[pd.DataFrame, int]:
    """emergence.csv: every yardstick's concept x position table, corrected as one family of tests.

    clip_prompt: per clip, its prompt's row in the sorted prompt ids (np.unique's inverse); clip_position: per
    clip, its position on the trajectory axis. Returns (table in emergence_columns() order, number of tests)."""
    prompt_weights = statistics.cluster_weights(int(clip_prompt.max()) + 1, n_resamples,
                                                np.random.default_rng([seed, 3]))
    table = pd.concat([emergence_table(probe_scores, yardstick, clip_prompt, clip_position, concept_names,
                                       prompt_weights, 1.0 - alpha, progress) for yardstick in yardsticks],
                      ignore_index=True)
    table["trajectory_axis"] = axis_name
    table, n_tests = multiple_testing(table, alpha)
    return table[emergence_columns()], n_tests


def emergence_table(probe_scores: ProbeScores, yardstick: Yardstick, clip_prompt: np.ndarray,
                    clip_position: np.ndarray, concept_names, prompt_weights: np.ndarray, level: float,
                    progress: bool = False) -> pd.DataFrame:
    """Concept x position metrics against one yardstick, with prompt-resampled CIs and baseline p-values
    (uncorrected; multiple_testing() corrects them over every yardstick at once).

    prompt_weights: [n_resamples, n_prompts] from statistics.cluster_weights. The CIs resample prompts, not
    clips, because the samples of one prompt share its text and are correlated; one set of draws serves every
    concept and position, which keeps the cost at one weight matrix instead of one per (concept, position).
    """
    scores, decisions = probe_scores.scores, probe_scores.decisions
    rows, baseline_rows = [], {metric: [] for metric in statistics.METRICS}
    n_baselines = probe_scores.baseline_scores.shape[1]
    for position in tqdm(np.unique(clip_position), desc=f"positions ({yardstick.name})", disable=not progress):
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
            if np.isnan(scores[here, k]).all():
                rows.append(row)
                for metric in statistics.METRICS:
                    baseline_rows[metric].append(np.full(n_baselines, np.nan))
                continue
            point = statistics.point_metrics(y_true, scores[here, k], None if y_pred is None else y_pred[None])
            resampled = statistics.binary_metrics(weights, y_true, scores[here, k], y_pred)
            present = ~np.isnan(probe_scores.baseline_scores[k, :, here[0]])
            baseline_values = statistics.point_metrics(
                y_true, probe_scores.baseline_scores[k][present][:, here],
                None if probe_scores.baseline_decisions is None
                else probe_scores.baseline_decisions[k][present][:, here])
            lows, highs = statistics.percentile_interval(
                np.stack([resampled[metric] for metric in statistics.METRICS]), level)
            for m, metric in enumerate(statistics.METRICS):
                finite = baseline_values[metric][np.isfinite(baseline_values[metric])]
                row.update({
                    metric: float(point[metric][0]), f"{metric}_low": lows[m], f"{metric}_high": highs[m],
                    f"{metric}_baseline_mean": float(finite.mean()) if finite.size else np.nan,
                    f"{metric}{THRESHOLD_SUFFIX}": float(np.percentile(finite, BASELINE_PERCENTILE))
                    if finite.size else np.nan,
                })
                baseline_rows[metric].append(np.pad(finite, (0, n_baselines - finite.size), constant_values=np.nan))
            rows.append(row)
    table = pd.DataFrame(rows)
    for metric in statistics.METRICS:
        for suffix in ("", "_low", "_high", "_baseline_mean", THRESHOLD_SUFFIX):
            if f"{metric}{suffix}" not in table:
                table[f"{metric}{suffix}"] = np.nan
        baselines = np.stack(baseline_rows[metric]) if rows else np.zeros((0, n_baselines))
        table[f"{metric}_p"] = statistics.baseline_test(table[metric].to_numpy(float), baselines)
        table[f"{metric}_direction"] = statistics.directions(table[metric], table[f"{metric}_baseline_mean"])
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
    return table


def multiple_testing(table: pd.DataFrame, alpha: float) -> tuple[pd.DataFrame, int]:
    """Bonferroni over every p-value in the table — every metric, concept, position and yardstick the report
    shows — and the resulting significance. Returns (table, number of tests)."""
    metrics = statistics.METRICS
    pvalues = table[[f"{metric}_p" for metric in metrics]].to_numpy(float)
    n_tests = int(np.isfinite(pvalues).sum())
    adjusted = np.minimum(pvalues * n_tests, 1.0)
    for m, metric in enumerate(metrics):
        table[f"{metric}_p_bonferroni"] = adjusted[:, m]
        table[f"{metric}_significant"] = adjusted[:, m] < alpha
    return table, n_tests


def emergence_columns() -> list[str]:
    leading = ["yardstick", "concept", "trajectory_axis", "step", "n_prompts", "n_positive_prompts", "n_clips",
               "n_positive_clips"]
    return leading + [f"{metric}{suffix}" for metric in statistics.METRICS
                      for suffix in ("", "_low", "_high", "_baseline_mean", THRESHOLD_SUFFIX, "_p", "_p_bonferroni",
                                     "_significant", "_direction")] + ["note"]


def emergence_steps(table: pd.DataFrame, runs: dict | None) -> pd.DataFrame:
    """Per yardstick, concept and metric: the emergence status over distinct positions (statistics.Emergence)
    and the final position's value, CI, baseline threshold and significance with its direction. `runs`: the
    first position of every position's run of identical positions (None: every position is distinct)."""
    rows = []
    for (yardstick, concept), group in table.groupby(["yardstick", "concept"], sort=False):
        group = group.sort_values("step")
        final = group.iloc[-1]
        for metric in EMERGENCE_METRICS:
            result = statistics.emergence_status(group["step"].to_numpy(), group[f"{metric}_low"].to_numpy(float),
                                                 group[f"{metric}{THRESHOLD_SUFFIX}"].to_numpy(float), runs)
            rows.append({"yardstick": yardstick, "concept": concept, "metric": metric,
                         "trajectory_axis": final["trajectory_axis"], "status": result.status,
                         "emergence_step": result.emergence_step, "first_above": result.first_above,
                         "last_above": result.last_above, "distinct_above": result.distinct_above,
                         "n_distinct": result.n_distinct, "final_step": int(final["step"]),
                         "final_value": final[metric], "final_low": final[f"{metric}_low"],
                         "final_high": final[f"{metric}_high"],
                         "final_baseline_p95": final[f"{metric}{THRESHOLD_SUFFIX}"],
                         "final_significant": bool(final[f"{metric}_significant"]),
                         "final_direction": final[f"{metric}_direction"] if final[f"{metric}_significant"] else "",
                         "note": final["note"]})
    frame = pd.DataFrame(rows)
    for column in ("emergence_step", "first_above", "last_above"):
        frame[column] = pd.array(frame[column].tolist(), dtype="Int64")
    return frame


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
