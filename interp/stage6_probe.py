"""Stage 6: train a probe per concept on NSynth embeddings, apply it to every position of every trajectory, and
chart when each concept emerges against two yardsticks: the prompt annotations, and (for generators that
record it) the content the generator actually realised (data/ARTIFACTS.md, stage 6).

    python interp/stage6_probe.py --data data --embedder spectral [--model X] [--probe logreg|svm|cav|text]
                                  [--kind x0] [--baseline instruments|notes]

Outputs go to <data>/results/<embedder stem>/<probe>/<kind>/ (the stem of --embedder/--model, as stages 3 and 5
name their files) and are skipped when up to date with their inputs (data.provenance's rule).
Read top to bottom: inputs (named records) -> probes (one ProbeFamily interface) -> emergence per yardstick ->
one Bonferroni family -> status per concept -> files, figures, report, summary.
"""
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from data.concepts import CONCEPTS
from data.contract import (check_same_embedder, concepts_dir, generated_dir, read_annotated, read_embeddings,
                           read_generated_index, read_notes, read_sets, table_sha256)
from data.files import read_json, sha256_file, write_csv
from data.generation import TrajectoryAxis, read_generation
from data.provenance import Provenance, begin, commit, decide
from data.realised_content import read_realised_content
from data.stage import InputError, main_exit, stage_parser
from embeddings import EMBEDDERS, embedding_stem
from interp import compare, statistics, summary
from interp import probes as probe_families
from interp.probes import TrainingSet

OUTPUT_FILES = ("probe_quality.csv", "emergence.csv", "emergence_steps.csv", "drift.csv", "drift_summary.csv",
                "probabilities.csv", summary.SUMMARY_JSON, summary.SUMMARY_MD)
SIDECAR = "stage6.json"
# A position is "above" when its metric's lower CI bound exceeds this percentile of the random-concept
# baselines at that position; a concept has emerged when it is above from some position to the end.
BASELINE_PERCENTILE = 95.0
THRESHOLD_SUFFIX = f"_baseline_p{BASELINE_PERCENTILE:.0f}"
# Emergence is charted for the chance-corrected metrics only: accuracy, TPR and TNR alone rise for a probe
# that says "no" (or "yes") to everything.
EMERGENCE_METRICS = ("auroc", "balanced_accuracy")
# A clip realises a vocabulary label when at least this much of the generator's posterior mass lies on bank
# clips carrying the label; the concept's prompt rule is then applied to the set of realised labels.
REALISED_MASS = 0.5
BASELINES = ("instruments", "notes")
# When two consecutive positions count as one (statistics.distinct_positions): with realised content, when the
# content of every trajectory is the same to CONTENT_ATOL (the parts are written with 9 decimals) — the
# generator has committed to the same clips; without, when every clip's embedding is the same to
# EMBEDDING_RTOL (float32 round-off of a deterministic embedder).
CONTENT_ATOL = 1e-6
EMBEDDING_RTOL = 1e-5
EMBEDDER_KEYS = ("embedder", "model", "checkpoint_sha256", "window_policy", "dim")


def results_dir(data: Path, embedder: str, probe: str, kind: str) -> Path:
    return Path(data) / "results" / embedder / probe / kind


