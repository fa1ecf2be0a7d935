"""Stage 6: train a probe per concept on NSynth embeddings, apply it to every step of every trajectory, and
chart when each concept emerges against the prompt annotations (data/ARTIFACTS.md, stage 6).

    python interp/stage6_probe.py --data data --embedder spectral [--probe logreg|svm|cav|text] [--kind x0]

Outputs go to <data>/results/<embedder>/<probe>/<kind>/ and are skipped when up to date with their inputs.
"""
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from data.contract import (check_same_embedder, concepts_dir, generated_dir, read_annotated, read_embeddings,
                           read_generated_index, read_notes, read_sets, table_sha256)
from data.files import read_json, sha256_file, write_csv, write_json
from data.stage import InputError, main_exit, stage_parser
from embeddings import EMBEDDERS, embedding_stem
from interp import compare
from interp import probes as probe_families
from interp import statistics
from interp.concepts import CONCEPTS

OUTPUT_FILES = ("probe_quality.csv", "emergence.csv", "emergence_steps.csv", "drift.csv", "drift_summary.csv",
                "probabilities.csv")
SIDECAR = "stage6.json"
# The emergence threshold: a concept has emerged at a step when its metric's lower CI bound is above this
# percentile of the random-concept baselines at that step (and at every later step).
BASELINE_PERCENTILE = 95.0
# Emergence is charted for the chance-corrected metrics only: accuracy, TPR and TNR alone rise for a probe
# that says "no" (or "yes") to everything.
EMERGENCE_METRICS = ("auroc", "balanced_accuracy")


def results_dir(data: Path, embedder: str, probe: str, kind: str) -> Path:
    return Path(data) / "results" / embedder / probe / kind


def build_parser():
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--embedder", required=True,
                        help=f"the embedder stages 3 and 5 used ({', '.join(sorted(EMBEDDERS))}); with --model it "
                             "names the embeddings file exactly as they do (embeddings.embedding_stem)")
    parser.add_argument("--model", help="the --model given to stages 3 and 5 (embedders with weights, e.g. clap)")
    parser.add_argument("--probe", default="logreg",
                        help=f"probe family: {', '.join(probe_families.PROBES)} (see interp/probes.py)")
    parser.add_argument("--kind", default="x0", help="which captured clips to analyse: x0 (clean estimate) or xt")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for every CI")
    parser.add_argument("--random-baselines", type=int, default=20,
                        help="random-concept probes per concept, giving the baseline distribution per step")
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="family-wise error rate (Bonferroni over concepts x steps); CIs are 1 - alpha")
    parser.add_argument("--seed", type=int, default=0, help="seed for probes, baselines and resamples")
    parser.add_argument("--no-report", action="store_true", help="skip plots/ and report.html")
    parser.add_argument("--compare", action="store_true",
                        help="also score the intervened clips of stage 2 --intervene against their unintervened "
                             "pairs: effects, random-direction baseline, commitment steps (interp/compare.py)")
    return parser


# ----------------------------------------------------------------------------------------------- inputs

def _available_stems(folder: Path) -> str:
    stems = sorted(path.stem for path in folder.glob("*.npy")) if folder.is_dir() else []
    return ", ".join(stems) if stems else "none"


def load_generated(data: Path, embedder: str, kind: str):
    annotated = read_annotated(data)
    index = read_generated_index(data)
    folder = generated_dir(data) / "embeddings"
    npy = folder / f"{embedder}.npy"
    if not npy.is_file():
        raise InputError(f"{npy}: missing — available embedders: {_available_stems(folder)}; "
                         "run stage 3 with the same --embedder/--model, or pick one of those")
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
    clips = index[selected].reset_index(drop=True)
    return annotated, index, clips, matrix[selected.to_numpy()], sidecar, npy, intervened


