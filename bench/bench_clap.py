"""P3: the CLAP embedder through the streaming runner vs a reference-style loop, side by side in one run.

Both sides use the same checkpoint: an HTSAT-base audio tower (as in laion/larger_clap_*; random weights, a
small text tower since only audio is timed) saved with save_pretrained and loaded by path. The clips mix
4 s notes (16 kHz mono, as NSynth) and 10 s clips (44.1 kHz stereo, as Stable Audio), written as wav files.

- reference: per file, read it, downmix, build a new soxr resampler, call ClapProcessor on the one clip,
  run one forward (torch.no_grad) — how the reference project embedded.
- ours: embeddings.run.embed_files with the ClapEmbedder (background loader, batched torch log-mel,
  batched forward under inference_mode).

Prints both wall times, the speedup, where our wall time went (inside the model forward / inside embed()),
and the largest difference between the two sides' vectors (they must agree: same windows, same mel).

    .venv/bin/python bench/bench_clap.py                # 200 clips, as reported in bench/README_clap.md
    .venv/bin/python bench/bench_clap.py --clips 20     # a quick look
    .venv/bin/python bench/bench_clap.py --device cuda --dtype fp16   # on a GPU
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import soxr  # noqa: E402
import torch  # noqa: E402
from tiny_clap import save_tiny_clap  # noqa: E402

from data.files import sha256_text  # noqa: E402
from embeddings.clap import ClapEmbedder  # noqa: E402
from embeddings.run import embed_files  # noqa: E402


def write_clips(directory: Path, n_clips: int, seed: int = 0) -> list[Path]:
    """Alternate 4 s 16 kHz mono notes and 10 s 44.1 kHz stereo clips: decaying harmonic tones plus noise."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n_clips):
        note = i % 2 == 0
        rate, seconds, channels = (16_000, 4.0, 1) if note else (44_100, 10.0, 2)
        t = np.arange(int(rate * seconds)) / rate
        f0 = 55.0 * 2 ** rng.uniform(0, 5)
        tone = sum(rng.uniform(0.1, 1) / k * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6)) for k in range(1, 8))
        envelope = np.exp(-t * rng.uniform(0.3, 3)) if note else 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(.2, 2) * t)
        audio = 0.2 * tone * envelope + 0.01 * rng.standard_normal(t.size)
        audio = np.stack([audio, np.roll(audio, 7)], axis=1) if channels == 2 else audio
        path = directory / f"clip{i:04d}.wav"
        sf.write(path, np.clip(audio, -1, 1).astype(np.float32), rate, subtype="PCM_16")
        paths.append(path)
    return paths


class ForwardTimer:
    """Wraps model.get_audio_features to add up the seconds spent inside it."""

    def __init__(self, model):
        self.seconds, self._inner = 0.0, model.get_audio_features
        model.get_audio_features = self

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        result = self._inner(*args, **kwargs)
        self.seconds += time.perf_counter() - started
        return result


def reference_loop(paths: list[Path], model, processor, device: str, dtype: torch.dtype) -> tuple[np.ndarray, float]:
    truncation = "fusion" if model.config.audio_config.enable_fusion else "rand_trunc"
    vectors = []
    started = time.perf_counter()
    for path in paths:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
        mono = audio.mean(axis=1)
        resampler = soxr.ResampleStream(rate, 48_000, 1, dtype="float32", quality="HQ")
        wave = resampler.resample_chunk(mono, last=True)
        inputs = processor(audio=wave, sampling_rate=48_000, truncation=truncation, return_tensors="pt").to(device)
        with torch.no_grad(), torch.autocast(torch.device(device).type, dtype, enabled=dtype != torch.float32):
            vectors.append(model.get_audio_features(**inputs).pooler_output[0].float().cpu().numpy())
    return np.stack(vectors), time.perf_counter() - started


