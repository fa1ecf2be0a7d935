"""The truth of a generator that knows what it made (the ideal reference model), and the answers it implies.

Stage 2 writes, per prompt, generated/truth/<prompt_id>.csv (data/ARTIFACTS.md, stage 2): one row per sample and
EVERY sampler step (not only the captured ones) with the realised content (`content_<label>`: the posterior
mass of each label, as in generated/content/) and `truth_<concept>`: the exact probability that the clip the
trajectory ends on carries the concept (the posterior weight of the clips whose labels satisfy the concept's
rule). When every prompt's part exists it derives, in generated/truth_tables/:

- the realised concept of a (trajectory, step): the concept's rule (data/concepts.py, `prompt_has`) applied to
  the labels holding mass >= REALISED_MASS — stage 6's content yardstick; the trajectory's FINAL content is
  that at its last step (one clip: masses are 0 or 1);
- commit_steps.csv — per trajectory and concept, the COMMIT STEP: the first step from which the realised concept
  equals its final value at that and every later step (0: it never changes);
- oracle_curves.csv — per concept and step, the ORACLE CURVE: the AUROC, over trajectories, of `truth_<concept>`
  at that step against the final content. The exact posterior is what the best possible reader of the step's
  output could know about the final content, so this is the ceiling of any probe scored the way stage 6 scores
  them (AUROC against the final realised content, per position);
- emergence_truth.csv — per concept, where its oracle curve passes ONSET_AUROC, EMERGENCE_AUROC and
  COMPLETION_AUROC for good (the first step from which it stays at or above the level). The PLANTED EMERGENCE
  STEP is the EMERGENCE_AUROC one: the step from which the output reveals the final content halfway between
  chance and certainty. A reader that detects less than the exact posterior emerges later, one with a
  significance rule on few trajectories may flag the onset; [onset, completion] is the transition's width.
  Beside it, the median commit step of the trajectories whose realised concept changes (when the content
  itself settles, which for most concepts lies near the completion step). Why a level of the oracle curve and not
  the oracle put through stage 6's significance rule: that step depends on the number of trajectories and on the
  baseline (on the planted model, random-concept probes read the only group that varies, and their 95th
  percentile reaches ~0.99 right when a group commits), so it describes the statistic, not the model; stage 6
  can compute it from the `truth_<concept>` columns, which are an oracle probe's scores.

The curves are the run's own (its trajectories, prompts and seeds): they are what a probe on this run can be
held to. Every definition reads the tables above; nothing assumes the geometry's planted times.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from data.concepts import BY_NAME, CONCEPTS
from data.contract import read_sidecar
from data.files import read_json, sha256_file, write_csv
from data.identifiers import path_inside
from data.parts import GENERATION_JSON, RunRecord, check_parts_current, part_is_current, record_file_of
from data.provenance import Provenance, begin, commit, decide, read_provenance
from data.stage import InputError
from data.vocabulary import DRUM, FAMILIES, SOURCES

TRUTH_DIR = "truth"
TABLES_DIR = "truth_tables"
TABLES_SIDECAR = "truth_tables.json"
TABLE_FILES = ("commit_steps.csv", "oracle_curves.csv", "emergence_truth.csv")
KEY_COLUMNS = ("prompt_id", "sample", "step", "sigma")
CONTENT_PREFIX, TRUTH_PREFIX = "content_", "truth_"
# A clip realises a label when at least this much of the posterior mass lies on clips carrying it (stage 6's rule).
REALISED_MASS = 0.5
ONSET_AUROC, EMERGENCE_AUROC, COMPLETION_AUROC = 0.6, 0.75, 0.95
FIX = "rerun stage 2 with --force"


def content_concepts(labels: Sequence[str] = FAMILIES + (DRUM,) + SOURCES) -> tuple[str, ...]:
    """Concepts whose prompt rule some set of these labels can satisfy (the rest need qualities, which clips do not
    carry): the concepts a clip's realised content can hold."""
    available = frozenset(labels)
    return tuple(concept.name for concept in CONCEPTS
                 if (len(concept.prompt_any & available) >= concept.prompt_min_any
                     or any(alternative <= available for alternative in concept.prompt_or_all))
                 and concept.prompt_all <= available)


def truth_part_path(generated: Path, prompt_id: str) -> Path:
    folder = Path(generated) / TRUTH_DIR
    return path_inside(folder, f"{prompt_id}.csv", "truth part", folder, FIX)