def load_concept_notes(data: Path, embedder: str, generated_sidecar: dict, generated_npy: Path, required: bool):
    """NSynth notes, sets and embeddings; None when not required and stage 4/5 outputs are absent."""
    folder = concepts_dir(data) / "embeddings"
    npy = folder / f"{embedder}.npy"
    if not required and not ((concepts_dir(data) / "notes.csv").is_file() and npy.is_file()):
        return None
    notes = read_notes(data)
    sets = read_sets(data)
    if not npy.is_file():
        raise InputError(f"{npy}: missing — available embedders: {_available_stems(folder)}; "
                         "run stage 5 with the same --embedder/--model")
    matrix, sidecar = read_embeddings(npy, len(notes), table_sha256(notes), "notes_sha256",
                                      fix="rerun stage 5 with the same --embedder/--model and --force")
    check_same_embedder(generated_sidecar, generated_npy, sidecar, npy)
    row_of = pd.Series(np.arange(len(notes)), index=notes["note_str"])
    missing = ~sets["note_str"].isin(row_of.index)
    if missing.any():
        raise InputError(f"{concepts_dir(data) / 'sets.csv'} row {int(missing.idxmax()) + 2}: note "
                         f"'{sets.at[missing.idxmax(), 'note_str']}' is not in notes.csv — rerun stage 4 with --force")
    sets = sets.assign(row=row_of.loc[sets["note_str"]].to_numpy())
    return notes, sets, matrix, npy


def text_embeddings(generated_sidecar: dict, generated_npy: Path) -> np.ndarray:
    """Embed every concept description with the text tower of the embedder that made the clip embeddings."""
    from embeddings import EMBEDDERS, load_embedder
    name = generated_sidecar.get("embedder")
    if name not in EMBEDDERS:
        raise InputError(f"{generated_npy}: embedder {name!r} is unknown ({', '.join(sorted(EMBEDDERS))}) "
                         "— the text probe needs the embedder that wrote these embeddings")
    options = {"model": generated_sidecar["model"]} if generated_sidecar.get("model") else {}
    embedder = load_embedder(name, **options)
    if not hasattr(embedder, "embed_text"):
        raise InputError(f"{generated_npy}: embedder '{name}' has no text tower — --probe text needs a text-audio "
                         "embedder such as clap; use --probe logreg, svm or cav")
    expected = generated_sidecar.get("checkpoint_sha256")
    loaded = embedder.provenance().get("checkpoint_sha256")
    if expected is not None and loaded != expected:
        raise InputError(f"{generated_npy}: embedded with checkpoint {expected}, but the loaded '{name}' model is "
                         f"{loaded} — load the same checkpoint or rerun stage 3 with --force")
    vectors = np.asarray(embedder.embed_text([concept.description for concept in CONCEPTS]), np.float64)
    if vectors.shape != (len(CONCEPTS), generated_sidecar.get("dim", vectors.shape[1])):
        raise InputError(f"{generated_npy}: text embeddings have shape {list(vectors.shape)}, expected "
                         f"[{len(CONCEPTS)}, {generated_sidecar.get('dim')}] — the text tower must share the audio space")
    return vectors


# -------------------------------------------------------------------------------------------- probes

def _random_state(seed: int, *keys: int) -> int:
    return int(np.random.default_rng([seed, *keys]).integers(2**31 - 1))


def concept_training_sets(sets: pd.DataFrame | None):
    """Per concept: (train rows, train labels, test rows, test labels) or None when stage 4 has no set."""
    result = {}
    for concept in CONCEPTS:
        chosen = None if sets is None else sets[sets["concept"] == concept.name]
        if chosen is None or chosen.empty:
            result[concept.name] = None
            continue
        train, test = chosen[chosen["split"] == "train"], chosen[chosen["split"] == "test"]
        result[concept.name] = (train["row"].to_numpy(), train["label"].to_numpy(int),
                                test["row"].to_numpy(), test["label"].to_numpy(int))
    return result


