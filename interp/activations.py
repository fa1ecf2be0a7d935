"""Stage 6 `--space activations`: where is a concept linearly readable in MusicGen's residual stream?

    python interp/stage6_probe.py --data data --space activations [--branch cond] [--pool mean]

Input: the residual captures stage 2 writes with `--generator musicgen --generator-option residuals=cond|both`
(generated/activations/<prompt_id>.npy + .csv, data/ARTIFACTS.md). A sample's vector at layer ℓ is the output of
decoder block ℓ, pooled over the generated positions (`mean`) or taken at the last one (`last`), from the
conditional (`cond`) or unconditional (`uncond`) half of the CFG batch.

Per layer and concept, one linear probe (scikit-learn: StandardScaler + class-balanced LogisticRegression) is
trained on the samples against their prompt's annotation (data/concepts.py `prompt_has`). Scores are out-of-fold:
StratifiedGroupKFold with the prompt as the group, so a prompt's samples never sit on both sides of a split (they
share the text and would leak it). The metrics, prompt-bootstrap CIs, baseline tests, Bonferroni correction and
emergence layer use stage 6's statistics (interp/statistics.py) with the layer as the position, and the tables
have stage 6's columns, so they read like the embedding-space ones. Baseline: the same cross-validated probe trained on permuted prompt
labels (the prompts' labels shuffled among prompts, class counts kept) and scored against the true labels — what a
probe of this capacity reads from these activations when the labels carry nothing. A permutation null depends only
on the number of positive prompts, so concepts with the same count share one set of permutations per layer.

Cost: per layer, (folds + 1) fits per concept with a probe plus folds × --random-baselines fits per distinct count
of positive prompts; one fit on 400 samples × 1024 dims (musicgen-small) takes ~0.1 s on one core, so 24 layers with
20 baselines run for the better part of an hour — pass fewer --random-baselines for a first look.

Outputs in results/activations/<branch>-<pool>/logreg/: probe_quality.csv (why a concept has no probe),
emergence.csv (concept × layer; `step` = layer, `trajectory_axis` = layer), emergence_steps.csv (the emergence
layer), probabilities.csv (out-of-fold scores), directions/<concept>.npy + .json (per layer the unit probe direction
in raw residual space, for steering: data/ARTIFACTS.md), plots/heatmap_auroc.png
(layers × concepts) and report.html (the section), stage6.json (provenance, written last).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from data.concepts import CONCEPTS
from data.contract import generated_dir, read_annotated, read_generated_index, read_table, table_sha256
from data.files import sha256_file, write_csv, write_json, write_npy, write_text
from data.generation import read_generation
from data.stage import InputError

BRANCHES = ("cond", "uncond")
POOLS = ("mean", "last")
ACTIVATION_COLUMNS = ("prompt_id", "sample", "seed", "branch", "layer", "pool", "row")
MAX_FOLDS = 5
PROBE_SETTINGS = {"C": 1.0, "class_weight": "balanced", "max_iter": 2000, "standardise": True}
OUTPUTS = ("probe_quality.csv", "emergence.csv", "emergence_steps.csv", "probabilities.csv")
STAGE2_FIX = "rerun stage 2 with --generator musicgen --generator-option residuals=cond (or both)"


def results_dir(data: Path, branch: str, pool: str) -> Path:
    return Path(data) / "results" / "activations" / f"{branch}-{pool}" / "logreg"


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
        try:
            vectors = np.load(npy_path, allow_pickle=False)
        except ValueError as error:
            raise InputError(f"{npy_path}: unreadable ({str(error).splitlines()[0]}) — {STAGE2_FIX} and --force") \
                from None
        if vectors.ndim != 2 or len(vectors) != len(table) or list(table["row"]) != list(range(len(table))):
            raise InputError(f"{csv_path}: its rows do not match {npy_path.name} (shape {list(vectors.shape)}) — "
                             f"{STAGE2_FIX} and --force")
        if (table["prompt_id"] != prompt_id).any():
            raise InputError(f"{csv_path}: names another prompt ({table['prompt_id'].iloc[0]}) — {STAGE2_FIX}")
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

def make_probe(seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_SETTINGS["C"], class_weight="balanced",
                                                              max_iter=PROBE_SETTINGS["max_iter"],
                                                              random_state=seed))


def fold_count(prompt_labels: np.ndarray) -> int:
    """Folds that put at least one positive and one negative prompt in every test fold (0: no probe)."""
    positives = int(prompt_labels.sum())
    folds = min(MAX_FOLDS, positives, len(prompt_labels) - positives)
    return folds if folds >= 2 else 0


def out_of_fold_scores(vectors: np.ndarray, sample_prompt: np.ndarray, prompt_labels: np.ndarray,
                       seed: int) -> np.ndarray:
    """P(concept) for every sample from a probe that never saw the sample's prompt (NaN: too few prompts)."""
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

    folds = fold_count(prompt_labels)
    if not folds:
        return np.full(len(vectors), np.nan)
    labels = prompt_labels[sample_prompt].astype(int)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(make_probe(seed), vectors, labels, groups=sample_prompt, cv=splitter,
                             method="predict_proba")[:, 1]


