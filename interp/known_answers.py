"""Known answers: does the method recover what the generator planted? Stage 6 writes these tables when the generator
knows its exact answer (data/truth.py: the ideal model's truth parts and tables under generated/).

- known_answers.csv, one row per concept whose final content differs between trajectories: the planted emergence
  step (the truth tables' `emergence_step`, from which the exact posterior's AUROC against the final content
  stays >= 0.75), the method's status and emergence step against the `exact` yardstick (interp/yardsticks.py:
  the final realised content), with its interval, and the same rule applied to the exact posterior itself (the
  oracle: the ceiling of any probe on this run).
  The recovered interval is [interval_from, emergence_high] in sampler steps: the prompt-bootstrap interval of
  the emergence step (interp/emergence.py) widened down to just after the captured position before its lower
  bound, because a crossing first seen at captured position p happened somewhere after the position captured
  before p. `inside`: the planted step lies in it; `near`: it lies within one captured position of the
  recovered step (between the captured positions before and after it); `recovered`: either.
- known_order.csv, for the probes and the oracle: is the planted ORDER recovered? Spearman's rank correlation
  between planted and recovered steps over the concepts with both, with a prompt-bootstrap interval, and the
  share of concept pairs whose planted steps fall between different captured positions that are ordered as
  planted (a tie in the recovered steps counts one half).
- known_commitment.csv, when the adaptive commitment search has written its table (COMMITMENT_SEARCH under the
  result folder): per concept and strength the commitment step found from the realised content (method
  `truth`) and by the probes (method `probe`, with its interval); `within_two` says whether the truth lies
  within COMMITMENT_TOLERANCE sampler steps of the interval.
"""
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from data.concepts import BY_NAME
from data.contract import read_table
from data.stage import InputError
from interp import statistics

COMMITMENT_SEARCH = Path("commitment") / "commitment_search.csv"
SEARCH_COLUMNS = ("concept", "strength", "method", "commitment_step", "commitment_low", "commitment_high")
COMMITMENT_TOLERANCE = 2
KNOWN_COLUMNS = ["concept", "group", "n_trajectories", "n_positive", "planted_onset", "planted_step",
                 "planted_completion", "planted_captured_step", "status", "emergence_step", "emergence_low",
                 "emergence_high", "interval_from", "inside", "near", "recovered", "oracle_status", "oracle_step",
                 "oracle_low", "oracle_high", "oracle_recovered", "transfer_auroc", "transfer_auroc_low",
                 "transfer_auroc_high", "note"]
ORDER_COLUMNS = ["probe", "n_concepts", "spearman", "spearman_low", "spearman_high", "pairs", "pairs_ordered",
                 "pairs_share"]
COMMITMENT_COLUMNS = ["concept", "strength", "truth_step", "probe_step", "probe_low", "probe_high", "within_two",
                      "n_prompts", "n_samples", "n_random_directions"]


def _previous(captured: np.ndarray, position, start: int) -> int:
    earlier = captured[captured < position]
    return int(earlier[-1]) if earlier.size else start


def _next(captured: np.ndarray, position) -> int:
    later = captured[captured > position]
    return int(later[0]) if later.size else int(position)


def recovery(planted, step, low, high, captured, start: int) -> dict:
    """Whether a planted step is recovered by an estimated step and its interval over captured positions (module
    docstring); every field None where the estimate or the plant is missing."""
    if pd.isna(planted) or pd.isna(step):
        return {"interval_from": None, "inside": None, "near": None, "recovered": None if pd.isna(planted) else False}
    interval_from = _previous(captured, low if not pd.isna(low) else step, start)
    upper = np.inf if pd.isna(high) else high
    inside = bool(interval_from < planted <= upper)
    near = bool(_previous(captured, step, start) <= planted <= _next(captured, step))
    return {"interval_from": interval_from, "inside": inside, "near": near, "recovered": inside or near}


