"""P1 and P2: what observing Stable Audio Open's sampler costs, and what batched decoding saves, in one run.

The model is real diffusers Stable Audio components with random weights, saved with save_pretrained and loaded
back by path through the backend users call (diffusion/stable_audio.py); `--model DIR` times a saved model
instead (e.g. the real checkpoint on a GPU).

- P1: StableAudioPipeline sampling with the trajectory observer capturing (default: x0 and x_t at every step,
  the most copying a run can ask for) / the same call with no callback. Decoding is excluded. Goal <= 1.03.
  Also printed: the time spent inside the observer itself, the whole of what capture adds.
- P2: decoding K captured latents in one VAE call / one call per latent. Goal >= 2 on CPU. Also printed:
  decoding as StableAudioPipeline does (one call per latent over the model's whole window, then the crop) /
  ours (batched, only the frames that reach the clip plus the decoder's receptive radius).

Runs alternate (with, without, without, with, ...) so that drifting machine load hits both sides alike; the
ratios are of medians, of wall time and of this process's CPU time (steadier on a shared machine). Both sides
of each ratio are measured in this one process.

    .venv/bin/python bench/bench_generation.py --size tiny
    .venv/bin/python bench/bench_generation.py --size full --window 3 --seconds 1 --steps 3 --samples 1 \
        --repeats 3 --decode-k 3
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
from tiny_stable_audio import SIZES, save_model  # noqa: E402

from diffusion import load_generator  # noqa: E402
from diffusion.base import KINDS, Conditioning, TrajectoryObserver  # noqa: E402


def timed(function):
    """(wall seconds, process CPU seconds, result). CPU time counts this process's threads only, so it is
    the steadier figure on a machine shared with other jobs."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return time.perf_counter() - wall, time.process_time() - cpu, result


