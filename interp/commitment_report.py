"""The commitment search's files: its two tables, the figure and the report's section (data/ARTIFACTS.md,
"Commitment search"). The numbers come from interp/commitment_search.py's ConceptSearch records."""
from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
import pandas as pd

from data.files import atomic_path, write_csv, write_text
from interp.compare import beyond
from interp.page import made_by
from interp.plots import DPI, LEGEND_SIZE, new_figure

SEARCH_COLUMNS = ["concept", "strength", "method", "commitment_step", "commitment_low", "commitment_high",
                  "steps_evaluated", "n_prompts", "n_samples", "n_random_directions", "note"]
CURVE_COLUMNS = ["concept", "strength", "method", "from_step", "asked_by", "effect", "effect_low", "effect_high",
                 "beyond", "concept_change", "random_change", "n_trajectories", "switched", "sign_errors",
                 "attenuation"]
COLOURS = {"probe": "tab:orange", "truth": "tab:blue"}
READER_TEXT = {"probe": "the stage-6 probe's P(concept)", "truth": "the realised content (the truth)"}
# What one tick of a generator's intervention clock is called (DEVELOPERS.md, glossary).
CLOCK_WORDS = {"denoising_step": "sampler step", "generated_position": "generated position"}


def clock_word(clock: str) -> str:
    return CLOCK_WORDS.get(clock, clock.replace("_", " "))


def _step(value) -> object:
    return pd.NA if value is None else int(value)


def attenuation(search, step: int) -> float:
    """The probe's effect over the truth's at one step: how much of the realised change the probe registers."""
    truth = search.effects.get("truth", {}).get(step)
    probe = search.effects["probe"][step]
    return probe.effect / truth.effect if truth is not None and truth.effect != 0 else np.nan


def note(search, reader: str, clock: str) -> str:
    setting, steps = search.setting, search.steps
    where = setting.where if isinstance(setting.where, str) else "blocks " + ",".join(map(str, setting.where))
    parts = [f"read by {search.reader_text.get(reader, READER_TEXT[reader])}; {clock} clock, {where}",
             f"bisection asked {';'.join(map(str, search.asked[reader]))}"]
    found = search.violations[reader]
    parts.append("monotone at every evaluated step" if not found else "not monotone: " + ", ".join(found))
    first = search.effects[reader][steps[0]]
    if search.commitment[reader] is None and beyond(first.low, first.high, -search.setting.strength):
        parts.append(f"at k={steps[0]} the effect lies beyond the baseline on the other side ({first.effect:+.3f} "
                     f"[{first.low:+.3f}, {first.high:+.3f}]): steering along this direction moves the concept the "
                     "opposite way; a strength of the other sign searches that side")
    low, high, none = search.interval[reader]
    if none > 0:
        parts.append(f"{100 * none:.1f}% of resamples find no step beyond the baseline")
    if reader == "probe" and "truth" in search.readers:
        first = steps[0]
        truth = search.effects["truth"][first]
        parts.append(f"the probe reads {attenuation(search, first):.2f} of the realised effect at k={first} "
                     f"({search.effects['probe'][first].effect:+.3f} vs {truth.effect:+.3f})")
        switched = sum(count for count, _ in search.switched.values())
        errors = sum(wrong for _, wrong in search.switched.values())
        if switched:
            parts.append(f"sign errors: {errors} of {switched} concept-steered runs whose realised concept changed "
                         f"({100 * errors / switched:.1f}%)")
    return "; ".join(parts)


def tables(searches, clock: str = "denoising_step") -> tuple[pd.DataFrame, pd.DataFrame]:
    """commitment_search.csv and commitment_curve.csv (data/ARTIFACTS.md)."""
    rows, curve = [], []
    clock = clock_word(clock)
    for search in searches:
        steps = search.steps
        for reader in search.readers:
            low, high, _ = search.interval[reader]
            rows.append({"concept": search.setting.concept, "strength": search.setting.strength, "method": reader,
                         "commitment_step": _step(search.commitment[reader]), "commitment_low": _step(low),
                         "commitment_high": _step(high), "steps_evaluated": ";".join(map(str, steps)),
                         "n_prompts": len(search.prompt_ids), "n_samples": search.samples,
                         "n_random_directions": search.random_directions, "note": note(search, reader, clock)})
            for step in steps:
                effect = search.effects[reader][step]
                askers = [name for name in search.readers if step in search.asked[name]]
                switched, errors = search.switched.get(step, (pd.NA, pd.NA))
                curve.append({"concept": search.setting.concept, "strength": search.setting.strength,
                              "method": reader, "from_step": step, "asked_by": ";".join(askers),
                              "effect": effect.effect, "effect_low": effect.low, "effect_high": effect.high,
                              "beyond": effect.beyond, "concept_change": effect.concept_change,
                              "random_change": effect.random_change,
                              "n_trajectories": len(search.prompt_ids) * search.samples,
                              "switched": switched if reader == "truth" else pd.NA,
                              "sign_errors": errors if reader == "probe" else pd.NA,
                              "attenuation": attenuation(search, step) if reader == "probe" else np.nan})
    search_table = pd.DataFrame(rows, columns=SEARCH_COLUMNS)
    for column in ("commitment_step", "commitment_low", "commitment_high"):
        search_table[column] = search_table[column].astype("Int64")
    curve_table = pd.DataFrame(curve, columns=CURVE_COLUMNS)
    for column in ("switched", "sign_errors"):
        curve_table[column] = curve_table[column].astype("Int64")
    return search_table, curve_table