def build_parser():
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--space", default="embeddings", choices=("embeddings", "activations"),
                        help="embeddings: probes on stage 3/5 embeddings of the audio; activations: linear probes "
                             "per layer on MusicGen's residual stream (interp/activations.py)")
    parser.add_argument("--branch", default="cond", help="--space activations: cond or uncond rows of the CFG batch")
    parser.add_argument("--pool", default="mean", help="--space activations: mean over positions or the last one")
    parser.add_argument("--embedder", default=None,
                        help=f"the embedder stages 3 and 5 used ({', '.join(sorted(EMBEDDERS))}); with --model it "
                             "names the embeddings file exactly as they do (embeddings.embedding_stem); required "
                             "for --space embeddings")
    parser.add_argument("--model", help="the --model given to stages 3 and 5 (embedders with weights, e.g. clap)")
    parser.add_argument("--probe", default="logreg",
                        help=f"probe family: {', '.join(probe_families.FAMILIES)} (see interp/probes.py)")
    parser.add_argument("--kind", default="x0", help="which captured clips to analyse: x0 (clean estimate) or xt")
    parser.add_argument("--baseline", default="instruments",
                        help="random concepts drawn as random instrument subsets matched in number of instruments "
                             "(instruments) or as random notes matched in number of notes (notes)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for every CI")
    parser.add_argument("--random-baselines", type=int, default=20,
                        help="random-concept probes per concept, giving the baseline distribution per position")
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="family-wise error rate (Bonferroni over every p-value in emergence.csv); "
                             "CIs are 1 - alpha")
    parser.add_argument("--seed", type=int, default=0, help="seed for probes, baselines and resamples")
    parser.add_argument("--no-report", action="store_true", help="skip plots/ and report.html")
    parser.add_argument("--compare", action="store_true",
                        help="also score the intervened clips of stage 2 --intervene against their unintervened "
                             "pairs: effects, random-direction baseline, commitment steps (interp/compare.py)")
    return parser


# ------------------------------------------------------------------------------------------ records

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


@dataclass(frozen=True)
class ConceptNotes:
    notes: pd.DataFrame       # concepts/notes.csv
    sets: pd.DataFrame        # concepts/sets.csv plus `row` (the note's row in notes / embeddings)
    embeddings: np.ndarray    # [n_notes, dim]
    npy: Path

    @property
    def train_rows(self) -> np.ndarray:
        return np.flatnonzero(self.notes["split"].to_numpy() == "train")

    @property
    def instrument_of_row(self) -> np.ndarray:
        return pd.factorize(self.notes["instrument_str"])[0]

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
    """Per clip and concept: the concept probes' score and decision, and every random probe's."""
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


# ------------------------------------------------------------------------------------------- inputs

def _available_stems(folder: Path) -> str:
    stems = sorted(path.stem for path in folder.glob("*.npy")) if folder.is_dir() else []
    return ", ".join(stems) if stems else "none"


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
        raise InputError(f"{npy}: missing — available embedders: {_available_stems(folder)}; "
                         f"run stage 3 with the same --embedder/--model or pick one of those")
    matrix, sidecar = read_embeddings(npy, len(index), table_sha256(index), "index_sha256",
                                      fix="rerun stage 3 with the same --embedder/--model and --force")
    # Intervened clips (issue 11) are ordinary index rows; the analysis reads the reference run, --compare the rest.
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


def load_concept_notes(data: Path, stem: str, generated: GeneratedClips, required: bool) -> ConceptNotes | None:
    """NSynth notes, sets and embeddings; None when not required and stage 4/5 outputs are absent."""
    folder = concepts_dir(data) / "embeddings"
    npy = folder / f"{stem}.npy"
    if not required and not ((concepts_dir(data) / "notes.csv").is_file() and npy.is_file()):
        return None
    notes = read_notes(data)
    sets = read_sets(data)
    if not npy.is_file():
        raise InputError(f"{npy}: missing — available embedders: {_available_stems(folder)}; "
                         f"run stage 5 with the same --embedder/--model")
    matrix, sidecar = read_embeddings(npy, len(notes), table_sha256(notes), "notes_sha256",
                                      fix="rerun stage 5 with the same --embedder/--model and --force")
    check_same_embedder(generated.sidecar, generated.npy, sidecar, npy)
    row_of = pd.Series(np.arange(len(notes)), index=notes["note_str"])
    missing = ~sets["note_str"].isin(row_of.index)
    if missing.any():
        raise InputError(f"{concepts_dir(data) / 'sets.csv'} row {int(missing.idxmax()) + 2}: note "
                         f"'{sets.at[missing.idxmax(), 'note_str']}' is not in notes.csv — rerun stage 4 with --force")
    sets = sets.assign(row=row_of.loc[sets["note_str"]].to_numpy())
    return ConceptNotes(notes, sets, matrix, npy)


