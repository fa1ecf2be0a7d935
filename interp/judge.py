"""Stage 6's reading of the judge (embeddings/judge_generated.py): per analysed clip, the judge's verdict on the
FINAL clip of its trajectory, and the judge's validation where the generator knows its exact content.

Validation (judge_validation.csv): on generators that record their realised content (the reference model), per
concept, the AUROC of the judge's score of each trajectory's final clip against the exact final content, with a
percentile CI from VALIDATION_RESAMPLES resamples of prompts (statistics.cluster_weights: a prompt's samples are
correlated). A concept is used by the judged-content yardstick only when its judge is better than chance (the CI's
lower end above 0.5); a concept without evidence tags, or one whose CI reaches 0.5, or one the exact content cannot
validate (no positive or no negative trajectory), is unjudgeable there: the yardstick holds no positive for it.
Without exact content (Stable Audio, MusicGen) nothing can be validated on the run itself and every concept the
mapping table can judge is used; the demo's validation is the evidence for the judge (README, "The judge").
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data.concepts import CONCEPT_NAMES
from data.judge import judge_dir, read_judge_output
from data.stage import InputError
from interp import statistics

VALIDATION_RESAMPLES = 1000
VALIDATION_LEVEL = 0.95
VALIDATION_SEED = 18
CHANCE = 0.5
VALIDATION_COLUMNS = ["concept", "evidence_tags", "n_trajectories", "n_positive", "auroc", "auroc_low", "auroc_high",
                      "judged_present", "status", "used"]


@dataclass(frozen=True)
class JudgedClips:
    stem: str
    scores: np.ndarray      # [n_clips, n_concepts] the judge's score of each clip's trajectory's final clip
    present: np.ndarray     # bool, the same shape: judged present (data.judge.THRESHOLD)
    sidecar: dict
    sha256: str             # of judge.json, which names the table's hash
    shared_with_probes: bool  # the probes' embedder is the judge's network (same checkpoint)


def load_judge(data: Path, stem: str, clips: pd.DataFrame, probes_sidecar: dict) -> JudgedClips | None:
    """The judge's verdicts on the final clip of every analysed trajectory; None when the judge has not run.

    clips: the analysed rows (reference run, one kind). A table that does not hold some trajectory's final clip
    (the judge ran before stage 2 added prompts) is refused."""
    read = read_judge_output(data, stem)
    if read is None:
        return None
    table, sidecar = read
    table = table[table["intervention"] == ""]
    keyed = table.set_index(["prompt_id", "sample", "kind", "step"])
    last = clips.groupby(["prompt_id", "sample", "kind"], sort=False)["step"].transform("max")
    keys = pd.MultiIndex.from_arrays([clips["prompt_id"], clips["sample"].astype(int), clips["kind"], last.astype(int)])
    absent = ~keys.isin(keyed.index)
    if absent.any():
        prompt, sample, _, step = keys[int(np.argmax(absent))]
        raise InputError(f"{judge_dir(data, stem) / 'judge.csv'}: no verdict on prompt {prompt} sample {sample} at "
                         f"step {step}, a trajectory's final clip — rerun embeddings/judge_generated.py (make "
                         "judge): it tags only the clips it lacks")
    final = keyed.loc[keys]
    scores = final[[f"score_{name}" for name in CONCEPT_NAMES]].to_numpy(np.float64)
    present = final[[f"judged_{name}" for name in CONCEPT_NAMES]].astype(str).eq("True").to_numpy()
    checkpoint = sidecar.get("checkpoint_sha256")
    shared = checkpoint is not None and checkpoint == probes_sidecar.get("checkpoint_sha256")
    sha256 = sidecar.get("table_sha256", "")
    return JudgedClips(stem, scores, present, sidecar, sha256, bool(shared))


def trajectory_rows(clips: pd.DataFrame) -> np.ndarray:
    """One analysed row per trajectory (its first), for tables over trajectories."""
    return np.flatnonzero(~clips.duplicated(["prompt_id", "sample", "kind"]).to_numpy())


def judge_validation(judged: JudgedClips | None, clips: pd.DataFrame, exact: np.ndarray | None) -> pd.DataFrame:
    """judge_validation.csv (see the module docstring); exact: bool [n_clips, n_concepts], each clip's trajectory's
    exact final content (the content yardstick), or None when the generator records none."""
    if judged is None:
        return pd.DataFrame(columns=VALIDATION_COLUMNS)
    rows = trajectory_rows(clips)
    _, prompt = np.unique(clips["prompt_id"].to_numpy()[rows], return_inverse=True)
    weights = statistics.cluster_weights(int(prompt.max()) + 1, VALIDATION_RESAMPLES,
                                         np.random.default_rng(VALIDATION_SEED))[:, prompt]
    evidence = judged.sidecar.get("evidence", {})
    records = []
    for k, name in enumerate(CONCEPT_NAMES):
        score = judged.scores[rows, k]
        record = {"concept": name, "evidence_tags": ";".join(evidence.get(name, [])), "n_trajectories": len(rows),
                  "judged_present": int(judged.present[rows, k].sum())}
        if np.isnan(score).all():
            record.update(status="unjudgeable: no evidence tag (data/judge_tags.csv)", used=False)
        elif exact is None:
            record.update(status="not validated: the generator records no exact content", used=True)
        else:
            truth = exact[rows, k]
            record["n_positive"] = int(truth.sum())
            if truth.all() or not truth.any():
                record.update(status="unjudgeable: the exact content has no "
                                     f"{'negative' if truth.all() else 'positive'} trajectory to validate it on",
                              used=False)
            else:
                auroc = float(statistics.point_metrics(truth, score)["auroc"][0])
                low, high = statistics.percentile_interval(statistics.RankedScores(truth, score).auroc(weights),
                                                           VALIDATION_LEVEL)
                better = low > CHANCE
                record.update(auroc=auroc, auroc_low=low, auroc_high=high, used=bool(better),
                              status="validated: better than chance" if better
                              else "unjudgeable: not better than chance against the exact content")
        records.append(record)
    table = pd.DataFrame(records).reindex(columns=VALIDATION_COLUMNS)
    return table.astype({"n_positive": "Int64", "judged_present": "Int64"})


def judged_labels(judged: JudgedClips, clips: pd.DataFrame, exact: np.ndarray | None) -> np.ndarray:
    """bool [n_clips, n_concepts]: the judge's verdict on the clip's trajectory's final clip, for the concepts the
    validation lets the yardstick use (the others hold no positive)."""
    used = judge_validation(judged, clips, exact)["used"].astype(bool).to_numpy()
    return judged.present & used[None, :]


def shared_warning(judged: JudgedClips | None) -> str:
    if judged is None or not judged.shared_with_probes:
        return ""
    return (f"the probes' embedder and the judge ({judged.stem}) are the same network on the same checkpoint: "
            "the judged-content yardstick is not independent of the probes (a shared representation can agree "
            "with itself); use another embedder or judge for an independent check")
