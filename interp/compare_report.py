"""The report's interventions section for stage 6 --compare: the commitment figure, the HTML section (commitment
beside emergence, the per-intervention table, interchange tables, audio side by side) and the files of compare/.
The numbers come from interp/compare.py's tables."""
import base64
import html
import os
from pathlib import Path

import numpy as np
import pandas as pd

from data.files import atomic_path, read_json, write_csv, write_text
from interp.compare import clock_words
from interp.page import made_by
from interp.plots import DPI, LEGEND_SIZE, new_figure

AUDIO_PAIRS_SHOWN = 2


def plot_commitment(interventions: pd.DataFrame, commitment: pd.DataFrame, path: Path, axis_unit: str = "step",
                    clock: str = "denoising_step", same_axis: bool = True) -> None:
    """Effect beyond the random baseline per start step k (a tick of `clock`), per concept; commitment marked, and
    emergence too when it lies on the same axis (`same_axis`; MusicGen's emergence is a layer, its k a generated
    position: the emergence layer is then named in the title, not drawn)."""
    clock = clock_words(clock)
    steered = interventions[(interventions["direction"] != "random")] if "effect" in interventions else interventions[:0]
    steered = steered[steered["effect"].notna()] if "effect" in steered else steered
    concepts = list(dict.fromkeys(steered["concept"])) or ["(none)"]
    figure = new_figure(figsize=(max(9.0, 3.6 * len(concepts)), 3.6))
    axes = figure.subplots(1, len(concepts), squeeze=False)
    for axis, concept in zip(axes[0], concepts):
        rows = steered[steered["concept"] == concept].sort_values("from_step")
        if not rows.empty:
            steps = rows["from_step"].to_numpy(float)
            axis.fill_between(steps, rows["effect_low"].to_numpy(float), rows["effect_high"].to_numpy(float),
                              color="tab:orange", alpha=0.3, label="95% CI (prompts resampled)")
            axis.plot(steps, rows["effect"].to_numpy(float), color="tab:orange", marker="o", ms=3,
                      label="concept − random direction")
        axis.axhline(0.0, color="0.5", lw=0.8)
        info = commitment[commitment["concept"] == concept] if not commitment.empty else commitment
        if len(info):
            emerged, committed = info.iloc[0]["emergence_step"], info.iloc[0]["commitment_step"]
            if not pd.isna(emerged) and same_axis:
                axis.axvline(float(emerged), color="tab:blue", ls="--", lw=1,
                             label=f"emergence ({axis_unit} {int(emerged)})")
            if not pd.isna(committed):
                axis.axvline(float(committed), color="tab:red", ls=":", lw=1.5,
                             label=f"commitment ({clock} {int(committed)})")
            if not same_axis:
                concept = f"{concept} (emergence: {axis_unit} {'never' if pd.isna(emerged) else int(emerged)})"
        axis.set_title(concept, fontsize=11)
        axis.set_xlabel(f"steering from {clock} k on")
        axis.tick_params(labelsize=9)
        axis.legend(fontsize=LEGEND_SIZE, loc="best")
    axes[0][0].set_ylabel("Δ P(target) beyond random", fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.1)


def _number(value, digits: int = 2) -> str:
    return "–" if value is None or pd.isna(value) else f"{float(value):+.{digits}f}" if digits < 0 else \
        f"{float(value):.{digits}f}"


def _ci(row, name: str) -> str:
    if name not in row or pd.isna(row[name]):
        return "–"
    return (f"{float(row[name]):+.3f} <span class='muted'>[{float(row[f'{name}_low']):+.3f}, "
            f"{float(row[f'{name}_high']):+.3f}]</span>")


