"""report.html for one stage-6 result folder: self-contained (figures embedded as data URIs) except for the
generated wavs, which it links relatively so the report can be moved together with the data folder.

Layout: settings and definitions, an overview table per concept, the overview figures, a collapsible section
per concept with its curves, and a collapsible section per prompt with an <audio> player for every captured
step beside the probe scores (first sample open, further samples folded) — readable at ~80 prompts x 2
samples x 11 steps because players load nothing until played (preload="none"). The activation-space analysis
(interp/stage6_activations.py) gets a page of its own in the same style (write_activation_report).
"""
import base64
import os
from pathlib import Path

import numpy as np
import pandas as pd

from data.concepts import BY_NAME, CONCEPTS
from data.contract import generated_dir, read_annotated
from data.files import read_json, write_text
from interp import summary
from interp.page import bullets, escape, made_by, page
from interp.yardsticks import kind_of

OTHER_CONCEPTS_SHOWN = 3


def _number(value, digits: int = 2) -> str:
    return "–" if value is None or pd.isna(value) else f"{float(value):.{digits}f}"


def _with_ci(value, low, high) -> str:
    if pd.isna(value):
        return "–"
    return f"{_number(value)} <span class='muted'>[{_number(low)}, {_number(high)}]</span>"


def _image(path: Path, alt: str) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<img alt='{escape(alt)}' src='data:image/png;base64,{encoded}'>"


def _status(row) -> str:
    """'emerged at step 30 [25, 35]', 'transient (steps 10–20)', 'never', or '–'."""
    if row is None or row["status"] == "undefined":
        return "–"
    unit = row["unit"]
    if row["status"] == "emerged":
        step = "–" if pd.isna(row["emergence_step"]) else int(row["emergence_step"])
        low = "–" if pd.isna(row["emergence_low"]) else int(row["emergence_low"])
        high = "–" if pd.isna(row["emergence_high"]) else int(row["emergence_high"])
        return (f"<b>emerged</b> at {unit} {step} <span class='muted'>[{low}, {high}]; above chance over the last "
                f"{int(row['distinct_above'])} of {int(row['n_distinct'])} distinct</span>")
    if row["status"] == "transient":
        return (f"transient <span class='muted'>(above chance {unit}s {int(row['first_above'])}–"
                f"{int(row['last_above'])}, not at the end)</span>")
    return "never"


def _final(row) -> str:
    if row is None or pd.isna(row["final_value"]):
        return "–"
    significance = (f" <span class='yes'>{escape(row['final_direction'])}</span>"
                    if str(row["final_significant"]) == "True" else "")
    specific = " <span class='muted'>(beats random)</span>" if str(row["final_specific"]) == "True" else ""
    return _with_ci(row["final_value"], row["final_low"], row["final_high"]) + significance + specific


def _resplits(row) -> str:
    if pd.isna(row["resplit_auroc_median"]):
        return "–"
    return (f"{_number(row['resplit_auroc_median'])} <span class='muted'>[{_number(row['resplit_auroc_min'])}, "
            f"{_number(row['resplit_auroc_max'])}] of {int(row['resplits'])}</span>")


