"""report.html for one stage-6 result folder: self-contained (figures embedded as data URIs) except for the
generated wavs, which it links relatively so the report can be moved together with the data folder.

Layout: settings and definitions, an overview table per concept, the overview figures, a collapsible section
per concept with its curves, and a collapsible section per prompt with an <audio> player for every captured
step beside the probe scores (first sample open, further samples folded) — readable at ~80 prompts x 2
samples x 11 steps because players load nothing until played (preload="none").
"""
import base64
import html
import os
from pathlib import Path

import numpy as np
import pandas as pd

from data.contract import generated_dir, read_annotated
from data.files import write_text
from interp.concepts import BY_NAME, CONCEPTS

OTHER_CONCEPTS_SHOWN = 3

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


def _overview(quality: pd.DataFrame, steps: pd.DataFrame) -> str:
    auroc = steps[steps["metric"] == "auroc"].set_index("concept")
    balanced = steps[steps["metric"] == "balanced_accuracy"].set_index("concept")
    lines = ["<table><tr><th class='text'>concept</th><th class='text'>group</th><th>NSynth test AUROC</th>"
             "<th>NSynth test bal. acc.</th><th>emerges (AUROC)</th><th>emerges (bal. acc.)</th>"
             "<th>final-step AUROC</th><th>final significant</th><th class='text'>note</th></tr>"]
    for _, row in quality.iterrows():
        concept = row["concept"]
        final = auroc.loc[concept] if concept in auroc.index else None
        emerged = final["emergence_step"] if final is not None else pd.NA
        emerged_balanced = balanced.loc[concept, "emergence_step"] if concept in balanced.index else pd.NA
        note = "; ".join(text for text in (row["note"], None if final is None else final["note"])
                         if isinstance(text, str) and text)
        significant = final is not None and bool(final["final_significant"])
        lines.append(
            f"<tr><td class='text'><a href='#concept-{_escape(concept)}'>{_escape(concept)}</a></td>"
            f"<td class='text'>{_escape(row['group'])}</td>"
            f"<td>{_with_ci(row['test_auroc'], row['test_auroc_low'], row['test_auroc_high'])}</td>"
            f"<td>{_with_ci(row['test_balanced_accuracy'], row['test_balanced_accuracy_low'], row['test_balanced_accuracy_high'])}</td>"
            f"<td>{'never' if pd.isna(emerged) else int(emerged)}</td>"
            f"<td>{'never' if pd.isna(emerged_balanced) else int(emerged_balanced)}</td>"
            f"<td>{'–' if final is None else _with_ci(final['final_value'], final['final_low'], final['final_high'])}</td>"
            f"<td class='{'yes' if significant else 'muted'}'>{'yes' if significant else 'no'}</td>"
            f"<td class='text'>{_escape(note)}</td></tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _sample_table(rows: pd.DataFrame, asked: list[str], out: Path, data: Path) -> str:
    others = [concept.name for concept in CONCEPTS if concept.name not in asked and concept.name in rows]
    header = "".join(f"<th>{_escape(name)}</th>" for name in asked)
    lines = [f"<table><tr><th>step</th><th class='text'>audio</th>{header}"
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


def _prompts(probabilities: pd.DataFrame, annotated: pd.DataFrame, out: Path, data: Path) -> str:
    prompts = annotated.set_index("prompt_id")
    parts = []
    for prompt_id, clips in probabilities.groupby("prompt_id", sort=True):
        labels = prompts.loc[prompt_id, "labels"] if prompt_id in prompts.index else []
        asked = [concept.name for concept in CONCEPTS if concept.prompt_has(labels)]
        text = prompts.loc[prompt_id, "prompt"] if prompt_id in prompts.index else ""
        body = []
        for position, (sample, rows) in enumerate(clips.groupby("sample", sort=True)):
            table = _sample_table(rows, asked, out, data)
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


def write_report(out, data, provenance: dict, plot_files: dict) -> Path:
    """Build <out>/report.html from the CSVs in `out`, the annotated prompts and the figures in plot_files."""
    out, data = Path(out), Path(data)
    quality = pd.read_csv(out / "probe_quality.csv", keep_default_na=False, na_values=[""])
    steps = pd.read_csv(out / "emergence_steps.csv", keep_default_na=False, na_values=[""])
    probabilities = pd.read_csv(out / "probabilities.csv", dtype={"prompt_id": str})
    annotated = read_annotated(data)
    settings = provenance.get("settings", {})
    embedder = provenance.get("inputs", {}).get("generated_sidecar", {})
    concept_sections = []
    for concept in dict.fromkeys(quality["concept"]):
        figure = plot_files.get(concept)
        description = BY_NAME[concept].description if concept in BY_NAME else ""
        image = _image(out / figure, f"emergence curves of {concept}") if figure else ""
        concept_sections.append(f"<details id='concept-{_escape(concept)}'><summary><b>{_escape(concept)}</b> "
                                f"<span class='muted'>{_escape(description)}</span></summary>{image}</details>")
    figures = "".join(f"<h3>{_escape(title)}</h3>{_image(out / plot_files[key], title)}"
                      for key, title in (("families", "Instrument families: TPR and TNR per step"),
                                         ("heatmap", "AUROC per concept and step"),
                                         ("trajectories", "Trajectories (PCA)"),
                                         ("drift", "Drift to the final step")) if key in plot_files)
    level = 100 * (1 - float(settings.get("alpha", 0.05)))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Musicologist — {_escape(embedder.get('embedder'))} / {_escape(settings.get('probe'))}</title>
<style>{STYLE}</style></head><body>
<h1>When do concepts emerge?</h1>
<p>Embedder <b>{_escape(embedder.get('embedder'))}</b> ({_escape(embedder.get('model'))}), probe <b>{_escape(settings.get('probe'))}</b>,
clips of kind <b>{_escape(settings.get('kind'))}</b>; {_escape(settings.get('bootstrap'))} bootstrap resamples,
{_escape(settings.get('random_baselines'))} random-concept baselines per concept, alpha {_escape(settings.get('alpha'))}, seed {_escape(settings.get('seed'))}.</p>
<p class="muted">A prompt is a positive for a concept when its annotation asks for it. Intervals are {level:.0f}% percentile
bootstraps: prompt metrics resample prompts (samples of one prompt are correlated), NSynth test metrics resample
instruments. The p-value compares the concept's value with its random-concept probes (t for one more draw from their
distribution), Bonferroni-corrected over concepts × steps. A concept emerges at the first step from which the lower
interval bound stays above the random probes' {float(settings.get('baseline_percentile', 95)):g}th percentile at every later step.</p>
<h2>Overview</h2>
{_overview(quality, steps)}
<h2>Figures</h2>
{figures}
<h2>Concepts</h2>
{''.join(concept_sections)}
{_interventions_section(out)}
<h2>Prompts</h2>
<p class="muted">Scores are the probe's P(concept) per clip (the cosine similarity for an uncalibrated text probe); the
columns are the concepts the prompt asks for.</p>
{_prompts(probabilities, annotated, out, data)}
</body></html>
"""
    path = out / "report.html"
    write_text(path, page)
    return path
