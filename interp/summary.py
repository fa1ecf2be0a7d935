"""The headline numbers of one stage-6 result folder, re-derived from its CSVs: summary.json and a markdown
snippet (summary.md) that the README quotes between `<!-- demo-numbers:start -->` and `<!-- demo-numbers:end -->`
(tests/test_readme_numbers.py checks that the README says exactly what the demo's artifacts give).

    python interp/summary.py data/results/spectral/logreg/x0      # prints the snippet

Every number comes from emergence.csv, emergence_steps.csv, probe_quality.csv and drift_summary.csv; only
the run's settings (probe, bootstrap, ...) come from the stage-6 record (stage6.json).
"""
import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd

from data.files import read_json, write_json, write_text
from data.stage import first_paragraph
from data.vocabulary import FAMILIES

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
METRIC_NAMES = {"auroc": "AUROC", "balanced_accuracy": "balanced accuracy", "accuracy": "accuracy", "tpr": "TPR",
                "tnr": "TNR"}
YARDSTICK_PHRASES = {"prompt": "against the prompts", "content": "against the realised content"}


def _round(value, digits: int = 2):
    return None if value is None or pd.isna(value) else round(float(value), digits)


def _read(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / name, keep_default_na=False, na_values=[""])


def summarise(out, record: dict | None = None) -> dict:
    """The headline numbers of the results in `out` (record: the stage-6 record; default out/stage6.json)."""
    out = Path(out)
    record = read_json(out / "stage6.json") if record is None else record
    emergence = _read(out, "emergence.csv")
    steps = _read(out, "emergence_steps.csv")
    quality = _read(out, "probe_quality.csv")
    drift = _read(out, "drift_summary.csv")
    settings = record.get("settings", {})
    axis = record.get("trajectory_axis", {})
    positions = sorted(int(step) for step in emergence["step"].unique())
    prompt_rows = emergence[emergence["yardstick"] == "prompt"]
    at_first = prompt_rows[prompt_rows["step"] == positions[0]]
    summary = {
        "run": {"prompts": int(prompt_rows["n_prompts"].max()), "clips": int(drift["n_clips"].sum()),
                "clips_per_position": int(drift["n_clips"].max()), "positions": positions,
                "trajectory_axis": axis.get("name", str(emergence["trajectory_axis"].iloc[0])),
                "unit": axis.get("unit", "step"), "kind": settings.get("kind"), "probe": settings.get("probe"),
                "embedder": record.get("embedder", {}).get("embedder"), "baseline": settings.get("baseline"),
                "bootstrap": settings.get("bootstrap"), "random_baselines": settings.get("random_baselines"),
                "alpha": settings.get("alpha"), "yardsticks": list(dict.fromkeys(emergence["yardstick"])),
                "concepts": int(at_first["concept"].nunique())},
    }

    tested = quality.dropna(subset=["test_auroc"]).sort_values(["test_auroc", "concept"])
    no_interval = tested[tested["test_auroc_low"].isna()]["concept"].tolist()
    summary["probe_quality"] = {
        "concepts_tested": int(len(tested)),
        "lowest": {"concept": tested.iloc[0]["concept"], "auroc": _round(tested.iloc[0]["test_auroc"])}
        if len(tested) else None,
        "highest": {"concept": tested.iloc[-1]["concept"], "auroc": _round(tested.iloc[-1]["test_auroc"])}
        if len(tested) else None,
        "median_auroc": _round(tested["test_auroc"].median()) if len(tested) else None,
        "no_instrument_interval": no_interval,
    }

    summary["emergence"] = {}
    for (yardstick, metric), group in steps.groupby(["yardstick", "metric"], sort=False):
        entry = {status: sorted(group[group["status"] == status]["concept"]) for status in
                 ("emerged", "transient", "never", "undefined")}
        entry["emergence_step"] = {row.concept: int(row.emergence_step) for row in group.itertuples()
                                   if row.status == "emerged"}
        summary["emergence"].setdefault(yardstick, {})[metric] = entry

    pvalues = emergence[[f"{metric}_p" for metric in METRIC_NAMES]].to_numpy(float)
    summary["significance"] = {"tests": int(np.isfinite(pvalues).sum()), "alpha": settings.get("alpha")}
    for metric in METRIC_NAMES:
        significant = emergence[emergence[f"{metric}_significant"].astype(bool)]
        summary["significance"][metric] = {direction: int((significant[f"{metric}_direction"] == direction).sum())
                                           for direction in ("above", "below")}

    families = prompt_rows[prompt_rows["concept"].isin([f"is_{family}" for family in FAMILIES])]
    by_step = families.groupby("step")[["tpr", "tnr", "auroc"]].mean()
    summary["families"] = {
        "count": int(families["concept"].nunique()),
        "mean_tpr_first": _round(by_step["tpr"].iloc[0]), "mean_tpr_last": _round(by_step["tpr"].iloc[-1]),
        "mean_tnr": _round(families["tnr"].mean()), "mean_auroc": _round(families["auroc"].mean()),
    }

    runs = drift.sort_values("step")
    final_run = runs[runs["distinct_position"] == runs["distinct_position"].iloc[-1]]
    summary["drift"] = {
        "cosine_first": _round(runs["cosine_distance"].iloc[0], 3),
        "distinct_by": record.get("distinct_by"),
        "distinct_positions": int(runs["distinct_position"].nunique()),
        "identical_from": int(final_run["step"].iloc[0]) if len(final_run) > 1 else None,
    }
    return summary


