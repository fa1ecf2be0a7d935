"""The musicnn embedder's cost next to the spectral embedder's, side by side in one run, on one torch thread.

On the same clips (4 s decaying harmonic tones at 16 kHz, NSynth's shape; one 3 s patch each):
- spectral: SpectralEmbedder.embed in batches of 32 (its default);
- musicnn: MusicnnEmbedder.embed (one patch per forward, the embedder's rule: a clip's vector must not depend
  on the clips beside it);
- musicnn batched: the same network on 16 patches per forward (what that rule gives up).
Prints seconds per clip for each and the ratios. The front end (log-mel) is timed on its own too.

    .venv/bin/python bench/bench_musicnn.py               # 96 clips, as reported in bench/README_musicnn.md
    .venv/bin/python bench/bench_musicnn.py --clips 32    # a quick look
"""
import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from embeddings.musicnn import MusicnnEmbedder  # noqa: E402
from embeddings.musicnn_model import log_mel_patches  # noqa: E402
from embeddings.spectral import SpectralEmbedder  # noqa: E402


def tones(n_clips: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(64_000) / 16_000
    clips = []
    for _ in range(n_clips):
        f0 = 55.0 * 2 ** rng.uniform(0, 5)
        tone = sum(rng.uniform(0.1, 1) / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 8))
        clips.append((0.2 * tone * np.exp(-t * rng.uniform(0.3, 3)) + 0.01 * rng.standard_normal(t.size))
                     .astype(np.float32))
    return clips


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=96)
    args = parser.parse_args()
    torch.set_num_threads(1)
    clips = tones(args.clips)
    spectral, musicnn = SpectralEmbedder(), MusicnnEmbedder()
    spectral.embed(clips[:2])
    musicnn.embed(clips[:2])                                    # oneDNN picks its kernels on the first call
    patches = torch.from_numpy(np.concatenate([log_mel_patches(clip) for clip in clips]))
    with torch.inference_mode():
        musicnn.network(patches[:16])

    def batched():
        with torch.inference_mode():
            for start in range(0, len(patches), 16):
                musicnn.network(patches[start:start + 16])

    seconds = {
        "spectral": timed(lambda: [spectral.embed(clips[k:k + 32]) for k in range(0, len(clips), 32)]),
        "musicnn front end (log-mel patches)": timed(lambda: [log_mel_patches(clip) for clip in clips]),
        "musicnn (one patch per forward)": timed(lambda: musicnn.embed(clips)),
        "musicnn network, 16 patches per forward": timed(batched),
    }
    print(f"{args.clips} clips of 4 s, one torch thread ({torch.__version__})")
    for name, total in seconds.items():
        print(f"  {name:42s} {1000 * total / args.clips:7.1f} ms per clip")
    base = seconds["spectral"]
    print(f"  musicnn / spectral: {seconds['musicnn (one patch per forward)'] / base:.1f}x; one patch per forward / "
          f"16 per forward: {seconds['musicnn (one patch per forward)'] / seconds['musicnn network, 16 patches per forward']:.2f}x")


if __name__ == "__main__":
    main()
