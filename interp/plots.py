"""Stage 6 figures (matplotlib, Agg): an emergence curve per concept, a concepts x steps heatmap, the PCA of
the trajectories and the drift curve. Each figure is written atomically as a PNG under <results>/plots/."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

from data.files import atomic_path  # noqa: E402

CURVE_METRICS = (("auroc", "AUROC"), ("balanced_accuracy", "balanced accuracy"))


def _save(figure, path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=80)
    plt.close(figure)


def concept_file(concept: str) -> str:
    return f"concept_{concept}.png"


def plot_concept(table: pd.DataFrame, concept: str, path) -> None:
    """Metric per step with its CI band, the random baselines' mean and 95th percentile, and emergence."""
    from interp.stage6_probe import BASELINE_PERCENTILE
    from interp.statistics import emergence_step
    rows = table[table["concept"] == concept].sort_values("step")
    figure, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(9, 3.4), sharex=True)
    figure.subplots_adjust(left=0.06, right=0.98, bottom=0.15, top=0.84, wspace=0.15)
    for axis, (metric, label) in zip(axes, CURVE_METRICS):
        steps = rows["step"].to_numpy()
        top = rows[f"{metric}_baseline_p{BASELINE_PERCENTILE:.0f}"].to_numpy(float)
        axis.fill_between(steps, rows[f"{metric}_low"].to_numpy(float), rows[f"{metric}_high"].to_numpy(float),
                          color="tab:blue", alpha=0.25, label="concept 95% CI (prompts resampled)")
        axis.plot(steps, rows[metric].to_numpy(float), color="tab:blue", marker="o", ms=3, label="concept probe")
        axis.fill_between(steps, np.zeros(len(steps)), top, color="0.6",
                          alpha=0.25, label=f"random concepts below p{BASELINE_PERCENTILE:.0f}")
        axis.plot(steps, rows[f"{metric}_baseline_mean"].to_numpy(float), color="0.4", ls="--",
                  label="random concepts mean")
        significant = rows[f"{metric}_significant"].to_numpy(bool)
        axis.scatter(steps[significant], rows[metric].to_numpy(float)[significant], color="tab:red", zorder=3, s=14,
                     label="significant (Bonferroni)")
        emerged = emergence_step(steps, rows[f"{metric}_low"].to_numpy(float), top)
        if emerged is not None:
            axis.axvline(emerged, color="tab:green", lw=1.2, label=f"emerges at step {emerged}")
        axis.set_ylim(0, 1.02)
        axis.set_xlabel("step")
        axis.set_title(label)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=6, loc="lower right")
    figure.suptitle(concept)
    _save(figure, path)


def plot_heatmap(table: pd.DataFrame, path, metric: str = "auroc") -> None:
    """Concepts x steps; cells that are not significant after Bonferroni carry a dot."""
    values = table.pivot(index="concept", columns="step", values=metric)
    concepts = list(dict.fromkeys(table["concept"]))
    values = values.reindex(concepts)
    significant = table.pivot(index="concept", columns="step", values=f"{metric}_significant").reindex(concepts)
    figure, axis = plt.subplots(figsize=(1.2 + 0.45 * values.shape[1], 0.8 + 0.28 * len(concepts)))
    figure.subplots_adjust(left=0.25, right=0.95, bottom=0.08, top=0.95)
    image = axis.imshow(values.to_numpy(float), aspect="auto", cmap="RdBu_r", vmin=0, vmax=1)
    rows, columns = np.nonzero(~significant.fillna(False).to_numpy(bool))
    axis.scatter(columns, rows, marker=".", color="black", s=10, label="not significant")
    axis.set_xticks(range(values.shape[1]), [str(step) for step in values.columns], fontsize=7)
    axis.set_yticks(range(len(concepts)), concepts, fontsize=7)
    axis.set_xlabel("step")
    axis.set_title(f"{metric} per concept and step (dot: not significant)", fontsize=9)
    figure.colorbar(image, ax=axis, label=metric)
    _save(figure, path)


def plot_trajectories(clips: pd.DataFrame, embeddings: np.ndarray, path) -> None:
    """The first two principal components of every clip, coloured by step, each trajectory joined in order."""
    components = PCA(n_components=2).fit_transform(np.asarray(embeddings, np.float64))
    figure, axis = plt.subplots(figsize=(6, 5))
    ordered = clips.assign(x=components[:, 0], y=components[:, 1]).sort_values(["prompt_id", "sample", "step"])
    for _, trajectory in ordered.groupby(["prompt_id", "sample"], sort=False):
        axis.plot(trajectory["x"], trajectory["y"], color="0.7", lw=0.5, zorder=1)
    points = axis.scatter(ordered["x"], ordered["y"], c=ordered["step"], cmap="viridis", s=8, zorder=2)
    figure.colorbar(points, ax=axis, label="step")
    axis.set_xlabel("PC 1")
    axis.set_ylabel("PC 2")
    axis.set_title("trajectories in embedding space (PCA)")
    _save(figure, path)


def plot_drift(drift_summary: pd.DataFrame, path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(9, 3))
    figure.subplots_adjust(bottom=0.17, wspace=0.25)
    for axis, name in zip(axes, ("cosine_distance", "l2_distance")):
        axis.fill_between(drift_summary["step"], drift_summary[f"{name}_low"], drift_summary[f"{name}_high"],
                          alpha=0.3)
        axis.plot(drift_summary["step"], drift_summary[name], marker="o", ms=3)
        axis.set_xlabel("step")
        axis.set_title(f"{name.replace('_', ' ')} to the final step")
        axis.grid(alpha=0.3)
    _save(figure, path)


def plot_family_rates(table: pd.DataFrame, path) -> None:
    """TPR and TNR of the instrument-family probes per step: each family thin, their mean bold.

    Threshold metrics, unlike AUROC, say whether a clip is *called* brass; a concept emerging shows as the
    mean TPR rising along the trajectory while TNR holds."""
    from data.vocabulary import FAMILIES
    families = table[table["concept"].isin([f"is_{family}" for family in FAMILIES])]
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    figure.subplots_adjust(bottom=0.17, wspace=0.08)
    for axis, metric in zip(axes, ("tpr", "tnr")):
        by_step = families.pivot_table(index="step", columns="concept", values=metric)
        for concept in by_step.columns:
            axis.plot(by_step.index, by_step[concept], color="0.7", lw=0.8)
        axis.plot(by_step.index, by_step.mean(axis=1), color="C0", lw=2.2, marker="o", ms=4,
                  label=f"mean over {by_step.shape[1]} families")
        axis.set_title(f"instrument families: {metric.upper()} per step")
        axis.set_xlabel("step")
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=8)
    _save(figure, path)


def write_plots(out, table: pd.DataFrame, drift_summary: pd.DataFrame, clips: pd.DataFrame, embeddings) -> dict:
    """Write every figure; returns {role or concept: path relative to `out`}."""
    from pathlib import Path
    folder = Path(out) / "plots"
    files = {"heatmap": "plots/heatmap_auroc.png", "trajectories": "plots/trajectories_pca.png",
             "drift": "plots/drift.png", "families": "plots/family_rates.png"}
    plot_heatmap(table, Path(out) / files["heatmap"])
    plot_family_rates(table, Path(out) / files["families"])
    plot_trajectories(clips, embeddings, Path(out) / files["trajectories"])
    plot_drift(drift_summary, Path(out) / files["drift"])
    for concept in dict.fromkeys(table["concept"]):
        plot_concept(table, concept, folder / concept_file(concept))
        files[concept] = f"plots/{concept_file(concept)}"
    return files