def text_embeddings(generated: GeneratedClips) -> np.ndarray:
    """Embed every concept description with the text tower of the embedder that made the clip embeddings."""
    from embeddings import DEFAULT_MODELS, EMBEDDERS, load_embedder
    name = generated.sidecar.get("embedder")
    if name not in EMBEDDERS:
        raise InputError(f"{generated.npy}: embedder {name!r} is unknown ({', '.join(sorted(EMBEDDERS))}) "
                         "— the text probe needs the embedder that wrote these embeddings")
    # Only embedders with weights take a model (the checkpoint stage 3 recorded); the others name a version.
    options = {"model": generated.sidecar["model"]} if name in DEFAULT_MODELS and generated.sidecar.get("model") else {}
    embedder = load_embedder(name, **options)
    if not hasattr(embedder, "embed_text"):
        raise InputError(f"{generated.npy}: embedder '{name}' has no text tower — --probe text needs a text-audio "
                         "embedder such as clap; use --probe logreg, svm or cav")
    expected = generated.sidecar.get("checkpoint_sha256")
    loaded = embedder.provenance().get("checkpoint_sha256")
    if expected is not None and loaded != expected:
        raise InputError(f"{generated.npy}: embedded with checkpoint {expected}, but the loaded '{name}' model is "
                         f"{loaded} — load the same checkpoint or rerun stage 3 with --force")
    vectors = np.asarray(embedder.embed_text([concept.description for concept in CONCEPTS]), np.float64)
    if vectors.shape != (len(CONCEPTS), generated.sidecar.get("dim", vectors.shape[1])):
        raise InputError(f"{generated.npy}: text embeddings have shape {list(vectors.shape)}, expected "
                         f"[{len(CONCEPTS)}, {generated.sidecar.get('dim')}] — the text tower must share the audio space")
    return vectors


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


# ------------------------------------------------------------------------------------------- probes

def random_training_sets(nsynth: ConceptNotes | None, split: ConceptSplit | None, baseline: str, count: int,
                         seed: int, k: int) -> list[TrainingSet | None]:
    """`count` random concepts the size of concept k's train set (see statistics.random_*_sets for what
    "size" means under each --baseline); None entries where the concept has no two-class train set."""
    if nsynth is None or split is None or split.train_labels.min() == split.train_labels.max():
        return [None] * count
    instrument_of_row = nsynth.instrument_of_row
    # An instrument counts on the side most of its train notes are on (a tie counts as negative): for family
    # and source concepts every instrument is on one side; quality concepts mix, and counting every instrument
    # with one positive note as positive would leave the random concept almost no negative instrument.
    share = pd.Series(split.train_labels).groupby(instrument_of_row[split.train_rows]).mean()
    n_positive, n_negative = int((share > 0.5).sum()), int((share <= 0.5).sum())
    sets = []
    for r in range(count):
        rng = np.random.default_rng([seed, k, r, 1])
        if baseline == "notes":
            rows, labels = statistics.random_note_sets(nsynth.train_rows, int(split.train_labels.sum()),
                                                       len(split.train_labels), rng)
        else:
            rows, labels = statistics.random_instrument_sets(nsynth.train_rows, instrument_of_row,
                                                             n_positive, n_negative, rng)
        sets.append(nsynth.training_set(rows, labels))
    return sets


def score_clips(family, nsynth: ConceptNotes | None, splits: dict, embeddings: np.ndarray, baseline: str,
                count: int, seed: int):
    """Fit every concept's probe and its random baselines, and score every clip with all of them.

    Returns (ProbeScores, {concept: FittedProbe})."""
    n_clips, n_concepts = len(embeddings), len(CONCEPTS)
    scores = np.full((n_clips, n_concepts), np.nan)
    decisions = np.zeros((n_clips, n_concepts), bool)
    baseline_scores = np.full((n_concepts, count, n_clips), np.nan)
    baseline_decisions = np.zeros((n_concepts, count, n_clips), bool)
    thresholded = True
    fitted = {}
    for k, concept in enumerate(tqdm(CONCEPTS, desc="probes", leave=False)):
        split = splits[concept.name]
        training = None if split is None else nsynth.training_set(split.train_rows, split.train_labels)
        fitted[concept.name] = family.concept_probe(k, training)
        if fitted[concept.name].model is not None:
            scores[:, k], decided = family.outputs(fitted[concept.name].model, embeddings)
            thresholded &= decided is not None
            decisions[:, k] = False if decided is None else decided
        for r, random_set in enumerate(random_training_sets(nsynth, split, baseline, count, seed, k)):
            model = family.random_probe(k, r, random_set, embeddings.shape[1])
            if model is not None:
                baseline_scores[k, r], decided = family.outputs(model, embeddings)
                baseline_decisions[k, r] = False if decided is None else decided
    return ProbeScores(scores, decisions if thresholded else None, baseline_scores,
                       baseline_decisions if thresholded else None), fitted