def fit_concept_probes(probe: str, note_embeddings, training, text_vectors, seed: int):
    """{concept: fitted probe or None, note}; a concept whose training set lacks a class gets no probe."""
    fitted, notes = {}, {}
    for k, concept in enumerate(CONCEPTS):
        split = training.get(concept.name)
        labels = None if split is None else split[1]
        has_both = labels is not None and labels.min() == 0 and labels.max() == 1
        if probe == "text":
            model = probe_families.make_text_probe(text_vectors[k])
            if has_both:
                model.fit(note_embeddings[split[0]], labels)
            fitted[concept.name] = model
            if split is None:
                notes[concept.name] = "no NSynth set: cosine scores only, no threshold and no test quality"
            else:
                notes[concept.name] = "" if has_both else "threshold not placed: one class in NSynth train"
            continue
        if split is None:
            fitted[concept.name], notes[concept.name] = None, "no NSynth set for this concept (stage 4 wrote none)"
        elif not has_both:
            fitted[concept.name] = None
            notes[concept.name] = f"NSynth train split has only {'positive' if labels.min() == 1 else 'negative'} notes"
        else:
            fitted[concept.name] = probe_families.make_probe(probe, _random_state(seed, k)).fit(
                note_embeddings[split[0]], labels)
            notes[concept.name] = ""
    return fitted, notes


def fit_random_probes(probe: str, note_embeddings, train_rows_all, training, count: int, dim: int, seed: int):
    """Per concept, `count` random-concept probes of the same family and the same training-set size.

    A random concept's positives are drawn at random from all train notes and its negatives from the rest,
    so it has the concept's class sizes but no meaning. For the text probe, a random concept is a random
    unit direction (isotropic Gaussian) in the embedding space; its threshold is placed on a random note
    set as above when NSynth notes are available.
    """
    result = {}
    for k, concept in enumerate(CONCEPTS):
        split = training.get(concept.name)
        if probe != "text" and (split is None or split[1].min() == split[1].max()):
            result[concept.name] = []
            continue
        models = []
        for r in range(count):
            rng = np.random.default_rng([seed, k, r, 1])
            if probe == "text":
                direction = rng.standard_normal(dim)
                model = probe_families.make_text_probe(direction / np.linalg.norm(direction))
            if split is not None and split[1].min() != split[1].max():
                n_positive, n_total = int(split[1].sum()), len(split[1])
                rows = rng.choice(train_rows_all, n_total, replace=False)
                labels = np.zeros(n_total, int)
                labels[rng.choice(n_total, n_positive, replace=False)] = 1
                if probe == "text":
                    model.fit(note_embeddings[rows], labels)
                else:
                    model = probe_families.make_probe(probe, _random_state(seed, k, r)).fit(note_embeddings[rows], labels)
            models.append(model)
        result[concept.name] = models
    return result


def probe_quality(fitted, fit_notes, training, notes: pd.DataFrame | None, note_embeddings, n_resamples: int,
                  level: float, seed: int) -> pd.DataFrame:
    """AUROC and balanced accuracy on the NSynth test split, with CIs that resample test instruments
    (the notes of one instrument share its timbre, so they are not independent)."""
    rows = []
    for k, concept in enumerate(CONCEPTS):
        split = training.get(concept.name)
        model = fitted.get(concept.name)
        row = {"concept": concept.name, "group": concept.group}
        note = fit_notes.get(concept.name, "")
        if split is not None:
            train_rows, train_labels, test_rows, test_labels = split
            row.update(n_train_positive=int(train_labels.sum()), n_train_negative=int((train_labels == 0).sum()),
                       n_test_positive=int(test_labels.sum()), n_test_negative=int((test_labels == 0).sum()),
                       n_test_instruments=int(notes["instrument_str"].iloc[test_rows].nunique()))
        evaluable = model is not None and split is not None and len(split[3]) and 0 < split[3].sum() < len(split[3])
        if model is not None and split is not None and not evaluable and not note:
            note = "NSynth test split lacks positive or negative notes: quality undefined"
        if evaluable:
            test_rows, test_labels = split[2], split[3]
            X = note_embeddings[test_rows]
            instruments = pd.factorize(notes["instrument_str"].iloc[test_rows])[0]
            rng = np.random.default_rng([seed, k, 2])
            weights = statistics.cluster_weights(instruments.max() + 1, n_resamples, rng)[:, instruments]
            scores, decisions = probe_families.probe_outputs(model, X)
            point = statistics.binary_metrics(statistics.point_weights(len(X)), test_labels, scores, decisions)
            resampled = statistics.binary_metrics(weights, test_labels, scores, decisions)
            for metric in ("auroc", "balanced_accuracy"):
                low, high = statistics.percentile_interval(resampled[metric], level)
                row.update({f"test_{metric}": float(point[metric][0]), f"test_{metric}_low": low,
                            f"test_{metric}_high": high})
        row["threshold"] = getattr(model, "threshold_", np.nan) if model is not None else np.nan
        row["note"] = note
        rows.append(row)
    columns = ["concept", "group", "n_train_positive", "n_train_negative", "n_test_positive", "n_test_negative",
               "n_test_instruments", "test_auroc", "test_auroc_low", "test_auroc_high", "test_balanced_accuracy",
               "test_balanced_accuracy_low", "test_balanced_accuracy_high", "threshold", "note"]
    return pd.DataFrame(rows).reindex(columns=columns)