def ours(paths: list[Path], embedder: ClapEmbedder, out_path: Path, batch_size: int, workers: int):
    stats = embed_files(paths, embedder, out_path, rows_key="clips_sha256",
                        rows_sha256=sha256_text("\n".join(map(str, paths))), batch_size=batch_size,
                        workers=workers, force=True, progress=False)
    return np.load(out_path), stats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--clips", type=int, default=200, help="clips (half 4 s notes, half 10 s clips)")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per embed() call for ours")
    parser.add_argument("--workers", type=int, default=2, help="loader threads for ours")
    parser.add_argument("--rounds", type=int, default=4, help="alternate the two sides over this many slices")
    parser.add_argument("--tower", choices=("htsat-base", "tiny"), default="htsat-base", help="audio tower size")
    parser.add_argument("--device", default="cpu", help="torch device for both sides (cpu, cuda)")
    parser.add_argument("--dtype", default="fp32", help="fp32, or fp16/bf16 under autocast on CUDA, for both sides")
    parser.add_argument("--fused", action="store_true", help="a fused (clap-htsat-fused style) checkpoint")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_clap_") as tmp:
        tmp = Path(tmp)
        checkpoint = save_tiny_clap(tmp / "checkpoint", fused=args.fused, audio_tower=args.tower)
        (tmp / "clips").mkdir()
        paths = write_clips(tmp / "clips", args.clips)
        from transformers import ClapModel, ClapProcessor
        ref_model = ClapModel.from_pretrained(checkpoint).eval().to(args.device)
        ref_processor = ClapProcessor.from_pretrained(checkpoint)
        ref_timer = ForwardTimer(ref_model)
        embedder = ClapEmbedder(str(checkpoint), device=args.device, dtype=args.dtype, batch_size=args.batch_size)
        our_timer = ForwardTimer(embedder.model)
        # Warm-up outside the timings: first-call allocations and oneDNN kernel selection.
        embedder.embed([np.zeros(48_000, np.float32)])
        reference_loop(paths[:1], ref_model, ref_processor, args.device, embedder.dtype)
        ref_timer.seconds = our_timer.seconds = 0.0

        # The two sides alternate over slices of the clips, so both see the same share of the (shared,
        # noisy) machine; totals are summed over the rounds.
        ref_wall = our_wall = our_embed = our_wait = 0.0
        ref_parts, our_parts = [], []
        for part in np.array_split(np.arange(len(paths)), args.rounds):
            part_paths = [paths[i] for i in part]
            vectors, wall = reference_loop(part_paths, ref_model, ref_processor, args.device, embedder.dtype)
            ref_parts.append(vectors)
            ref_wall += wall
            vectors, stats = ours(part_paths, embedder, tmp / f"round{len(our_parts)}.npy", args.batch_size,
                                  args.workers)
            our_parts.append(vectors)
            our_wall, our_embed = our_wall + stats.wall_seconds, our_embed + stats.embed_seconds
            our_wait += stats.load_wait_seconds
        ref_vectors, our_vectors = np.concatenate(ref_parts), np.concatenate(our_parts)
        ref_forward, our_forward = ref_timer.seconds, our_timer.seconds

    diff = float(np.abs(ref_vectors - our_vectors).max())
    print(f"{args.clips} clips ({(args.clips + 1) // 2} x 4 s 16 kHz mono, {args.clips // 2} x 10 s 44.1 kHz stereo), "
          f"{args.tower} audio tower{' fused' if args.fused else ''}, {args.device} {args.dtype}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"reference loop: {ref_wall:7.1f} s  {args.clips / ref_wall:6.2f} clips/s  "
          f"({100 * ref_forward / ref_wall:.0f}% in the model forward)")
    print(f"ours (runner):  {our_wall:7.1f} s  {args.clips / our_wall:6.2f} clips/s  "
          f"({100 * our_forward / our_wall:.0f}% in the model forward, "
          f"{100 * our_embed / our_wall:.0f}% inside embed(), {our_wait:.1f} s waiting for audio)")
    print(f"speedup: {ref_wall / our_wall:.2f}x   max |ours - reference| = {diff:.2e}")
    if args.fused:
        print("(fused: transformers' extractor marks a lone not-longer clip is_longer=True, so the reference runs "
              "the fusion branch and its vectors differ; ours never does — see embeddings/clap.py)")


if __name__ == "__main__":
    main()