def format_truth_part(rows: Sequence[dict], labels: Sequence[str], concepts: Sequence[str]) -> str:
    """rows: dicts with prompt_id, sample, step, sigma, content (label -> mass), truth (concept -> probability)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([*KEY_COLUMNS, *(CONTENT_PREFIX + label for label in labels),
                     *(TRUTH_PREFIX + concept for concept in concepts)])
    for row in rows:
        # 9 decimals, as the content parts: bytes independent of how the sampler batched the samples.
        writer.writerow([row["prompt_id"], row["sample"], row["step"], "" if row["sigma"] is None else repr(row["sigma"]),
                         *(f"{row['content'][label]:.9f}" for label in labels),
                         *(f"{row['truth'][concept]:.9f}" for concept in concepts)])
    return text.getvalue()


# -- reading the parts ------------------------------------------------------------------------------------------

class Truth:
    """Every trajectory's truth at every step: trajectories in (prompt_id, sample) order."""

    def __init__(self, trajectories: pd.DataFrame, steps: np.ndarray, sigmas: np.ndarray, labels: tuple[str, ...],
                 concepts: tuple[str, ...], content: np.ndarray, probability: np.ndarray):
        self.trajectories = trajectories   # prompt_id, sample
        self.steps, self.sigmas = steps, sigmas
        self.labels, self.concepts = labels, concepts
        self.content = content              # [trajectories, steps, labels] posterior mass of each label
        self.probability = probability      # [trajectories, steps, concepts] exact P(final clip carries concept)

    def realised(self) -> np.ndarray:
        """bool [trajectories, steps, concepts]: the concept's rule on the labels with mass >= REALISED_MASS."""
        return realised_concepts(self.content, self.labels, self.concepts)

    def final(self) -> np.ndarray:
        return self.realised()[:, -1]


def realised_concepts(content: np.ndarray, labels: Sequence[str], concepts: Sequence[str]) -> np.ndarray:
    """content [..., labels] -> bool [..., concepts], as stage 6's content yardstick reads the realised labels."""
    held = np.asarray(content) >= REALISED_MASS
    flat = held.reshape(-1, held.shape[-1])
    patterns, inverse = np.unique(flat, axis=0, return_inverse=True)   # few distinct label sets: rule once each
    rules = np.array([[BY_NAME[name].prompt_has([label for label, on in zip(labels, pattern) if on])
                       for name in concepts] for pattern in patterns], dtype=bool).reshape(len(patterns), len(concepts))
    return rules[inverse.reshape(-1)].reshape(*held.shape[:-1], len(concepts))


def read_truth(generated: Path, prompt_ids: Sequence[str]) -> Truth:
    """The truth parts of these prompts in a run folder (the reference run, or an intervened run beside it), checked:
    made under the folder's current record (data/parts.py), the same columns and steps in every part."""
    record_file = record_file_of(generated)
    check_parts_current(generated, record_file, _generation(generated, record_file), prompt_ids)
    frames, columns = [], None
    for prompt_id in prompt_ids:
        path = truth_part_path(generated, prompt_id)
        if not path.is_file():
            raise InputError(f"{path}: missing — {FIX}")
        try:
            part = pd.read_csv(path, dtype={"prompt_id": str})
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            raise InputError(f"{path}: not a readable CSV ({str(error).splitlines()[0]}) — {FIX}") from None
        if columns is None:
            columns = list(part.columns)
        if list(part.columns) != columns or list(part.columns[:len(KEY_COLUMNS)]) != list(KEY_COLUMNS):
            raise InputError(f"{path}: columns differ from the other truth parts' — {FIX}")
        frames.append(part)
    if not frames:
        raise InputError(f"{Path(generated) / TRUTH_DIR}: no truth parts to read — {FIX}")
    table = pd.concat(frames, ignore_index=True).sort_values(["prompt_id", "sample", "step"], kind="stable")
    labels = tuple(c.removeprefix(CONTENT_PREFIX) for c in columns if c.startswith(CONTENT_PREFIX))
    concepts = tuple(c.removeprefix(TRUTH_PREFIX) for c in columns if c.startswith(TRUTH_PREFIX))
    unknown = [name for name in concepts if name not in BY_NAME]
    steps = np.sort(table["step"].unique())
    trajectories = table[["prompt_id", "sample"]].drop_duplicates().reset_index(drop=True)
    if unknown or len(table) != len(trajectories) * len(steps):
        what = f"unknown concept '{unknown[0]}'" if unknown else "a trajectory lacks some step (or has one twice)"
        raise InputError(f"{Path(generated) / TRUTH_DIR}: {what} — {FIX}")
    shape = (len(trajectories), len(steps))
    values = table[[CONTENT_PREFIX + label for label in labels] + [TRUTH_PREFIX + name for name in concepts]]
    values = values.to_numpy(np.float64).reshape(*shape, -1)
    if not np.isfinite(values).all() or (values < 0).any() or (values > 1 + 1e-6).any():
        raise InputError(f"{Path(generated) / TRUTH_DIR}: a value is not a probability in [0, 1] — {FIX}")
    sigmas = table["sigma"].to_numpy(np.float64).reshape(shape)[0]
    return Truth(trajectories, steps, sigmas, labels, concepts, values[..., :len(labels)], values[..., len(labels):])


