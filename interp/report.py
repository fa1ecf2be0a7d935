"""report.html for one stage-6 result folder: self-contained (figures embedded as data URIs) except for the
generated wavs, which it links relatively so the report can be moved together with the data folder.

Layout: settings and definitions, an overview table per concept, the overview figures, a collapsible section
per concept with its curves, and a collapsible section per prompt with an <audio> player for every captured
step beside the probe scores (first sample open, further samples folded) — readable at ~80 prompts x 2
samples x 11 steps because players load nothing until played (preload="none"). The activation-space analysis
(interp/stage6_activations.py) gets a page of its own in the same style (write_activation_report).
"""
import base64
import html
import os
from pathlib import Path

import numpy as np
import pandas as pd

from data.concepts import BY_NAME, CONCEPTS
from data.contract import generated_dir, read_annotated
from data.files import write_text

OTHER_CONCEPTS_SHOWN = 3
YARDSTICK_TITLES = {"prompt": "vs prompts", "content": "vs realised content"}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #f0f0f0; } td.text, th.text { text-align: left; }
details { margin: 0.3em 0; } summary { cursor: pointer; }
img { max-width: 100%; } audio { height: 28px; width: 220px; }
.muted { color: #777; } .yes { color: #a00; font-weight: bold; }
"""


def _escape(value) -> str:
    return html.escape("" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value))


def _number(value, digits: int = 2) -> str:
    return "–" if value is None or pd.isna(value) else f"{float(value):.{digits}f}"


def _with_ci(value, low, high) -> str:
    if pd.isna(value):
        return "–"
    return f"{_number(value)} <span class='muted'>[{_number(low)}, {_number(high)}]</span>"


def _image(path: Path, alt: str) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<img alt='{_escape(alt)}' src='data:image/png;base64,{encoded}'>"


def _status(row) -> str:
    """'emerged at step 30 (3 of 6 distinct)', 'transient (steps 10–20)', 'never', or '–'."""
    if row is None or row["status"] == "undefined":
        return "–"
    unit = row["unit"]
    if row["status"] == "emerged":
        return (f"<b>emerged</b> at {unit} {int(row['emergence_step'])} <span class='muted'>(above over the last "
                f"{int(row['distinct_above'])} of {int(row['n_distinct'])} distinct)</span>")
    if row["status"] == "transient":
        return (f"transient <span class='muted'>(above {unit}s {int(row['first_above'])}–{int(row['last_above'])}, "
                f"not at the end)</span>")
    return "never"


def _final(row) -> str:
    if row is None or pd.isna(row["final_value"]):
        return "–"
    significance = (f" <span class='yes'>{_escape(row['final_direction'])}</span>"
                    if bool(row["final_significant"]) else "")
    return _with_ci(row["final_value"], row["final_low"], row["final_high"]) + significance


def _overview(quality: pd.DataFrame, steps: pd.DataFrame, yardsticks: list[str],
              commitment: pd.DataFrame | None = None) -> str:
    """One row per concept: probe quality on NSynth, then per yardstick the AUROC emergence status and the
    final position's AUROC (with 'above'/'below' when significant), side by side; with --compare, the
    commitment step of the concept's steering runs beside them."""
    auroc = steps[steps["metric"] == "auroc"].set_index(["yardstick", "concept"])
    header = "".join(f"<th>emergence (AUROC) {_escape(YARDSTICK_TITLES.get(y, y))}</th>"
                     f"<th>final AUROC {_escape(YARDSTICK_TITLES.get(y, y))}</th>" for y in yardsticks)
    committed = {}
    if commitment is not None and not commitment.empty:
        header += "<th class='text'>commitment (steering)</th>"
        for concept, group in commitment.groupby("concept"):
            committed[concept] = "; ".join(
                f"{'none' if pd.isna(row.commitment_step) else int(row.commitment_step)} ({_escape(str(row.where))}, "
                f"tested {_escape(str(row.steps_tested))})" for row in group.itertuples())
    lines = ["<table><tr><th class='text'>concept</th><th class='text'>group</th><th>NSynth test AUROC</th>"
             f"<th>NSynth test bal. acc.</th>{header}<th class='text'>note</th></tr>"]
    for _, row in quality.iterrows():
        concept = row["concept"]
        cells, notes = [], [row["note"]]
        for yardstick in yardsticks:
            final = auroc.loc[(yardstick, concept)] if (yardstick, concept) in auroc.index else None
            cells.append(f"<td class='text'>{_status(final)}</td><td>{_final(final)}</td>")
            if final is not None and isinstance(final["note"], str) and final["note"]:
                notes.append(f"{yardstick}: {final['note']}")
        note = "; ".join(text for text in notes if isinstance(text, str) and text)
        lines.append(
            f"<tr><td class='text'><a href='#concept-{_escape(concept)}'>{_escape(concept)}</a></td>"
            f"<td class='text'>{_escape(row['group'])}</td>"
            f"<td>{_with_ci(row['test_auroc'], row['test_auroc_low'], row['test_auroc_high'])}</td>"
            f"<td>{_with_ci(row['test_balanced_accuracy'], row['test_balanced_accuracy_low'], row['test_balanced_accuracy_high'])}</td>"
            f"{''.join(cells)}"
            + (f"<td class='text'>{committed.get(concept, '–')}</td>" if commitment is not None and not commitment.empty
               else "")
            + f"<td class='text'>{_escape(note)}</td></tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _sample_table(rows: pd.DataFrame, asked: list[str], out: Path, data: Path, unit: str) -> str:
    others = [concept.name for concept in CONCEPTS if concept.name not in asked and concept.name in rows]
    header = "".join(f"<th>{_escape(name)}</th>" for name in asked)
    lines = [f"<table><tr><th>{_escape(unit)}</th><th class='text'>audio</th>{header}"
             f"<th class='text'>highest other concepts</th></tr>"]
    rows = rows.sort_values("step")
    asked_values = rows[asked].to_numpy(float)
    other_values = rows[others].to_numpy(float)
    for i, (step, path) in enumerate(zip(rows["step"], rows["path"])):
        link = Path(os.path.relpath(generated_dir(data) / path, out)).as_posix()
        asked_cells = "".join(f"<td>{_number(value)}</td>" for value in asked_values[i])
        finite = np.flatnonzero(np.isfinite(other_values[i]))
        top = finite[np.argsort(-other_values[i][finite], kind="stable")[:OTHER_CONCEPTS_SHOWN]]
        top_text = ", ".join(f"{_escape(others[j])} {_number(other_values[i][j])}" for j in top)
        lines.append(f"<tr><td>{int(step)}</td><td class='text'><audio controls preload='none' "
                     f"src='{_escape(link)}'></audio></td>{asked_cells}<td class='text'>{top_text}</td></tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _prompts(probabilities: pd.DataFrame, annotated: pd.DataFrame, out: Path, data: Path, unit: str) -> str:
    prompts = annotated.set_index("prompt_id")
    parts = []
    for prompt_id, clips in probabilities.groupby("prompt_id", sort=True):
        labels = prompts.loc[prompt_id, "labels"] if prompt_id in prompts.index else []
        asked = [concept.name for concept in CONCEPTS if concept.prompt_has(labels)]
        text = prompts.loc[prompt_id, "prompt"] if prompt_id in prompts.index else ""
        body = []
        for position, (sample, rows) in enumerate(clips.groupby("sample", sort=True)):
            table = _sample_table(rows, asked, out, data, unit)
            if position == 0:
                body.append(f"<p>sample {int(sample)}</p>{table}")
            else:
                body.append(f"<details><summary>sample {int(sample)}</summary>{table}</details>")
        parts.append(f"<details id='prompt-{_escape(prompt_id)}'><summary><b>{_escape(prompt_id)}</b>: "
                     f"{_escape(text)} <span class='muted'>[{_escape('; '.join(labels))}] asks for: "
                     f"{_escape(', '.join(asked) or 'no concept')}</span></summary>{''.join(body)}</details>")
    return "\n".join(parts)


def _interventions_section(out: Path) -> str:
    """Stage 6 --compare's section (interp/compare.py writes it), when this result folder has one."""
    section = Path(out) / "compare" / "section.html"
    return section.read_text(encoding="utf-8") if section.is_file() else ""


def _commitment_search_section(out: Path) -> str:
    """The commitment search's section (interp/commitment_search.py writes it beside this folder's results), when it
    ran; a search run after stage 6 shows here once stage 6 rewrites the report."""
    section = Path(out) / "commitment" / "section.html"
    return section.read_text(encoding="utf-8") if section.is_file() else ""


def write_report(out, data, record: dict, plot_files: dict) -> Path:
    """Build <out>/report.html from the CSVs in `out`, the annotated prompts, the figures in plot_files and the
    stage-6 record (settings, inputs, trajectory_axis, n_tests, yardsticks)."""
    out, data = Path(out), Path(data)
    quality = pd.read_csv(out / "probe_quality.csv", keep_default_na=False, na_values=[""])
    unit = record.get("trajectory_axis", {}).get("unit", "step")
    axis_name = record.get("trajectory_axis", {}).get("name", "")
    steps = pd.read_csv(out / "emergence_steps.csv", keep_default_na=False, na_values=[""]).assign(unit=unit)
    probabilities = pd.read_csv(out / "probabilities.csv", dtype={"prompt_id": str})
    annotated = read_annotated(data)
    settings = record.get("settings", {})
    embedder = record.get("inputs", {}).get("generated_sidecar", {})
    yardsticks = record.get("yardsticks", ["prompt"])
    commitment_csv = out / "compare" / "commitment.csv"  # stage 6 --compare (interp/compare.py)
    commitment = pd.read_csv(commitment_csv) if commitment_csv.is_file() else None
    concept_sections = []
    for concept in dict.fromkeys(quality["concept"]):
        figure = plot_files.get(concept)
        description = BY_NAME[concept].description if concept in BY_NAME else ""
        image = _image(out / figure, f"emergence curves of {concept}") if figure else ""
        concept_sections.append(f"<details id='concept-{_escape(concept)}'><summary><b>{_escape(concept)}</b> "
                                f"<span class='muted'>{_escape(description)}</span></summary>{image}</details>")
    overview_figures = [("families", f"Instrument families: TPR and TNR per {unit}")]
    overview_figures += [(f"heatmap_{yardstick}", f"AUROC per concept and {unit}, {YARDSTICK_TITLES.get(yardstick, yardstick)}")
                         for yardstick in yardsticks]
    overview_figures += [("trajectories", "Trajectories (PCA)"), ("drift", f"Drift to the final {unit}")]
    figures = "".join(f"<h3>{_escape(title)}</h3>{_image(out / plot_files[key], title)}"
                      for key, title in overview_figures if key in plot_files)
    level = 100 * (1 - float(settings.get("alpha", 0.05)))
    if "content" in yardsticks:
        content_text = (f"A clip <i>realises</i> a concept when the concept's prompt rule holds for the labels on which "
                        f"the generator put at least {float(settings.get('realised_mass', 0.5)):g} of its posterior mass "
                        "(the content it actually made). Scored against both, a probe that tracks the realised content "
                        "but not the prompt says the model did not make what was asked; one that tracks neither says the "
                        "probe cannot read the concept.")
    else:
        content_text = ("This generator records no realised content, so the prompt annotations are the only "
                        "yardstick.")
    if record.get("distinct_by") == "content":
        distinct_text = (f"Consecutive {unit}s whose realised content is the same in every trajectory (to 1e-6: the "
                         f"generator has committed to the same clips) count as one <i>distinct</i> {unit}.")
    else:
        distinct_text = (f"Consecutive {unit}s whose clips have the same embedding in every trajectory (to 1e-5, "
                         f"relative) count as one <i>distinct</i> {unit}.")
    baseline = settings.get("baseline", "notes")
    baseline_text = ("random instrument subsets with as many positive and negative instruments as the concept's train "
                     "split (an instrument on the side of most of its notes; every note of a drawn instrument)"
                     if baseline == "instruments" else
                     "random notes with as many positive and negative notes as the concept's train split")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Musicologist — {_escape(embedder.get('embedder'))} / {_escape(settings.get('probe'))}</title>
<style>{STYLE}</style></head><body>
<h1>When do concepts emerge?</h1>
<p>Embedder <b>{_escape(embedder.get('embedder'))}</b> ({_escape(embedder.get('model'))}), probe <b>{_escape(settings.get('probe'))}</b>,
clips of kind <b>{_escape(settings.get('kind'))}</b>, trajectory axis <b>{_escape(axis_name)}</b> (positions are {_escape(unit)}s);
{_escape(settings.get('bootstrap'))} bootstrap resamples, {_escape(settings.get('random_baselines'))} random-concept baselines
per concept, alpha {_escape(settings.get('alpha'))}, seed {_escape(settings.get('seed'))}.</p>
<p class="muted">Yardsticks: a clip is a positive for a concept when its prompt's annotation <i>asks</i> for it. {content_text}
Intervals are {level:.0f}% percentile bootstraps: clip metrics resample prompts (samples of one prompt are correlated),
NSynth test metrics resample instruments (no interval when one side of the test split has a single instrument).
Random concepts are {baseline_text}, probed with the same family. The p-value compares the concept's value with its
random probes (t for one more draw from their distribution); <b>Bonferroni over all {_escape(record.get('n_tests'))} tests</b>
(every metric × concept × {_escape(unit)} × yardstick with a p-value); a significant value is marked <i>above</i> or
<i>below</i> the random probes' mean. A {_escape(unit)} is <i>above</i> when the lower interval bound exceeds the random
probes' {float(settings.get('baseline_percentile', 95)):g}th percentile. {distinct_text} Status: <b>emerged</b> = above from
some {_escape(unit)} to the end (that {_escape(unit)} is the emergence {_escape(unit)}), <i>transient</i> = above somewhere but not
at the end, <i>never</i> = never above.</p>
<h2>Overview</h2>
{_overview(quality, steps, yardsticks, commitment)}
<h2>Figures</h2>
{figures}
<h2>Concepts</h2>
{''.join(concept_sections)}
{_interventions_section(out)}
{_commitment_search_section(out)}
<h2>Prompts</h2>
<p class="muted">Scores are the probe's P(concept) per clip (the cosine similarity for an uncalibrated text probe); the
columns are the concepts the prompt asks for.</p>
{_prompts(probabilities, annotated, out, data, unit)}
</body></html>
"""
    path = out / "report.html"
    write_text(path, page)
    return path


def write_activation_report(out, steps: pd.DataFrame, branch: str, pool: str, generation: dict, unit: str,
                            heatmap: str) -> Path:
    """<out>/report.html of the activation-space probes: what was probed, the heatmap (`heatmap`: its path
    relative to out) and per concept its emergence status and final value, as in the embedding-space overview."""
    out = Path(out)
    auroc = steps[steps["metric"] == "auroc"].assign(unit=unit)
    rows = []
    for _, row in auroc.iterrows():
        rows.append(f"<tr><td class='text'>{_escape(row['concept'])}</td><td class='text'>{_status(row)}</td>"
                    f"<td>{_final(row)}</td><td class='text'>{_escape(row['note'])}</td></tr>")
    title = f"Musicologist — residual-stream probes ({_escape(generation.get('model'))})"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{STYLE}</style></head><body>
<h1>{title}</h1>
<h2>Residual-stream probes by {_escape(unit)} ({_escape(branch)} rows, {_escape(pool)}-pooled)</h2>
<p class="muted">One linear probe per concept and {_escape(unit)} on the residual stream of generator
{_escape(generation.get('generator'))}, cross-validated with folds grouped by prompt; metrics against the prompt
annotations with prompt-bootstrap CIs; baseline: the same probe trained on permuted prompt labels; Bonferroni over
every p-value in emergence.csv. A {_escape(unit)} is <i>above</i> when the AUROC's lower interval bound exceeds the
baseline's 95th percentile; <b>emerged</b> = above from some {_escape(unit)} to the last one.</p>
{_image(out / heatmap, "AUROC per concept and " + unit)}
<table><tr><th class='text'>concept</th><th class='text'>emergence (AUROC)</th><th>last-{_escape(unit)} AUROC</th>
<th class='text'>note</th></tr>
{"".join(rows)}
</table>
</body></html>
"""
    path = out / "report.html"
    write_text(path, page)
    return path
