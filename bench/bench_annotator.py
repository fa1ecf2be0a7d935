"""The offline annotator's cost grows linearly with prompt length (a 10 MB prompt once ran for minutes).

    .venv/bin/python bench/bench_annotator.py [--base 20000]

Annotates adversarial prompts (negations chained with "and", overlapping phrases, one long word run) of
--base characters and of 10x that, in one run, and prints each time and the 10x/1x ratio: a linear annotator
gives ~10, the previous quadratic one ~100. Stage 1 refuses prompts over 2,000 characters anyway
(data/contract.py MAX_PROMPT_CHARACTERS); this measures the annotator itself.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.prompts.offline_annotator import annotate_offline  # noqa: E402

UNITS = {"negations": "no drums and bass and ", "overlaps": "synth bass line with double bass drums, ",
         "plain words": "a gentle melody over soft textures ", "punctuation": "piano, "}


def seconds_for(text: str, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        annotate_offline(text)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, default=20_000, help="characters of the shorter prompt")
    args = parser.parse_args()
    print(f"{'prompt':<12} {args.base:>10,} chars  {10 * args.base:>10,} chars  ratio")
    for name, unit in UNITS.items():
        short = (unit * (args.base // len(unit) + 1))[:args.base]
        long = (unit * (10 * args.base // len(unit) + 1))[:10 * args.base]
        first, second = seconds_for(short), seconds_for(long)
        print(f"{name:<12} {first:>14.3f} s {second:>14.3f} s  {second / first:5.1f}")


if __name__ == "__main__":
    main()
