"""Does a stage-6 status move when only --seed changes? Reruns stage 6 on the demo's artifacts with five seeds and
counts, from the five runs' own emergence_steps.csv and known_answers.csv, the cells that differ from seed 0's.

    .venv/bin/python bench/bench_seed_stability.py [--data data] [--embedder spectral] [--seeds 0 1 2 3 4]

Each run goes to a scratch folder of symlinks to <data>'s prompts, generated and concepts (the demo's own results
are untouched), with the stage's defaults and --no-report (figures do not enter a status). Counted per seed
against seed 0: status cells (yardstick x concept: emerged / transient / never / undefined), emergence steps,
emergence-step interval bounds, final specificity verdicts (the secondary random-probe check), and known-answer
verdicts (recovered or not). The goal is at most 5 % of status cells changed. Writes the counts to
bench/results/seed_stability.json and prints them; the README quotes that file.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from data.files import write_json  # noqa: E402
from data.stage import run_stage  # noqa: E402
from interp import stage6_probe  # noqa: E402

GOAL = 0.05
KEY = ["yardstick", "concept"]


def _scratch(data: Path, folder: Path) -> Path:
    for part in ("prompts", "generated", "concepts"):
        (folder / part).symlink_to((data / part).resolve(), target_is_directory=True)
    return folder


def changed(reference: pd.DataFrame, other: pd.DataFrame, key: list, column: str) -> int:
    """Cells (rows by `key`) whose `column` differs; two empty cells agree."""
    joined = reference.merge(other, on=key, suffixes=("", "_other"))
    return int(_differs(joined[column], joined[f"{column}_other"]).sum())


def _differs(left: pd.Series, right: pd.Series) -> pd.Series:
    return ~((left == right) | (left.isna() & right.isna()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data")
    parser.add_argument("--embedder", default="spectral")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "seed_stability.json")
    args = parser.parse_args()
    runs = {}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="bench_seeds_") as scratch:
            data = _scratch(args.data, Path(scratch))
            wall, cpu = time.perf_counter(), time.process_time()
            code = run_stage(stage6_probe.main, stage6_probe.build_parser(),
                             ["--data", str(data), "--embedder", args.embedder, "--seed", str(seed), "--no-report"])
            if code != 0:
                sys.exit(code)
            out = stage6_probe.results_dir(data, args.embedder, "logreg", "x0")
            read = {name: pd.read_csv(out / name, keep_default_na=False, na_values=[""])
                    for name in ("emergence_steps.csv", "known_answers.csv")}
            runs[seed] = read
            print(f"seed {seed}: {time.perf_counter() - wall:.1f} s wall, {time.process_time() - cpu:.1f} s CPU")
    reference_seed = args.seeds[0]
    reference = runs[reference_seed]
    steps = reference["emergence_steps.csv"]
    cells = len(steps)
    report = {"data": str(args.data), "embedder": args.embedder, "seeds": args.seeds, "status_cells": cells,
              "known_answer_rows": len(reference["known_answers.csv"]), "goal": GOAL, "per_seed": {}}
    differing, bounds, specific = set(), set(), set()
    for seed in args.seeds[1:]:
        other = runs[seed]
        counts = {column: changed(steps, other["emergence_steps.csv"], KEY, column)
                  for column in ("status", "emergence_step", "emergence_low", "emergence_high", "final_specific")}
        counts["recovered"] = changed(reference["known_answers.csv"], other["known_answers.csv"], ["concept"],
                                      "recovered") if len(reference["known_answers.csv"]) else 0
        joined = steps.merge(other["emergence_steps.csv"], on=KEY, suffixes=("", "_other"))
        differing |= set(map(tuple, joined[_differs(joined["status"], joined["status_other"])][KEY].to_numpy()))
        moved = _differs(joined["emergence_low"], joined["emergence_low_other"]) | \
            _differs(joined["emergence_high"], joined["emergence_high_other"])
        bounds |= set(map(tuple, joined[moved][KEY].to_numpy()))
        specific |= set(map(tuple, joined[_differs(joined["final_specific"], joined["final_specific_other"])][KEY]
                            .to_numpy()))
        report["per_seed"][str(seed)] = counts
    report["status_cells_changed"] = len(differing)
    report["emerged_cells"] = int((steps["status"] == "emerged").sum())
    report["interval_cells_changed"] = len(bounds)
    report["specific_cells_changed"] = len(specific)
    report["status_share_changed"] = len(differing) / cells if cells else 0.0
    report["within_goal"] = report["status_share_changed"] <= GOAL
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, report)
    print(json.dumps(report, indent=2))
    print(f"status cells that change with the seed (against seed {reference_seed}): {len(differing)} of {cells} "
          f"({100 * report['status_share_changed']:.1f} %; goal <= {100 * GOAL:.0f} %)")


if __name__ == "__main__":
    main()