def known_answers(steps: pd.DataFrame, oracle_steps: pd.DataFrame, truth: pd.DataFrame, yardstick: str,
                  captured, start: int) -> pd.DataFrame:
    """known_answers.csv from the method's emergence_steps (rows of `yardstick`), the oracle's, and the truth
    tables' emergence_truth; `captured`: the run's captured positions; `start`: the axis's first step."""
    captured = np.asarray(sorted(captured))
    method = steps[steps["yardstick"] == yardstick].set_index("concept")
    oracle = oracle_steps.set_index("concept")
    rows = []
    for plant in truth.itertuples(index=False):
        if not 0 < plant.n_positive < plant.n_trajectories or plant.concept not in method.index:
            continue
        found, exact = method.loc[plant.concept], oracle.loc[plant.concept] if plant.concept in oracle.index else None
        row = {"concept": plant.concept, "group": BY_NAME[plant.concept].group,
               "n_trajectories": plant.n_trajectories, "n_positive": plant.n_positive,
               "planted_onset": plant.onset_step, "planted_step": plant.emergence_step,
               "planted_completion": plant.completion_step, "planted_captured_step": plant.emergence_captured_step,
               "status": found["status"], "emergence_step": found["emergence_step"],
               "emergence_low": found["emergence_low"], "emergence_high": found["emergence_high"],
               "transfer_auroc": found["final_value"], "transfer_auroc_low": found["final_low"],
               "transfer_auroc_high": found["final_high"], "note": found["note"]}
        row.update(recovery(plant.emergence_step, found["emergence_step"], found["emergence_low"],
                            found["emergence_high"], captured, start))
        if exact is not None:
            row.update(oracle_status=exact["status"], oracle_step=exact["emergence_step"],
                       oracle_low=exact["emergence_low"], oracle_high=exact["emergence_high"],
                       oracle_recovered=recovery(plant.emergence_step, exact["emergence_step"], exact["emergence_low"],
                                                 exact["emergence_high"], captured, start)["recovered"])
        rows.append(row)
    frame = pd.DataFrame(rows).reindex(columns=KNOWN_COLUMNS)
    for column in ("planted_onset", "planted_step", "planted_completion", "planted_captured_step", "emergence_step",
                   "emergence_low", "emergence_high", "interval_from", "oracle_step", "oracle_low", "oracle_high"):
        frame[column] = pd.array([None if pd.isna(value) else int(value) for value in frame[column]], dtype="Int64")
    return frame


def _pairs(planted: np.ndarray, recovered: np.ndarray) -> tuple[int, float]:
    """(pairs with different planted values, pairs ordered as planted; recovered ties count one half)."""
    total, ordered = 0, 0.0
    for i in range(len(planted)):
        for j in range(i + 1, len(planted)):
            if planted[i] == planted[j]:
                continue
            total += 1
            sign = np.sign(recovered[i] - recovered[j]) * np.sign(planted[i] - planted[j])
            ordered += 1.0 if sign > 0 else (0.5 if sign == 0 else 0.0)
    return total, ordered


def order_recovery(name: str, planted: np.ndarray, planted_captured: np.ndarray, recovered: np.ndarray,
                   resampled: np.ndarray, level: float) -> dict:
    """known_order.csv's row: planted [n] and recovered [n] steps of the concepts with both, their resampled
    recovered steps [n, n_resamples] (+inf where a resample does not emerge: later than every step)."""
    row = {"probe": name, "n_concepts": int(len(planted))}
    if len(planted) >= 3 and np.ptp(planted) > 0 and np.ptp(recovered) > 0:
        row["spearman"] = float(stats.spearmanr(planted, recovered).statistic)
        with np.errstate(invalid="ignore"):
            draws = np.array([stats.spearmanr(planted, column).statistic for column in resampled.T
                              if np.isfinite(column).any() and np.ptp(column[np.isfinite(column)]) > 0
                              and not np.isnan(column).any()])
        row["spearman_low"], row["spearman_high"] = statistics.percentile_interval(draws[np.isfinite(draws)], level) \
            if np.isfinite(draws).any() else (np.nan, np.nan)
    total, ordered = _pairs(np.asarray(planted_captured, np.float64), np.asarray(recovered, np.float64))
    row.update(pairs=total, pairs_ordered=ordered, pairs_share=ordered / total if total else np.nan)
    return row


