"""M1 and M2: what capturing MusicGen's residual stream costs, and how much cheaper the logit lens is than
regenerating per layer (DecoderLens), in one run on one torch thread.

The model is transformers' MusicGen with random weights, saved with save_pretrained in the hub layout and loaded
back by path through the stage 2 backend (diffusion/musicgen.py); `--model DIR` times a saved model instead.

- M1: one generate() call recording every decoder layer's residual at every position (the hooks that residual
  capture and the logit lens use) / the same call without hooks. Goal <= 1.03. The codes must be identical.
- M2: the layer trajectory for every layer 1..L: `lens=regenerate` (L generations, the decoder truncated to ℓ
  blocks) / `lens=logit` (one generation with the hooks, then final norm + heads for every layer). Goal >= 10 at
  24 layers. EnCodec decoding of the L clips is the same for both lenses and is timed separately.

Runs alternate (with, without, without, with, ...) so that drifting machine load hits both sides alike; ratios are
of medians, of wall time and of this process's CPU time (steadier on a shared machine).

    .venv/bin/python bench/bench_musicgen.py --size tiny
    .venv/bin/python bench/bench_musicgen.py --size small --seconds 0.5 --repeats 2 --regenerate-repeats 1
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

import torch  # noqa: E402
from tiny_musicgen import save_model  # noqa: E402

from diffusion.base import Conditioning, TrajectoryObserver  # noqa: E402
from diffusion.musicgen import MusicgenGenerator  # noqa: E402

PROMPT = "a bright brass fanfare with drums"


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def alternate(first, second, repeats: int):
    """Median (wall, cpu) of each side over `repeats` runs in the order A B B A A B ..."""
    times = {0: [], 1: []}
    results = {}
    for round_ in range(repeats):
        order = (0, 1) if round_ % 2 == 0 else (1, 0)
        for side in order:
            wall, cpu, result = timed(first if side == 0 else second)
            times[side].append((wall, cpu))
            results[side] = result
    medians = {side: (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
               for side, runs in times.items()}
    return medians[0], medians[1], results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "small"), default="tiny")
    parser.add_argument("--model", default=None, help="a saved MusicGen directory instead of a random one")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="runs per side for M1 and for the logit lens")
    parser.add_argument("--regenerate-repeats", type=int, default=3, help="runs of the L regenerations (M2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model or save_model(Path(scratch) / f"musicgen-{args.size}", size=args.size)
        started = time.perf_counter()
        logit = MusicgenGenerator(model=model_dir, device=args.device, dtype=args.dtype, options={"lens": "logit"})
        load_seconds = time.perf_counter() - started
    runner = logit.runner
    regenerate = MusicgenGenerator.__new__(MusicgenGenerator)   # the same loaded model, the other lens
    regenerate.__dict__.update(logit.__dict__, lens="regenerate")
    layers = runner.num_layers
    parameters = sum(p.numel() for p in runner.model.decoder.parameters())
    sampling = logit.sampling
    conditioning = Conditioning(PROMPT)
    positions = runner.frames(args.seconds) + runner.delay

    # M1: hooks on / off around one generate() call.
    plain, hooked, results = alternate(
        lambda: runner.generate(PROMPT, 0, args.samples, args.seconds, sampling).codes,
        lambda: runner.generate(PROMPT, 0, args.samples, args.seconds, sampling, record_residuals=True).codes,
        args.repeats)
    assert torch.equal(results[0], results[1]), "capture changed the codes"

    # M2: every layer through each lens (sample() with an observer keeping all layers), decoding apart.
    def trajectory(generator):
        observer = TrajectoryObserver(list(generator.axis.positions))
        generator.sample(conditioning, 0, args.samples, args.seconds, observer)
        return observer

    logit_time = [timed(lambda: trajectory(logit))[:2] for _ in range(args.repeats)]
    regenerate_time = [timed(lambda: trajectory(regenerate))[:2] for _ in range(args.regenerate_repeats)]
    observer = trajectory(logit)
    latents = torch.cat([captured.latent for captured in observer.captured])
    decode_wall, decode_cpu, _ = timed(lambda: logit.decode(latents, args.seconds))
    logit_wall = statistics.median(w for w, _ in logit_time)
    logit_cpu = statistics.median(c for _, c in logit_time)
    regen_wall = statistics.median(w for w, _ in regenerate_time)
    regen_cpu = statistics.median(c for _, c in regenerate_time)

    report = {
        "size": args.model or args.size, "layers": layers, "decoder_parameters": parameters,
        "seconds": args.seconds, "positions": positions, "samples": args.samples, "threads": args.threads,
        "dtype": args.dtype, "load_seconds": round(load_seconds, 2),
        "per_position_seconds": round(plain[0] / positions, 4),
        "M1_capture_over_plain_wall": round(hooked[0] / plain[0], 3),
        "M1_capture_over_plain_cpu": round(hooked[1] / plain[1], 3),
        "M1_plain_seconds": round(plain[0], 3), "M1_capture_seconds": round(hooked[0], 3),
        "M2_regenerate_over_logit_wall": round(regen_wall / logit_wall, 2),
        "M2_regenerate_over_logit_cpu": round(regen_cpu / logit_cpu, 2),
        "M2_logit_seconds": round(logit_wall, 3), "M2_regenerate_seconds": round(regen_wall, 3),
        "decode_all_layers_seconds": round(decode_wall, 3),
        "M2_with_decoding_wall": round((regen_wall + decode_wall) / (logit_wall + decode_wall), 2),
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