def plot(searches, path: Path, clock: str) -> None:
    """Per concept: each reader's effect beyond random at every evaluated k with its interval, and its
    commitment step with the bootstrap interval shaded."""
    figure = new_figure(figsize=(max(9.0, 5.0 * len(searches)), 3.8))
    axes = figure.subplots(1, max(len(searches), 1), squeeze=False)[0]
    for axis, search in zip(axes, searches):
        for reader in search.readers:
            steps = search.steps
            effects = [search.effects[reader][step] for step in steps]
            values = np.array([e.effect for e in effects])
            errors = np.abs(np.array([[e.low for e in effects], [e.high for e in effects]]) - values)
            colour = COLOURS[reader]
            axis.errorbar(steps, values, yerr=errors, color=colour, marker="o", ms=3, lw=1, capsize=2,
                          label=f"{reader}: effect beyond random")
            step, (low, high, _) = search.commitment[reader], search.interval[reader]
            if step is not None:
                axis.axvline(step, color=colour, ls=":", lw=1.5, label=f"{reader} commitment {step}")
                if low is not None and high is not None:
                    axis.axvspan(low - 0.5, high + 0.5, color=colour, alpha=0.12)
        axis.axhline(0.0, color="0.5", lw=0.8)
        axis.set_title(f"{search.setting.concept} (strength {search.setting.strength:g})", fontsize=10)
        axis.set_xlabel(f"steering from {clock} k on", fontsize=9)
        axis.set_ylabel("change beyond random directions", fontsize=9)
        axis.legend(fontsize=LEGEND_SIZE, loc="best")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.1)


def section_html(search_table: pd.DataFrame, curve_table: pd.DataFrame, image_uri: str, clock: str,
                 generation: dict) -> str:
    escape = html.escape
    lines = ["<h2 id='commitment-search'>Commitment step, searched to one " + escape(clock) + "</h2>",
             made_by(generation, warn=False),
             "<p class='muted'>The last start step k from which steering still moves the concept beyond random "
             "directions of the same norm, found by bisection over k. At each k the steered runs are paired by seed "
             "with unsteered ones; a run's change is read by the stage-6 probe (P(concept)) and, where the generator "
             "knows what it made, by the realised content (the truth). Intervals resample prompts and random "
             "directions (every prompt has its own); the commitment step's interval comes from resampling the whole "
             "search (commitment_search.csv, commitment_curve.csv).</p>",
             "<table><tr><th class='text'>concept</th><th>strength</th><th class='text'>read by</th>"
             "<th>commitment " + escape(clock) + "</th><th>interval</th><th class='text'>steps evaluated</th>"
             "<th>prompts × samples</th><th>random directions</th><th class='text'>note</th></tr>"]
    for _, row in search_table.iterrows():
        step = "none" if pd.isna(row["commitment_step"]) else int(row["commitment_step"])
        bounds = [("–" if pd.isna(row[name]) else str(int(row[name]))) for name in ("commitment_low", "commitment_high")]
        lines.append(f"<tr><td class='text'>{escape(row['concept'])}</td><td>{row['strength']:g}</td>"
                     f"<td class='text'>{escape(row['method'])}</td><td>{step}</td><td>[{bounds[0]}, {bounds[1]}]</td>"
                     f"<td class='text'>{escape(row['steps_evaluated'])}</td>"
                     f"<td>{row['n_prompts']} × {row['n_samples']}</td><td>{row['n_random_directions']}</td>"
                     f"<td class='text'>{escape(row['note'])}</td></tr>")
    lines.append("</table>")
    if image_uri:
        lines.append(f"<img alt='commitment search' src='{image_uri}'>")
    lines.append("<details><summary>Effect at every evaluated start step</summary><table><tr>"
                 "<th class='text'>concept</th><th class='text'>read by</th><th>k</th><th>effect</th><th>interval</th>"
                 "<th>concept change</th><th>random change</th><th>beyond</th></tr>")
    for _, row in curve_table.iterrows():
        lines.append(f"<tr><td class='text'>{escape(row['concept'])}</td><td class='text'>{escape(row['method'])}</td>"
                     f"<td>{int(row['from_step'])}</td><td>{row['effect']:+.3f}</td>"
                     f"<td>[{row['effect_low']:+.3f}, {row['effect_high']:+.3f}]</td>"
                     f"<td>{row['concept_change']:+.3f}</td><td>{row['random_change']:+.3f}</td>"
                     f"<td>{'yes' if row['beyond'] else 'no'}</td></tr>")
    lines.append("</table></details>")
    return "\n".join(lines)


def write_outputs(folder: Path, searches, clock: str, generation: dict) -> None:
    """The tables, the figure and the section (naming the generator of `generation`, its generation.json), each
    written atomically."""
    folder = Path(folder)
    search_table, curve_table = tables(searches, clock)
    write_csv(folder / "commitment_search.csv", search_table)
    write_csv(folder / "commitment_curve.csv", curve_table)
    plot(searches, folder / "commitment.png", clock_word(clock))
    uri = "data:image/png;base64," + base64.b64encode((folder / "commitment.png").read_bytes()).decode("ascii")
    write_text(folder / "section.html", section_html(search_table, curve_table, uri, clock_word(clock), generation))


def headlines(searches) -> list[str]:
    lines = []
    for search in searches:
        found = []
        for reader in search.readers:
            step, (low, high, _) = search.commitment[reader], search.interval[reader]
            found.append(f"{reader} {'none' if step is None else step} "
                         f"[{'–' if low is None else low}, {'–' if high is None else high}]")
        lines.append(f"{search.setting.concept}: commitment step {', '.join(found)}; "
                     f"{len(search.steps)} steps evaluated")
    return lines
