"""The generator interface: a backend turns (prompt, seed, steps to capture) into a trajectory of clips.

A backend implements `sample` (run its sampler once for a batch of samples of one prompt, calling the
observer after every step) and `decode` (latents -> audio). Capturing, decoding in batches, writing wavs and
index rows, sharding and resuming are shared (diffusion/trajectory.py), so a new backend is one new file.

A trajectory position is called a step; for a layer-wise trajectory (MusicGen's decoder layers) it is the
layer, and generation.json names the axis.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    # Annotations only: a stage 2 rerun with every prompt done loads no model, and importing torch costs seconds.
    import torch

KINDS = ("x0", "xt")  # x0: the model's clean estimate at that step; xt: the noisy latent after that step


@dataclass
class CapturedLatent:
    step: int
    sigma: float
    kind: str
    latent: torch.Tensor  # [num_samples, *latent_shape], detached copy on CPU


class TrajectoryObserver:
    """Per-step callback that keeps copies of the requested steps and changes nothing in the sampler."""

    def __init__(self, capture_steps: Sequence[int], kinds: Sequence[str] = ("x0",)):
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown capture kind {sorted(unknown)[0]!r}; choose from {KINDS}")
        self.capture_steps = frozenset(int(step) for step in capture_steps)
        self.kinds = tuple(kinds)
        self.captured: list[CapturedLatent] = []

    def __call__(self, step: int, sigma: float, x_t: torch.Tensor, x0: torch.Tensor | None) -> None:
        if step not in self.capture_steps:
            return
        for kind, tensor in (("x0", x0), ("xt", x_t)):
            if kind in self.kinds:
                if tensor is None:
                    raise RuntimeError(f"backend gave no {kind} at step {step}")
                self.captured.append(CapturedLatent(step, float(sigma), kind, tensor.detach().to("cpu", copy=True)))


class Generator(ABC):
    """Built by `diffusion.load_generator(name, model=, preset=, steps=, device=, dtype=)`: every backend's
    constructor takes these five keywords (None = the backend's default; ignore those that do not apply) and
    raises data.stage.InputError for a setting the user can fix (unknown preset, missing model, bad dtype)."""
    name: str                 # registry key and provenance id, e.g. "ideal", "stable-audio-open"
    sample_rate: int          # of decoded audio
    channels: int             # of decoded audio
    max_seconds: float        # longest clip the model can make
    default_seconds: float    # clip length when stage 2 gets no --seconds
    steps: int                # trajectory length: sampler steps (or decoder layers)
    default_capture_steps: list[int]  # steps saved when stage 2 gets no --capture-steps
    trajectory_axis: str = "denoising_step"

    @abstractmethod
    def provenance(self) -> dict:
        """Model id, checkpoint hash and every setting that changes the audio; stored in generation.json."""

    @abstractmethod
    def sample(self, prompt: str, labels: Sequence[str], seed: int, num_samples: int, seconds: float,
               observer: TrajectoryObserver) -> torch.Tensor:
        """Run the sampler once for `num_samples` samples of one prompt; call observer(step, sigma, x_t, x0)
        after every step; return the final latents [num_samples, *latent_shape].

        Seed row r of the batch with `seed + r` (e.g. one torch.Generator per row): stage 2 records seed + r as
        that sample's seed, so a sample must not depend on how many samples shared its sampler call."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents [batch, *latent_shape] -> audio float32 [batch, channels, samples]."""