def _fixed(value, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _listing(names: list, steps: dict | None = None) -> str:
    if not names:
        return "none"
    return ", ".join(f"{name} ({steps[name]})" if steps else name for name in names)


def markdown(summary: dict) -> str:
    """The README snippet: one bullet per headline, every number from `summary`."""
    run, unit = summary["run"], summary["run"]["unit"]
    positions = run["positions"]
    baseline = {"instruments": "random instrument subsets", "notes": "random notes"}.get(run["baseline"],
                                                                                          run["baseline"])
    lines = [
        f"- **Run.** {run['prompts']} prompts, {run['clips_per_position']:,} clips per {unit} × {len(positions)} {unit}s "
        f"({positions[0]}–{positions[-1]}, axis `{run['trajectory_axis']}`) = {run['clips']:,} clips of kind "
        f"{run['kind']}; embedder {run['embedder']}, probe {run['probe']}, {run['bootstrap']} bootstrap resamples, "
        f"{run['random_baselines']} random baselines per concept ({baseline}).",
    ]
    quality = summary["probe_quality"]
    if quality["highest"]:
        lines.append(
            f"- **Probe quality** (NSynth test AUROC, {quality['concepts_tested']} concepts): from "
            f"{_fixed(quality['lowest']['auroc'], 2)} ({quality['lowest']['concept']}) to {_fixed(quality['highest']['auroc'], 2)} "
            f"({quality['highest']['concept']}), median {_fixed(quality['median_auroc'], 2)}; no instrument interval (one test "
            f"instrument on a side) for {len(quality['no_instrument_interval'])}: "
            f"{_listing(quality['no_instrument_interval'])}.")
    for yardstick, metrics in summary["emergence"].items():
        for metric, entry in metrics.items():
            lines.append(
                f"- **Emergence ({METRIC_NAMES[metric]}) {YARDSTICK_PHRASES.get(yardstick, yardstick)}**: emerged "
                f"{len(entry['emerged'])} — {_listing(entry['emerged'], entry['emergence_step'])}; transient "
                f"{len(entry['transient'])} — {_listing(entry['transient'])}; never {len(entry['never'])}; undefined "
                f"{len(entry['undefined'])}.")
    significance = summary["significance"]
    cells = "; ".join(f"{METRIC_NAMES[metric]} {significance[metric]['above']} above, "
                      f"{significance[metric]['below']} below" for metric in METRIC_NAMES)
    lines.append(f"- **Significance** (Bonferroni over {significance['tests']:,} tests, alpha {significance['alpha']}): "
                 f"{cells}.")
    families = summary["families"]
    if families["count"]:
        lines.append(
            f"- **Families against the prompts** ({families['count']} family probes): mean TPR "
            f"{_fixed(families['mean_tpr_first'], 2)} at {unit} {positions[0]} → {_fixed(families['mean_tpr_last'], 2)} at {unit} "
            f"{positions[-1]}; mean TNR {_fixed(families['mean_tnr'], 2)}; mean AUROC {_fixed(families['mean_auroc'], 2)}.")
    drift = summary["drift"]
    same = "realised content" if drift["distinct_by"] == "content" else "clip embeddings"
    identical = (f"the same {same} in every trajectory from {unit} {drift['identical_from']} on"
                 if drift["identical_from"] is not None else f"no two consecutive {unit}s with the same {same}")
    lines.append(f"- **Drift.** Cosine distance to the final {unit}: {_fixed(drift['cosine_first'], 3)} at {unit} "
                 f"{positions[0]}; {identical}: {drift['distinct_positions']} distinct of {len(positions)} {unit}s.")
    return "\n".join(lines) + "\n"


def write_summary(out, record: dict) -> dict:
    summary = summarise(out, record)
    write_json(Path(out) / SUMMARY_JSON, summary)
    write_text(Path(out) / SUMMARY_MD, markdown(summary))
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=first_paragraph(__doc__))
    parser.add_argument("results", type=Path, help="a stage-6 result folder (data/results/<embedder>/<probe>/<kind>)")
    parser.add_argument("--json", action="store_true", help="print summary.json instead of the markdown")
    args = parser.parse_args(argv)
    if not (args.results / "stage6.json").is_file():
        print(f"error: {args.results / 'stage6.json'}: missing — run stage 6 first", file=sys.stderr)
        sys.exit(2)
    summary = summarise(args.results)
    print(json.dumps(summary, indent=2) if args.json else markdown(summary), end="" if not args.json else "\n")


if __name__ == "__main__":
    main()