# ---------------------------------------------------------------------------------------- emergence

def emergence_table(scores: np.ndarray, decisions: np.ndarray | None, baseline_scores: np.ndarray,
                    baseline_decisions: np.ndarray | None, clip_prompt: np.ndarray, clip_step: np.ndarray,
                    prompt_labels: np.ndarray, concept_names, n_resamples: int, alpha: float,
                    seed: int, progress: bool = False) -> pd.DataFrame:
    """Concept x step metrics against the prompt annotations, with prompt-resampled CIs and baseline tests.

    scores, decisions: [n_clips, n_concepts] (decisions may be None, or NaN-free bool);
    baseline_scores, baseline_decisions: [n_concepts, n_baselines, n_clips] (NaN rows = no baseline);
    clip_prompt: prompt index per clip; prompt_labels: [n_prompts, n_concepts] bool (prompt asks for concept).
    """
    level = 1.0 - alpha
    n_prompts = prompt_labels.shape[0]
    # One set of prompt resamples serves every concept and step: the CIs resample prompts, not clips, because
    # the samples of one prompt share its text and are correlated; reusing the draws also keeps the cost at
    # one weight matrix instead of one per (concept, step).
    prompt_weights = statistics.cluster_weights(n_prompts, n_resamples, np.random.default_rng([seed, 3]))
    steps = np.unique(clip_step)
    rows, tested = [], []
    baseline_rows = {metric: [] for metric in statistics.METRICS}
    for step in tqdm(steps, desc="steps", disable=not progress):
        at_step = np.flatnonzero(clip_step == step)
        prompts_here = clip_prompt[at_step]
        weights = prompt_weights[:, prompts_here]
        for k, name in enumerate(concept_names):
            y_true = prompt_labels[prompts_here, k]
            y_pred = None if decisions is None else decisions[at_step, k]
            row = {"concept": name, "step": int(step), "n_prompts": int(len(np.unique(prompts_here))),
                   "n_positive_prompts": int(len(np.unique(prompts_here[y_true]))), "n_clips": int(len(at_step))}
            if np.isnan(scores[at_step, k]).all():
                rows.append(row)
                continue
            point = statistics.point_metrics(y_true, scores[at_step, k], None if y_pred is None else y_pred[None])
            resampled = statistics.binary_metrics(weights, y_true, scores[at_step, k], y_pred)
            present = ~np.isnan(baseline_scores[k, :, at_step[0]])
            baseline_values = statistics.point_metrics(
                y_true, baseline_scores[k][present][:, at_step],
                None if baseline_decisions is None else baseline_decisions[k][present][:, at_step])
            lows, highs = statistics.percentile_interval(
                np.stack([resampled[metric] for metric in statistics.METRICS]), level)
            for m, metric in enumerate(statistics.METRICS):
                finite = baseline_values[metric][np.isfinite(baseline_values[metric])]
                row.update({
                    metric: float(point[metric][0]), f"{metric}_low": lows[m], f"{metric}_high": highs[m],
                    f"{metric}_baseline_mean": float(finite.mean()) if finite.size else np.nan,
                    f"{metric}_baseline_p{BASELINE_PERCENTILE:.0f}":
                        float(np.percentile(finite, BASELINE_PERCENTILE)) if finite.size else np.nan,
                })
                baseline_rows[metric].append(np.pad(finite, (0, baseline_scores.shape[1] - finite.size),
                                                    constant_values=np.nan))
            tested.append(len(rows))
            rows.append(row)
    table = pd.DataFrame(rows)
    for metric in statistics.METRICS:
        for column in (metric, f"{metric}_low", f"{metric}_high", f"{metric}_baseline_mean",
                       f"{metric}_baseline_p{BASELINE_PERCENTILE:.0f}"):
            if column not in table:
                table[column] = np.nan
        table[f"{metric}_p"] = np.nan
        if tested:
            table.loc[tested, f"{metric}_p"] = statistics.baseline_test(
                table.loc[tested, metric].to_numpy(float), np.stack(baseline_rows[metric]))
        # Bonferroni over every concept x step tested with this metric.
        table[f"{metric}_p_bonferroni"] = statistics.bonferroni(table[f"{metric}_p"].to_numpy())
        table[f"{metric}_significant"] = table[f"{metric}_p_bonferroni"] < alpha
    notes = []
    for _, row in table.iterrows():
        if row["n_positive_prompts"] == 0:
            notes.append("no prompt asks for this concept: metrics needing positives are undefined")
        elif row["n_positive_prompts"] == row["n_prompts"]:
            notes.append("every prompt asks for this concept: metrics needing negatives are undefined")
        elif np.isnan(row["auroc"]):
            notes.append("no probe for this concept (see probe_quality.csv)")
        else:
            notes.append("")
    table["note"] = notes
    leading = ["concept", "step", "n_prompts", "n_positive_prompts", "n_clips"]
    metric_columns = [f"{metric}{suffix}" for metric in statistics.METRICS
                      for suffix in ("", "_low", "_high", "_baseline_mean", f"_baseline_p{BASELINE_PERCENTILE:.0f}",
                                     "_p", "_p_bonferroni", "_significant")]
    return table[leading + metric_columns + ["note"]]