def probe_quality(family, fitted: dict, splits: dict, nsynth: ConceptNotes | None, n_resamples: int, level: float,
                  seed: int) -> pd.DataFrame:
    """AUROC and balanced accuracy on the NSynth test split, with CIs that resample test instruments (the
    notes of one instrument share its timbre, so they are not independent). With fewer than two positive (or
    negative) test instruments an instrument bootstrap cannot vary that side: the CI is left empty and the
    note says so, rather than reporting a degenerate interval."""
    rows = []
    for k, concept in enumerate(CONCEPTS):
        split, probe = splits[concept.name], fitted[concept.name]
        row = {"concept": concept.name, "group": concept.group}
        note = probe.note
        if split is not None:
            test_instruments = nsynth.notes["instrument_str"].to_numpy()[split.test_rows]
            row.update(n_train_positive=int(split.train_labels.sum()),
                       n_train_negative=int((split.train_labels == 0).sum()),
                       n_test_positive=int(split.test_labels.sum()),
                       n_test_negative=int((split.test_labels == 0).sum()),
                       n_test_instruments=int(len(np.unique(test_instruments))),
                       n_test_positive_instruments=int(len(np.unique(test_instruments[split.test_labels == 1]))),
                       n_test_negative_instruments=int(len(np.unique(test_instruments[split.test_labels == 0]))))
        evaluable = probe.model is not None and split is not None and split.evaluable
        if probe.model is not None and split is not None and not evaluable and not note:
            note = "NSynth test split lacks positive or negative notes: quality undefined"
        if evaluable:
            X = nsynth.embeddings[split.test_rows]
            instruments = pd.factorize(test_instruments)[0]
            rng = np.random.default_rng([seed, k, 2])
            weights = statistics.cluster_weights(instruments.max() + 1, n_resamples, rng)[:, instruments]
            scores, decisions = family.outputs(probe.model, X)
            point = statistics.binary_metrics(statistics.point_weights(len(X)), split.test_labels, scores, decisions)
            resampled = statistics.binary_metrics(weights, split.test_labels, scores, decisions)
            single = [side for side in ("positive", "negative") if row[f"n_test_{side}_instruments"] < 2]
            for metric in ("auroc", "balanced_accuracy"):
                low, high = statistics.percentile_interval(resampled[metric], level)
                if single:
                    low = high = np.nan
                row.update({f"test_{metric}": float(point[metric][0]), f"test_{metric}_low": low,
                            f"test_{metric}_high": high})
            if single:
                note = "; ".join(filter(None, [note, f"test {' and '.join(single)}s come from one instrument: "
                                                     "no instrument CI (the point value is one instrument's)"]))
        row["threshold"] = getattr(probe.model, "threshold_", np.nan) if probe.model is not None else np.nan
        row["note"] = note
        rows.append(row)
    columns = ["concept", "group", "n_train_positive", "n_train_negative", "n_test_positive", "n_test_negative",
               "n_test_instruments", "n_test_positive_instruments", "n_test_negative_instruments",
               "test_auroc", "test_auroc_low", "test_auroc_high", "test_balanced_accuracy",
               "test_balanced_accuracy_low", "test_balanced_accuracy_high", "threshold", "note"]
    return pd.DataFrame(rows).reindex(columns=columns)


# ---------------------------------------------------------------------------------------- yardsticks

