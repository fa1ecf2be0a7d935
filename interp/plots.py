"""Stage 6 figures (matplotlib, Agg): an emergence curve per concept (every yardstick), a concepts x positions
heatmap per yardstick, the PCA of the trajectories and the drift curve. Each figure is written atomically as a
PNG under <results>/plots/. The axis word ("step", "layer") comes from the trajectory axis stage 2 recorded.

Figures are matplotlib `Figure`s on their own Agg canvas (new_figure), never pyplot's: importing this module
leaves pyplot's backend alone (a notebook that imports the stage keeps its inline figures)."""
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

from data.files import atomic_path
from data.identifiers import safe_name
from data.vocabulary import FAMILIES
from interp.yardsticks import kind_of


def new_figure(**options):
    """A figure on its own Agg canvas (what pyplot's Agg backend would give, without touching pyplot)."""
    # matplotlib is imported when a figure is drawn, not with the stage: an up-to-date rerun never draws one.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(**options)
    FigureCanvasAgg(figure)
    return figure


# Figures are drawn ~9 inches wide at 100 dpi and shown at the page's full width (~1170 px), so an 8-point
# legend reads at ~14 px. bbox_inches="tight" keeps every title and label inside the PNG.
DPI = 100
LEGEND_SIZE = 8


def _save(figure, path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.1)


def concept_file(concept: str) -> str:
    """A concept's figure file name (data/identifiers.py's rule: the name comes from a table)."""
    return safe_name(f"concept_{concept}.png", "figure file", f"concept {concept!r}",
                     "concept names come from data/concepts.py")


def heatmap_file(yardstick: str) -> str:
    return "heatmap_auroc.png" if yardstick == "prompt" else f"heatmap_auroc_{yardstick}.png"