def _overview(quality: pd.DataFrame, steps: pd.DataFrame, yardsticks: list[str],
              commitment: pd.DataFrame | None = None) -> str:
    """One row per concept: probe quality on NSynth (the test split, and over re-splits: median [min, max]), its
    transfer to the generator's output, then per yardstick the AUROC emergence status and the final position's
    AUROC (with 'above'/'below' when significant), side by side; with --compare, the commitment step of the
    concept's steering runs beside them."""
    auroc = steps.set_index(["yardstick", "concept"])
    header = "".join(f"<th>emergence {escape(kind_of(y).title)}</th>"
                     f"<th>final AUROC {escape(kind_of(y).title)}</th>" for y in yardsticks)
    committed = {}
    if commitment is not None and not commitment.empty:
        header += "<th class='text'>commitment (steering)</th>"
        for concept, group in commitment.groupby("concept"):
            committed[concept] = "; ".join(
                f"{'none' if pd.isna(row.commitment_step) else int(row.commitment_step)} ({escape(str(row.where))}, "
                f"tested {escape(str(row.steps_tested))})" for row in group.itertuples())
    lines = ["<table><tr><th class='text'>concept</th><th class='text'>group</th><th>NSynth test AUROC</th>"
             f"<th>re-splits AUROC</th><th>transfer AUROC</th>{header}<th class='text'>note</th></tr>"]
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
            f"<tr><td class='text'><a href='#concept-{escape(concept)}'>{escape(concept)}</a></td>"
            f"<td class='text'>{escape(row['group'])}</td>"
            f"<td>{_with_ci(row['test_auroc'], row['test_auroc_low'], row['test_auroc_high'])}</td>"
            f"<td>{_resplits(row)}</td>"
            f"<td>{_with_ci(row['transfer_auroc'], row['transfer_auroc_low'], row['transfer_auroc_high'])}</td>"
            f"{''.join(cells)}"
            + (f"<td class='text'>{committed.get(concept, '–')}</td>" if commitment is not None and not commitment.empty
               else "")
            + f"<td class='text'>{escape(note)}</td></tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _known_answers(out: Path, unit: str) -> str:
    """The known-answer section: planted against recovered, per concept, and the order (interp/known_answers.py)."""
    path = out / "known_answers.csv"
    known = pd.read_csv(path, keep_default_na=False, na_values=[""]) if path.is_file() else pd.DataFrame()
    if known.empty:
        return ""
    order = pd.read_csv(out / "known_order.csv", keep_default_na=False, na_values=[""])

    def step(value):
        return "–" if pd.isna(value) else str(int(value))

    rows = ["<table><tr><th class='text'>concept</th><th>planted (onset–completion)</th><th>recovered [interval]</th>"
            "<th class='text'>status</th><th class='text'>recovered?</th><th>oracle [interval]</th>"
            "<th>transfer AUROC</th></tr>"]
    for row in known.itertuples():
        verdict = ("inside" if str(row.inside) == "True" else "near" if str(row.near) == "True" else
                   "<span class='yes'>missed</span>")
        rows.append(f"<tr><td class='text'>{escape(row.concept)}</td><td>{step(row.planted_step)} "
                    f"<span class='muted'>({step(row.planted_onset)}–{step(row.planted_completion)})</span></td>"
                    f"<td>{step(row.emergence_step)} <span class='muted'>({step(row.interval_from)}, "
                    f"{step(row.emergence_high)}]</span></td><td class='text'>{escape(row.status)}</td>"
                    f"<td class='text'>{verdict}</td><td>{step(row.oracle_step)} <span class='muted'>"
                    f"[{step(row.oracle_low)}, {step(row.oracle_high)}]</span></td>"
                    f"<td>{_with_ci(row.transfer_auroc, row.transfer_auroc_low, row.transfer_auroc_high)}</td></tr>")
    rows.append("</table>")
    lines = []
    for entry in order.itertuples():
        if pd.isna(entry.spearman):
            continue
        lines.append(f"{escape(entry.probe)}: Spearman {_number(entry.spearman)} [{_number(entry.spearman_low)}, "
                     f"{_number(entry.spearman_high)}] over {int(entry.n_concepts)} concepts; "
                     f"{_number(entry.pairs_ordered, 1)} of {int(entry.pairs)} pairs ordered as planted")
    recovered = (known["recovered"].astype(str) == "True").sum()
    oracle = (known["oracle_recovered"].astype(str) == "True").sum()
    return f"""<h2>Known answers</h2>
<p class="muted">The generator planted when each concept emerges: the planted {escape(unit)} is the first from which the exact
posterior's AUROC against the final content stays at or above 0.75 (generated/truth_tables/emergence_truth.csv). The
recovered {escape(unit)} is the probe's emergence {escape(unit)} against the final realised content, with its interval widened
down to just after the captured {escape(unit)} before its lower bound; <i>inside</i> = the planted {escape(unit)} lies in it,
<i>near</i> = within one captured {escape(unit)} of the recovered one. The oracle is the exact posterior put through the same
rule (the ceiling).</p>
<p><b>Recovered {recovered} of {len(known)}</b> (oracle {oracle} of {len(known)}). Order — {'; '.join(lines) or 'undefined'}.</p>
{''.join(rows)}"""


