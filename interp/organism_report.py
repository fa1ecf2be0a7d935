"""The model organism analysis read back from its files (interp/organism_analysis.py's outputs): the lines the
README quotes (`summary_lines`, checked against the committed analysis by the tests), the headlines it prints, and
report.html, the analysis's own report section."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from data.contract import read_table
from data.files import write_text
from interp.page import escape, page

READERS = {"activations": "activation probes (earliest block)", "output": "output probes (x0)",
           "oracle": "the organism's exact posterior"}
TARGETS = {"oracle": "the organism's own timing (its exact posterior)", "planted": "the planted timing (the ideal "
           "model's exact posterior on the same seeds)"}
COLUMNS = {
    "readable": ["concept", "activation_site", "activation_step", "activation_low", "activation_high", "output_step",
                 "output_low", "output_high", "oracle_step", "planted_step", "recovered", "recovered_planted"],
    "recovery": ["reader", "target", "n_concepts", "recovered", "share", "share_low", "share_high", "order_concepts",
                 "spearman", "spearman_low", "spearman_high"],
    "commitment": ["concept", "generator", "direction", "truth_step", "truth_low", "truth_high", "probe_step",
                   "probe_low", "probe_high", "within_two", "agree"],
    "content_commitment": ["concept", "generator", "content_commit_step", "content_commit_low", "content_commit_high"],
}
DIRECTIONS = {"mean_difference": "difference of means", "probe": "probe weights",
              "reversed_mean_difference": "difference of means negated", "prior": "prior tilt"}


def _step(value) -> str:
    return "never" if pd.isna(value) else f"{value:g}"


def _interval(step, low, high, missing: str = "never") -> str:
    if pd.isna(step):
        return missing
    return f"{step:g} [{'–' if pd.isna(low) else f'{low:g}'}, {'–' if pd.isna(high) else f'{high:g}'}]"


def _yes(value) -> str:
    return "–" if pd.isna(value) else ("yes" if bool(value) else "no")


def tables(out: Path) -> dict[str, pd.DataFrame]:
    out = Path(out)
    return {name: read_table(out / f"{name}.csv", columns, "rerun interp/organism_analysis.py with --force")
            for name, columns in COLUMNS.items()}


def readable_lines(readable: pd.DataFrame) -> list[str]:
    lines = ["| concept | activations: readable from [95% CI] (earliest block) | output x0 | oracle, organism | "
             "planted (ideal oracle) | recovered: own / planted |", "|---|---|---|---|---|---|"]
    for _, row in readable.iterrows():
        site = "" if pd.isna(row["activation_site"]) else f" ({row['activation_site']})"
        lines.append(f"| {row['concept']} | {_interval(row['activation_step'], row['activation_low'], row['activation_high'])}"
                     f"{site} | {_interval(row['output_step'], row['output_low'], row['output_high'])} | "
                     f"{_step(row['oracle_step'])} | {_step(row['planted_step'])} | "
                     f"{_yes(row['recovered'])} / {_yes(row['recovered_planted'])} |")
    return lines


def recovery_lines(recovery: pd.DataFrame) -> list[str]:
    lines = []
    for _, row in recovery.iterrows():
        text = (f"- {READERS[row['reader']]} against {TARGETS[row['target']]}: {row['recovered']} of "
                f"{row['n_concepts']} concepts recovered ({row['share']:.2f} [{row['share_low']:.2f}, "
                f"{row['share_high']:.2f}])")
        if not pd.isna(row["spearman"]):
            text += (f"; order Spearman {row['spearman']:.2f} [{row['spearman_low']:.2f}, {row['spearman_high']:.2f}]"
                     f" over {row['order_concepts']}")
        lines.append(text + ".")
    return lines


def commitment_lines(commitment: pd.DataFrame, natural: pd.DataFrame) -> list[str]:
    methods = [m for m in ("mean_difference", "probe", "reversed_mean_difference") if m in set(commitment["direction"])]
    header = ["concept", "settles (organism, unsteered)", "settles (ideal)"]
    header += [f"organism, {DIRECTIONS[m]}: truth / probe-read" for m in methods] + ["ideal, prior tilt: truth"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for concept, rows in commitment.groupby("concept", sort=False):
        cells = [concept]
        for generator in ("organism", "ideal"):
            found = natural[(natural["concept"] == concept) & (natural["generator"] == generator)]
            cells.append("–" if found.empty else _interval(found["content_commit_step"].iloc[0],
                                                           found["content_commit_low"].iloc[0],
                                                           found["content_commit_high"].iloc[0]))
        for method in methods:
            row = rows[(rows["generator"] == "organism") & (rows["direction"] == method)].iloc[0]
            cells.append(f"{_interval(row['truth_step'], row['truth_low'], row['truth_high'], 'none')} / "
                         f"{_interval(row['probe_step'], row['probe_low'], row['probe_high'], 'none')}"
                         f" ({'agree' if row['agree'] else 'differ'})")
        ideal = rows[rows["generator"] == "ideal"].iloc[0]
        cells.append(_interval(ideal["truth_step"], ideal["truth_low"], ideal["truth_high"], "none"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def agreement_lines(commitment: pd.DataFrame) -> list[str]:
    """How often the probe on the output agrees with the realised content over the organism's searches."""
    organism = commitment[commitment["agree"].notna()]
    if organism.empty:
        return []
    return [f"commitment: the probe on the output agrees with the realised content (both no step, or within 2 steps) "
            f"in {int(organism['agree'].astype(bool).sum())} of {len(organism)} organism searches"]


