"""The judge's mapping table: which of a pretrained tagger's tags count as evidence for which concept, and which
concepts the tagger cannot judge (data/judge_tags.csv, one row per tag set and concept).

The table was written from the tags' meanings alone (MagnaTagATune's and the Million Song Dataset's Last.fm tags
as musicnn's checkpoints name them), never by looking at how a mapping scores against any truth. A row either
names its evidence tags (`;`-separated) or says, in `unjudgeable_because`, why no tag of that set is evidence
for the concept. A tag set is named by the prefix of the checkpoints trained on it (MTT_musicnn, MTT_vgg: MTT).

A clip's judge score for a concept is the highest probability among its evidence tags (the tagger's tags are
independent sigmoids, and any one of them is evidence: a clip tagged "violin" or "cello" has strings). The
concept is judged present when that score is at least THRESHOLD, the tagger's own decision point: every output
was trained as a binary classifier with a 0.5 cut, so the rule reads nothing from this project's clips or truth.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from data.concepts import CONCEPT_NAMES
from data.contract import generated_dir, read_table
from data.files import read_json, sha256_file
from data.stage import InputError

JUDGE_TABLE = Path(__file__).resolve().parent / "judge_tags.csv"
COLUMNS = ("tag_set", "concept", "tags", "unjudgeable_because")
TAG_SEPARATOR = ";"
# The tagger's own decision point (see the module docstring); never tuned on generated clips.
THRESHOLD = 0.5
FIX = "fix data/judge_tags.csv (every concept once per tag set: evidence tags or the reason it cannot be judged)"


@dataclass(frozen=True)
class JudgeMapping:
    """One tag set's row per concept: its evidence tags, or why it cannot be judged."""
    tag_set: str
    evidence: dict        # concept -> tuple of tags (judgeable concepts only)
    unjudgeable: dict     # concept -> reason

    def judgeable(self, concept: str) -> bool:
        return concept in self.evidence


def tag_set_of(model: str) -> str:
    """The tag set a checkpoint was trained on, from its name (MTT_musicnn -> MTT)."""
    return str(model).split("_")[0]


def read_judge_table(path=JUDGE_TABLE) -> dict[str, JudgeMapping]:
    """Every tag set's mapping, validated: known concepts, each exactly once per tag set, tags xor a reason."""
    path = Path(path)
    frame = read_table(path, COLUMNS, FIX, dtype=str)
    mappings = {}
    for tag_set, rows in frame.groupby("tag_set", sort=False):
        evidence, unjudgeable = {}, {}
        for index, row in rows.iterrows():
            where = f"{path} row {int(index) + 2}"
            concept = row["concept"]
            if concept not in CONCEPT_NAMES:
                raise InputError(f"{where}: concept '{concept}' is not one of data/concepts.py's — {FIX}")
            if concept in evidence or concept in unjudgeable:
                raise InputError(f"{where}: concept '{concept}' appears twice for {tag_set} — {FIX}")
            text = row["tags"] if isinstance(row["tags"], str) else ""
            tags = [tag.strip() for tag in text.split(TAG_SEPARATOR)] if text else []
            reason = row["unjudgeable_because"] if isinstance(row["unjudgeable_because"], str) else ""
            if bool(tags) == bool(reason.strip()):
                raise InputError(f"{where}: concept '{concept}' needs either evidence tags or a reason it cannot "
                                 f"be judged, not {'both' if tags else 'neither'} — {FIX}")
            if any(not tag for tag in tags) or len(set(tags)) != len(tags):
                raise InputError(f"{where}: an empty or repeated tag in '{row['tags']}' — {FIX}")
            if tags:
                evidence[concept] = tuple(tags)
            else:
                unjudgeable[concept] = reason.strip()
        missing = [name for name in CONCEPT_NAMES if name not in evidence and name not in unjudgeable]
        if missing:
            raise InputError(f"{path}: tag set {tag_set} has no row for concept '{missing[0]}' — {FIX}")
        mappings[tag_set] = JudgeMapping(tag_set, evidence, unjudgeable)
    return mappings


