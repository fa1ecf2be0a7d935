"""Stage 6's inputs as named records, each with its loader: the generated clips (with their embeddings, trajectory
axis and realised content), the NSynth concept notes and each concept's train/test split, and the yardsticks a
clip is scored against (data/ARTIFACTS.md, stage 6). Loaders validate what they read and fail with one line
(data.stage.InputError) naming the file and the fix.
"""
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from data.concepts import CONCEPTS
from data.contract import (check_same_embedder, concepts_dir, generated_dir, read_annotated, read_embeddings,
                           read_generated_index, read_notes, read_sets, table_sha256)
from data.files import read_json, sha256_file
from data.generation import TrajectoryAxis, read_generation
from data.realised_content import read_realised_content
from data.stage import InputError
from data.truth import TABLES_DIR, TABLES_SIDECAR, Truth, read_truth, read_truth_tables
from embeddings import chunks
from interp.instrument_split import padded_memberships
from interp.probes import TrainingSet

# A clip realises a vocabulary label when at least this much of the generator's posterior mass lies on bank
# clips carrying the label; the concept's prompt rule is then applied to the set of realised labels.
REALISED_MASS = 0.5


@dataclass(frozen=True)
class RealisedContent:
    """Per analysed clip, the generator's posterior mass on bank clips carrying each vocabulary label."""
    labels: tuple[str, ...]
    mass: np.ndarray          # [n_clips, n_labels], rows aligned with GeneratedClips.clips
    sha256: str               # of the whole content table, for the provenance


@dataclass(frozen=True)
class GeneratedClips:
    annotated: pd.DataFrame   # prompts/annotated.csv
    index: pd.DataFrame       # the whole generated index
    clips: pd.DataFrame       # the analysed rows (one kind), index order
    embeddings: np.ndarray    # [n_clips, dim], row i <-> clips row i
    sidecar: dict             # the generated embeddings' sidecar
    npy: Path
    generation: Path          # generated/generation.json
    axis: TrajectoryAxis
    content: RealisedContent | None
    intervened: tuple         # (index rows, embeddings) of stage 2 --intervene runs; --compare scores them
    judge: object = None      # interp.judge.JudgedClips: the judge's verdicts, when the judge has run


@dataclass(frozen=True)
class ConceptNotes:
    notes: pd.DataFrame       # concepts/notes.csv
    sets: pd.DataFrame        # concepts/sets.csv plus `row` (the note's row in notes / embeddings)
    embeddings: np.ndarray    # [n_notes, dim]
    npy: Path
    test_fraction: float = 0.25   # stage 4's, from concepts.json: re-splits draw the same share

    @property
    def train_rows(self) -> np.ndarray:
        return np.flatnonzero(self.notes["split"].to_numpy() == "train")

    @property
    def instrument_of_row(self) -> np.ndarray:
        """Each example's own instrument (a mix: its first part's)."""
        return pd.factorize(self.notes["instrument_str"])[0]

    @cached_property
    def memberships(self) -> np.ndarray:
        """int [n_notes, most parts]: every instrument an example sounds, a mix's parts all counted (-1 pads);
        the clusters of the instrument bootstrap and of random instrument subsets."""
        return padded_memberships(self.notes)

    def training_set(self, rows: np.ndarray, labels: np.ndarray) -> TrainingSet:
        return TrainingSet(self.embeddings[rows], labels, self.instrument_of_row[rows])


@dataclass(frozen=True)
class ConceptSplit:
    """A concept's NSynth notes: rows into ConceptNotes.notes and labels, for the train and test splits."""
    train_rows: np.ndarray
    train_labels: np.ndarray
    test_rows: np.ndarray
    test_labels: np.ndarray

    @property
    def evaluable(self) -> bool:
        return 0 < self.test_labels.sum() < len(self.test_labels)


@dataclass(frozen=True)
class ProbeScores:
    """Per clip and concept: the concept probes' score and decision, and every random probe's (random-concept
    probes in embedding space, probes on permuted labels in activation space)."""
    scores: np.ndarray                       # [n_clips, n_concepts] (NaN: no probe)
    decisions: np.ndarray | None             # same shape, bool; None when the family has no threshold
    baseline_scores: np.ndarray              # [n_concepts, n_baselines, n_clips] (NaN rows: no baseline)
    baseline_decisions: np.ndarray | None