class TimedObserver(TrajectoryObserver):
    """The stage 2 observer, adding up the wall time spent inside it: the whole cost capture adds to sampling."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seconds = 0.0

    def __call__(self, position, sigma, x_t, x0, content=None):
        start = time.perf_counter()
        super().__call__(position, sigma, x_t, x0, content)
        self.seconds += time.perf_counter() - start


def bench_capture(generator, args) -> dict:
    """P1: the same sampler call with and without the observer, alternating; medians of `repeats` each."""
    capture_steps = generator.axis.positions if args.capture == "all" else generator.default_capture
    kinds = KINDS if args.kinds == "both" else (args.kinds,)

    def run(capture: bool):
        observer = TimedObserver(capture_steps, kinds) if capture else None
        latents = generator.sample(Conditioning(args.prompt), args.seed, args.samples, args.seconds, observer)
        return latents, observer

    run(True)  # warm-up: first-call allocations and lazy inits belong to neither side
    wall = {True: [], False: []}
    cpu = {True: [], False: []}
    inside = []
    last = {}
    for repeat in range(args.repeats):
        for capture in ((True, False) if repeat % 2 == 0 else (False, True)):
            wall_s, cpu_s, last[capture] = timed(lambda: run(capture))
            wall[capture].append(wall_s)
            cpu[capture].append(cpu_s)
            if capture:
                inside.append(last[capture][1].seconds)
    with_capture, without = statistics.median(wall[True]), statistics.median(wall[False])
    latents_on, observer = last[True]
    return {"with_capture_s": with_capture, "without_s": without, "ratio": with_capture / without,
            "cpu_ratio": statistics.median(cpu[True]) / statistics.median(cpu[False]),
            "observer_s": statistics.median(inside),
            "observer_share": statistics.median(inside) / without,
            "runs_with_s": wall[True], "runs_without_s": wall[False],
            "cpu_runs_with_s": cpu[True], "cpu_runs_without_s": cpu[False],
            "captured_latents": len(observer.captured),
            "identical_final_latents": bool(torch.equal(latents_on, last[False][0])),
            "observer": observer}


def bench_decode(generator, observer, args) -> dict:
    """P2: K captured single-clip latents decoded in batches of decode_batch_size vs one VAE call each."""
    clips = [captured.latent[i:i + 1] for captured in observer.captured for i in range(captured.latent.shape[0])]
    if len(clips) < args.decode_k:
        raise SystemExit(f"only {len(clips)} captured clips; lower --decode-k or capture more")
    clips = clips[:args.decode_k]
    batch = args.decode_batch_size or args.decode_k

    def batched():
        return np.concatenate([generator.decode(torch.cat(clips[start:start + batch]), args.seconds)
                               for start in range(0, len(clips), batch)])

    def one_by_one():
        return np.concatenate([generator.decode(clip, args.seconds) for clip in clips])

    vae = generator.pipeline.vae
    samples = int(args.seconds * vae.config.sampling_rate)

    def pipeline_style():
        # StableAudioPipeline's own decoding: one call per latent, the whole window, then the crop.
        with torch.inference_mode():
            return np.concatenate([vae.decode(clip.to(generator.device, vae.dtype)).sample[:, :, :samples]
                                   .float().cpu().numpy() for clip in clips])

    sides = {"batched": batched, "single": one_by_one, "pipeline": pipeline_style}

    batched()  # warm-up
    wall = {side: [] for side in sides}
    cpu = {side: [] for side in sides}
    outputs = {}
    for repeat in range(args.repeats):
        order = list(sides) if repeat % 2 == 0 else list(sides)[::-1]
        for side in order:
            wall_s, cpu_s, outputs[side] = timed(sides[side])
            wall[side].append(wall_s)
            cpu[side].append(cpu_s)
    median = {side: statistics.median(wall[side]) for side in sides}
    cpu_median = {side: statistics.median(cpu[side]) for side in sides}
    return {"k": len(clips), "decode_batch_size": batch, "batched_s": median["batched"],
            "one_by_one_s": median["single"], "pipeline_style_s": median["pipeline"],
            "ratio": median["single"] / median["batched"],
            "cpu_ratio": cpu_median["single"] / cpu_median["batched"],
            "pipeline_ratio": median["pipeline"] / median["batched"],
            "pipeline_cpu_ratio": cpu_median["pipeline"] / cpu_median["batched"],
            "runs_s": wall, "cpu_runs_s": cpu,
            "max_abs_difference": float(np.max(np.abs(outputs["batched"] - outputs["single"]))),
            "max_abs_difference_pipeline": float(np.max(np.abs(outputs["batched"] - outputs["pipeline"])))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny",
                        help="architecture of the random model: tiny, or Stable Audio Open 1.0's real one")
    parser.add_argument("--model", type=Path, default=None, help="time this saved model instead of a random one")
    parser.add_argument("--window", type=float, default=None,
                        help="seconds of the random model's DiT window (sample_size); default: --seconds for "
                             "full (a CPU run of the real 47.55 s window takes minutes per step), the size's own "
                             "for tiny")
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds_total of each clip")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--samples", type=int, default=2, help="samples per prompt (one sampler batch)")
    parser.add_argument("--capture", choices=("all", "default"), default="all",
                        help="capture every step, or the preset's default capture steps")
    parser.add_argument("--kinds", choices=("both", "x0", "xt"), default="both")
    parser.add_argument("--decode-k", type=int, default=8, help="captured latents decoded for P2")
    parser.add_argument("--decode-batch-size", type=int, default=None, help="P2 batch size; default: K")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per side (medians are compared)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    parser.add_argument("--prompt", default="a warm piano melody with soft strings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-sao-") as scratch:
        if args.model is None:
            window = args.window if args.window is not None else (args.seconds if args.size == "full" else None)
            start = time.perf_counter()
            model_dir = save_model(Path(scratch) / f"{args.size}-stable-audio", args.size, window)
            print(f"built and saved a random {args.size} model in {time.perf_counter() - start:.1f} s")
        else:
            model_dir = args.model
        start = time.perf_counter()
        generator = load_generator("stable-audio-open", model=str(model_dir), preset="reference", steps=args.steps,
                                   device=args.device, dtype=args.dtype)
        print(f"loaded {model_dir} in {time.perf_counter() - start:.1f} s")
    transformer, vae = generator.pipeline.transformer, generator.pipeline.vae
    parameters = {name: sum(p.numel() for p in module.parameters()) for name, module in
                  (("transformer", transformer), ("vae_decoder", vae.decoder),
                   ("text_encoder", generator.pipeline.text_encoder))}
    print(f"device {args.device} ({torch.get_num_threads()} threads), dtype {args.dtype}; parameters: "
          + ", ".join(f"{name} {count:,}" for name, count in parameters.items()))
    print(f"window {generator.max_seconds:.3f} s ({transformer.config.sample_size} latent frames), clip "
          f"{args.seconds} s, {args.steps} steps, {args.samples} samples per call, {args.repeats} repeats per side")

    capture = bench_capture(generator, args)
    observer = capture.pop("observer")
    print(f"P1 sampling with capture ({capture['captured_latents']} latents kept) {capture['with_capture_s']:.3f} s"
          f" / without {capture['without_s']:.3f} s = {capture['ratio']:.3f} wall, {capture['cpu_ratio']:.3f} CPU "
          f"time  (goal <= 1.03; final latents identical: {capture['identical_final_latents']})")
    print(f"   time inside the observer {capture['observer_s'] * 1e3:.2f} ms per call = "
          f"{capture['observer_share'] * 100:.3f} % of a sampler call without capture")
    decode = bench_decode(generator, observer, args)
    print(f"P2 decoding {decode['k']} latents one by one {decode['one_by_one_s']:.3f} s / batched "
          f"(batch {decode['decode_batch_size']}) {decode['batched_s']:.3f} s = {decode['ratio']:.2f}x wall, "
          f"{decode['cpu_ratio']:.2f}x CPU time  "
          f"(goal >= 2; max |difference| {decode['max_abs_difference']:.1e})")
    print(f"   StableAudioPipeline-style decoding (one by one, whole {generator.max_seconds:.2f} s window, then "
          f"crop) {decode['pipeline_style_s']:.3f} s / ours batched = {decode['pipeline_ratio']:.2f}x wall, "
          f"{decode['pipeline_cpu_ratio']:.2f}x CPU time (max |difference| "
          f"{decode['max_abs_difference_pipeline']:.1e})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "parameters": parameters, "p1": capture, "p2": decode}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