def plot_concept(table: pd.DataFrame, steps: pd.DataFrame, concept: str, path, unit: str) -> None:
    """Left: AUROC, the primary metric, per position with its CI band for every yardstick, chance, the random
    probes' 95th percentile (the secondary specificity check), the positions significantly above chance after
    Holm, and the emergence step with its interval beside the status. Right: balanced accuracy (secondary: value
    and CI only)."""
    figure = new_figure(figsize=(11, 4.2))
    axes = figure.subplots(1, 2, sharex=True)
    figure.subplots_adjust(left=0.06, right=0.98, bottom=0.13, top=0.86, wspace=0.15)
    status = steps[steps["concept"] == concept].set_index("yardstick")
    for yardstick, rows in table[table["concept"] == concept].groupby("yardstick", sort=False):
        kind = kind_of(yardstick)
        rows = rows.sort_values("step")
        positions = rows["step"].to_numpy()
        for axis, metric in zip(axes, ("auroc", "balanced_accuracy")):
            axis.fill_between(positions, rows[f"{metric}_low"].to_numpy(float), rows[f"{metric}_high"].to_numpy(float),
                              color=kind.colour, alpha=0.2)
            axis.plot(positions, rows[metric].to_numpy(float), color=kind.colour, marker="o", ms=3,
                      label=f"probe {kind.phrase} (CI: prompts resampled)")
        axis = axes[0]
        axis.plot(positions, rows["auroc_random_p95"].to_numpy(float), color=kind.colour, ls=":", lw=1,
                  label=f"random probes p95 ({yardstick})")
        significant = rows["auroc_significant"].fillna(False).to_numpy(bool)
        axis.scatter(positions[significant], rows["auroc"].to_numpy(float)[significant], color="tab:red", zorder=3,
                     s=14)
        found = status.loc[yardstick] if yardstick in status.index else None
        if found is not None and found["status"] == "emerged" and not pd.isna(found["emergence_step"]):
            low = found["emergence_low"] if not pd.isna(found["emergence_low"]) else found["emergence_step"]
            high = found["emergence_high"] if not pd.isna(found["emergence_high"]) else positions[-1]
            axis.axvspan(low, high, color=kind.colour, alpha=0.12, lw=0)
            axis.axvline(found["emergence_step"], color=kind.colour, lw=1.2, ls="--",
                         label=f"emerges at {unit} {int(found['emergence_step'])} [{int(low)}, {int(high)}] ({yardstick})")
        elif found is not None:
            axis.plot([], [], " ", label=f"{yardstick}: {found['status']}")
    for axis, title in zip(axes, ("AUROC (primary)", "balanced accuracy (secondary)")):
        axis.axhline(0.5, color="0.5", lw=0.8)
        axis.set_ylim(0, 1.02)
        axis.set_xlabel(unit)
        axis.set_title(title)
        axis.grid(alpha=0.3)
        # Below the axes, so that no legend hides a curve.
        axis.legend(fontsize=LEGEND_SIZE, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    figure.suptitle(f"{concept} (red: AUROC significantly different from chance, Holm)")
    _save(figure, path)


def plot_heatmap(table: pd.DataFrame, path, unit: str, metric: str = "auroc") -> None:
    """Concepts x positions for one yardstick; cells that are not significant after Holm carry a dot."""
    values = table.pivot(index="concept", columns="step", values=metric)
    concepts = list(dict.fromkeys(table["concept"]))
    values = values.reindex(concepts)
    significant = table.pivot(index="concept", columns="step", values=f"{metric}_significant").reindex(concepts)
    # At least 9 inches wide so that it shows at full width without its labels blown up.
    figure = new_figure(figsize=(max(9.0, 2.5 + 0.45 * values.shape[1]), 1.2 + 0.3 * len(concepts)))
    axis = figure.subplots()
    image = axis.imshow(values.to_numpy(float), aspect="auto", cmap="RdBu_r", vmin=0, vmax=1)
    rows, columns = np.nonzero(~significant.fillna(False).to_numpy(bool))
    axis.scatter(columns, rows, marker=".", color="black", s=10, label="not significant")
    axis.set_xticks(range(values.shape[1]), [str(step) for step in values.columns], fontsize=9)
    axis.set_yticks(range(len(concepts)), concepts, fontsize=9)
    axis.set_xlabel(unit)
    yardstick = table["yardstick"].iloc[0]
    axis.set_title(f"{metric} per concept and {unit} {kind_of(yardstick).phrase} (dot: not significant)", fontsize=11)
    figure.colorbar(image, ax=axis, label=metric)
    _save(figure, path)


def plot_trajectories(clips: pd.DataFrame, embeddings: np.ndarray, path, unit: str) -> None:
    """The first two principal components of every clip, coloured by position, each trajectory joined in order."""
    # The exact solver: with svd_solver="auto" scikit-learn picks a randomized SVD for this shape (fewer than 10x as
    # many clips as dimensions), unseeded, so the figure (and report.html, which embeds it) changed from run to run.
    components = PCA(n_components=2, svd_solver="full").fit_transform(np.asarray(embeddings, np.float64))
    figure = new_figure(figsize=(9, 6))
    axis = figure.subplots()
    ordered = clips.assign(x=components[:, 0], y=components[:, 1]).sort_values(["prompt_id", "sample", "step"])
    for _, trajectory in ordered.groupby(["prompt_id", "sample"], sort=False):
        axis.plot(trajectory["x"], trajectory["y"], color="0.7", lw=0.5, zorder=1)
    points = axis.scatter(ordered["x"], ordered["y"], c=ordered["step"], cmap="viridis", s=8, zorder=2)
    figure.colorbar(points, ax=axis, label=unit)
    axis.set_xlabel("PC 1")
    axis.set_ylabel("PC 2")
    axis.set_title("trajectories in embedding space (PCA)")
    _save(figure, path)


def plot_drift(drift_summary: pd.DataFrame, path, unit: str) -> None:
    figure = new_figure(figsize=(11, 3.6))
    axes = figure.subplots(1, 2)
    figure.subplots_adjust(bottom=0.17, wspace=0.25)
    for axis, name in zip(axes, ("cosine_distance", "l2_distance")):
        axis.fill_between(drift_summary["step"], drift_summary[f"{name}_low"], drift_summary[f"{name}_high"],
                          alpha=0.3)
        axis.plot(drift_summary["step"], drift_summary[name], marker="o", ms=3)
        axis.set_xlabel(unit)
        axis.set_title(f"{name.replace('_', ' ')} to the final {unit}")
        axis.grid(alpha=0.3)
    _save(figure, path)


def plot_family_rates(table: pd.DataFrame, path, unit: str) -> None:
    """TPR and TNR of the instrument-family probes per position, one row per yardstick: each family thin,
    their mean bold. Threshold metrics, unlike AUROC, say whether a clip is *called* brass; a concept
    emerging shows as the mean TPR rising along the trajectory while TNR holds."""
    families = table[table["concept"].isin([f"is_{family}" for family in FAMILIES])]
    yardsticks = list(dict.fromkeys(families["yardstick"]))
    figure = new_figure(figsize=(11, 3.6 * len(yardsticks)))
    axes = figure.subplots(len(yardsticks), 2, sharey=True, squeeze=False)
    figure.subplots_adjust(bottom=0.17 / len(yardsticks), wspace=0.08, hspace=0.45)
    for row, yardstick in enumerate(yardsticks):
        for axis, metric in zip(axes[row], ("tpr", "tnr")):
            by_step = families[families["yardstick"] == yardstick].pivot_table(index="step", columns="concept",
                                                                               values=metric)
            for concept in by_step.columns:
                axis.plot(by_step.index, by_step[concept], color="0.7", lw=0.8)
            axis.plot(by_step.index, by_step.mean(axis=1), color=kind_of(yardstick).colour, lw=2.2,
                      marker="o", ms=4, label=f"mean over {by_step.shape[1]} families")
            axis.set_title(f"families: {metric.upper()} per {unit} {kind_of(yardstick).phrase}", fontsize=11)
            axis.set_xlabel(unit)
            axis.set_ylim(-0.02, 1.02)
            axis.grid(alpha=0.3)
        axes[row][0].legend(loc="upper left", fontsize=LEGEND_SIZE)
    _save(figure, path)


def figure_files(concepts, yardsticks) -> dict:
    """{role or concept: path relative to the result folder} of every figure write_plots makes."""
    files = {"trajectories": "plots/trajectories_pca.png", "drift": "plots/drift.png",
             "families": "plots/family_rates.png"}
    files.update({f"heatmap_{yardstick}": f"plots/{heatmap_file(yardstick)}" for yardstick in yardsticks})
    files.update({concept: f"plots/{concept_file(concept)}" for concept in concepts})
    return files


def write_plots(out, table: pd.DataFrame, steps: pd.DataFrame, drift_summary: pd.DataFrame, clips: pd.DataFrame,
                embeddings, unit: str) -> dict:
    """Write every figure; returns figure_files()."""
    out = Path(out)
    concepts = list(dict.fromkeys(table["concept"]))
    files = figure_files(concepts, list(dict.fromkeys(table["yardstick"])))
    for yardstick, rows in table.groupby("yardstick", sort=False):
        plot_heatmap(rows, out / files[f"heatmap_{yardstick}"], unit)
    plot_family_rates(table, out / files["families"], unit)
    plot_trajectories(clips, embeddings, out / files["trajectories"], unit)
    plot_drift(drift_summary, out / files["drift"], unit)
    for concept in concepts:
        plot_concept(table, steps, concept, out / files[concept], unit)
    return files