def _judge(out: Path, record: dict) -> str:
    """The judge's section: what it is, the shared-representation warning, and its validation per concept."""
    facts = record.get("judge")
    path = out / "judge_validation.csv"
    if not facts or not path.is_file():
        return ""
    table = pd.read_csv(path, keep_default_na=False, na_values=[""])
    warning = (f"<p class='yes'>Warning: {escape(facts.get('warning'))}.</p>" if facts.get("shared_with_probes")
               else "")
    rows = ["<table><tr><th class='text'>concept</th><th class='text'>evidence tags</th><th>AUROC vs exact content "
            "[CI]</th><th>positive trajectories</th><th>judged present</th><th class='text'>status</th></tr>"]
    for row in table.itertuples():
        rows.append(f"<tr><td class='text'>{escape(row.concept)}</td>"
                    f"<td class='text'>{escape(row.evidence_tags)}</td>"
                    f"<td>{_with_ci(row.auroc, row.auroc_low, row.auroc_high)}</td><td>{escape(row.n_positive)}</td>"
                    f"<td>{escape(row.judged_present)} of {escape(row.n_trajectories)}</td>"
                    f"<td class='text'>{escape(row.status)}</td></tr>")
    rows.append("</table>")
    used = int(table["used"].astype(str).eq("True").sum())
    return f"""<h2>The judge</h2>
<p class="muted">The judge <b>{escape(facts.get('stem'))}</b> tagged each trajectory's final clip (embeddings/judge_generated.py);
data/judge_tags.csv maps its tags to concepts (written from the tags' meanings), a concept's score is its evidence tags'
best probability and it is judged present at the tagger's own 0.5. Where the generator knows its exact final content the
judge's AUROC against it is shown with a 95% prompt-bootstrap CI; a concept whose CI reaches 0.5, or which has no
evidence tag, is unjudgeable and holds no positive in the judged-content yardstick. {used} concepts are used.</p>
{warning}{''.join(rows)}"""


