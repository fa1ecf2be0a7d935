"""The musicnn embedders: `musicnn`, a learned music representation for the probes, and `musicnn-tags`, the
pretrained tagger's 50 tag probabilities (a taggram per clip, for judging what a clip contains).

Both run the PyTorch port in embeddings/musicnn_model.py on the trained weights of the `musicnn` wheel
(PyPI musicnn==0.1.0, ISC licence; installed with --no-deps, used only as a container of TensorFlow
checkpoints, read by embeddings/tf_checkpoint.py). `--model` picks the checkpoint: MTT_musicnn (default; 50
MagnaTagATune tags, many of them instruments), MSD_musicnn (50 Last.fm tags: genres, moods, eras,
"acoustic", "instrumental", "guitar"), MTT_vgg, MSD_vgg (the authors' VGG baselines).

Window policy
    16 kHz mono. A clip is cut into 3 s patches (187 frames) from its start without overlap, as the original
    extractor does: a 4 s note or clip gives one patch (its first 3 s), a 10 s clip three (9 s); the rest of the
    last second(s) is not seen. A clip shorter than 3 s is repeated to fill one patch. The clip's vector is the
    mean over its patches of the chosen layer's per-patch vector.

Representation (musicnn)
    `mean_pool` (753): the mean over a patch's 187 frames of the network's dense feature map (the 561 front-end
    channels, timbral and temporal, and the three 64-channel mid-end layers), the back end's input before any
    tag-specific layer. Chosen by measuring probe transfer on the demo (README, "musicnn") among penultimate,
    mean_pool, max_pool, both pools together and the taggram: probes trained on NSynth-format notes with mean_pool
    read the ideal model's final clips best (median and mean AUROC against the exact content, and the fewest
    concepts at or below chance); the 200-unit penultimate layer, the usual musicnn embedding, came second by
    median but reads `techno` inverted. VGG checkpoints have no such layer: their vector is the flattened last
    pool (256), the layer the tag logits read.

Determinism
    Each patch runs through the network on its own: oneDNN chooses its convolution algorithm by batch size,
    which moves the last bits of the result, so a batch of patches would make a clip's vector depend on the
    clips beside it. One patch per call costs no more per patch on a CPU (measured: bench/README_musicnn.md).
"""
import importlib.metadata
from pathlib import Path

import numpy as np
import torch

from data.hub import checkpoint_sha256
from data.stage import InputError
from embeddings import DEFAULT_MODELS, embedding_stem
from embeddings.base import Embedder
from embeddings.musicnn_model import (HOP, LOG_SCALE, MODELS, N_FFT, N_MELS, PAD_MODE, PATCH_FRAMES, SAMPLE_RATE,
                                      build_network, log_mel_patches)
from embeddings.tf_checkpoint import TensorBundle

DEFAULT_MODEL = DEFAULT_MODELS["musicnn"]
INSTALL_FIX = "install it with: pip install --no-deps musicnn==0.1.0 (make install does)"
REINSTALL_FIX = "reinstall it with: pip install --no-deps --force-reinstall musicnn==0.1.0"
# The per-patch layer a clip's vector is made from, per architecture (see the module docstring).
EMBEDDING_LAYERS = {"musicnn": "mean_pool", "vgg": "pool5"}
POOLING = "mean over the clip's 3 s patches"
# Everything in the input pipeline that changes the vectors (recorded in the provenance).
FRONT_END = {"sample_rate": SAMPLE_RATE, "n_fft": N_FFT, "hop": HOP, "n_mels": N_MELS, "window": "hann",
             "mel": "librosa slaney", "pad_mode": PAD_MODE, "power": 2.0, "rounding": "float16",
             "log": f"log10({LOG_SCALE} x + 1) in float16, saturating at 65504", "patch_frames": PATCH_FRAMES,
             "patch_hop_frames": PATCH_FRAMES, "short_clips": "repeated to one patch"}
WINDOW_POLICY = (f"3 s patches ({PATCH_FRAMES} frames) at {SAMPLE_RATE} Hz mono, cut from the start without "
                 "overlap, the remainder dropped; a clip under 3 s is repeated to one patch; mean over patches")