@dataclass(frozen=True)
class Yardstick:
    """What a clip is scored against: per clip, whether it carries each concept."""
    name: str                  # "prompt" | "content"
    clip_labels: np.ndarray    # [n_clips, n_concepts] bool
    verb: str                  # how a note says a clip's subject has the concept
    subject: str


@dataclass(frozen=True)
class KnownTruth:
    """What the generator planted, for generators that know it exactly (data/truth.py): every trajectory's truth
    at every step and the truth tables (commit_steps, oracle_curves, emergence_truth)."""
    truth: Truth
    tables: dict              # table name -> DataFrame
    sha256: str               # of the tables' sidecar, which names every truth part's hash


# ------------------------------------------------------------------------------------------- loaders

def _available_stems(folder: Path) -> str:
    stems = sorted(path.stem for path in folder.glob("*.npy")) if folder.is_dir() else []
    return ", ".join(stems) if stems else "none"


def _missing_embeddings(npy: Path, stage: int) -> InputError:
    """The embeddings are missing: either stage `stage` is still filling its chunks (an array task unfinished) or
    it has not run with this embedder."""
    filling = chunks.unfinished(npy)
    if filling is not None:
        return InputError(f"{npy}: missing — stage {stage} is unfinished: {filling}; wait for those array tasks, or "
                          f"rerun them (they resume), then run stage 6")
    return InputError(f"{npy}: missing — available embedders: {_available_stems(npy.parent)}; "
                      f"run stage {stage} with the same --embedder/--model or pick one of those")


def load_content(data: Path, index: pd.DataFrame, selected: np.ndarray) -> RealisedContent | None:
    """The realised content stage 2 records for generators that know what they made (the reference model),
    for the analysed rows of the index; None when the generator records none (data/ARTIFACTS.md, stage 2)."""
    frame = read_realised_content(data, index)
    if frame is None:
        return None
    labels = tuple(column.removeprefix("content_") for column in frame.columns)
    return RealisedContent(labels, frame.to_numpy(np.float64)[selected], table_sha256(frame))


def load_generated(data: Path, stem: str, kind: str) -> GeneratedClips:
    annotated = read_annotated(data)
    index = read_generated_index(data)
    folder = generated_dir(data) / "embeddings"
    npy = folder / f"{stem}.npy"
    if not npy.is_file():
        raise _missing_embeddings(npy, 3)
    matrix, sidecar = read_embeddings(npy, len(index), table_sha256(index), "index_sha256",
                                      fix="rerun stage 3 with the same --embedder/--model and --force")
    # Intervened clips are ordinary index rows; the analysis reads the reference run, --compare the rest.
    reference = (index["intervention"] == "").to_numpy()
    intervened = (index[~reference].reset_index(drop=True), matrix[~reference])
    index, matrix = index[reference].reset_index(drop=True), matrix[reference]
    unknown = sorted(set(index["prompt_id"]) - set(annotated["prompt_id"]))
    if unknown:
        raise InputError(f"{generated_dir(data) / 'index'}: prompt '{unknown[0]}' is not in "
                         f"{data / 'prompts' / 'annotated.csv'} — rerun stage 2 for the current prompts")
    selected = index["kind"] == kind
    if not selected.any():
        raise InputError(f"{generated_dir(data) / 'index'}: no clips of kind '{kind}' "
                         f"(found {', '.join(sorted(index['kind'].unique()))}) — pass --kind with one of those")
    generation = read_generation(data)
    clips = index[selected].reset_index(drop=True)
    return GeneratedClips(annotated, index, clips, matrix[selected.to_numpy()], sidecar, npy, generation.path,
                          generation.axis, load_content(data, index, selected.to_numpy()), intervened)