def known_order(known: pd.DataFrame, crossings: dict, oracle_crossings: dict, level: float) -> pd.DataFrame:
    """known_order.csv: for the probes and for the oracle. `crossings`: concept -> the emergence step in every
    prompt resample (statistics.level_crossings over emergence()'s resampled curves)."""
    rows = []
    for name, step_column, resampled in (("probes", "emergence_step", crossings),
                                         ("oracle", "oracle_step", oracle_crossings)):
        chosen = known[known[step_column].notna() & known["planted_step"].notna()
                       & known["planted_captured_step"].notna()]
        if chosen.empty:
            rows.append({"probe": name, "n_concepts": 0})
            continue
        draws = np.stack([resampled[concept] for concept in chosen["concept"]])
        rows.append(order_recovery(name, chosen["planted_step"].to_numpy(float),
                                   chosen["planted_captured_step"].to_numpy(float),
                                   chosen[step_column].to_numpy(float), draws, level))
    return pd.DataFrame(rows).reindex(columns=ORDER_COLUMNS)


def known_commitment(search: pd.DataFrame | None) -> pd.DataFrame:
    """known_commitment.csv from the commitment search's table (None: no search yet, header only)."""
    if search is None or search.empty:
        return pd.DataFrame(columns=COMMITMENT_COLUMNS)
    rows = []
    for (concept, strength), group in search.groupby(["concept", "strength"], sort=True):
        truth = group[group["method"] == "truth"]
        probe = group[group["method"] == "probe"]
        row = {"concept": concept, "strength": strength,
               "truth_step": truth["commitment_step"].iloc[0] if len(truth) else np.nan}
        if len(probe):
            found = probe.iloc[0]
            row.update(probe_step=found["commitment_step"], probe_low=found["commitment_low"],
                       probe_high=found["commitment_high"], n_prompts=found.get("n_prompts"),
                       n_samples=found.get("n_samples"), n_random_directions=found.get("n_random_directions"))
            low = found["commitment_low"] if not pd.isna(found["commitment_low"]) else found["commitment_step"]
            high = found["commitment_high"] if not pd.isna(found["commitment_high"]) else found["commitment_step"]
            if not pd.isna(row["truth_step"]) and not pd.isna(low):
                row["within_two"] = bool(low - COMMITMENT_TOLERANCE <= row["truth_step"] <= high + COMMITMENT_TOLERANCE)
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=COMMITMENT_COLUMNS)


def read_commitment_search(out: Path) -> pd.DataFrame | None:
    """The commitment search's table (None when no search has run), its columns and numbers checked."""
    path = Path(out) / COMMITMENT_SEARCH
    if not path.is_file():
        return None
    fix = "rerun the commitment search (interp/commitment_search.py) with --force"
    frame = read_table(path, SEARCH_COLUMNS, fix)
    text = [column for column in SEARCH_COLUMNS if column not in ("concept", "method")
            and not pd.api.types.is_numeric_dtype(frame[column])]
    if text:
        raise InputError(f"{path}: column '{text[0]}' holds text where numbers belong — {fix}")
    return frame


def oracle_scores(truth, clips: pd.DataFrame, concept_names) -> np.ndarray:
    """[n_clips, n_concepts]: each clip's exact probability that its trajectory ends on content carrying the
    concept (data.truth.Truth.probability at the clip's step); NaN for concepts the truth does not cover."""
    trajectory = {key: row for row, key in enumerate(zip(truth.trajectories["prompt_id"],
                                                        truth.trajectories["sample"].astype(int)))}
    step = {int(value): column for column, value in enumerate(truth.steps)}
    rows = np.array([trajectory[(prompt, int(sample))] for prompt, sample in zip(clips["prompt_id"], clips["sample"])])
    columns = np.array([step[int(value)] for value in clips["step"]])
    scores = np.full((len(clips), len(concept_names)), np.nan)
    for k, name in enumerate(concept_names):
        if name in truth.concepts:
            scores[:, k] = truth.probability[rows, columns, truth.concepts.index(name)]
    return scores