# -- what follows from it ---------------------------------------------------------------------------------------

def commit_steps(realised: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """realised bool [trajectories, steps, concepts] -> the step from which each equals its final value, at that
    and every later step."""
    agrees = realised == realised[:, -1:]
    # Count the agreeing steps at the end: the commit step is the first of that final run.
    tail = np.flip(np.cumprod(np.flip(agrees, axis=1), axis=1), axis=1).sum(axis=1)
    return np.asarray(steps)[realised.shape[1] - tail]


def oracle_aurocs(probability: np.ndarray, final: np.ndarray) -> np.ndarray:
    """probability [trajectories, steps, concepts], final bool [trajectories, concepts] -> AUROC [steps, concepts]
    (Mann-Whitney from average ranks, ties one half; NaN where the final content has one class only)."""
    # scipy.stats is imported here, not with the module: stage 2 and the commitment search import this file, and an
    # up-to-date rerun of either never computes a curve (the import alone costs most of a second).
    from scipy.stats import rankdata

    n_steps, n_concepts = probability.shape[1], probability.shape[2]
    curves = np.full((n_steps, n_concepts), np.nan)
    for k in range(n_concepts):
        positive = final[:, k]
        n_positive, n_negative = int(positive.sum()), int((~positive).sum())
        if n_positive and n_negative:
            ranks = rankdata(probability[:, :, k], axis=0)
            curves[:, k] = (ranks[positive].sum(axis=0) - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative)
    return curves


def first_step_from_which(curve: np.ndarray, steps: np.ndarray, level: float):
    """The first step from which `curve` stays >= level to the end; None when the last value is below it."""
    at_or_above = np.nan_to_num(np.asarray(curve, np.float64), nan=-np.inf) >= level
    if not at_or_above[-1]:
        return None
    start = len(at_or_above) - 1
    while start > 0 and at_or_above[start - 1]:
        start -= 1
    return int(np.asarray(steps)[start])


def truth_tables(truth: Truth, capture_steps: Sequence[int]) -> dict[str, pd.DataFrame]:
    """commit_steps, oracle_curves and emergence_truth (module docstring) as frames."""
    realised = truth.realised()
    final = realised[:, -1]
    commits = commit_steps(realised, truth.steps)
    curves = oracle_aurocs(truth.probability, final)
    captured = np.isin(truth.steps, list(capture_steps))
    n = len(truth.trajectories)
    commit_rows = pd.DataFrame({
        "prompt_id": np.repeat(truth.trajectories["prompt_id"].to_numpy(), len(truth.concepts)),
        "sample": np.repeat(truth.trajectories["sample"].to_numpy(), len(truth.concepts)),
        "concept": np.tile(truth.concepts, n), "final": final.reshape(-1).astype(int),
        "commit_step": commits.reshape(-1), "changed": (realised != final[:, None]).any(axis=1).reshape(-1)})
    oracle_rows = pd.DataFrame({
        "concept": np.repeat(truth.concepts, len(truth.steps)), "step": np.tile(truth.steps, len(truth.concepts)),
        "sigma": np.tile(truth.sigmas, len(truth.concepts)), "captured": np.tile(captured, len(truth.concepts)),
        "n_trajectories": n, "n_positive": np.repeat(final.sum(axis=0), len(truth.steps)),
        "auroc": curves.T.reshape(-1)})
    rows = []
    for k, name in enumerate(truth.concepts):
        changed = (realised[:, :, k] != final[:, None, k]).any(axis=1)
        levels = {level: first_step_from_which(curves[:, k], truth.steps, level)
                  for level in (ONSET_AUROC, EMERGENCE_AUROC, COMPLETION_AUROC)}
        on_captures = first_step_from_which(curves[captured, k], truth.steps[captured], EMERGENCE_AUROC) \
            if captured.any() else None
        onset, completion = levels[ONSET_AUROC], levels[COMPLETION_AUROC]
        rows.append({
            "concept": name, "group": BY_NAME[name].group, "n_trajectories": n, "n_positive": int(final[:, k].sum()),
            "onset_step": onset, "emergence_step": levels[EMERGENCE_AUROC], "completion_step": completion,
            "transition_steps": None if onset is None or completion is None else completion - onset,
            "emergence_captured_step": on_captures,
            "n_changed": int(changed.sum()),
            "median_commit_step": float(np.median(commits[changed, k])) if changed.any() else None,
            "median_commit_step_positive": float(np.median(commits[final[:, k], k])) if final[:, k].any() else None,
            "note": "" if 0 < final[:, k].sum() < n else "the final content is the same for every trajectory: no curve"})
    emergence = pd.DataFrame(rows)
    for column in ("onset_step", "emergence_step", "completion_step", "transition_steps", "emergence_captured_step"):
        emergence[column] = pd.array(emergence[column].tolist(), dtype="Int64")
    return {"commit_steps": commit_rows, "oracle_curves": oracle_rows, "emergence_truth": emergence}


def write_truth_tables(generated: Path, prompt_ids: Sequence[str], capture_steps: Sequence[int],
                       force: bool = False) -> Path | None:
    """Derive the truth tables once every prompt's truth part exists (shards finish in any order: the last one
    writes them; a run whose tables are up to date with its parts skips). Returns the folder, or None when some
    prompt's part is still missing."""
    generated = Path(generated)
    parts = [truth_part_path(generated, prompt_id) for prompt_id in sorted(prompt_ids)]
    # Every prompt made, and made under the current generation.json (a killed --force leaves older ones behind).
    made_under = RunRecord.of(GENERATION_JSON, _generation(generated))
    if not parts or not all(path.is_file() and part_is_current(generated, path.stem, made_under) for path in parts):
        return None
    folder = generated / TABLES_DIR
    record = {"inputs": {"generation_sha256": sha256_file(generated / GENERATION_JSON),
                         "parts_sha256": {path.stem: sha256_file(path) for path in parts}},
              "settings": {"capture_steps": [int(step) for step in capture_steps], "realised_mass": REALISED_MASS,
                           "levels": {"onset": ONSET_AUROC, "emergence": EMERGENCE_AUROC,
                                      "completion": COMPLETION_AUROC}}}
    prov = Provenance(folder / TABLES_SIDECAR, record, [folder / name for name in TABLE_FILES])
    # Derived from the parts alone: when they change, the tables follow (never a mix of two runs).
    if not force and decide_quietly(prov) and _tables_intact(folder, read_json(prov.sidecar)):
        return folder
    tables = truth_tables(read_truth(generated, sorted(prompt_ids)), capture_steps)
    begin(prov)
    for name, frame in tables.items():
        write_csv(folder / f"{name}.csv", frame)
    commit(prov, {"tables_sha256": {name: sha256_file(folder / name) for name in TABLE_FILES}})
    return folder


def _tables_intact(folder: Path, sidecar) -> bool:
    """Every table is the file its sidecar recorded (not cut off, emptied or edited since)."""
    recorded = sidecar.get("tables_sha256") if isinstance(sidecar, dict) else None
    return isinstance(recorded, dict) and all(
        (folder / name).is_file() and sha256_file(folder / name) == recorded.get(name) for name in TABLE_FILES)


def read_truth_tables(generated: Path) -> dict[str, pd.DataFrame]:
    """The truth tables, refused (one-line InputError) when missing or made from other truth parts than those on
    disk (a run killed between regenerating prompts and rewriting the tables)."""
    folder = Path(generated) / TABLES_DIR
    sidecar = read_provenance(folder / TABLES_SIDECAR, FIX)
    if sidecar is None or not all((folder / name).is_file() for name in TABLE_FILES):
        raise InputError(f"{folder}: no finished truth tables — {FIX} (they are written once every prompt is made)")
    inputs = sidecar.get("inputs")
    recorded = inputs.get("parts_sha256") if isinstance(inputs, dict) else None
    if not isinstance(recorded, dict):
        raise InputError(f"{folder / TABLES_SIDECAR}: not a truth-tables record (inputs.parts_sha256) — {FIX}")
    if inputs.get("generation_sha256") != sha256_file(Path(generated) / GENERATION_JSON):
        raise InputError(f"{folder}: made under another generation.json than the one on disk — {FIX}")
    if not _tables_intact(folder, sidecar):
        raise InputError(f"{folder}: a table is not the file stage 2 wrote (cut off or edited since) — {FIX}")
    for prompt_id, digest in recorded.items():
        path = truth_part_path(generated, prompt_id)
        if not path.is_file() or sha256_file(path) != digest:
            raise InputError(f"{folder}: made from another {path.name} than the one on disk — {FIX}")
    return {name.removesuffix(".csv"): pd.read_csv(folder / name, dtype={"prompt_id": str}) for name in TABLE_FILES}


def _generation(generated: Path, record_file: str = GENERATION_JSON) -> dict:
    """The run folder's record (generation.json, or an intervened run's intervention.json), read by the one sidecar
    rule."""
    return read_sidecar(Path(generated) / record_file, FIX, FIX)


def decide_quietly(prov: Provenance) -> bool:
    """Up to date: the sidecar matches and the tables exist. Tables of other parts are simply redone (they are
    a function of the parts, which stage 2's own provenance already guards)."""
    try:
        return decide(prov, False, FIX)
    except InputError:
        return False
