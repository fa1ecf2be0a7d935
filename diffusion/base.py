"""The generator interface: a backend turns (conditioning, seed, positions to capture) into a trajectory of clips.

A backend implements `sample` (run its sampler once for a batch of samples of one prompt, calling the observer
at every position of its trajectory axis) and `decode` (latents -> audio, a pure function of its arguments).
Capturing, decoding in batches, writing wavs and index rows, sharding and resuming are shared
(diffusion/trajectory.py, which backends never import), so a new backend is one new file.

The trajectory axis (data/generation.py) says what a position is: a denoising step of a diffusion sampler, or a
decoder layer of a layer-wise read-out (MusicGen's DecoderLens).

What a backend can do beyond sampling it declares on the class (defaults below: nothing), never by being probed:
what it knows of its own output (`content_labels`, `truth_concepts`), its `options` (stage 2 --generator-option
keys), where an intervention acts (`intervention_site`, `hook_points`),
when (`intervention_clock`, `clock_ticks`), on which rows (`has_unconditional_rows`, `cfg_layout`), and whether it
runs interchange interventions (`supports_interchange`, `component_means`, `sample_sites`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from data.generation import TrajectoryAxis
from diffusion.interventions.records import Steering

if TYPE_CHECKING:
    # Annotations only: a stage 2 rerun with every prompt done loads no model, and importing torch costs seconds.
    import torch

KINDS = ("x0", "xt")  # x0: the model's clean estimate at that position; xt: the noisy latent after that step


@dataclass(frozen=True)
class Conditioning:
    """Everything a prompt conditions a sample with, as one object: backends ignore what they do not use."""
    prompt: str
    labels: tuple[str, ...] = ()                  # annotation labels (only the ideal model's prior reads them)
    steering: Steering | None = None              # steering of the sampler; None = none


def default_capture(positions: Sequence[int]) -> list[int]:
    """Every tenth of the trajectory plus its last position: the reference study's 5, 10, ..., 45, 49 of 50."""
    positions = list(positions)
    stride = max(1, len(positions) // 10)
    chosen = {positions[stride * k] for k in range(1, 10) if stride * k < len(positions)}
    return sorted(chosen | {positions[-1]})


def default_capture_steps(steps: int) -> list[int]:
    return default_capture(range(int(steps)))


@dataclass
class CapturedLatent:
    position: int                 # on the generator's axis (the index's `step` column)
    sigma: float | None           # noise level at that position; None for a layer trajectory
    kind: str
    latent: torch.Tensor          # [num_samples, *latent_shape], detached copy on CPU
    # Realised content of the position's clean estimate: label -> float64 [num_samples] (empty: not reported).
    content: dict[str, np.ndarray] = field(default_factory=dict)


class TrajectoryObserver:
    """Callback at every trajectory position that keeps copies of the requested ones and changes nothing in
    the sampler.

    observer(position, sigma, x_t, x0, content=None, truth=None): `content`, where a backend knows it, maps each
    of its `content_labels` to an array [num_samples] of that label's mass in the position's clean estimate (the
    ideal model: the posterior weight of the bank clips carrying the label). `truth`, where a backend knows it,
    maps each of its `truth_concepts` to the exact probability [num_samples] that the finished clip carries the
    concept. Both are kept at EVERY position (`trace`), not only the captured ones: stage 2 writes them to
    generated/truth/ (data/truth.py).
    """

    def __init__(self, capture: Sequence[int], kinds: Sequence[str] = ("x0",)):
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown capture kind {sorted(unknown)[0]!r}; choose from {KINDS}")
        self.capture = frozenset(int(position) for position in capture)
        self.kinds = tuple(kinds)
        self.captured: list[CapturedLatent] = []
        # Internal activations a backend reports (MusicGen's residual stream): (row descriptors, float [n, dim]).
        self.activations: list[tuple[list[dict], np.ndarray]] = []
        # (position, sigma, content, truth) at every position where the backend reports content or truth.
        self.trace: list[tuple[int, float | None, dict[str, np.ndarray], dict[str, np.ndarray]]] = []

    def keep_activations(self, rows: list[dict], vectors: np.ndarray) -> None:
        """rows[i] describes vectors[i]: a dict with `sample` (0-based within this sampler call) and the
        backend's own keys (MusicGen: branch, layer, pool). Stage 2 writes them to generated/activations/."""
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or len(rows) != vectors.shape[0]:
            raise ValueError(f"keep_activations: {len(rows)} rows for vectors of shape {list(vectors.shape)}")
        self.activations.append(([dict(row) for row in rows], vectors))

    def __call__(self, position: int, sigma: float | None, x_t: torch.Tensor | None, x0: torch.Tensor | None,
                 content: Mapping[str, np.ndarray] | None = None,
                 truth: Mapping[str, np.ndarray] | None = None) -> None:
        kept = {label: np.array(mass, dtype=np.float64) for label, mass in (content or {}).items()}
        if content or truth:
            self.trace.append((int(position), None if sigma is None else float(sigma), kept,
                               {concept: np.array(p, dtype=np.float64) for concept, p in (truth or {}).items()}))
        if position not in self.capture:
            return
        for kind, tensor in (("x0", x0), ("xt", x_t)):
            if kind in self.kinds:
                if tensor is None:
                    raise RuntimeError(f"backend gave no {kind} at position {position}")
                self.captured.append(CapturedLatent(int(position), None if sigma is None else float(sigma), kind,
                                                    tensor.detach().to("cpu", copy=True), kept))


class Generator(ABC):
    """Built by `diffusion.load_generator(name, model=, preset=, steps=, device=, dtype=, decode_dtype=)`: every
    backend's constructor takes these six keywords (None = the backend's default; refuse with InputError a
    value that does not apply) and raises data.stage.InputError for a setting the user can fix (unknown preset,
    missing model, bad dtype)."""
    name: str                  # registry key and provenance id, e.g. "ideal", "stable-audio-open"
    sample_rate: int           # of decoded audio
    channels: int              # of decoded audio
    max_seconds: float         # longest clip the model can make
    default_seconds: float     # clip length when stage 2 gets no --seconds
    axis: TrajectoryAxis       # what a trajectory position is, and which exist
    default_capture: list[int]  # positions saved when stage 2 gets no --capture-steps
    # Labels of the realised content the observer's `content` carries (empty: the backend reports none).
    content_labels: tuple[str, ...] = ()
    # Concepts whose exact probability the observer's `truth` carries at every position (empty: none).
    truth_concepts: tuple[str, ...] = ()
    # What the backend's observer calls carry (a layer trajectory has no noisy latent: ("x0",)).
    kinds: tuple[str, ...] = KINDS
    # Stage 2 --generator-option keys -> their help; the constructor takes `options=` (a dict of strings, passed
    # only when given) and parses and checks the values itself. Empty: the backend has none.
    options: Mapping[str, str] = {}
    # Where an intervention acts: "prior" (the ideal model's concept prior, steered in its own loop), "blocks"
    # (the blocks b with a hook point `blocks.{b}.hook_resid_post`), or None (no interventions).
    intervention_site: str | None = None
    # What an intervention's from_step / to_step count: "denoising_step" (the sampler's own step) or
    # "generated_position" (an autoregressive model's position in the generated sequence). Never hook calls.
    intervention_clock: str = "denoising_step"
    # Whether the sampler runs unconditional rows (classifier-free guidance), and where they sit in a batch:
    # "uncond_first" ([uncond x B, cond x B], diffusers) or "cond_first" ([cond x B, uncond x B], MusicGen).
    has_unconditional_rows: bool = False
    cfg_layout: str = "uncond_first"
    # Whether `component_means` and `sample_sites` run interchange interventions.
    supports_interchange: bool = False

    @abstractmethod
    def provenance(self) -> dict:
        """Model id, checkpoint hash and every setting that changes the audio; stored in generation.json."""

    @abstractmethod
    def sample(self, conditioning: Conditioning, seed: int, num_samples: int, seconds: float,
               observer: TrajectoryObserver | None) -> torch.Tensor:
        """Run the sampler once for `num_samples` samples of one prompt; call
        observer(position, sigma, x_t, x0, content=None) at every position of `axis`; return the final
        latents [num_samples, *latent_shape].

        Seed row r of the batch with `seed + r` (e.g. one torch.Generator per row): stage 2 records seed + r as
        that sample's seed, so a sample must not depend on how many samples shared its sampler call."""

    @abstractmethod
    def decode(self, latents: torch.Tensor, seconds: float) -> np.ndarray:
        """Latents [batch, *latent_shape] of clips `seconds` long -> audio float32 [batch, channels, samples].

        Pure: the result depends on the arguments and the loaded model only, never on an earlier `sample`."""

    # -- interventions (optional; see the class attributes above) -------------------------------------------------

    def clock_ticks(self, seconds: float) -> int:
        """How many ticks the intervention clock makes for a clip of `seconds`: from_step must be below it. A
        denoising backend's clock is its sampler's steps, one per trajectory position."""
        return len(self.axis.positions)

    def hook_points(self) -> dict[str, torch.nn.Module]:
        """The modules a hook can attach to, by name (diffusion/interventions/hooks.py: `blocks.{b}.hook_resid_post`
        and the other names of its one convention, b 0-based). Stage 2 steers `intervention_site` "blocks" through
        them (diffusion/interventions/steering.py)."""
        return {}

    def hook_clock(self):
        """A fresh clock for one sampler call's hooks (diffusion/interventions/hooks.py: `ticks(tokens)` -> the tick
        of each token column of a hooked output, and the `hooks` it needs to keep time)."""
        raise NotImplementedError(f"the {self.name} generator declares no hook clock")

    def component_means(self, prompts: list[tuple[str, int]], num_samples: int, seconds: float) -> np.ndarray:
        """Interchange: the mean output of every (component, block, clock tick, CFG branch) over `num_samples`
        samples of each (prompt text, seed of sample 0) of `prompts`."""
        raise NotImplementedError(f"the {self.name} generator runs no interchange interventions")

    def sample_sites(self, prompt: str, seed: int, num_samples: int, seconds: float, observers: list,
                     means_a: np.ndarray, means_b: np.ndarray, sites: list, op: str,
                     rows: str = "conditional") -> None:
        """Interchange: every (component, block) site of `sites` for samples seed .. seed + n - 1 in one batched
        generation, on the conditional CFG row or both (`rows`); observers[i] gets site i's trajectory as its samples
        0..n-1."""
        raise NotImplementedError(f"the {self.name} generator runs no interchange interventions")

