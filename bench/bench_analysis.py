"""P5: stage 6 at demo size — 28 concepts x 10-11 steps x every yardstick, 1,000 bootstrap resamples, the stage's
default pool of random-concept probes (random instrument subsets) and instrument re-splits, and the known-answer
tables when the data has the generator's truth.

    .venv/bin/python bench/bench_analysis.py [--data data] [--embedder spectral] [--prompts 80] [--samples 2]

Uses the demo's artifacts when <data> has both embedding files for the embedder (results go to a scratch copy
made of symlinks, so the demo's own results are untouched); otherwise synthetic artifacts of the same shape
(80 prompts x 2 samples x 11 steps, the spectral embedder's 248 dimensions, ~400 NSynth-like notes, realised
content as the reference model records it). Prints wall and CPU seconds per phase; the goal is <= 60 s for the
analysis on the 2-core machine.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from test_stage6_data import EMBEDDER, write_synthetic_data  # noqa: E402

from data.stage import run_stage  # noqa: E402
from interp import stage6_probe  # noqa: E402

GOAL_SECONDS = 60.0


def _demo_ready(data: Path, embedder: str) -> bool:
    return all((data / part / "embeddings" / f"{embedder}.npy").is_file() for part in ("generated", "concepts"))


def _scratch_copy(data: Path, scratch: Path) -> Path:
    for part in ("prompts", "generated", "concepts"):
        (scratch / part).symlink_to((data / part).resolve(), target_is_directory=True)
    return scratch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data")
    parser.add_argument("--embedder", default="spectral")
    parser.add_argument("--prompts", type=int, default=80)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--dim", type=int, default=248, help="synthetic embedding dimension (spectral: 248)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_analysis_") as scratch:
        scratch = Path(scratch)
        if _demo_ready(args.data, args.embedder):
            data, embedder = _scratch_copy(args.data, scratch), args.embedder
            source = f"demo artifacts in {args.data}"
        else:
            data = write_synthetic_data(scratch, n_prompts=args.prompts, samples=args.samples,
                                        steps=tuple(range(0, 101, 10)), dim=args.dim, inject={"brass": 40, "reverb": 70},
                                        n_instruments=50, notes_per_instrument=8, write_audio=True)
            embedder = EMBEDDER
            source = (f"synthetic: {args.prompts} prompts x {args.samples} samples x 11 steps, dim {args.dim} "
                      f"(no {args.embedder} embeddings under {args.data})")
        print(f"P5 stage-6 analysis on {source}")
        argv = ["--data", str(data), "--embedder", embedder, "--bootstrap", "1000", "--force"]
        for label, extra in (("analysis (--no-report)", ["--no-report"]), ("analysis + plots + report", [])):
            wall, cpu = time.perf_counter(), time.process_time()
            code = run_stage(stage6_probe.main, stage6_probe.build_parser(), argv + extra)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if code != 0:
                sys.exit(code)
            verdict = " — within the goal" if wall <= GOAL_SECONDS else f" — over the {GOAL_SECONDS:.0f} s goal"
            print(f"{label}: {wall:.1f} s wall, {cpu:.1f} s CPU{verdict}")


if __name__ == "__main__":
    main()