def prompt_yardstick(generated: GeneratedClips, clip_prompt: np.ndarray, prompt_ids: np.ndarray) -> Yardstick:
    """A clip carries a concept when its prompt's annotation asks for it (Concept.prompt_has)."""
    labels_by_prompt = dict(zip(generated.annotated["prompt_id"], generated.annotated["labels"]))
    asks = np.array([[concept.prompt_has(labels_by_prompt[prompt]) for concept in CONCEPTS]
                     for prompt in prompt_ids], dtype=bool).reshape(len(prompt_ids), len(CONCEPTS))
    return Yardstick("prompt", asks[clip_prompt], "asks for", "prompt")


def content_yardstick(content: RealisedContent) -> Yardstick:
    """A clip carries a concept when the concept's prompt rule holds for its realised labels: the labels on
    which the generator put at least REALISED_MASS of its posterior mass."""
    realised = content.mass >= REALISED_MASS
    labels = np.array(content.labels)
    carries = np.array([[concept.prompt_has(labels[row]) for concept in CONCEPTS] for row in realised],
                       dtype=bool).reshape(len(realised), len(CONCEPTS))
    return Yardstick("content", carries, "realises", "clip")


# ---------------------------------------------------------------------------------------- emergence

def emergence_table(probe_scores: ProbeScores, yardstick: Yardstick, clip_prompt: np.ndarray,
                    clip_step: np.ndarray, concept_names, prompt_weights: np.ndarray, level: float,
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
    for step in tqdm(np.unique(clip_step), desc=f"positions ({yardstick.name})", disable=not progress):
        at_step = np.flatnonzero(clip_step == step)
        prompts_here = clip_prompt[at_step]
        weights = prompt_weights[:, prompts_here]
        for k, name in enumerate(concept_names):
            y_true = yardstick.clip_labels[at_step, k]
            y_pred = None if decisions is None else decisions[at_step, k]
            row = {"yardstick": yardstick.name, "concept": name, "step": int(step),
                   "n_prompts": int(len(np.unique(prompts_here))),
                   "n_positive_prompts": int(len(np.unique(prompts_here[y_true]))),
                   "n_clips": int(len(at_step)), "n_positive_clips": int(y_true.sum())}
            if np.isnan(scores[at_step, k]).all():
                rows.append(row)
                for metric in statistics.METRICS:
                    baseline_rows[metric].append(np.full(n_baselines, np.nan))
                continue
            point = statistics.point_metrics(y_true, scores[at_step, k], None if y_pred is None else y_pred[None])
            resampled = statistics.binary_metrics(weights, y_true, scores[at_step, k], y_pred)
            present = ~np.isnan(probe_scores.baseline_scores[k, :, at_step[0]])
            baseline_values = statistics.point_metrics(
                y_true, probe_scores.baseline_scores[k][present][:, at_step],
                None if probe_scores.baseline_decisions is None
                else probe_scores.baseline_decisions[k][present][:, at_step])
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


def emergence_steps(table: pd.DataFrame, runs: dict) -> pd.DataFrame:
    """Per yardstick, concept and metric: the emergence status over distinct positions (statistics.Emergence)
    and the final position's value, CI, baseline threshold and significance with its direction."""
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


def drift_tables(clips: pd.DataFrame, embeddings: np.ndarray, runs: dict, n_resamples: int, alpha: float, seed: int):
    """Per clip distance to its trajectory's final position, and per position the mean with a prompt-resampled
    CI and the first position of its run of identical positions (statistics.distinct_positions)."""
    trajectory = clips.groupby(["prompt_id", "sample"], sort=False).ngroup().to_numpy()
    cosine, l2 = statistics.trajectory_drift(embeddings, trajectory, clips["step"].to_numpy())
    per_clip = clips[["prompt_id", "sample", "step"]].assign(cosine_distance=cosine, l2_distance=l2)
    prompt = pd.factorize(clips["prompt_id"])[0]
    prompt_weights = statistics.cluster_weights(prompt.max() + 1, n_resamples, np.random.default_rng([seed, 4]))
    rows = []
    for step in np.unique(clips["step"]):
        at_step = np.flatnonzero(clips["step"].to_numpy() == step)
        row = {"step": int(step), "n_clips": int(len(at_step)), "distinct_position": runs[int(step)]}
        for name, values in (("cosine_distance", cosine), ("l2_distance", l2)):
            row[name] = float(values[at_step].mean())
            row[f"{name}_low"], row[f"{name}_high"] = statistics.percentile_interval(
                statistics.weighted_mean(prompt_weights[:, prompt[at_step]], values[at_step]), 1.0 - alpha)
        rows.append(row)
    return per_clip, pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------- main

def _input_fingerprint(data: Path, generated: GeneratedClips, nsynth: ConceptNotes | None) -> dict:
    fingerprint = {
        "annotated_sha256": sha256_file(data / "prompts" / "annotated.csv"),
        "index_sha256": table_sha256(generated.index),
        "generation_sha256": sha256_file(generated.generation),
        "generated_embeddings_sha256": sha256_file(generated.npy),
        "generated_sidecar": read_json(generated.npy.with_suffix(".json")),
    }
    if generated.content is not None:
        fingerprint["content_sha256"] = generated.content.sha256
    if nsynth is not None:
        fingerprint.update(notes_sha256=sha256_file(concepts_dir(data) / "notes.csv"),
                           sets_sha256=sha256_file(concepts_dir(data) / "sets.csv"),
                           concept_embeddings_sha256=sha256_file(nsynth.npy))
    return fingerprint


def main(args) -> None:
    # Every fit and matrix here is small: BLAS/OpenMP threads only add synchronisation, which costs ~10x when
    # the cores are shared (measured: a 300 x 64 logistic fit 15 ms on one thread, 100 ms on two, under load).
    if args.space == "activations":
        from interp import activations
        activations.run(args)
        return
    if not args.embedder:
        raise InputError("--embedder is required for --space embeddings — pass the embedder stages 3 and 5 used")
    with threadpool_limits(limits=1):
        analyse(args)


def analyse(args) -> None:
    if args.probe not in probe_families.FAMILIES:
        raise InputError(f"--probe '{args.probe}' is unknown — choose from {', '.join(probe_families.FAMILIES)}")
    if args.baseline not in BASELINES:
        raise InputError(f"--baseline '{args.baseline}' is unknown — choose from {', '.join(BASELINES)}")
    if args.bootstrap < 1 or args.random_baselines < 0 or not 0 < args.alpha < 1:
        raise InputError("--bootstrap must be >= 1, --random-baselines >= 0 and --alpha in (0, 1) — fix the option")
    family_type = probe_families.FAMILIES[args.probe]
    data = Path(args.data)
    stem = embedding_stem(args.embedder, args.model)
    generated = load_generated(data, stem, args.kind)
    nsynth = load_concept_notes(data, stem, generated, required=family_type.needs_notes)
    out = results_dir(data, stem, args.probe, args.kind)
    provenance = Provenance(
        sidecar=out / SIDECAR,
        record={"inputs": _input_fingerprint(data, generated, nsynth),
                "settings": {"probe": args.probe, "kind": args.kind, "baseline": args.baseline,
                             "bootstrap": args.bootstrap, "random_baselines": args.random_baselines,
                             "alpha": args.alpha, "seed": args.seed, "baseline_percentile": BASELINE_PERCENTILE,
                             "realised_mass": REALISED_MASS}},
        outputs=[out / name for name in OUTPUT_FILES] + ([] if args.no_report else [out / "report.html"]))
    # --compare extends a finished analysis: an up-to-date run is redone when its compare/ outputs are stale.
    if decide(provenance, args.force, fix="rerun with --force to replace them") and not (
            args.compare and not compare.up_to_date(out, data, provenance.record, generated.intervened[0])):
        print(f"{out}: up to date with its inputs; pass --force to redo")
        return
    begin(provenance)
    started = time.perf_counter()
    clips, level = generated.clips, 1.0 - args.alpha

    # Probes: one interface whatever the family (interp/probes.py).
    family = family_type(seed=args.seed, text_vectors=text_embeddings(generated) if family_type.needs_text else None)
    splits = concept_splits(nsynth)
    probe_scores, fitted = score_clips(family, nsynth, splits, generated.embeddings, args.baseline,
                                       args.random_baselines, args.seed)
    quality = probe_quality(family, fitted, splits, nsynth, args.bootstrap, level, args.seed)

    # Emergence against every yardstick this run has, corrected as one family of tests.
    prompt_ids, clip_prompt = np.unique(clips["prompt_id"].to_numpy(), return_inverse=True)
    yardsticks = [prompt_yardstick(generated, clip_prompt, prompt_ids)]
    if generated.content is not None:
        yardsticks.append(content_yardstick(generated.content))
    prompt_weights = statistics.cluster_weights(len(prompt_ids), args.bootstrap, np.random.default_rng([args.seed, 3]))
    names = [concept.name for concept in CONCEPTS]
    table = pd.concat([emergence_table(probe_scores, yardstick, clip_prompt, clips["step"].to_numpy(), names,
                                       prompt_weights, level, progress=True) for yardstick in yardsticks],
                      ignore_index=True)
    table["trajectory_axis"] = generated.axis.name
    table, n_tests = multiple_testing(table, args.alpha)
    table = table[emergence_columns()]
    trajectory = clips.groupby(["prompt_id", "sample"], sort=False).ngroup().to_numpy()
    if generated.content is not None:
        distinct_by = "content"
        runs = statistics.distinct_positions(generated.content.mass, trajectory, clips["step"].to_numpy(),
                                             atol=CONTENT_ATOL)
    else:
        distinct_by = "embeddings"
        runs = statistics.distinct_positions(generated.embeddings, trajectory, clips["step"].to_numpy(),
                                             rtol=EMBEDDING_RTOL)
    steps_table = emergence_steps(table, runs)
    drift, drift_summary = drift_tables(clips, generated.embeddings, runs, args.bootstrap, args.alpha, args.seed)
    probabilities = pd.concat([clips[["prompt_id", "sample", "step", "kind", "path"]],
                               pd.DataFrame(probe_scores.scores, columns=names)], axis=1)

    for name, frame in (("probe_quality.csv", quality), ("emergence.csv", table),
                        ("emergence_steps.csv", steps_table), ("drift.csv", drift),
                        ("drift_summary.csv", drift_summary), ("probabilities.csv", probabilities)):
        write_csv(out / name, frame)
    facts = {"trajectory_axis": generated.axis.record(), "n_tests": n_tests, "distinct_by": distinct_by,
             "yardsticks": [yardstick.name for yardstick in yardsticks],
             "embedder": {key: generated.sidecar.get(key) for key in EMBEDDER_KEYS}}
    record = {**provenance.record, **facts}
    summary.write_summary(out, record)
    if args.compare:
        models = {name: probe.model for name, probe in fitted.items()}
        compare.run(out, data, clips, generated.embeddings, probe_scores.scores, generated.intervened, args.kind,
                    names, models, family.outputs, steps_table[steps_table["yardstick"] == "prompt"],
                    provenance.record, args.bootstrap, args.alpha, args.seed)
    if not args.no_report:
        from interp import plots, report
        plot_files = plots.write_plots(out, table, drift_summary, clips, generated.embeddings, runs,
                                       generated.axis.unit, BASELINE_PERCENTILE)
        report.write_report(out, data, record, plot_files)
    seconds = round(time.perf_counter() - started, 2)
    commit(provenance, {**facts, "seconds": seconds,
                        "outputs": list(OUTPUT_FILES) + ([] if args.no_report else ["report.html", "plots/"])})
    status = steps_table[(steps_table["metric"] == "auroc") & (steps_table["yardstick"] == "prompt")]["status"]
    print(f"{out}: AUROC against the prompts — {(status == 'emerged').sum()} of {len(CONCEPTS)} concepts emerged, "
          f"{(status == 'transient').sum()} transient, over {clips['step'].nunique()} {generated.axis.unit}s of "
          f"{clips['prompt_id'].nunique()} prompts ({', '.join(y.name for y in yardsticks)} yardsticks, "
          f"Bonferroni over {n_tests} tests); {seconds} s")


def lock_name(args) -> str:
    """One lock per results folder: analyses of other embedders, probes or kinds may run side by side."""
    return f"stage6-{embedding_stem(args.embedder, args.model)}-{args.probe}-{args.kind}"


if __name__ == "__main__":
    main_exit(main, build_parser(), lock=lock_name)