def summary_lines(out: Path) -> list[str]:
    """The README's organism-analysis block: the readable table, the recovery shares, the commitment table."""
    found = tables(out)
    return (readable_lines(found["readable"]) + [""] + recovery_lines(found["recovery"]) + [""]
            + commitment_lines(found["commitment"], found["content_commitment"]) + [""]
            + [f"- {line}." for line in agreement_lines(found["commitment"])])


def headlines(out: Path) -> list[str]:
    found = tables(out)
    return [line[2:] for line in recovery_lines(found["recovery"])[:2]] + agreement_lines(found["commitment"])


def markdown_table_html(lines: list[str]) -> str:
    """A markdown table (as summary_lines writes it) as an HTML table."""
    rows = [line.strip("|").split(" | ") for line in lines if line.startswith("|") and not line.startswith("|---")]
    head, body = rows[0], rows[1:]
    html = ["<table><tr>" + "".join(f"<th class='text'>{escape(cell.strip())}</th>" for cell in head) + "</tr>"]
    html += ["<tr>" + "".join(f"<td class='text'>{escape(cell.strip())}</td>" for cell in row) + "</tr>"
             for row in body]
    return "\n".join(html + ["</table>"])


def write_report(out: Path, organism: dict) -> Path:
    """<out>/report.html: the organism analysis's own section (what the README quotes, with its method)."""
    out = Path(out)
    found = tables(out)
    recovery = "".join(f"<li>{escape(line[2:])}</li>" for line in recovery_lines(found["recovery"]))
    model = escape(f"{organism.get('model', 'organism')} (sha256 {str(organism.get('checkpoint_sha256', ''))[:16]}…)")
    body = f"""<h1>The model organism: activation-level known answers</h1>
<div class="headline"><h2>Headline</h2>
<p class="made-by">Generator: the model organism {model}, a tiny StableAudioDiTModel trained here on the planted bank;
every number is scored against its own final realised content (the closed form of what it made).</p>
<ul>{recovery}</ul></div>
<h2>When a concept becomes linearly readable</h2>
<p class="muted">Standardised ridge probes on every block's output (mean over tokens) and on the clean estimate x0, 5
folds over trajectories, per step; "readable from" is the first step from which the out-of-fold AUROC stays at or above
0.75, with a percentile interval over trajectory resamples. Recovered: stage 6's known-answer rule (the target inside the
interval, or within one step). The planted timing is the ideal planted model's exact posterior on the same seeds.</p>
{markdown_table_html(readable_lines(found["readable"]))}
<h2>The commitment step</h2>
<p class="muted">The last start step from which steering still moves the concept beyond random directions of the same
norms, found by bisection to one step (groups of trajectories, each with its own random direction; intervals resample
groups). Steering adds the direction to every block; the truth reads the realised content, the probe a logistic probe
on the final latent. "Settles" is when unsteered trajectories that end with the concept carry it for good (median over
them). The ideal model is steered by tilting its prior: a different intervention, so its step is context, not a
target (commitment_search.csv, commitment_curve.csv).</p>
{markdown_table_html(commitment_lines(found["commitment"], found["content_commitment"]))}
"""
    path = out / "report.html"
    write_text(path, page("Musicologist — model organism analysis", body))
    return path