def section_html(tables: dict, out: Path, generated: Path, image_uri: str, axis_unit: str = "step") -> str:
    """The report's section: what made the clips (generated/generation.json), commitment beside emergence, the
    per-intervention table, and audio side by side."""
    escape = html.escape
    commitment, interventions, pairs = tables["commitment"], tables["interventions"], tables["pairs"]
    clock = clock_words(tables.get("clock", "denoising_step"))
    generation = read_json(Path(generated) / "generation.json")
    lines = ["<h2 id='interventions'>Interventions: when is a concept committed?</h2>", made_by(generation, warn=False),
             f"<p class='muted'>Each intervened clip is paired with the unintervened clip of the same prompt, sample "
             f"and seed, and both are scored by the concept probes at {axis_unit} {tables['scored_step']}. Effect = "
             "change of P(target) under the concept's direction minus the mean change under random directions of "
             f"the same norm; intervals resample prompts. The commitment step is the last start {escape(clock)} k "
             "from which steering still moves the target beyond that baseline; emergence is a "
             f"{escape(axis_unit)} of the trajectory.</p>",
             "<table><tr><th class='text'>concept</th><th>emergence " + escape(axis_unit) + "</th><th>commitment "
             + escape(clock) + "</th><th class='text'>start " + escape(clock) + "s tried</th><th class='text'>moved "
             "beyond baseline</th><th class='text'>monotone</th><th class='text'>strength / place</th></tr>"]
    for _, row in commitment.iterrows():
        emerged = "never" if pd.isna(row["emergence_step"]) else int(row["emergence_step"])
        committed = "none" if pd.isna(row["commitment_step"]) else int(row["commitment_step"])
        lines.append(f"<tr><td class='text'>{escape(str(row['concept']))}</td><td>{emerged}</td><td>{committed}</td>"
                     f"<td class='text'>{escape(str(row['steps_tested']))}</td>"
                     f"<td class='text'>{escape(str(row['steps_beyond']) or '–')}</td>"
                     f"<td class='text'>{'yes' if row['monotone'] else 'no'}</td>"
                     f"<td class='text'>{escape(str(row['strength']))} / {escape(str(row['where']))}</td></tr>")
    lines.append("</table>")
    if image_uri:
        lines.append(f"<img alt='commitment curves' src='{image_uri}'>")
    lines.append("<table><tr><th class='text'>intervention</th><th>pairs</th><th>Δ P(target)</th>"
                 "<th>effect vs random</th><th>log-odds shift</th><th>family KL(int ‖ ref)</th><th>off-target mean |Δ|</th>"
                 "<th>embedding distance</th><th class='text'>audio guard</th></tr>")
    for _, row in interventions.iterrows():
        lines.append(f"<tr><td class='text'>{escape(str(row['intervention']))}</td><td>{int(row['n_pairs'])}</td>"
                     f"<td>{_ci(row, 'target_delta')}</td><td>{_ci(row, 'effect')}</td>"
                     f"<td>{_ci(row, 'log_odds_shift')}</td><td>{_ci(row, 'family_kl')}</td>"
                     f"<td>{_number(row.get('off_target_mean_abs_delta'), 3)}</td>"
                     f"<td>{_ci(row, 'embedding_distance')}</td>"
                     f"<td class='text'>{escape(str(row.get('audio_guard', '')))}</td></tr>")
    lines.append("</table>")
    lines.extend(interchange_html(tables.get("interchange")))
    lines.append("<details><summary>Listen: unintervened and intervened clips side by side</summary><table>"
                 "<tr><th class='text'>intervention</th><th class='text'>prompt / sample</th>"
                 "<th class='text'>unintervened</th><th>P(target)</th><th class='text'>intervened</th>"
                 "<th>P(target)</th></tr>")
    for identifier, chosen in pairs.groupby("intervention", sort=False):
        for _, pair in chosen.head(AUDIO_PAIRS_SHOWN).iterrows():
            links = [Path(os.path.relpath(generated / pair[column], out)).as_posix() for column in ("path_ref", "path")]
            lines.append(f"<tr><td class='text'>{escape(identifier)}</td><td class='text'>{escape(pair['prompt_id'])} "
                         f"/ {int(pair['sample'])}</td><td class='text'><audio controls preload='none' "
                         f"src='{escape(links[0])}'></audio></td><td>{pair['target_score_ref']:.2f}</td>"
                         f"<td class='text'><audio controls preload='none' src='{escape(links[1])}'></audio></td>"
                         f"<td>{pair['target_score']:.2f}</td></tr>")
    lines.append("</table></details>")
    return "\n".join(lines)


def interchange_html(table: pd.DataFrame | None) -> list[str]:
    """Per interchange (A, B, op): a components x layers table of the log-odds shift, CI below each value."""
    if table is None or table.empty:
        return []
    lines = []
    for (source, target, op), group in table.groupby(["concept_a", "concept_b", "op"], sort=False):
        layers = sorted(group["layer"].unique())
        lines.append(f"<h3>Interchange {html.escape(source)} → {html.escape(target)} ({html.escape(op)}): "
                     "log-odds shift logit P(B) − logit P(A), intervened − reference</h3>"
                     "<table><tr><th class='text'>component</th>"
                     + "".join(f"<th>layer {int(layer)}</th>" for layer in layers) + "</tr>")
        # A heatmap in the table itself: orange towards B, blue away from it, saturated at the largest |shift|.
        scale = max(float(np.nanmax(np.abs(group["log_odds_shift"].to_numpy(float)))), 1e-12) \
            if group["log_odds_shift"].notna().any() else 1.0
        for component, rows in group.groupby("component", sort=False):
            cells = {}
            for _, row in rows.iterrows():
                value = float(row["log_odds_shift"])
                shade = "" if not np.isfinite(value) else (
                    f" style='background: rgba({'230,120,20' if value > 0 else '40,110,220'},"
                    f"{0.6 * abs(value) / scale:.2f})'")
                cells[int(row["layer"])] = f"<td{shade}>{_ci(row, 'log_odds_shift')}</td>"
            lines.append(f"<tr><td class='text'>{html.escape(component)}</td>"
                         + "".join(cells.get(int(layer), "<td>–</td>") for layer in layers) + "</tr>")
        lines.append("</table>")
    return lines


def write_outputs(folder: Path, tables: dict, generated: Path, report_dir: Path, axis_unit: str = "step") -> None:
    """CSVs, the figure and the report section (links relative to report_dir, where report.html lives)."""
    folder = Path(folder)
    for name in ("interventions", "effects", "commitment", "pairs", "interchange"):
        write_csv(folder / f"{name}.csv", tables[name])
    clock = tables.get("clock", "denoising_step")
    plot_commitment(tables["interventions"], tables["commitment"], folder / "commitment.png", axis_unit, clock,
                    same_axis=clock == tables.get("axis", clock))
    uri = "data:image/png;base64," + base64.b64encode((folder / "commitment.png").read_bytes()).decode("ascii")
    write_text(folder / "section.html", section_html(tables, Path(report_dir), Path(generated), uri, axis_unit))
