"""Probes on MusicGen's residual stream, per layer: the residual captures stage 2 writes, out-of-fold probe scores,
the permuted-label baseline, each probe's direction, and the probe_quality rows. The run is
interp/stage6_activations.py; emergence is stage 6's one computation (interp/emergence.py).

Input: `generated/activations/<prompt_id>.npy + .csv` from stage 2 `--generator musicgen --generator-option
residuals=cond|both` (data/ARTIFACTS.md). A sample's vector at layer ℓ is the read-out after decoder block ℓ−1
(hook `blocks.{ℓ-1}.hook_resid_post`), pooled over the generated positions (`mean`) or taken at the last one
(`last`), from the conditional (`cond`) or unconditional (`uncond`) half of the CFG batch.

Per layer and concept, one linear probe (interp/probes.py make_probe("logreg"): StandardScaler + class-balanced
LogisticRegression) is trained on the samples against their prompt's annotation (`Concept.prompt_has`). Scores are
out of fold: StratifiedGroupKFold with the prompt as the group, so a prompt's samples never sit on both sides of a
split (they share the text and would leak it). Baseline (permuted labels): the same cross-validated probe trained on
the prompts' labels shuffled among prompts (class counts kept), scored against the true labels — what a probe of this
capacity reads from these activations when the labels carry nothing. A permutation null depends only on the number
of positive prompts, so concepts with the same count share one set of permutations per layer.

Cost: per layer, (folds + 1) fits per concept with a probe plus folds × --random-baselines fits per distinct count
of positive prompts; one fit on 400 samples × 1024 dims (musicgen-small) takes ~0.1 s on one core, so 24 layers with
20 baselines run for the better part of an hour — pass fewer --random-baselines for a first look.
"""
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from tqdm import tqdm

from data.concepts import CONCEPTS
from data.contract import generated_dir, read_npy, read_table, table_sha256
from data.stage import InputError
from interp.fitting import QUALITY_COLUMNS
from interp.probes import make_probe
from interp.records import ProbeScores

BRANCHES = ("cond", "uncond")
POOLS = ("mean", "last")
ACTIVATION_COLUMNS = ("prompt_id", "sample", "seed", "branch", "layer", "pool", "row")
MAX_FOLDS = 5
# What make_probe("logreg") is, recorded in the provenance and in every direction's sidecar.
PROBE_SETTINGS = {"C": 1.0, "class_weight": "balanced", "max_iter": 2000, "standardise": True}
STAGE2_FIX = "rerun stage 2 with --generator musicgen --generator-option residuals=cond (or both)"


# -- inputs ------------------------------------------------------------------------------------------------------------

def read_activations(data: Path, prompt_ids, branch: str, pool: str):
    """(samples frame [prompt_id, sample, seed], {layer: float32 [n_samples, dim]}, activation index sha256).

    Rows are ordered by (prompt_id, sample); every prompt must have the same layers and the asked branch/pool.
    """
    folder = generated_dir(data) / "activations"
    if not folder.is_dir():
        raise InputError(f"{folder}: no residual captures — {STAGE2_FIX}")
    frames, blocks = [], []
    for prompt_id in sorted(prompt_ids):
        csv_path, npy_path = folder / f"{prompt_id}.csv", folder / f"{prompt_id}.npy"
        if not npy_path.is_file():
            raise InputError(f"{npy_path}: missing for a generated prompt — {STAGE2_FIX} and --force")
        table = read_table(csv_path, ACTIVATION_COLUMNS, f"{STAGE2_FIX} and --force",
                           dtype={"prompt_id": str, "branch": str, "pool": str})
        vectors = read_npy(npy_path, f"{STAGE2_FIX} and --force")
        if vectors.dtype.kind != "f":
            raise InputError(f"{npy_path}: holds {vectors.dtype} values, not floats — {STAGE2_FIX} and --force")
        if vectors.ndim != 2 or len(vectors) != len(table) or list(table["row"]) != list(range(len(table))):
            raise InputError(f"{csv_path}: its rows do not match {npy_path.name} (shape {list(vectors.shape)}) — "
                             f"{STAGE2_FIX} and --force")
        if (table["prompt_id"] != prompt_id).any():
            raise InputError(f"{csv_path}: names another prompt ({table['prompt_id'].iloc[0]}) — {STAGE2_FIX}")
        if blocks and vectors.shape[1] != blocks[0].shape[1]:
            raise InputError(f"{npy_path}: vectors of width {vectors.shape[1]}, but {frames[0]['prompt_id'].iloc[0]}'s "
                             f"have {blocks[0].shape[1]} (captured by another model?) — {STAGE2_FIX} and --force")
        chosen = table[(table["branch"] == branch) & (table["pool"] == pool)]
        if chosen.empty:
            have = sorted(set(zip(table["branch"], table["pool"])))
            raise InputError(f"{csv_path}: no {branch}/{pool} captures (it has {have}) — pass --branch/--pool "
                             f"from those, or {STAGE2_FIX}")
        frames.append(chosen)
        blocks.append(vectors[chosen["row"].to_numpy()])
    table = pd.concat(frames, ignore_index=True)
    vectors = np.concatenate(blocks).astype(np.float32)
    if not np.isfinite(vectors).all():
        raise InputError(f"{folder}: a capture holds NaN or infinite values (fp16 overflow?) — rerun stage 2 in fp32")
    layers = sorted(table["layer"].unique())
    samples = table[["prompt_id", "sample", "seed"]].drop_duplicates().reset_index(drop=True)
    by_layer = {}
    for layer in layers:
        at_layer = table["layer"].to_numpy() == layer
        keyed = table[at_layer][["prompt_id", "sample"]].reset_index(drop=True)
        if len(keyed) != len(samples) or not keyed.equals(samples[["prompt_id", "sample"]]):
            raise InputError(f"{folder}: layer {layer} is not captured for every sample — {STAGE2_FIX} and --force")
        by_layer[int(layer)] = vectors[at_layer]
    return samples, by_layer, table_sha256(table)