def wheel_dir() -> Path:
    """The installed musicnn package's folder, found through the distribution's metadata: not imported (its code
    needs TensorFlow 1), and not looked up on sys.path, where a script in embeddings/ finds this module first."""
    try:
        folder = Path(importlib.metadata.distribution("musicnn").locate_file("musicnn"))
    except importlib.metadata.PackageNotFoundError:
        raise InputError(f"the musicnn wheel is not installed — {INSTALL_FIX}") from None
    if not folder.is_dir():
        raise InputError(f"{folder}: the musicnn wheel's files are missing — {REINSTALL_FIX}")
    return folder


def checkpoint_files(model: str) -> list[Path]:
    """The checkpoint's weight files (`<wheel>/<model>/.index` and `.data-00000-of-00001`)."""
    if model not in MODELS:
        raise InputError(f"--model {model!r} is not a musicnn checkpoint — choose from {', '.join(MODELS)}")
    folder = wheel_dir() / model
    files = [folder / ".index", *sorted(folder.glob(".data-*"))]
    if not files[0].is_file() or len(files) < 2:
        raise InputError(f"{folder}: the {model} checkpoint is incomplete (no .index or .data file) — {REINSTALL_FIX}")
    return files


def load_network(model: str, device: torch.device) -> torch.nn.Module:
    folder = wheel_dir() / model
    bundle = TensorBundle(str(folder) + "/", fix=REINSTALL_FIX)   # the wheel names its files ".index", ".data-…"
    # Only the trained variables: the checkpoint also holds the optimiser's Adam slots and step counters.
    weights = {name: bundle.read(name) for name in bundle.entries
               if "Adam" not in name and not name.endswith("_power")}
    try:
        return build_network(model, weights).to(device)
    except (KeyError, RuntimeError, ValueError) as error:
        raise InputError(f"{folder}: the checkpoint does not hold the {model} network's variables "
                         f"({str(error).splitlines()[0]}) — {REINSTALL_FIX}") from None


def _device(device: str) -> torch.device:
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device!r} is not a torch device — use cpu or cuda") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but torch sees no CUDA device — use --device cpu")
    return resolved


class MusicnnEmbedder(Embedder):
    registered = "musicnn"
    sample_rate = SAMPLE_RATE
    window_policy = WINDOW_POLICY
    # Clips per embed() call: only how often the runner's progress moves (each patch runs on its own).
    batch_size = 16

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "cpu"):
        self.model = str(model)
        self.device = _device(device)
        files = checkpoint_files(self.model)
        self.architecture, self.tags = MODELS[self.model]
        self.layer = self._layer()
        self.network = load_network(self.model, self.device)
        self.checkpoint_sha256 = checkpoint_sha256(files[0].parent, files)
        self.name = embedding_stem(self.registered, self.model)
        with torch.inference_mode():
            probe = self.network(torch.zeros(1, PATCH_FRAMES, N_MELS, device=self.device))[self.layer]
        self.dim = int(probe[0].numel())

    def _layer(self) -> str:
        return EMBEDDING_LAYERS[self.architecture]

    def provenance(self) -> dict:
        import librosa
        return {"embedder": self.registered, "name": self.name, "model": self.model,
                "checkpoint_sha256": self.checkpoint_sha256, "architecture": self.architecture,
                "layer": self.layer, "pooling": POOLING, "window_policy": self.window_policy, "dim": self.dim,
                "sample_rate": self.sample_rate, "front_end": FRONT_END, "librosa": librosa.__version__}

    def patch_outputs(self, waveform: np.ndarray) -> torch.Tensor:
        """One mono 16 kHz clip -> [patches, dim]: the chosen layer for each of its 3 s patches."""
        rows = []
        with torch.inference_mode():
            for patch in torch.from_numpy(log_mel_patches(waveform)).to(self.device):
                rows.append(self.network(patch[None])[self.layer].reshape(1, -1))
        return torch.cat(rows).float().cpu()

    def embed(self, waveforms: list[np.ndarray]) -> np.ndarray:
        if not waveforms:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.patch_outputs(waveform).mean(dim=0).numpy() for waveform in waveforms]).astype(np.float32)


class MusicnnTagger(MusicnnEmbedder):
    """The taggram: the checkpoint's 50 tag probabilities (sigmoid), averaged over a clip's patches; column i is
    tag `tags[i]` (musicnn_model.MTT_LABELS or MSD_LABELS)."""
    registered = "musicnn-tags"

    def _layer(self) -> str:
        return "taggram"

    def provenance(self) -> dict:
        return {**super().provenance(), "tags": list(self.tags)}