def emergence_steps(table: pd.DataFrame) -> pd.DataFrame:
    """Per concept and metric: the emergence step (empty if never) and the final step's value and CI."""
    threshold = f"_baseline_p{BASELINE_PERCENTILE:.0f}"
    rows = []
    for concept, group in table.groupby("concept", sort=False):
        group = group.sort_values("step")
        final = group.iloc[-1]
        for metric in EMERGENCE_METRICS:
            step = statistics.emergence_step(group["step"].to_numpy(), group[f"{metric}_low"].to_numpy(),
                                             group[f"{metric}{threshold}"].to_numpy())
            rows.append({"concept": concept, "metric": metric,
                         "emergence_step": pd.NA if step is None else step,
                         "final_step": int(final["step"]), "final_value": final[metric],
                         "final_low": final[f"{metric}_low"], "final_high": final[f"{metric}_high"],
                         "final_baseline_p95": final[f"{metric}{threshold}"],
                         "final_significant": bool(final[f"{metric}_significant"]), "note": final["note"]})
    frame = pd.DataFrame(rows)
    frame["emergence_step"] = frame["emergence_step"].astype("Int64")
    return frame


def drift_tables(clips: pd.DataFrame, embeddings: np.ndarray, n_resamples: int, alpha: float, seed: int):
    """Per clip distance to its trajectory's final step, and per step the mean with a prompt-resampled CI."""
    trajectory = clips.groupby(["prompt_id", "sample"], sort=False).ngroup().to_numpy()
    cosine, l2 = statistics.trajectory_drift(embeddings, trajectory, clips["step"].to_numpy())
    per_clip = clips[["prompt_id", "sample", "step"]].assign(cosine_distance=cosine, l2_distance=l2)
    prompt = pd.factorize(clips["prompt_id"])[0]
    prompt_weights = statistics.cluster_weights(prompt.max() + 1, n_resamples, np.random.default_rng([seed, 4]))
    rows = []
    for step in np.unique(clips["step"]):
        at_step = np.flatnonzero(clips["step"].to_numpy() == step)
        row = {"step": int(step), "n_clips": int(len(at_step))}
        for name, values in (("cosine_distance", cosine), ("l2_distance", l2)):
            row[name] = float(values[at_step].mean())
            row[f"{name}_low"], row[f"{name}_high"] = statistics.percentile_interval(
                statistics.weighted_mean(prompt_weights[:, prompt[at_step]], values[at_step]), 1.0 - alpha)
        rows.append(row)
    return per_clip, pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ main