def mapping_for(model: str, tags: Sequence[str], path=JUDGE_TABLE) -> JudgeMapping:
    """The mapping of the tag set `model` was trained on, checked against the tags the model actually has."""
    mappings = read_judge_table(path)
    tag_set = tag_set_of(model)
    if tag_set not in mappings:
        raise InputError(f"{path}: no rows for the tag set {tag_set} of --judge-model {model} — add them, or pick "
                         f"a checkpoint of {', '.join(mappings)}")
    mapping = mappings[tag_set]
    known = set(tags)
    for concept, evidence in mapping.evidence.items():
        unknown = [tag for tag in evidence if tag not in known]
        if unknown:
            raise InputError(f"{path}: tag '{unknown[0]}' ({tag_set}, {concept}) is not a tag of {model} — {FIX}")
    return mapping


def concept_scores(probabilities: np.ndarray, tags: Sequence[str], mapping: JudgeMapping) -> np.ndarray:
    """[n_clips, n_tags] tag probabilities -> [n_clips, n_concepts] judge scores in CONCEPT_NAMES order: the
    highest probability among a concept's evidence tags; NaN for a concept the tag set cannot judge."""
    probabilities = np.asarray(probabilities, np.float64)
    column = {tag: i for i, tag in enumerate(tags)}
    scores = np.full((len(probabilities), len(CONCEPT_NAMES)), np.nan)
    for k, name in enumerate(CONCEPT_NAMES):
        if mapping.judgeable(name):
            scores[:, k] = probabilities[:, [column[tag] for tag in mapping.evidence[name]]].max(axis=1)
    return scores


def judged_present(scores: np.ndarray) -> np.ndarray:
    """bool: the judge score reaches THRESHOLD (an unjudgeable concept, NaN, is never judged present)."""
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(np.asarray(scores, np.float64), nan=-1.0) >= THRESHOLD


# ---- the judge's outputs (embeddings/judge_generated.py writes them, stage 6 reads them) ---------------------------

JUDGE_DIR, TABLE, SIDECAR, TAGGRAM = "judge", "judge.csv", "judge.json", "taggram.npy"
KEY_COLUMNS = ("intervention", "prompt_id", "sample", "kind", "step", "path")
RERUN = "rerun embeddings/judge_generated.py with --force (make judge)"


def judge_dir(data, stem: str) -> Path:
    return generated_dir(data) / JUDGE_DIR / stem


def read_judge_output(data, stem: str) -> tuple[pd.DataFrame, dict] | None:
    """The judge's table and sidecar for judge stem `stem`; None when the judge has not run with it. A table that
    is unfinished, edited since, or made for another generation or another mapping table is refused."""
    folder = judge_dir(data, stem)
    sidecar_path, table_path = folder / SIDECAR, folder / TABLE
    if not sidecar_path.is_file():
        if table_path.is_file():
            raise InputError(f"{table_path}: has no sidecar {SIDECAR} (the judge did not finish) — {RERUN}")
        return None
    sidecar = read_json(sidecar_path)
    generation = generated_dir(data) / "generation.json"
    checks = (("generation_sha256", generation, "another generation (stage 2 has run since)"),
              ("mapping_sha256", JUDGE_TABLE, "another data/judge_tags.csv"),
              ("table_sha256", table_path, f"another {TABLE} (it was changed after the judge wrote it)"))
    for key, path, what in checks:
        if not path.is_file() or sidecar.get(key) != sha256_file(path):
            raise InputError(f"{sidecar_path}: the judge's table was made for {what} — {RERUN}")
    table = read_table(table_path, KEY_COLUMNS, RERUN, dtype={"prompt_id": str, "intervention": str, "kind": str})
    table["intervention"] = table["intervention"].fillna("")
    return table, sidecar