def probe_direction(vectors: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """Unit direction in raw residual space of a probe fit on every sample: the logit rises along it."""
    probe = make_probe(seed).fit(vectors, labels.astype(int))
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


# -- the run -----------------------------------------------------------------------------------------------------------

def run(args) -> None:
    """Stage 6 for --space activations (the parser is stage 6's: data, force, bootstrap, random_baselines,
    alpha, seed, no_report, branch, pool)."""
    from threadpoolctl import threadpool_limits
    from tqdm import tqdm

    from data.provenance import Provenance, begin, commit, decide

    branch, pool = getattr(args, "branch", "cond"), getattr(args, "pool", "mean")
    if branch not in BRANCHES or pool not in POOLS:
        raise InputError(f"--branch {branch} / --pool {pool}: choose --branch from {', '.join(BRANCHES)} and --pool "
                         f"from {', '.join(POOLS)}")
    if args.bootstrap < 1 or args.random_baselines < 0 or not 0 < args.alpha < 1:
        raise InputError("--bootstrap must be >= 1, --random-baselines >= 0 and --alpha in (0, 1) — fix the option")
    data = Path(args.data)
    stored = read_generation(data, STAGE2_FIX)
    generation_path, generation = stored.path, stored.record
    if generation.get("residuals", "none") == "none":
        raise InputError(f"{generation_path}: stage 2 captured no residuals (generator "
                         f"{generation.get('generator')!r}) — {STAGE2_FIX}")
    annotated = read_annotated(data)
    index = read_generated_index(data)
    unknown = sorted(set(index["prompt_id"]) - set(annotated["prompt_id"]))
    if unknown:
        raise InputError(f"{generated_dir(data) / 'index'}: prompt {unknown[0]} is not in annotated.csv — rerun "
                         "stage 2 with --force")
    samples, by_layer, activations_sha256 = read_activations(data, index["prompt_id"].unique(), branch, pool)
    out = results_dir(data, branch, pool)
    report = not args.no_report
    outputs = [out / name for name in OUTPUTS] + ([out / "report.html"] if report else [])
    provenance = Provenance(out / "stage6.json", {
        "inputs": {"annotated": sha256_file(data / "prompts" / "annotated.csv"),
                   "generation": sha256_file(generation_path), "activations": activations_sha256},
        "settings": {"space": "activations", "branch": branch, "pool": pool, "probe": "logreg",
                     "probe_settings": PROBE_SETTINGS, "max_folds": MAX_FOLDS, "bootstrap": args.bootstrap,
                     "random_baselines": args.random_baselines, "alpha": args.alpha, "seed": args.seed,
                     "report": report}}, outputs)
    if decide(provenance, args.force, "rerun with --force to replace them"):
        print(f"{out}: up to date with its inputs; pass --force to redo")
        return
    begin(provenance)
    started = time.perf_counter()

    labels_by_prompt = dict(zip(annotated["prompt_id"], annotated["labels"]))
    prompt_ids, sample_prompt = np.unique(samples["prompt_id"].to_numpy(), return_inverse=True)
    prompt_labels = np.array([[concept.prompt_has(labels_by_prompt[p]) for concept in CONCEPTS] for p in prompt_ids],
                             dtype=bool)
    names = [concept.name for concept in CONCEPTS]
    layers = sorted(by_layer)
    n_samples, n_concepts, n_prompts = len(samples), len(CONCEPTS), len(prompt_ids)
    # A "clip" of stage 6's emergence table is one (layer, sample) here.
    n_rows = len(layers) * n_samples
    scores = np.full((n_rows, n_concepts), np.nan)
    baseline_scores = np.full((n_concepts, args.random_baselines, n_rows), np.nan)
    directions = {name: np.full((len(layers), next(iter(by_layer.values())).shape[1]), np.nan, np.float32)
                  for name in names}
    with threadpool_limits(limits=1):
        for position, layer in enumerate(tqdm(layers, desc="layers", disable=getattr(args, "no_progress", False))):
            rows = slice(position * n_samples, (position + 1) * n_samples)
            vectors = by_layer[layer]
            shared_null = {}
            for k, name in enumerate(names):
                if not fold_count(prompt_labels[:, k]):
                    continue
                scores[rows, k] = out_of_fold_scores(vectors, sample_prompt, prompt_labels[:, k], args.seed)
                positives = int(prompt_labels[:, k].sum())
                if positives not in shared_null:
                    shared_null[positives] = permutation_scores(vectors, sample_prompt, positives, n_prompts,
                                                                args.random_baselines, args.seed, layer)
                baseline_scores[k, :, rows] = shared_null[positives]
                directions[name][position] = probe_direction(vectors, prompt_labels[sample_prompt, k], args.seed)

    clip_prompt = np.tile(sample_prompt, len(layers))
    clip_layer = np.repeat(layers, n_samples)
    table = layer_table(scores, baseline_scores, clip_prompt, clip_layer, prompt_labels, names, args.bootstrap,
                        args.alpha, args.seed)
    steps_table = emergence_layers(table)
    quality = probe_quality(prompt_labels, names)
    probabilities = pd.concat([pd.DataFrame({"prompt_id": prompt_ids[clip_prompt],
                                             "sample": np.tile(samples["sample"].to_numpy(), len(layers)),
                                             "step": clip_layer}),
                               pd.DataFrame(scores, columns=names)], axis=1)
    for name, frame in (("probe_quality.csv", quality), ("emergence.csv", table), ("emergence_steps.csv", steps_table),
                        ("probabilities.csv", probabilities)):
        write_csv(out / name, frame)
    write_directions(out / "directions", directions, layers, prompt_labels, names, quality, table, generation,
                     provenance.record, n_samples)
    if report:
        write_report(out, table, steps_table, quality, branch, pool, generation)
    commit(provenance, {"seconds": round(time.perf_counter() - started, 2),
                        "trajectory_axis": {"name": "layer", "unit": "layer", "positions": layers}})
    emerged = steps_table[(steps_table["metric"] == "auroc") & steps_table["emergence_step"].notna()]
    print(f"{out}: {len(emerged)} of {n_concepts} concepts linearly readable (AUROC above the permuted-label "
          f"baseline from some layer on) over {len(layers)} layers of {n_prompts} prompts")


def layer_table(scores, baseline_scores, clip_prompt, clip_layer, prompt_labels, names, n_resamples: int,
                alpha: float, seed: int) -> pd.DataFrame:
    """Concept × layer metrics against the prompt annotations: point value, prompt-bootstrap CI, the permuted-label
    baselines' mean and 95th percentile, the baseline test's p-value and its Bonferroni correction over every
    (concept, layer) tested. Columns as stage 6's emergence.csv (`step` = layer); decision = P ≥ 0.5."""
    from interp import statistics

    level = 1.0 - alpha
    # One set of prompt resamples for every concept and layer: a prompt's samples share its text, so the
    # bootstrap resamples prompts with all their samples.
    prompt_weights = statistics.cluster_weights(prompt_labels.shape[0], n_resamples, np.random.default_rng([seed, 3]))
    rows, baselines = [], {metric: [] for metric in statistics.METRICS}
    for layer in np.unique(clip_layer):
        at_layer = np.flatnonzero(clip_layer == layer)
        prompts_here = clip_prompt[at_layer]
        for k, name in enumerate(names):
            y_true = prompt_labels[prompts_here, k]
            row = {"concept": name, "trajectory_axis": "layer", "step": int(layer),
                   "n_prompts": int(len(np.unique(prompts_here))),
                   "n_positive_prompts": int(len(np.unique(prompts_here[y_true]))), "n_clips": int(len(at_layer))}
            probe_scores = scores[at_layer, k]
            if np.isnan(probe_scores).any():
                rows.append(row)
                continue
            decisions = probe_scores >= 0.5
            point = statistics.point_metrics(y_true, probe_scores, decisions[None])
            resampled = statistics.binary_metrics(prompt_weights[:, prompts_here], y_true, probe_scores, decisions)
            null = baseline_scores[k][:, at_layer]
            null = null[~np.isnan(null).any(axis=1)]
            null_values = statistics.point_metrics(y_true, null, null >= 0.5)
            lows, highs = statistics.percentile_interval(
                np.stack([resampled[metric] for metric in statistics.METRICS]), level)
            for m, metric in enumerate(statistics.METRICS):
                finite = null_values[metric][np.isfinite(null_values[metric])]
                row.update({metric: float(point[metric][0]), f"{metric}_low": lows[m], f"{metric}_high": highs[m],
                            f"{metric}_baseline_mean": float(finite.mean()) if finite.size else np.nan,
                            f"{metric}_baseline_p95": float(np.percentile(finite, 95)) if finite.size else np.nan})
                baselines[metric].append((len(rows), np.pad(finite, (0, baseline_scores.shape[1] - finite.size),
                                                             constant_values=np.nan)))
            rows.append(row)
    table = pd.DataFrame(rows)
    for metric in statistics.METRICS:
        for suffix in ("", "_low", "_high", "_baseline_mean", "_baseline_p95"):
            if f"{metric}{suffix}" not in table:
                table[f"{metric}{suffix}"] = np.nan
        table[f"{metric}_p"] = np.nan
        if baselines[metric]:
            tested = [position for position, _ in baselines[metric]]
            table.loc[tested, f"{metric}_p"] = statistics.baseline_test(
                table.loc[tested, metric].to_numpy(float), np.stack([null for _, null in baselines[metric]]))
        table[f"{metric}_p_bonferroni"] = statistics.bonferroni(table[f"{metric}_p"].to_numpy(float))
        table[f"{metric}_significant"] = table[f"{metric}_p_bonferroni"] < alpha
    table["note"] = ["" if not np.isnan(value) else "no probe for this concept (see probe_quality.csv)"
                     for value in table["auroc"]]
    leading = ["concept", "trajectory_axis", "step", "n_prompts", "n_positive_prompts", "n_clips"]
    return table[leading + [f"{metric}{suffix}" for metric in statistics.METRICS
                            for suffix in ("", "_low", "_high", "_baseline_mean", "_baseline_p95", "_p",
                                           "_p_bonferroni", "_significant")] + ["note"]]


def emergence_layers(table: pd.DataFrame) -> pd.DataFrame:
    """Per concept and metric: the first layer from which the lower CI bound stays above the baselines' 95th
    percentile (empty: never), and the last layer's value, CI and significance."""
    from interp import statistics

    rows = []
    for concept, group in table.groupby("concept", sort=False):
        group = group.sort_values("step")
        final = group.iloc[-1]
        for metric in ("auroc", "balanced_accuracy"):
            layer = statistics.emergence_step(group["step"].to_numpy(), group[f"{metric}_low"].to_numpy(float),
                                              group[f"{metric}_baseline_p95"].to_numpy(float))
            rows.append({"concept": concept, "trajectory_axis": "layer", "metric": metric,
                         "emergence_step": pd.NA if layer is None else layer, "final_step": int(final["step"]),
                         "final_value": final[metric], "final_low": final[f"{metric}_low"],
                         "final_high": final[f"{metric}_high"], "final_baseline_p95": final[f"{metric}_baseline_p95"],
                         "final_significant": bool(final[f"{metric}_significant"]), "note": final["note"]})
    frame = pd.DataFrame(rows)
    frame["emergence_step"] = frame["emergence_step"].astype("Int64")
    return frame


def probe_quality(prompt_labels: np.ndarray, names) -> pd.DataFrame:
    rows = []
    for k, name in enumerate(names):
        positives = int(prompt_labels[:, k].sum())
        folds = fold_count(prompt_labels[:, k])
        note = "" if folds else (f"{positives} positive and {len(prompt_labels) - positives} negative prompts: "
                                 "a grouped cross-validation needs at least 2 of each")
        rows.append({"concept": name, "n_positive_prompts": positives,
                     "n_negative_prompts": len(prompt_labels) - positives, "folds": folds, "note": note})
    return pd.DataFrame(rows)


def write_directions(folder: Path, directions: dict, layers, prompt_labels, names, quality, table, generation,
                     record: dict, n_samples: int) -> None:
    """Per concept with a probe: unit directions [layers, dim] + JSON sidecar (the direction-file format of interp/directions.py)."""
    for k, name in enumerate(names):
        if not quality.at[k, "folds"]:
            continue
        rows = table[table["concept"] == name].sort_values("step")
        write_npy(folder / f"{name}.npy", directions[name])
        write_json(folder / f"{name}.json", {
            "kind": "activation_probe", "concept": name, "positions": [int(layer) for layer in layers],
            "dim": int(directions[name].shape[1]), "unit_norm": True, "space": "activations",
            "branch": record["settings"]["branch"], "pool": record["settings"]["pool"], "probe": "logreg",
            "probe_settings": PROBE_SETTINGS, "n_prompts": int(len(prompt_labels)),
            "n_positive_prompts": int(prompt_labels[:, k].sum()), "n_rows": int(n_samples),
            "auroc": rows["auroc"].tolist(), "auroc_low": rows["auroc_low"].tolist(),
            "auroc_high": rows["auroc_high"].tolist(), "generation_sha256": record["inputs"]["generation"],
            "activations_sha256": record["inputs"]["activations"], "generator": generation.get("generator"),
            "model": generation.get("model"), "checkpoint_sha256": generation.get("checkpoint_sha256"),
            "trained_on": "every sample (final fit after cross-validation)"})


# -- report ------------------------------------------------------------------------------------------------------------

def plot_layer_heatmap(table: pd.DataFrame, path: Path, metric: str = "auroc") -> None:
    """Concepts × layers of the cross-validated metric; a dot marks cells not significant after Bonferroni."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from data.files import atomic_path

    concepts = list(dict.fromkeys(table["concept"]))
    values = table.pivot(index="concept", columns="step", values=metric).reindex(concepts)
    significant = table.pivot(index="concept", columns="step", values=f"{metric}_significant").reindex(concepts)
    figure, axis = plt.subplots(figsize=(1.6 + 0.35 * values.shape[1], 0.8 + 0.28 * len(concepts)))
    figure.subplots_adjust(left=0.25, right=0.95, bottom=0.1, top=0.94)
    image = axis.imshow(values.to_numpy(float), aspect="auto", cmap="RdBu_r", vmin=0, vmax=1)
    rows, columns = np.nonzero(~significant.fillna(False).to_numpy(bool))
    axis.scatter(columns, rows, marker=".", color="black", s=10)
    axis.set_xticks(range(values.shape[1]), [str(layer) for layer in values.columns], fontsize=7)
    axis.set_yticks(range(len(concepts)), concepts, fontsize=7)
    axis.set_xlabel("layer")
    axis.set_title(f"residual-stream probe {metric} per concept and layer (dot: not significant)", fontsize=9)
    figure.colorbar(image, ax=axis, label=metric)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=80)
    plt.close(figure)


def report_section(out: Path, table: pd.DataFrame, steps_table: pd.DataFrame, quality: pd.DataFrame, branch: str,
                   pool: str) -> str:
    """The report's residual-stream section (HTML): what was probed, the heatmap and the emergence layers."""
    import base64
    import html

    plot = out / "plots" / "heatmap_auroc.png"
    plot_layer_heatmap(table, plot)
    image = base64.b64encode(plot.read_bytes()).decode("ascii")
    auroc = steps_table[steps_table["metric"] == "auroc"].set_index("concept")
    lines = [f"<h2>Residual-stream probes by layer ({html.escape(branch)} rows, {html.escape(pool)}-pooled)</h2>",
             "<p>One linear probe per concept and decoder layer on the residual stream, cross-validated with folds "
             "grouped by prompt; metrics against the prompt annotations with prompt-bootstrap CIs; baseline: the "
             "same probe trained on permuted prompt labels. Emergence layer: the first layer from which the AUROC's "
             "lower bound stays above the baseline's 95th percentile.</p>",
             f"<img alt='heatmap' src='data:image/png;base64,{image}'>",
             "<table><tr><th>concept</th><th>positive prompts</th><th>emerges at layer</th><th>last-layer AUROC "
             "[CI]</th><th>significant</th><th>note</th></tr>"]
    for _, row in quality.iterrows():
        found = auroc.loc[row["concept"]] if row["concept"] in auroc.index else None
        emerged = "–" if found is None or pd.isna(found["emergence_step"]) else str(int(found["emergence_step"]))
        value = "–" if found is None or pd.isna(found["final_value"]) else \
            f"{found['final_value']:.2f} [{found['final_low']:.2f}, {found['final_high']:.2f}]"
        significant = "" if found is None else ("yes" if found["final_significant"] else "no")
        lines.append(f"<tr><td>{html.escape(row['concept'])}</td><td>{row['n_positive_prompts']}</td><td>{emerged}"
                     f"</td><td>{value}</td><td>{significant}</td><td>{html.escape(str(row['note']))}</td></tr>")
    lines.append("</table>")
    return "\n".join(lines)


def write_report(out: Path, table, steps_table, quality, branch: str, pool: str, generation: dict) -> None:
    import html

    body = report_section(out, table, steps_table, quality, branch, pool)
    title = f"Musicologist — residual-stream probes ({html.escape(str(generation.get('model')))})"
    write_text(out / "report.html", f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
                                    f"</head><body><h1>{title}</h1>\n{body}\n</body></html>\n")