def _input_fingerprint(data: Path, embedder: str, index: pd.DataFrame, generated_npy: Path, nsynth) -> dict:
    fingerprint = {
        "annotated_sha256": sha256_file(data / "prompts" / "annotated.csv"),
        "index_sha256": table_sha256(index),
        "generated_embeddings_sha256": sha256_file(generated_npy),
        "generated_sidecar": read_json(generated_npy.with_suffix(".json")),
    }
    if nsynth is not None:
        fingerprint.update(notes_sha256=sha256_file(concepts_dir(data) / "notes.csv"),
                           sets_sha256=sha256_file(concepts_dir(data) / "sets.csv"),
                           concept_embeddings_sha256=sha256_file(nsynth[3]))
    return fingerprint


def _up_to_date(out: Path, provenance: dict, no_report: bool) -> bool:
    """True when every output exists and was made from these inputs and settings; refuse other provenance."""
    sidecar = out / SIDECAR
    if not sidecar.is_file():
        return False
    existing = read_json(sidecar)
    for key in ("inputs", "settings"):
        old, new = existing.get(key, {}), provenance[key]
        changed = sorted(name for name in set(old) | set(new) if old.get(name) != new.get(name))
        if changed:
            raise InputError(f"{sidecar}: existing results were made with other {key} ({changed[0]} differs) "
                             "— rerun with --force to replace them")
    wanted = list(OUTPUT_FILES) + ([] if no_report else ["report.html"])
    return all((out / name).is_file() for name in wanted)


def main(args) -> None:
    # Every fit and matrix here is small: BLAS/OpenMP threads only add synchronisation, which costs ~10x when
    # the cores are shared (measured: a 300 x 64 logistic fit 15 ms on one thread, 100 ms on two, under load).
    with threadpool_limits(limits=1):
        analyse(args)