def load_known_truth(data: Path, generated: GeneratedClips) -> KnownTruth | None:
    """The truth stage 2 wrote, when the generator knows it (generated/truth_tables/); None otherwise. Tables made
    from other truth parts than those on disk are refused (data.truth.read_truth_tables)."""
    folder = generated_dir(data)
    if not (folder / TABLES_DIR / TABLES_SIDECAR).is_file():
        return None
    tables = read_truth_tables(folder)
    truth = read_truth(folder, sorted(generated.clips["prompt_id"].unique()))
    known = set(zip(truth.trajectories["prompt_id"], truth.trajectories["sample"].astype(int)))
    missing = [key for key in zip(generated.clips["prompt_id"], generated.clips["sample"].astype(int))
               if key not in known]
    if missing or not set(generated.clips["step"]) <= set(truth.steps.tolist()):
        raise InputError(f"{folder / TABLES_DIR}: the truth does not cover every analysed clip (e.g. prompt "
                         f"{missing[0][0] if missing else '?'}) — rerun stage 2 with --force")
    return KnownTruth(truth, tables, sha256_file(folder / TABLES_DIR / TABLES_SIDECAR))


def load_concept_notes(data: Path, stem: str, generated: GeneratedClips | None, required: bool) -> ConceptNotes | None:
    """NSynth notes, sets and embeddings; None when not required and stage 4/5 outputs are absent. `generated`:
    the clips the notes' embedder must match (None: checked by the caller)."""
    folder = concepts_dir(data) / "embeddings"
    npy = folder / f"{stem}.npy"
    if not required and not ((concepts_dir(data) / "notes.csv").is_file() and npy.is_file()):
        return None
    notes = read_notes(data)
    sets = read_sets(data)
    if not npy.is_file():
        raise _missing_embeddings(npy, 5)
    matrix, sidecar = read_embeddings(npy, len(notes), table_sha256(notes), "notes_sha256",
                                      fix="rerun stage 5 with the same --embedder/--model and --force")
    if generated is not None:
        check_same_embedder(generated.sidecar, generated.npy, sidecar, npy)
    row_of = pd.Series(np.arange(len(notes)), index=notes["note_str"])
    missing = ~sets["note_str"].isin(row_of.index)
    if missing.any():
        raise InputError(f"{concepts_dir(data) / 'sets.csv'} row {int(missing.idxmax()) + 2}: note "
                         f"'{sets.at[missing.idxmax(), 'note_str']}' is not in notes.csv — rerun stage 4 with --force")
    sets = sets.assign(row=row_of.loc[sets["note_str"]].to_numpy())
    sidecar = concepts_dir(data) / "concepts.json"
    test_fraction = read_json(sidecar).get("test_fraction", 0.25) if sidecar.is_file() else 0.25
    return ConceptNotes(notes, sets, matrix, npy, float(test_fraction))


def concept_splits(nsynth: ConceptNotes | None) -> dict[str, ConceptSplit | None]:
    """Per concept its NSynth train/test notes, or None when stage 4 wrote no set for it."""
    result = {}
    for concept in CONCEPTS:
        chosen = None if nsynth is None else nsynth.sets[nsynth.sets["concept"] == concept.name]
        if chosen is None or chosen.empty:
            result[concept.name] = None
            continue
        train, test = chosen[chosen["split"] == "train"], chosen[chosen["split"] == "test"]
        result[concept.name] = ConceptSplit(train["row"].to_numpy(), train["label"].to_numpy(int),
                                            test["row"].to_numpy(), test["label"].to_numpy(int))
    return result


# ---------------------------------------------------------------------------------------- yardsticks

def prompt_yardstick(annotated: pd.DataFrame, clip_prompt: np.ndarray, prompt_ids: np.ndarray) -> Yardstick:
    """A clip carries a concept when its prompt's annotation asks for it (Concept.prompt_has).

    clip_prompt: per clip, its prompt's row in prompt_ids (np.unique(..., return_inverse=True))."""
    labels_by_prompt = dict(zip(annotated["prompt_id"], annotated["labels"]))
    asks = np.array([[concept.prompt_has(labels_by_prompt[prompt]) for concept in CONCEPTS]
                     for prompt in prompt_ids], dtype=bool).reshape(len(prompt_ids), len(CONCEPTS))
    return Yardstick("prompt", asks[clip_prompt], "asks for", "prompt")
