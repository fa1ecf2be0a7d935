"""What a steering hook costs: Stable Audio sampling with a steering intervention on DiT blocks / the
same call without, in one run, one torch thread. Goal <= 1.03. The ideal model's prior tilt is timed the same way.

Runs alternate (with, without, without, with, ...) so that drifting machine load hits both sides alike; ratios are
of medians of this process's CPU time and of wall time. The Stable Audio model is real diffusers components with
random weights (tests/tiny_stable_audio.py), saved and loaded by path; `--size full --seconds 1 --steps 3` times
Stable Audio Open's real architecture (minutes on CPU).

    .venv/bin/python bench/bench_interventions.py --size tiny --repeats 5
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
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tiny_stable_audio import save_model  # noqa: E402

from data.directions import Direction  # noqa: E402
from diffusion import load_generator  # noqa: E402
from diffusion.base import Conditioning  # noqa: E402
from diffusion.interventions.hooks import blocks_of  # noqa: E402
from diffusion.interventions.records import PRIOR, Site, Steering  # noqa: E402
from diffusion.interventions.spec import load_spec  # noqa: E402


def timed(call):
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def ratio(sample, with_hook, without_hook, repeats):
    times = {True: [], False: []}
    for r in range(repeats):
        for hooked in ((True, False) if r % 2 == 0 else (False, True)):
            times[hooked].append(timed(lambda: sample(with_hook if hooked else without_hook)))
    wall = statistics.median(t[0] for t in times[True]) / statistics.median(t[0] for t in times[False])
    cpu = statistics.median(t[1] for t in times[True]) / statistics.median(t[1] for t in times[False])
    return wall, cpu, statistics.median(t[1] for t in times[False])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=("tiny", "full"))
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = save_model(Path(tmp) / "sao", args.size, args.seconds)
        generator = load_generator("stable-audio-open", model=str(model), steps=args.steps, device="cpu")
        seconds = generator.max_seconds if args.seconds is None else args.seconds
        blocks = blocks_of(generator.hook_points())
        dim = generator.pipeline.transformer.config.num_attention_heads * \
            generator.pipeline.transformer.config.attention_head_dim
        direction = Direction(np.random.default_rng(0).standard_normal((len(blocks), dim)), blocks, "is_brass",
                              "mean_difference", provenance={"note": "random vectors for timing"}).save(Path(tmp) / "dir")
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({"format": 2, "interventions": [{"concept": "is_brass", "direction": str(direction),
                                                       "where": blocks, "strength": 0.5, "mode": "norm_relative",
                                                       "from_step": 0}]}))
        steering = load_spec(spec).interventions[0]

        def sample(intervention):
            generator.sample(Conditioning("soft keys", (), intervention), 0, args.samples, seconds, None)

        sample(None)  # warm-up
        wall, cpu, base = ratio(sample, steering, None, args.repeats)
        results["stable_audio_all_blocks_every_step"] = (wall, cpu, base)

    ideal = load_generator("ideal", steps=50)
    tilt = Steering("bench", "is_brass", "concept", Site(PRIOR, from_step=0), 8.0)

    def sample_ideal(intervention):
        ideal.sample(Conditioning("soft keys", ("keyboard",), intervention), 0, args.samples, ideal.default_seconds,
                     None)

    sample_ideal(None)
    results["ideal_prior_tilt_every_step"] = ratio(sample_ideal, tilt, None, args.repeats)
    for name, (wall, cpu, base) in results.items():
        print(f"{name}: with steering / without = {cpu:.3f} (CPU time), {wall:.3f} (wall); "
              f"without: {base:.2f} s CPU per call; goal <= 1.03")


if __name__ == "__main__":
    main()
