"""O1: what steering hooks and activation captures cost on the model organism, in one run on one torch thread.

The organism is the committed checkpoint (diffusion/organism/planted/, or --checkpoint DIR) sampled through the
stage 2 backend (`--generator organism`): one 50-step sampler call of --samples trajectories, with
- plain: no hook, no observer;
- steered: a unit-norm direction per (step, block) added on every block from step 0 (the steering hooks of
  diffusion/interventions/steering.py, as `--intervene` applies them; the size of the vector does not change the
  cost);
- captured: every block's output recorded at every step (interp/directions.py's recorder) and the clean estimate
  and noisy latent captured at every step by the stage 2 observer;
each over plain. Goal <= 1.03. Runs rotate (plain, steered, captured, then the next order) so that drifting load
hits every side alike; ratios are of medians, of wall time and of this process's CPU time (steadier on a shared
machine).

    .venv/bin/python bench/bench_organism.py [--samples 16 --repeats 9]
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT)]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data.directions import Direction  # noqa: E402
from diffusion import load_generator  # noqa: E402
from diffusion.base import KINDS, Conditioning, TrajectoryObserver  # noqa: E402
from diffusion.interventions.hooks import hooks_applied  # noqa: E402
from diffusion.interventions.records import Site, Steering  # noqa: E402
from interp.directions import block_recorder  # noqa: E402

SECONDS = 1.0


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="organism checkpoint (unset: the committed one)")
    parser.add_argument("--samples", type=int, default=16, help="trajectories per sampler call")
    parser.add_argument("--repeats", type=int, default=9, help="calls per side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    generator = load_generator("organism", model=args.checkpoint, preset=None, steps=None, device=None, dtype=None,
                               decode_dtype=None)
    generator.prepare()
    blocks = len(generator.model.transformer.transformer_blocks)
    width = generator.block_width()
    steps = len(generator.axis.positions)
    with tempfile.TemporaryDirectory() as folder:
        # A direction of unit norm in every (step, block): what the steering adds does not change its cost.
        vectors = np.random.default_rng(0).standard_normal((steps, blocks, width)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=-1, keepdims=True)
        path = Direction(vectors, range(blocks), "is_brass", "mean_difference", steps=range(steps)).save(
            Path(folder) / "is_brass")
        steering = Steering("bench", "is_brass", "file", Site(tuple(range(blocks)), 0), 1.0,
                            direction_file=str(path))

        def plain():
            return generator.sample(Conditioning("bench"), 0, args.samples, SECONDS, None)

        def steered():
            return generator.sample(Conditioning("bench", (), steering), 0, args.samples, SECONDS, None)

        def captured():
            recorder = block_recorder(generator, args.samples)
            observer = TrajectoryObserver(generator.axis.positions, KINDS)
            with hooks_applied(generator.hook_points(), recorder.hooks):
                final = generator.sample(Conditioning("bench"), 0, args.samples, SECONDS, observer)
            recorder.means()
            return final

        sides = {"plain": plain, "steered": steered, "captured": captured}
        for function in sides.values():     # warm-up: first calls build caches and import lazily
            function()
        times = {name: [] for name in sides}
        results = {}
        names = list(sides)
        for round_ in range(args.repeats):
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in order:
                wall, cpu, results[name] = timed(sides[name])
                times[name].append((wall, cpu))
    assert torch.equal(results["plain"], results["captured"]), "capturing changed the samples"
    assert not torch.equal(results["plain"], results["steered"]), "steering changed nothing"
    medians = {name: (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
               for name, runs in times.items()}
    report = {"samples": args.samples, "steps": steps, "blocks": blocks, "threads": args.threads,
              "repeats": args.repeats, "plain_seconds": round(medians["plain"][0], 4)}
    for name in ("steered", "captured"):
        report[f"O1_{name}_over_plain_wall"] = round(medians[name][0] / medians["plain"][0], 3)
        report[f"O1_{name}_over_plain_cpu"] = round(medians[name][1] / medians["plain"][1], 3)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