# -- probes ------------------------------------------------------------------------------------------------------------

def fold_count(prompt_labels: np.ndarray) -> int:
    """Folds that put at least one positive and one negative prompt in every test fold (0: no probe)."""
    positives = int(prompt_labels.sum())
    folds = min(MAX_FOLDS, positives, len(prompt_labels) - positives)
    return folds if folds >= 2 else 0


def out_of_fold_scores(vectors: np.ndarray, sample_prompt: np.ndarray, prompt_labels: np.ndarray,
                       seed: int) -> np.ndarray:
    """P(concept) for every sample from a probe that never saw the sample's prompt (NaN: too few prompts)."""
    folds = fold_count(prompt_labels)
    if not folds:
        return np.full(len(vectors), np.nan)
    labels = prompt_labels[sample_prompt].astype(int)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(make_probe("logreg", seed), vectors, labels, groups=sample_prompt, cv=splitter,
                             method="predict_proba")[:, 1]


def probe_direction(vectors: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """Unit direction in raw residual space of a probe fit on every sample: the logit rises along it."""
    probe = make_probe("logreg", seed).fit(vectors, labels.astype(int))
    scaler, logistic = probe[0], probe[-1]
    # score = w · (x − μ) / σ: in raw coordinates the weight is w / σ.
    weight = logistic.coef_[0] / scaler.scale_
    return (weight / np.linalg.norm(weight)).astype(np.float32)


def permutation_scores(vectors, sample_prompt, n_positive: int, n_prompts: int, count: int, seed: int, layer: int):
    """[count, n_samples] out-of-fold scores of probes trained on random prompt labels with n_positive positives."""
    rng = np.random.default_rng([seed, 11, layer, n_positive])
    scores = np.full((count, len(vectors)), np.nan)
    for r in range(count):
        labels = np.zeros(n_prompts, bool)
        labels[rng.choice(n_prompts, n_positive, replace=False)] = True
        scores[r] = out_of_fold_scores(vectors, sample_prompt, labels, seed + r + 1)
    return scores


def score_layers(by_layer: dict, sample_prompt: np.ndarray, prompt_labels: np.ndarray, count: int, seed: int,
                 progress: bool = True) -> tuple[ProbeScores, np.ndarray]:
    """Every concept's out-of-fold scores at every layer, `count` permuted-label baselines each, and the probe
    directions.

    A "clip" of the emergence computation is one (layer, sample): row `position * n_samples + i` is sample i at
    the position-th layer of sorted(by_layer). Decision = P >= 0.5 for the probes and the baselines alike.
    Returns (ProbeScores, directions float32 [n_concepts, n_layers, dim], NaN rows for concepts without a probe).
    """
    layers = sorted(by_layer)
    n_samples, (n_prompts, n_concepts) = len(sample_prompt), prompt_labels.shape
    n_rows = len(layers) * n_samples
    scores = np.full((n_rows, n_concepts), np.nan)
    baseline_scores = np.full((n_concepts, count, n_rows), np.nan)
    directions = np.full((n_concepts, len(layers), by_layer[layers[0]].shape[1]), np.nan, np.float32)
    for position, layer in enumerate(tqdm(layers, desc="layers", disable=not progress)):
        rows = slice(position * n_samples, (position + 1) * n_samples)
        vectors = by_layer[layer]
        shared_null = {}
        for k in range(n_concepts):
            if not fold_count(prompt_labels[:, k]):
                continue
            scores[rows, k] = out_of_fold_scores(vectors, sample_prompt, prompt_labels[:, k], seed)
            positives = int(prompt_labels[:, k].sum())
            if positives not in shared_null:
                shared_null[positives] = permutation_scores(vectors, sample_prompt, positives, n_prompts, count,
                                                            seed, layer)
            baseline_scores[k, :, rows] = shared_null[positives]
            directions[k, position] = probe_direction(vectors, prompt_labels[sample_prompt, k], seed)
    with np.errstate(invalid="ignore"):   # NaN (no probe) is no decision; its rows are skipped anyway
        decisions, baseline_decisions = scores >= 0.5, baseline_scores >= 0.5
    return ProbeScores(scores, decisions, baseline_scores, baseline_decisions), directions


def probe_quality(prompt_labels: np.ndarray, sample_prompt: np.ndarray) -> pd.DataFrame:
    """probe_quality.csv's rows (interp/fitting.py's columns). There is no held-out note set here: every sample is
    scored out of fold, so n_train_* and n_test_* both count samples, the quality of a probe is its emergence.csv
    value at each layer, and the instrument and test_* columns stay empty (the note says why)."""
    rows = []
    for k, concept in enumerate(CONCEPTS):
        positives = int(prompt_labels[:, k].sum())
        negatives = len(prompt_labels) - positives
        positive_samples = int(prompt_labels[sample_prompt, k].sum())
        folds = fold_count(prompt_labels[:, k])
        note = (f"no held-out set: every sample is scored out of fold ({folds} folds grouped by prompt); the probe's "
                "quality per layer is emergence.csv's" if folds else
                f"{positives} positive and {negatives} negative prompts: a grouped cross-validation needs at least 2 "
                "of each")
        rows.append({"concept": concept.name, "group": concept.group, "n_train_positive": positive_samples,
                     "n_train_negative": len(sample_prompt) - positive_samples, "n_test_positive": positive_samples,
                     "n_test_negative": len(sample_prompt) - positive_samples, "note": note})
    return pd.DataFrame(rows).reindex(columns=QUALITY_COLUMNS)
