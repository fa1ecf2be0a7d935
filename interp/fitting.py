"""Stage 6's probes in embedding space: each concept's probe trained on its NSynth train notes, its random-concept
probes (random instrument subsets or random notes of the same size, --baseline), the scores of every probe on
every clip, and the probes' quality on the NSynth test split. One ProbeFamily interface whatever the family
(interp/probes.py); the text family's concept vectors come from the embedder's text tower (text_embeddings).
"""
import numpy as np
import pandas as pd
from tqdm import tqdm

from data.concepts import CONCEPTS
from data.stage import InputError
from embeddings import DEFAULT_MODELS, EMBEDDERS, load_embedder
from interp import instrument_split, statistics
from interp.probes import FittedProbe, TrainingSet
from interp.records import ConceptNotes, ConceptSplit, GeneratedClips, ProbeScores

BASELINES = ("instruments", "notes")


def text_embeddings(generated: GeneratedClips) -> np.ndarray:
    """Embed every concept description with the text tower of the embedder that made the clip embeddings."""
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


def fit_concept_probes(family, nsynth: ConceptNotes | None, splits: dict) -> dict[str, FittedProbe]:
    """Every concept's probe, trained on its NSynth train notes (FittedProbe.model None where none could be)."""
    fitted = {}
    for k, concept in enumerate(CONCEPTS):
        split = splits[concept.name]
        training = None if split is None else nsynth.training_set(split.train_rows, split.train_labels)
        fitted[concept.name] = family.concept_probe(k, training)
    return fitted


def concept_scores(family, fitted: dict, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(scores, decisions) [n_clips, n_concepts] of the concept probes; NaN scores where a concept has no probe,
    decisions None when a fitted probe has no threshold (an uncalibrated text probe)."""
    scores = np.full((len(embeddings), len(CONCEPTS)), np.nan)
    decisions = np.zeros(scores.shape, bool)
    thresholded = True
    for k, concept in enumerate(CONCEPTS):
        model = fitted[concept.name].model
        if model is not None:
            scores[:, k], decided = family.outputs(model, embeddings)
            thresholded &= decided is not None
            decisions[:, k] = False if decided is None else decided
    return scores, decisions if thresholded else None


def instrument_counts(nsynth: ConceptNotes, split: ConceptSplit) -> tuple[int, int]:
    """(positive, negative) train instruments of a concept: an instrument counts on the side most of its train
    notes are on (a tie counts as negative). For family and source concepts every instrument is on one side;
    quality concepts mix, and counting every instrument with one positive note as positive would leave a random
    concept almost no negative instrument."""
    share = pd.Series(split.train_labels).groupby(nsynth.instrument_of_row[split.train_rows]).mean()
    return int((share > 0.5).sum()), int((share <= 0.5).sum())


def random_training_sets(nsynth: ConceptNotes | None, splits: dict, baseline: str, count: int,
                         seed: int) -> list[TrainingSet | None]:
    """The pool of `count` random concepts every concept's probe is compared with (the secondary specificity
    check). Random concept r is the size of concept number r mod n in turn (the concepts with a two-class train
    set): under --baseline instruments, as many positive and negative instruments (statistics.
    random_instrument_sets, every part of a mix counted), under notes as many positive and total notes. One pool
    for all concepts, matched to their sizes in turn rather than one pool per concept: enough random probes for
    a stable 95th percentile within the stage's time (one fit each)."""
    sized = [split for split in splits.values()
             if split is not None and split.train_labels.min() != split.train_labels.max()]
    if nsynth is None or not sized:
        return [None] * count
    sets = []
    for r in range(count):
        split = sized[r % len(sized)]
        rng = np.random.default_rng([seed, r, 1])
        if baseline == "notes":
            rows, labels = statistics.random_note_sets(nsynth.train_rows, int(split.train_labels.sum()),
                                                       len(split.train_labels), rng)
        else:
            rows, labels = statistics.random_instrument_sets(nsynth.train_rows, nsynth.memberships,
                                                             *instrument_counts(nsynth, split), rng)
        sets.append(nsynth.training_set(rows, labels))
    return sets


def score_clips(family, fitted: dict, nsynth: ConceptNotes | None, splits: dict, embeddings: np.ndarray,
                baseline: str, count: int, seed: int, progress: bool = True) -> ProbeScores:
    """Score every clip with every concept probe and with the pool of `count` random-concept probes (the same
    pool for every concept: ProbeScores' baseline arrays repeat it per concept without copying)."""
    scores, decisions = concept_scores(family, fitted, embeddings)
    n_clips, n_concepts = len(embeddings), len(CONCEPTS)
    pool_scores = np.full((count, n_clips), np.nan)
    pool_decisions = np.zeros((count, n_clips), bool)
    random_sets = random_training_sets(nsynth, splits, baseline, count, seed)
    for r, random_set in enumerate(tqdm(random_sets, desc="random-concept probes", leave=False,
                                        disable=not progress)):
        # The pool's probes are keyed after the concepts' own numbers, so their seeds never coincide.
        model = family.random_probe(n_concepts, r, random_set, embeddings.shape[1])
        if model is not None:
            pool_scores[r], decided = family.outputs(model, embeddings)
            pool_decisions[r] = False if decided is None else decided
    shape = (n_concepts, count, n_clips)
    return ProbeScores(scores, decisions, np.broadcast_to(pool_scores, shape),
                       None if decisions is None else np.broadcast_to(pool_decisions, shape))


