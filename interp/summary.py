"""The headline numbers of one stage-6 result folder, re-derived from its CSVs: summary.json and a markdown
snippet (summary.md) that the README quotes between `<!-- demo-numbers:start -->` and `<!-- demo-numbers:end -->`
(tests/test_readme_numbers.py checks that the README says exactly what the demo's artifacts give).

    python interp/summary.py data/results/spectral/logreg/x0      # prints the snippet

Every number comes from emergence.csv, emergence_steps.csv, probe_quality.csv, the known-answer tables
(known_answers.csv, known_order.csv, known_commitment.csv) and drift_summary.csv; only the run's settings (probe,
bootstrap, ...) come from the stage-6 record (stage6.json).
"""
import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd

from data.files import read_json, write_json, write_text
from data.stage import first_paragraph
from data.vocabulary import FAMILIES
from interp.yardsticks import kind_of

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
# A transfer this high counts as a probe that reads the generator's output (the goal stage 6 reports against).
TRANSFER_GOAL = 0.80


def _round(value, digits: int = 2):
    return None if value is None or pd.isna(value) else round(float(value), digits)


def _read(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / name, keep_default_na=False, na_values=[""])


def _flag(value) -> bool:
    """A CSV boolean cell (True/False/empty) as read back: empty is False."""
    return str(value).strip().lower() in ("true", "1", "1.0")


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
                "embedder": record.get("embedder", {}).get("embedder"), "model": record.get("embedder", {}).get("model"),
                "baseline": settings.get("baseline"), "bootstrap": settings.get("bootstrap"),
                "random_baselines": settings.get("random_baselines"), "resplits": settings.get("resplits"),
                "alpha": settings.get("alpha"), "yardsticks": list(dict.fromkeys(emergence["yardstick"])),
                "concepts": int(at_first["concept"].nunique())},
    }

    tested = quality.dropna(subset=["test_auroc"]).sort_values(["test_auroc", "concept"])
    no_interval = tested[tested["test_auroc_low"].isna()]["concept"].tolist()
    resplit = quality.dropna(subset=["resplit_auroc_median"]).sort_values(["resplit_auroc_min", "concept"])
    summary["probe_quality"] = {
        "concepts_tested": int(len(tested)),
        "lowest": {"concept": tested.iloc[0]["concept"], "auroc": _round(tested.iloc[0]["test_auroc"])}
        if len(tested) else None,
        "highest": {"concept": tested.iloc[-1]["concept"], "auroc": _round(tested.iloc[-1]["test_auroc"])}
        if len(tested) else None,
        "median_auroc": _round(tested["test_auroc"].median()) if len(tested) else None,
        "no_instrument_interval": no_interval,
        "resplits": int(resplit["resplits"].max()) if len(resplit) else 0,
        "resplit_median_of_medians": _round(resplit["resplit_auroc_median"].median()) if len(resplit) else None,
        "resplit_lowest": {"concept": resplit.iloc[0]["concept"], "min": _round(resplit.iloc[0]["resplit_auroc_min"]),
                           "median": _round(resplit.iloc[0]["resplit_auroc_median"])} if len(resplit) else None,
    }

    transfer = quality.dropna(subset=["transfer_auroc"]).sort_values(["transfer_auroc", "concept"])
    summary["transfer"] = {
        "yardstick": transfer["transfer_yardstick"].iloc[0] if len(transfer) else None,
        "step": int(transfer["transfer_step"].iloc[0]) if len(transfer) else None,
        "concepts": int(len(transfer)), "median": _round(transfer["transfer_auroc"].median()) if len(transfer) else None,
        "at_goal": int((transfer["transfer_auroc"] >= TRANSFER_GOAL).sum()), "goal": TRANSFER_GOAL,
        "lowest": [{"concept": row.concept, "auroc": _round(row.transfer_auroc)} for row in transfer.head(3).itertuples()],
        "nsynth_median_same_concepts": _round(transfer["test_auroc"].median()) if len(transfer) else None,
    }

    summary["emergence"] = {}
    for yardstick, group in steps.groupby("yardstick", sort=False):
        entry = {status: sorted(group[group["status"] == status]["concept"]) for status in
                 ("emerged", "transient", "never", "undefined")}
        entry["emergence_step"] = {row.concept: [int(row.emergence_step), _integer(row.emergence_low),
                                                 _integer(row.emergence_high)]
                                   for row in group.itertuples() if row.status == "emerged"}
        final = group[group["final_significant"].map(_flag) & (group["final_direction"] == "above")]
        entry["final_above_chance"] = int(len(final))
        entry["final_specific"] = int(final["final_specific"].map(_flag).sum())
        summary["emergence"][yardstick] = entry

    summary["significance"] = {"tests": int(emergence["auroc_p"].notna().sum()), "alpha": settings.get("alpha"),
                               "correction": settings.get("multiple_testing", "holm")}
    significant = emergence[emergence["auroc_significant"].map(_flag)]
    summary["significance"].update({direction: int((significant["auroc_direction"] == direction).sum())
                                    for direction in ("above", "below")})

    known = _read(out, "known_answers.csv") if (out / "known_answers.csv").is_file() else pd.DataFrame()
    order = _read(out, "known_order.csv") if (out / "known_order.csv").is_file() else pd.DataFrame()
    if len(known):
        by = order.set_index("probe") if len(order) else pd.DataFrame()
        summary["known_answers"] = {
            "concepts": int(len(known)), "recovered": int(known["recovered"].map(_flag).sum()),
            "inside": int(known["inside"].map(_flag).sum()), "near": int(known["near"].map(_flag).sum()),
            "emerged": int((known["status"] == "emerged").sum()),
            "oracle_recovered": int(known["oracle_recovered"].map(_flag).sum()),
            "missed": sorted(known[~known["recovered"].map(_flag)]["concept"]),
            "order": {name: {"concepts": int(row.n_concepts), "spearman": _round(row.spearman),
                             "low": _round(row.spearman_low), "high": _round(row.spearman_high),
                             "pairs": _integer(row.pairs), "pairs_share": _round(row.pairs_share)}
                      for name, row in by.iterrows()},
        }
    commitment = _read(out, "known_commitment.csv") if (out / "known_commitment.csv").is_file() else pd.DataFrame()
    if len(commitment):
        summary["known_commitment"] = [
            {"concept": row.concept, "strength": row.strength, "truth": _integer(row.truth_step),
             "probe": _integer(row.probe_step), "low": _integer(row.probe_low), "high": _integer(row.probe_high),
             "within_two": _flag(row.within_two)} for row in commitment.itertuples()]

    validation = _read(out, "judge_validation.csv") if (out / "judge_validation.csv").is_file() else pd.DataFrame()
    if len(validation):
        measured = validation.dropna(subset=["auroc"]).sort_values(["auroc", "concept"], ascending=[False, True])
        used = validation["used"].map(_flag)
        summary["judge"] = {
            "judge": (record.get("judge") or {}).get("stem"),
            "shared_with_probes": bool((record.get("judge") or {}).get("shared_with_probes")),
            "mapped": int(validation["evidence_tags"].notna().sum()), "used": int(used.sum()),
            "auroc": {row.concept: [_round(row.auroc), _round(row.auroc_low), _round(row.auroc_high)]
                      for row in measured.itertuples()},
            "median_auroc": _round(measured["auroc"].median()) if len(measured) else None,
            "not_better": sorted(measured[~used.loc[measured.index]]["concept"]),
            "judged_present": {row.concept: int(row.judged_present) for row in validation.itertuples()
                               if _flag(row.used)},
        }

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