def analyse(args) -> None:
    if args.probe not in probe_families.PROBES:
        raise InputError(f"--probe '{args.probe}' is unknown — choose from {', '.join(probe_families.PROBES)}")
    if args.bootstrap < 1 or args.random_baselines < 0 or not 0 < args.alpha < 1:
        raise InputError("--bootstrap must be >= 1, --random-baselines >= 0 and --alpha in (0, 1) — fix the option")
    data = Path(args.data)
    stem = embedding_stem(args.embedder, args.model)  # the same file stages 3 and 5 wrote for these options
    annotated, index, clips, clip_embeddings, generated_sidecar, generated_npy, intervened = load_generated(
        data, stem, args.kind)
    nsynth = load_concept_notes(data, stem, generated_sidecar, generated_npy,
                                required=args.probe != "text")
    out = results_dir(data, stem, args.probe, args.kind)
    provenance = {
        "inputs": _input_fingerprint(data, stem, index, generated_npy, nsynth),
        "settings": {"probe": args.probe, "kind": args.kind, "bootstrap": args.bootstrap,
                     "random_baselines": args.random_baselines, "alpha": args.alpha, "seed": args.seed,
                     "baseline_percentile": BASELINE_PERCENTILE},
    }
    if not args.force and _up_to_date(out, provenance, args.no_report) and not (
            args.compare and not compare.up_to_date(out, data, provenance)):
        print(f"{out}: up to date with its inputs; pass --force to redo")
        return
    started = time.perf_counter()

    notes, sets, note_embeddings = (nsynth[0], nsynth[1], nsynth[2]) if nsynth is not None else (None, None, None)
    training = concept_training_sets(sets)
    text_vectors = text_embeddings(generated_sidecar, generated_npy) if args.probe == "text" else None
    fitted, fit_notes = fit_concept_probes(args.probe, note_embeddings, training, text_vectors, args.seed)
    train_rows_all = None if notes is None else np.flatnonzero(notes["split"].to_numpy() == "train")
    randoms = fit_random_probes(args.probe, note_embeddings, train_rows_all, training, args.random_baselines,
                                clip_embeddings.shape[1], args.seed)
    quality = probe_quality(fitted, fit_notes, training, notes, note_embeddings, args.bootstrap, 1.0 - args.alpha,
                            args.seed)

    names = [concept.name for concept in CONCEPTS]
    n_clips, n_concepts = len(clips), len(CONCEPTS)
    scores = np.full((n_clips, n_concepts), np.nan)
    decisions = np.zeros((n_clips, n_concepts), bool)
    thresholded = True
    baseline_scores = np.full((n_concepts, args.random_baselines, n_clips), np.nan)
    baseline_decisions = np.zeros((n_concepts, args.random_baselines, n_clips), bool)
    for k, name in enumerate(names):
        if fitted[name] is not None:
            scores[:, k], decided = probe_families.probe_outputs(fitted[name], clip_embeddings)
            thresholded &= decided is not None
            decisions[:, k] = decided if decided is not None else False
        for r, model in enumerate(randoms[name]):
            baseline_scores[k, r], decided = probe_families.probe_outputs(model, clip_embeddings)
            baseline_decisions[k, r] = decided if decided is not None else False

    labels_by_prompt = dict(zip(annotated["prompt_id"], annotated["labels"]))
    prompt_ids, clip_prompt = np.unique(clips["prompt_id"].to_numpy(), return_inverse=True)
    prompt_labels = np.array([[concept.prompt_has(labels_by_prompt[prompt]) for concept in CONCEPTS]
                              for prompt in prompt_ids], dtype=bool)
    table = emergence_table(scores, decisions if thresholded else None, baseline_scores,
                            baseline_decisions if thresholded else None, clip_prompt, clips["step"].to_numpy(),
                            prompt_labels, names, args.bootstrap, args.alpha, args.seed, progress=True)
    steps_table = emergence_steps(table)
    drift, drift_summary = drift_tables(clips, clip_embeddings, args.bootstrap, args.alpha, args.seed)
    probabilities = pd.concat([clips[["prompt_id", "sample", "step", "kind", "path"]],
                               pd.DataFrame(scores, columns=names)], axis=1)

    for name, frame in (("probe_quality.csv", quality), ("emergence.csv", table),
                        ("emergence_steps.csv", steps_table), ("drift.csv", drift),
                        ("drift_summary.csv", drift_summary), ("probabilities.csv", probabilities)):
        write_csv(out / name, frame)
    if args.compare:
        compare.run(out, data, clips, clip_embeddings, scores, intervened, args.kind, names, fitted,
                    probe_families.probe_outputs, steps_table, provenance, args.bootstrap, args.alpha, args.seed)
    if not args.no_report:
        from interp import plots, report
        plot_files = plots.write_plots(out, table, drift_summary, clips, clip_embeddings)
        report.write_report(out, data, provenance, plot_files)
    provenance["seconds"] = round(time.perf_counter() - started, 2)
    provenance["embedder"] = {key: generated_sidecar.get(key) for key in
                              ("embedder", "model", "checkpoint_sha256", "window_policy", "dim")}
    provenance["outputs"] = list(OUTPUT_FILES) + ([] if args.no_report else ["report.html", "plots/"])
    write_json(out / SIDECAR, provenance)
    emerged = steps_table[(steps_table["metric"] == "auroc") & steps_table["emergence_step"].notna()]
    print(f"{out}: {len(emerged)} of {n_concepts} concepts emerge (AUROC) over {clips['step'].nunique()} steps "
          f"of {clips['prompt_id'].nunique()} prompts; {provenance['seconds']} s")


if __name__ == "__main__":
    main_exit(main, build_parser())