# The columns of probe_quality.csv, in both spaces (interp/activations.py fills the ones that apply there).
QUALITY_COLUMNS = ["concept", "group", "n_train_positive", "n_train_negative", "n_test_positive", "n_test_negative",
                   "n_test_instruments", "n_test_positive_instruments", "n_test_negative_instruments",
                   "test_auroc", "test_auroc_low", "test_auroc_high", "test_balanced_accuracy",
                   "test_balanced_accuracy_low", "test_balanced_accuracy_high", "resplits", "resplit_auroc_median",
                   "resplit_auroc_min", "resplit_auroc_max", "transfer_yardstick", "transfer_step", "transfer_auroc",
                   "transfer_auroc_low", "transfer_auroc_high", "threshold", "note"]


def probe_quality(family, fitted: dict, splits: dict, nsynth: ConceptNotes | None, n_resamples: int, level: float,
                  seed: int) -> pd.DataFrame:
    """AUROC and balanced accuracy on the NSynth test split, with CIs that resample test instruments (the
    notes of one instrument share its timbre, so they are not independent; a mix belongs to every instrument it
    sounds, statistics.multi_cluster_weights). With fewer than two positive (or negative) test instruments an
    instrument bootstrap cannot vary that side: the CI is left empty and the note says so, rather than reporting
    a degenerate interval. The re-split and transfer columns are filled by resplit_quality and stage 6."""
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
            parts = nsynth.memberships[split.test_rows]
            clusters, inverse = np.unique(parts[parts >= 0], return_inverse=True)
            relabelled = np.full(parts.shape, -1)
            relabelled[parts >= 0] = inverse
            weights = statistics.multi_cluster_weights(relabelled, len(clusters), n_resamples,
                                                       np.random.default_rng([seed, k, 2]))
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
    return pd.DataFrame(rows).reindex(columns=QUALITY_COLUMNS)


def resplit_quality(family, nsynth: ConceptNotes | None, count: int, seed: int, progress: bool = True) -> pd.DataFrame:
    """Per concept, NSynth test AUROC over `count` fresh instrument splits drawn by stage 4's rule
    (interp/instrument_split.py, stage 4's test share; every part of a mix on its side): median, smallest and
    largest over the re-splits where the concept has a probe and a two-class test side. One split with two test
    instruments per side says little about another set of instruments; the spread over re-splits says how much
    the quality depends on which instruments were held out."""
    rows = {concept.name: [] for concept in CONCEPTS}
    if nsynth is not None and count:
        sets = nsynth.sets
        labels = np.full((len(nsynth.notes), len(CONCEPTS)), -1, np.int8)
        concept_index = {concept.name: k for k, concept in enumerate(CONCEPTS)}
        labels[sets["row"].to_numpy(), sets["concept"].map(concept_index).to_numpy()] = sets["label"].to_numpy()
        for r in tqdm(range(count), desc="re-splits", leave=False, disable=not progress):
            split_seed = int(np.random.default_rng([seed, r, 5]).integers(2 ** 31 - 1))
            test = instrument_split.split_instruments(nsynth.notes, labels, nsynth.test_fraction, split_seed)
            in_train, in_test = instrument_split.split_sides(nsynth.notes, test)
            for k, concept in enumerate(CONCEPTS):
                train_rows = np.flatnonzero(in_train & (labels[:, k] >= 0))
                test_rows = np.flatnonzero(in_test & (labels[:, k] >= 0))
                y_train, y_test = labels[train_rows, k], labels[test_rows, k]
                if len(np.unique(y_train)) < 2 or len(np.unique(y_test)) < 2:
                    continue
                fitted = family.concept_probe(k, nsynth.training_set(train_rows, y_train.astype(int)))
                if fitted.model is not None:
                    scores, _ = family.outputs(fitted.model, nsynth.embeddings[test_rows])
                    rows[concept.name].append(float(statistics.point_metrics(y_test.astype(bool), scores)["auroc"][0]))
    return pd.DataFrame([{"concept": name, "resplits": len(values),
                          "resplit_auroc_median": float(np.median(values)) if values else np.nan,
                          "resplit_auroc_min": float(np.min(values)) if values else np.nan,
                          "resplit_auroc_max": float(np.max(values)) if values else np.nan}
                         for name, values in rows.items()])