def _sample_table(rows: pd.DataFrame, asked: list[str], out: Path, data: Path, unit: str) -> str:
    others = [concept.name for concept in CONCEPTS if concept.name not in asked and concept.name in rows]
    header = "".join(f"<th>{escape(name)}</th>" for name in asked)
    lines = [f"<table><tr><th>{escape(unit)}</th><th class='text'>audio</th>{header}"
             f"<th class='text'>highest other concepts</th></tr>"]
    rows = rows.sort_values("step")
    asked_values = rows[asked].to_numpy(float)
    other_values = rows[others].to_numpy(float)
    for i, (step, path) in enumerate(zip(rows["step"], rows["path"])):
        link = Path(os.path.relpath(generated_dir(data) / path, out)).as_posix()
        asked_cells = "".join(f"<td>{_number(value)}</td>" for value in asked_values[i])
        finite = np.flatnonzero(np.isfinite(other_values[i]))
        top = finite[np.argsort(-other_values[i][finite], kind="stable")[:OTHER_CONCEPTS_SHOWN]]
        top_text = ", ".join(f"{escape(others[j])} {_number(other_values[i][j])}" for j in top)
        lines.append(f"<tr><td>{int(step)}</td><td class='text'><audio controls preload='none' "
                     f"src='{escape(link)}'></audio></td>{asked_cells}<td class='text'>{top_text}</td></tr>")
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
        parts.append(f"<details id='prompt-{escape(prompt_id)}'><summary><b>{escape(prompt_id)}</b>: "
                     f"{escape(text)} <span class='muted'>[{escape('; '.join(labels))}] asks for: "
                     f"{escape(', '.join(asked) or 'no concept')}</span></summary>{''.join(body)}</details>")
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
        concept_sections.append(f"<details id='concept-{escape(concept)}'><summary><b>{escape(concept)}</b> "
                                f"<span class='muted'>{escape(description)}</span></summary>{image}</details>")
    overview_figures = [("families", f"Instrument families: TPR and TNR per {unit}")]
    overview_figures += [(f"heatmap_{yardstick}", f"AUROC per concept and {unit}, {kind_of(yardstick).title}")
                         for yardstick in yardsticks]
    overview_figures += [("trajectories", "Trajectories (PCA)"), ("drift", f"Drift to the final {unit}")]
    figures = "".join(f"<h3>{escape(title)}</h3>{_image(out / plot_files[key], title)}"
                      for key, title in overview_figures if key in plot_files)
    level = 100 * (1 - float(settings.get("alpha", 0.05)))
    yardstick_text = " ".join(f"<i>{escape(name)}</i>: {escape(kind_of(name).description)}." for name in yardsticks)
    if record.get("distinct_by") == "content":
        distinct_text = (f"Consecutive {unit}s whose realised content is the same in every trajectory (to 1e-6: the "
                         f"generator has committed to the same clips) count as one <i>distinct</i> {unit}.")
    else:
        distinct_text = (f"Consecutive {unit}s whose clips have the same embedding in every trajectory (to 1e-5, "
                         f"relative) count as one <i>distinct</i> {unit}.")
    baseline = settings.get("baseline", "notes")
    baseline_text = ("random instrument subsets with as many positive and negative instruments as each concept's train "
                     "split in turn (every part of a mix counted)" if baseline == "instruments" else
                     "random notes with as many positive and negative notes as each concept's train split in turn")
    generation = read_json(generated_dir(data) / "generation.json")
    summary_json = out / summary.SUMMARY_JSON
    findings = read_json(summary_json) if summary_json.is_file() else summary.summarise(out, record)
    body = f"""<h1>When do concepts emerge?</h1>
<div class="headline"><h2>Headline</h2>
{made_by(generation, settings.get('kind'))}
<p>Embedder <b>{escape(embedder.get('embedder'))}</b> ({escape(embedder.get('model'))}), probe <b>{escape(settings.get('probe'))}</b>,
clips of kind <b>{escape(settings.get('kind'))}</b>, trajectory axis <b>{escape(axis_name)}</b> (positions are {escape(unit)}s).</p>
{bullets(summary.markdown(findings))}
</div>
<p>{escape(settings.get('bootstrap'))} bootstrap resamples, {escape(settings.get('random_baselines'))} random-concept probes,
{escape(settings.get('resplits'))} instrument re-splits, alpha {escape(settings.get('alpha'))}, seed {escape(settings.get('seed'))}.</p>
<p class="muted">Yardsticks — {yardstick_text}
<b>Primary metric: AUROC</b>, declared before the run; its null is "no information": the labels are exchangeable between
prompts (a prompt's samples are correlated, so whole prompts are exchanged), and its p-value comes from the exact mean and
variance of AUROC under that permutation (normal tail; no random draws, so it does not move with the seed).
<b>Holm over all {escape(record.get('n_tests'))} AUROC tests</b> (concepts × {escape(unit)}s × yardsticks); a significant value is marked
<i>above</i> or <i>below</i> chance. Accuracy, TPR, TNR and balanced accuracy are secondary: values with intervals, no
tests. Intervals are {level:.0f}% percentile bootstraps: clip metrics resample prompts, NSynth test metrics resample
instruments (a mix counts for every instrument it sounds; no interval when one side of the test split has a single
instrument). {distinct_text} Status: <b>emerged</b> = AUROC significantly above chance from some distinct {escape(unit)} to the
end, <i>transient</i> = above somewhere but not at the end, <i>never</i> = never above. The <b>emergence {escape(unit)}</b> of an
emerged concept is the first {escape(unit)} from which its AUROC stays at least half way from chance to its final value; its
interval is that {escape(unit)} over the same prompt resamples. <b>Transfer</b>: the probe's AUROC against the generator's exact
final content at the last {escape(unit)}. Secondary specificity check: the random-concept probes are {baseline_text}, probed with the
same family; a value <i>beats random</i> when it exceeds their {float(settings.get('random_percentile', 95)):g}th percentile.</p>
<h2>Overview</h2>
{_overview(quality, steps, yardsticks, commitment)}
{_known_answers(out, unit)}
{_judge(out, record)}
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
"""
    title = f"Musicologist — {generation.get('generator')} / {embedder.get('embedder')} / {settings.get('probe')}"
    path = out / "report.html"
    write_text(path, page(title, body))
    return path