def _integer(value):
    return None if value is None or pd.isna(value) else int(value)


def _fixed(value, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _listing(names: list, steps: dict | None = None) -> str:
    if not names:
        return "none"
    if not steps:
        return ", ".join(names)
    return ", ".join(f"{name} ({steps[name][0]} [{_bound(steps[name][1])}, {_bound(steps[name][2])}])" for name in names)


def _bound(value) -> str:
    return "–" if value is None else str(value)


def markdown(summary: dict) -> str:
    """The README snippet: one bullet per headline, every number from `summary`."""
    run, unit = summary["run"], summary["run"]["unit"]
    positions = run["positions"]
    baseline = {"instruments": "random instrument subsets", "notes": "random notes"}.get(run["baseline"],
                                                                                          run["baseline"])
    model = f" ({run['model']})" if run.get("model") and run["model"] != run["embedder"] else ""
    lines = [
        f"- **Run.** {run['prompts']} prompts, {run['clips_per_position']:,} clips per {unit} × {len(positions)} {unit}s "
        f"({positions[0]}–{positions[-1]}, axis `{run['trajectory_axis']}`) = {run['clips']:,} clips of kind "
        f"{run['kind']}; embedder {run['embedder']}{model}, probe {run['probe']}, {run['bootstrap']} bootstrap "
        f"resamples; primary metric AUROC; {run['random_baselines']} random-concept probes ({baseline}) for the "
        f"specificity check.",
    ]
    quality = summary["probe_quality"]
    if quality["highest"]:
        resplit = ""
        if quality["resplit_lowest"]:
            low = quality["resplit_lowest"]
            resplit = (f"; over {quality['resplits']} instrument re-splits the median of the concepts' medians is "
                       f"{_fixed(quality['resplit_median_of_medians'], 2)}, the widest fall {low['concept']} "
                       f"(median {_fixed(low['median'], 2)}, minimum {_fixed(low['min'], 2)})")
        lines.append(
            f"- **Probe quality** (NSynth test AUROC, {quality['concepts_tested']} concepts): from "
            f"{_fixed(quality['lowest']['auroc'], 2)} ({quality['lowest']['concept']}) to {_fixed(quality['highest']['auroc'], 2)} "
            f"({quality['highest']['concept']}), median {_fixed(quality['median_auroc'], 2)}{resplit}.")
    transfer = summary["transfer"]
    if transfer["concepts"]:
        lowest = ", ".join(f"{entry['concept']} {_fixed(entry['auroc'], 2)}" for entry in transfer["lowest"])
        lines.append(
            f"- **Transfer** (AUROC {kind_of(transfer['yardstick']).phrase} at {unit} {transfer['step']}, "
            f"{transfer['concepts']} concepts): median {_fixed(transfer['median'], 2)} (NSynth test median of the "
            f"same concepts {_fixed(transfer['nsynth_median_same_concepts'], 2)}); {transfer['at_goal']} of "
            f"{transfer['concepts']} at or above {transfer['goal']:.2f}; lowest {lowest}.")
    for yardstick, entry in summary["emergence"].items():
        lines.append(
            f"- **Emergence {kind_of(yardstick).phrase}** (AUROC above chance, Holm): emerged "
            f"{len(entry['emerged'])} — {_listing(entry['emerged'], entry['emergence_step'])}; transient "
            f"{len(entry['transient'])} — {_listing(entry['transient'])}; never {len(entry['never'])}; undefined "
            f"{len(entry['undefined'])}. At the final {unit}, {entry['final_specific']} of the "
            f"{entry['final_above_chance']} concepts above chance also beat the random probes' 95th percentile.")
    known = summary.get("known_answers")
    if known:
        order = known["order"]
        parts = []
        for name in ("probes", "oracle"):
            if name in order and order[name]["spearman"] is not None:
                entry = order[name]
                parts.append(f"{name}: Spearman {_fixed(entry['spearman'], 2)} [{_fixed(entry['low'], 2)}, "
                             f"{_fixed(entry['high'], 2)}] over {entry['concepts']} concepts, "
                             f"{_fixed(100 * entry['pairs_share'], 0)} % of {entry['pairs']} pairs ordered as planted")
        lines.append(
            f"- **Known answers** ({known['concepts']} concepts with a planted emergence step): recovered "
            f"{known['recovered']} of {known['concepts']} ({known['inside']} inside the interval, {known['near']} within "
            f"one captured {unit}); the exact posterior through the same rule (the ceiling) {known['oracle_recovered']} "
            f"of {known['concepts']}. Missed: {_listing(known['missed'])}. Order — {'; '.join(parts) or 'undefined'}.")
    for entry in summary.get("known_commitment", []):
        lines.append(
            f"- **Commitment** ({entry['concept']}, strength {entry['strength']}): truth {unit} {_bound(entry['truth'])}, "
            f"probes {_bound(entry['probe'])} [{_bound(entry['low'])}, {_bound(entry['high'])}]; within two {unit}s: "
            f"{'yes' if entry['within_two'] else 'no'}.")
    judged = summary.get("judge")
    if judged:
        listing = ", ".join(f"{name} {_fixed(v[0], 2)} [{_fixed(v[1], 2)}, {_fixed(v[2], 2)}]"
                            for name, v in judged["auroc"].items())
        present = ", ".join(f"{name} {count}" for name, count in judged["judged_present"].items())
        lines.append(
            f"- **Judge** ({judged['judge']}, each trajectory's final clip; {judged['mapped']} of "
            f"{run['concepts']} concepts have evidence tags): AUROC against the exact final content "
            f"{'(median ' + _fixed(judged['median_auroc'], 2) + ') ' if judged['auroc'] else ''}— "
            f"{listing or 'not measured (no exact content)'}; not better than chance: "
            f"{_listing(judged['not_better'])}. {judged['used']} concepts used by the judged-content yardstick; "
            f"trajectories judged to end on them (tag probability at least 0.5): {present or 'none'}."
            + (" Warning: the probes and the judge share one network." if judged["shared_with_probes"] else ""))
    significance = summary["significance"]
    lines.append(f"- **Significance** ({significance['correction'].capitalize()} over {significance['tests']:,} AUROC "
                 f"tests, alpha {significance['alpha']}): {significance['above']} cells above chance, "
                 f"{significance['below']} below.")
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