def write_activation_report(out, steps: pd.DataFrame, branch: str, pool: str, generation: dict, unit: str,
                            heatmap: str) -> Path:
    """<out>/report.html of the activation-space probes: what was probed, the heatmap (`heatmap`: its path
    relative to out) and per concept its emergence status and final value, as in the embedding-space overview."""
    out = Path(out)
    auroc = steps[steps["metric"] == "auroc"].assign(unit=unit)
    rows = []
    for _, row in auroc.iterrows():
        rows.append(f"<tr><td class='text'>{escape(row['concept'])}</td><td class='text'>{_status(row)}</td>"
                    f"<td>{_final(row)}</td><td class='text'>{escape(row['note'])}</td></tr>")
    title = f"Musicologist — residual-stream probes ({generation.get('generator')}, {generation.get('model')})"
    body = f"""<h1>Residual-stream probes by {escape(unit)}</h1>
<div class="headline"><h2>Headline</h2>
{made_by(generation)}
<p>{escape(branch)} rows of the classifier-free-guidance batch, {escape(pool)}-pooled over positions; {len(auroc)} concepts,
{int((auroc["status"] == "emerged").sum())} emerged, {int((auroc["status"] == "transient").sum())} transient.</p>
</div>
<p class="muted">One linear probe per concept and {escape(unit)} on the residual stream of the generator, cross-validated
with folds grouped by prompt; metrics against the prompt annotations with prompt-bootstrap CIs; the AUROC tested against
"no information" (labels exchanged between prompts, exact permutation moments), Holm over every AUROC p-value in
emergence.csv; secondary specificity check: the same probe trained on permuted prompt labels. A {escape(unit)} is
<i>above</i> when its AUROC is significantly above chance; <b>emerged</b> = above from some {escape(unit)} to the last one,
at the {escape(unit)} where the AUROC first stays half way to its final value.</p>
<h2>AUROC per concept and {escape(unit)}</h2>
{_image(out / heatmap, "AUROC per concept and " + unit)}
<h2>Concepts</h2>
<table><tr><th class='text'>concept</th><th class='text'>emergence (AUROC)</th><th>last-{escape(unit)} AUROC</th>
<th class='text'>note</th></tr>
{"".join(rows)}
</table>
"""
    path = out / "report.html"
    write_text(path, page(title, body))
    return path


def write_block_report(out, steps: pd.DataFrame, generation: dict, heatmap: str) -> Path:
    """<out>/report.html of the block probes of a denoising backend (the organism): the (concept, block) x step
    heatmap and per concept and block its emergence status and final value, as in write_activation_report."""
    out = Path(out)
    auroc = steps[(steps["metric"] == "auroc") & steps["final_value"].notna()].assign(unit="step")
    rows = []
    for _, row in auroc.sort_values(["concept", "block"], kind="stable").iterrows():
        rows.append(f"<tr><td class='text'>{escape(row['concept'])}</td><td>{int(row['block'])}</td>"
                    f"<td class='text'>{_status(row)}</td><td>{_final(row)}</td></tr>")
    emerged = auroc[auroc["status"] == "emerged"]
    title = f"Musicologist — block probes ({generation.get('generator')}, {generation.get('model')})"
    body = f"""<h1>Block probes by denoising step</h1>
<div class="headline"><h2>Headline</h2>
{made_by(generation)}
<p>Every block's output, mean-pooled over its tokens; {auroc["concept"].nunique()} concepts with a probe,
{emerged["concept"].nunique()} readable in some block (emerged).</p>
</div>
<p class="muted">One linear probe per concept, block and step, cross-validated with folds grouped by trajectory, scored
against the final realised content (what each trajectory ends on) with trajectory-bootstrap CIs; the AUROC tested
against "no information", Holm over every (block, step, concept) AUROC p-value; secondary specificity check: the same
probe trained on permuted labels. <b>emerged</b> = above chance from some step to the last one, at the step where the
AUROC first stays half way to its final value.</p>
<h2>AUROC per concept, block and step</h2>
{_image(out / heatmap, "AUROC per concept, block and step")}
<h2>Concepts by block</h2>
<table><tr><th class='text'>concept</th><th>block</th><th class='text'>emergence (AUROC)</th>
<th>last-step AUROC</th></tr>
{"".join(rows)}
</table>
"""
    path = out / "report.html"
    write_text(path, page(title, body))
    return path
