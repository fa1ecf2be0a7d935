"""The embedded "ideal" generator: a REFERENCE MODEL, NOT A TRAINED ONE.

Its denoiser is closed-form: the posterior mean of a Gaussian-smoothed empirical distribution over a bank of
labelled reference clips (diffusion/bank.py). For a noisy latent x at noise level sigma,

    x0_hat(x, sigma) = sum_i w_i c_i,   w_i ∝ pi_i · exp(-||x - c_i||² / (2 sigma²)),

where c_i is clip i in latent coordinates. The logits are formed in float64 and normalised with a stable
(log-sum-exp) softmax. With this denoiser an exact sampler draws from the prompt-weighted bank: the
trajectory starts as a prior-weighted blend of clips ("mush") and ends on one clip that fits the prompt, so a
concept's emergence along the trajectory is known in advance — a yardstick for the probes of stage 6.

The prior comes from the prompt's annotation labels (families, "drum", sources; qualities are ignored because
bank clips carry none):

    log pi_i = PRIOR_SHARPNESS · (family_score_i + source_score_i)
    family_score_i = |F_i ∩ F_p| − |F_i \\ F_p|   if the prompt names any family or "drum", else 0
    source_score_i = +1 if S_i ∩ S_p else −1      if the prompt and the clip name a source, else 0

(F, S: family and source labels of clip i and prompt p). With PRIOR_SHARPNESS = 4, a clip of an absent family
weighs e^-8 ≈ 3e-4 of a matching one, and a two-instrument mix that matches both of a prompt's families
outweighs a solo clip that matches one by e^4.

Latent space. The bank's clips (loudness-normalised to CLIP_RMS) are scaled by 1 / (CLIP_RMS · sqrt(samples)),
so a full-loudness clip has unit norm whatever its length and rate; distinct clips are then ~sqrt(2) apart
(1st–95th percentile of pairwise distances in the default bank: 0.98–1.44). The latent is the coordinate
vector in an orthonormal basis of the span of the bank (from an eigendecomposition of the clips' Gram matrix;
exactly dependent clips, e.g. mixes of the same parts, reduce its rank). Noise orthogonal to that span would
add the same ||x||² to every logit and cancel in the softmax, so sampling in the span gives exactly the
clean estimates a waveform-space sampler would give, at a cost of ~r instead of ~64,000 numbers per sample
(r = 227 for the default bank's 319 clips of 4 s). `decode` maps a latent back to the waveform: a linear decoder.

Sigma scale. Logit differences are ~ distance² / (2 sigma²). With the reference schedule (sigma 100 → 0.01,
50 steps) they are < 1e-4 at sigma_max (weights = the prior), the estimate starts to commit below
sigma ≈ 2 (step 20), and by sigma ≈ 0.14 (step 35) it is one clip: for a "brass" prompt the weights' entropy
(mean of 8 samples) is 2.9 nats (a blend of ~19 brass clips) up to step 15, 2.5 at step 25, 0.5 at step 30 and 0
from step 35 on. Early steps carry the prompt's prior blend, late steps a single clip. (With the "model-card"
preset, sigma_min 0.3 stops the trajectory before it fully commits: a final entropy of 0.01–1.6 nats.)

Realised content (the second yardstick of stage 6). Because the estimate is a known blend of labelled clips,
the generator reports with every step, through the observer's `content`, each label's posterior mass
sum_i w_i [label in clip i] (`content_of`): the probability that the clip being made carries that family, drum
or source. Early it is the prompt's prior blend; once the trajectory commits it is the chosen clip's labels.
Stage 2 writes it to generated/content/ (data/ARTIFACTS.md), so a probe can be scored against what the model
made as well as against what the prompt asked for.

Planted preset. The bank's own space decides every concept in the same window, and the prompt prior decides
them at step 0, so nothing concept-specific about *when* can be recovered. `--preset planted` keeps the sampler and
replaces the latent space by the planted geometry of diffusion/planted.py: clips made of the bank's solo clips,
one instrument per concept group, with designed latents in which each group is decided around sigma ~ its scale
(default: winds and voice by step ~13, drums, mallets, organ and strings by ~26, bass, lead, guitar and keys by
~37), and a prior with no prompt term (sharpness 0) over the geometry's product base measure: the sampler's
noise, not the prompt, decides every concept. `--generator-option geometry=FILE`, `scales=...` and
`prior_sharpness=...` plant other timings. With every step the observer also gets the truth (`truth_of`: the
exact probability that the finished clip carries each concept), which stage 2 writes for every step
(data/truth.py); any preset reports it.

Sampler. diffusers' CosineDPMSolverMultistepScheduler — the DPM-Solver++ (2M, SDE) scheduler diffusers ships for
Stable Audio Open, which expects a v-prediction from the preconditioned input c_in(sigma) · x. The loop is the
standard diffusers loop (scale_model_input → model output → scheduler.step); the closed-form x0 is turned into
the v the scheduler expects by inverting its preconditioning, x0 = c_skip · x + c_out · v with
c_skip = sigma_data² / (sigma² + sigma_data²) and c_out = −sigma · sigma_data / sqrt(sigma² + sigma_data²), and
the clean estimate the observer gets is the scheduler's own conversion, `scheduler.model_outputs[-1]`.

One change to the library's defaults: the scheduler draws its SDE noise from a torchsde Brownian tree, whose
every query walks the tree in Python — 0.9 s per 50-step call of a 125-dim bank latent on 2 cores, and 8 s for
a 64,000-sample waveform: minutes for the demo. For a fixed sigma schedule the tree's normalised increments
over the disjoint step intervals are independent standard normals, so the scheduler's public `noise_sampler`
slot is filled with a seeded per-sample Gaussian source (`PerSampleGaussianNoise`): the same distribution and
the same solver; sample r of a call is seeded by seed + r.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from data.concepts import BY_NAME
from data.generation import denoising_axis
from data.stage import InputError
from data.truth import content_concepts
from data.vocabulary import DRUM, FAMILIES, SOURCES
from diffusion import bank as reference_bank
from diffusion import planted
from diffusion.bank import CLIP_RMS, ReferenceBank, family_labels, source_labels
from diffusion.base import Conditioning, Generator, TrajectoryObserver, default_capture
from diffusion.interventions.records import PRIOR, Steering

if TYPE_CHECKING:
    import torch

# torch is imported where it is used: a stage 2 rerun with every prompt done builds this generator for its
# provenance only, and importing torch would take most of that rerun's time.
REFERENCE_NOTE = "reference model, not a trained one"
SCHEDULER = "CosineDPMSolverMultistepScheduler"
PRIOR_SHARPNESS = 4.0
SIGMA_DATA = 1.0
# Eigen-directions of the bank's Gram matrix below this fraction of the largest are numerical zeros (the default
# bank's spectrum falls from 3e-3 to 2e-16 of the largest at its rank, 227).
RANK_TOLERANCE = 1e-10


@dataclass(frozen=True)
class IdealPreset:
    steps: int
    sigma_min: float
    sigma_max: float
    source: str
    # A planted preset draws from the clips of the planted geometry (diffusion/planted.py) with no prompt prior,
    # so that the sampler's noise, not the prompt, decides every concept, each at its group's planted time.
    planted: bool = False


PRESETS = {
    # The sampler settings of the reference study's Stable Audio Open runs.
    "reference": IdealPreset(steps=50, sigma_min=0.01, sigma_max=100.0,
                             source="reference study: dpmpp-2m-sde, sigma 0.01-100, 50 steps"),
    # Stable Audio Open's model-card schedule, to see how a larger sigma_min leaves the end of the trajectory.
    "model-card": IdealPreset(steps=100, sigma_min=0.3, sigma_max=500.0,
                              source="stabilityai/stable-audio-open-1.0 card: sigma 0.3-500, 100 steps"),
    # The reference study's sampler on the planted geometry: concepts decided at known, different steps.
    "planted": IdealPreset(steps=50, sigma_min=0.01, sigma_max=100.0,
                           source="reference study's sampler on the planted geometry (diffusion/planted.py), "
                                  "no prompt prior", planted=True),
}
DEFAULT_PRESET = "reference"


class PerSampleGaussianNoise:
    """The SDE noise of a scheduler step, N(0, I) per sample from that sample's own generator."""

    def __init__(self, generators: Sequence[torch.Generator], row_shape):
        self.generators, self.row_shape = list(generators), tuple(row_shape)

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        import torch

        return torch.stack([torch.randn(self.row_shape, generator=generator) for generator in self.generators])


@dataclass
class LatentSpace:
    """The bank in latent coordinates for one clip length."""
    samples: int
    coordinates: np.ndarray      # float64 [clips, rank]: clip i's latent c_i
    half_sq_norms: np.ndarray    # float64 [clips]: ||c_i||² / 2
    # float64 [rank, samples]: latent -> waveform. In float32 the rounding of a product depends on how many
    # rows share the matmul, and a wav could then change with --decode-batch-size.
    decoder: torch.Tensor

    @property
    def rank(self) -> int:
        return self.coordinates.shape[1]


class IdealGenerator(Generator):
    name = "ideal"
    channels = 1
    # The realised content of the clean estimate (stage 6's second yardstick): every label a bank clip can carry.
    content_labels = FAMILIES + (DRUM,) + SOURCES
    # Steering tilts the concept prior (PriorSteering) from its start step on; the clock is the sampler's step.
    intervention_site = PRIOR
    intervention_clock = "denoising_step"
    # The exact probability, at every step, that the finished clip carries each concept its clips can realise.
    truth_concepts = content_concepts()
    options = planted.OPTIONS

    def __init__(self, model=None, preset: str | None = None, steps: int | None = None, device: str | None = None,
                 dtype: str | None = None, decode_dtype: str | None = None, options: dict | None = None, *,
                 bank: ReferenceBank | None = None):
        """`model`: a bank directory (default: the default soundfont bank's cache, rendered on first use);
        `options`: --generator-option settings (planted.OPTIONS); `bank`: a bank object to use instead (tests)."""
        preset = preset or DEFAULT_PRESET
        if preset not in PRESETS:
            raise InputError(f"unknown preset {preset!r} for the ideal generator — "
                             f"choose one of {', '.join(PRESETS)}")
        for flag, value in (("--dtype", dtype), ("--decode-dtype", decode_dtype)):
            if value not in (None, "fp32"):
                raise InputError(f"{flag} {value}: the ideal generator computes in fp32 (fp64 logits) — "
                                 f"drop {flag} or pass fp32")
        if device not in (None, "cpu"):
            raise InputError(f"--device {device}: the ideal generator runs on the CPU (its model is a few hundred "
                             "numbers per step) — drop --device or pass cpu")
        self.preset_name = preset
        self.preset = PRESETS[preset]
        self.geometry, self.prior_sharpness = planted.parse_options(
            options, self.preset.planted, 0.0 if self.preset.planted else PRIOR_SHARPNESS)
        self.steps = int(steps) if steps is not None else self.preset.steps
        if self.steps < 1:
            raise InputError(f"--steps {self.steps} must be at least 1")
        self.axis = denoising_axis(self.steps)
        self.default_capture = default_capture(self.axis.positions)

        self._bank = bank
        self._bank_dir = None
        self._bank_sidecar = None
        if bank is not None:
            self.sample_rate, bank_samples = bank.sample_rate, bank.audio.shape[1]
            self._model = "bank given in memory"
        else:
            # Reading the sidecar is enough to know the rate and length; the clips load when first sampled.
            given = Path(model).expanduser() if model is not None else None
            if given is not None and given.exists() and not given.is_dir():
                raise InputError(f"{given}: is a file — the ideal generator's --model is a bank directory "
                                 "(omit it to use the default soundfont bank)")
            if given is not None and (given / "bank.json").is_file():
                self._bank_sidecar = reference_bank.read_bank_sidecar(given)
                self.sample_rate, bank_samples = self._bank_sidecar["sample_rate"], self._bank_sidecar["samples"]
            else:
                self.sample_rate = reference_bank.SAMPLE_RATE
                bank_samples = int(round(reference_bank.CLIP_SECONDS * reference_bank.SAMPLE_RATE))
            self._model = model
        self.max_seconds = bank_samples / self.sample_rate
        self.default_seconds = self.max_seconds

        self._scheduler = None
        # Caches of what the bank determines (one latent space per clip length): no state of any sample() call.
        self._spaces: dict[int, LatentSpace] = {}
        self._label_masks = None
        self._concept_masks = None
        self._planted = None

    @property
    def scheduler(self):
        """Built on first use: importing diffusers takes seconds, and a rerun with every prompt done needs none."""
        if self._scheduler is None:
            from diffusers import CosineDPMSolverMultistepScheduler

            # Always the SDE DPM-Solver++ ("sde-dpmsolver++"); diffusers' class has no ODE variant.
            self._scheduler = CosineDPMSolverMultistepScheduler(
                sigma_min=self.preset.sigma_min, sigma_max=self.preset.sigma_max, sigma_data=SIGMA_DATA,
                sigma_schedule="exponential", solver_order=2, prediction_type="v_prediction",
                final_sigmas_type="zero")
        return self._scheduler

    # -- the bank ------------------------------------------------------------------------------------------------

    def _ensure_bank_dir(self) -> None:
        if self._bank is None and self._bank_sidecar is None:
            self._bank_dir, self._bank_sidecar = reference_bank.open_bank_dir(self._model)
        elif self._bank is None and self._bank_dir is None:
            self._bank_dir = Path(self._model).expanduser()

    @property
    def bank(self) -> ReferenceBank:
        """The clips the model draws from: the bank's, or with a planted geometry the planted clips made of them."""
        return self.source_bank if self.geometry is None else self.planted_clips.bank

    @property
    def source_bank(self) -> ReferenceBank:
        if self._bank is None:
            self._ensure_bank_dir()
            self._bank = reference_bank.load_bank(self._bank_dir)
        return self._bank

    @property
    def planted_clips(self) -> planted.PlantedBank:
        if self._planted is None:
            self._planted = planted.planted_bank(self.source_bank, self.geometry)
        return self._planted

    def _bank_identity(self) -> tuple[str, str, int]:
        if self._bank is not None and self._bank_sidecar is None:
            return self._model, self._bank.sha256, len(self._bank.clip_ids)
        self._ensure_bank_dir()
        recipe = self._bank_sidecar.get("recipe") or {}
        model = (f"soundfont bank ({recipe['soundfont']}, {len(recipe['programs'])} bank programs)"
                 if "soundfont" in recipe else f"bank directory {self._bank_dir}")
        return model, self._bank_sidecar["bank_sha256"], int(self._bank_sidecar["clips"])

    # -- the Generator interface ---------------------------------------------------------------------------------

    def prepare(self, interventions: Sequence = ()) -> None:
        """Load the bank (and the planted clips made of it) now, and tilt the prior once for every steering: a
        corrupt bank, or a concept no bank clip carries, is refused before stage 2 writes."""
        for steering in interventions:
            if isinstance(steering, Steering) and steering.strength != 0:
                prior_direction(steering, self.bank.labels)
        self.bank

    def provenance(self) -> dict:
        model, bank_sha256, clips = self._bank_identity()
        sampler = {key: value for key, value in asdict(self.preset).items() if key != "planted"}
        settings = {**sampler, "steps": self.steps, "sigma_data": SIGMA_DATA,
                    "scheduler": SCHEDULER, "solver": "sde-dpmsolver++ order 2",
                    "noise": "per-sample Gaussian, seed + row", "prior_sharpness": self.prior_sharpness,
                    "latent_unit": f"waveform / ({CLIP_RMS} * sqrt(samples))", "bank_clips": clips}
        if self.geometry is not None:
            # The planted clips and latents follow from the bank and the geometry; the geometry is recorded whole.
            settings.update(latent_unit="planted geometry (diffusion/planted.py)",
                            planted_geometry=self.geometry.record(), planted_clips=len(self.geometry.cells()))
        return {
            "generator": self.name,
            "model": model,
            "checkpoint_sha256": bank_sha256,
            "model_kind": REFERENCE_NOTE,
            "preset": self.preset_name,
            "settings": settings,
            "steps": self.steps,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "max_seconds": self.max_seconds,
        }

    def sample(self, conditioning: Conditioning, seed: int, num_samples: int, seconds: float,
               observer: TrajectoryObserver | None,
               weights_callback: Callable[[int, float, np.ndarray], None] | None = None) -> torch.Tensor:
        """Sample `num_samples` trajectories of one prompt. The observer gets, with each step, the realised
        content of the clean estimate (`content_of`); `weights_callback(step, sigma, weights [samples, clips])`
        sees the posterior weights over the bank themselves (tests and analyses). `conditioning.steering` (where
        "prior") tilts the prior towards the concept's clips from its start step on (PriorSteering)."""
        import torch

        if not isinstance(conditioning.prompt, str) or not conditioning.prompt.strip():
            raise InputError("empty prompt — every prompt needs text (fix prompts/annotated.csv or rerun stage 1)")
        if num_samples < 1:
            raise InputError(f"--samples {num_samples} must be at least 1")
        space = self.latent_space(seconds)
        log_prior = self.log_prior(conditioning.labels)
        steering = None
        if conditioning.steering is not None and conditioning.steering.strength != 0:
            steering = PriorSteering(conditioning.steering, self.bank.labels)
        scheduler = self.scheduler
        scheduler.set_timesteps(self.steps)
        generators = [torch.Generator().manual_seed(int(seed) + row) for row in range(num_samples)]
        latents = torch.stack([torch.randn(space.rank, generator=generator)
                               for generator in generators]) * scheduler.init_noise_sigma
        scheduler.noise_sampler = PerSampleGaussianNoise(generators, (space.rank,))
        for step, timestep in enumerate(scheduler.timesteps):
            model_input = scheduler.scale_model_input(latents, timestep)
            sigma = scheduler.sigmas[scheduler.step_index]
            step_prior = log_prior if steering is None else steering.log_prior(step, log_prior)
            velocity, weights = self.velocity(model_input, float(sigma), space, step_prior)
            latents = scheduler.step(velocity, timestep, latents).prev_sample
            if observer is not None:
                # model_outputs[-1] is the scheduler's conversion of our v back into x0 at this step's sigma.
                observer(step, float(sigma), latents, scheduler.model_outputs[-1], self.content_of(weights),
                         truth=self.truth_of(weights))
            if weights_callback is not None:
                weights_callback(step, float(sigma), weights)
        return latents

    def decode(self, latents: torch.Tensor, seconds: float) -> np.ndarray:
        """Latents [batch, rank] of `seconds`-long clips -> float32 audio [batch, 1, samples]."""
        import torch

        space = self.latent_space(seconds)
        audio = (latents.to(dtype=torch.float64) @ space.decoder).to(torch.float32)
        return audio.unsqueeze(1).cpu().numpy()

    def content_of(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """The realised content of a clean estimate: for each label, the posterior weight of the bank clips that
        carry it (float64 [samples] in [0, 1]). At the end of a trajectory the weights sit on one clip, and the
        content is that clip's labels (1 for each, 0 for the rest); a mix clip carries two families."""
        if self._label_masks is None:
            self._label_masks = np.array([[label in clip_labels for clip_labels in self.bank.labels]
                                          for label in self.content_labels], dtype=np.float64)
        masses = np.asarray(weights, dtype=np.float64) @ self._label_masks.T
        return {label: masses[:, column] for column, label in enumerate(self.content_labels)}

    def truth_of(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """The exact probability that the finished clip carries each of `truth_concepts` (float64 [samples]): the
        posterior weight of the clips whose labels satisfy the concept's rule (the oracle reader of data/truth.py).
        Under the exact sampler the posterior at a step is the distribution of the clip the trajectory ends on."""
        if self._concept_masks is None:
            self._concept_masks = np.array([[BY_NAME[name].prompt_has(clip_labels) for clip_labels in self.bank.labels]
                                            for name in self.truth_concepts], dtype=np.float64)
        probabilities = np.asarray(weights, dtype=np.float64) @ self._concept_masks.T
        return {name: probabilities[:, column] for column, name in enumerate(self.truth_concepts)}

    # -- the closed-form model -----------------------------------------------------------------------------------

    def velocity(self, model_input: torch.Tensor, sigma: float, space: LatentSpace,
                 log_prior: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """The "network": preconditioned input -> the v-prediction whose conversion is the closed-form x0."""
        import torch

        scale = math.sqrt(sigma ** 2 + SIGMA_DATA ** 2)
        x = model_input.numpy().astype(np.float64) * scale      # undo c_in = 1 / sqrt(sigma² + sigma_data²)
        x0, weights = self.denoise(x, sigma, space, log_prior)
        c_skip = SIGMA_DATA ** 2 / scale ** 2
        c_out = -sigma * SIGMA_DATA / scale
        return torch.from_numpy((x0 - c_skip * x) / c_out).to(model_input.dtype), weights

    def denoise(self, x: np.ndarray, sigma: float, space: LatentSpace,
                log_prior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean over the bank: x [batch, rank] -> (x0 float64 [batch, rank], weights [batch, clips]).

        numpy, not torch: torch's reductions on a [2, 160] array cost ~13 ms each on 2 busy cores (its thread
        pool waits for a core), numpy's ~20 µs.
        """
        x = np.asarray(x, dtype=np.float64)
        # -||x - c_i||²/(2 sigma²) up to the term in ||x||², which is the same for every clip.
        logits = log_prior + (x @ space.coordinates.T - space.half_sq_norms) / sigma ** 2
        logits -= logits.max(axis=-1, keepdims=True)
        weights = np.exp(logits)
        weights /= weights.sum(axis=-1, keepdims=True)
        return weights @ space.coordinates, weights

    def log_prior(self, labels: Sequence[str]) -> np.ndarray:
        """log pi over the bank's clips for a prompt's labels (module docstring), normalised; with a planted
        geometry, the prompt's term is added to the geometry's base measure (diffusion/planted.py)."""
        base = np.zeros(len(self.bank.labels)) if self.geometry is None else self.planted_clips.log_base
        if self.prior_sharpness == 0:
            return base - np.logaddexp.reduce(base)
        prompt_families, prompt_sources = family_labels(labels), source_labels(labels)
        scores = np.zeros(len(self.bank.labels))
        for index, clip_labels in enumerate(self.bank.labels):
            clip_families, clip_sources = family_labels(clip_labels), source_labels(clip_labels)
            if prompt_families:
                scores[index] += len(clip_families & prompt_families) - len(clip_families - prompt_families)
            if prompt_sources and clip_sources:
                scores[index] += 1.0 if clip_sources & prompt_sources else -1.0
        logits = base + self.prior_sharpness * scores
        return logits - np.logaddexp.reduce(logits)

    def latent_space(self, seconds: float) -> LatentSpace:
        """The bank's coordinates and decoder for clips of `seconds` (the first seconds of every bank clip)."""
        import torch

        samples = int(round(float(seconds) * self.sample_rate))
        if not 1 <= samples <= int(round(self.max_seconds * self.sample_rate)):
            raise InputError(f"seconds_total {seconds:g} is outside (0, {self.max_seconds:g}] — the ideal "
                             f"generator's bank clips are {self.max_seconds:g} s long; pass a shorter --seconds")
        if samples not in self._spaces and self.geometry is not None:
            # Designed latents; the least-squares decoder reproduces the first `samples` of every clip exactly.
            coordinates = self.planted_clips.coordinates
            self._spaces[samples] = LatentSpace(samples, coordinates, 0.5 * np.square(coordinates).sum(axis=1),
                                                torch.from_numpy(planted.decoder(coordinates,
                                                                                 self.bank.audio[:, :samples])))
        if samples not in self._spaces:
            audio = self.bank.audio[:, :samples].astype(np.float64)
            unit = CLIP_RMS * math.sqrt(samples)
            gram = (audio @ audio.T) / unit ** 2
            eigenvalues, eigenvectors = np.linalg.eigh(gram)
            keep = eigenvalues > RANK_TOLERANCE * eigenvalues.max()
            eigenvalues, eigenvectors = eigenvalues[keep], eigenvectors[:, keep]
            # Orthonormal basis Q = X^T V diag(lambda^-1/2) (X: clips in latent units): coordinates X Q = V
            # diag(lambda^1/2); decoding z -> unit * Q z = z diag(lambda^-1/2) V^T X_audio.
            coordinates = eigenvectors * np.sqrt(eigenvalues)
            decoder = (eigenvectors / np.sqrt(eigenvalues)).T @ audio
            self._spaces[samples] = LatentSpace(samples, coordinates, 0.5 * np.square(coordinates).sum(axis=1),
                                                torch.from_numpy(decoder))
        return self._spaces[samples]


# -- steering: tilting the concept prior ------------------------------------------------------------------------------

def prior_direction(steering: Steering, clip_labels: Sequence[Sequence[str]]) -> np.ndarray:
    """The tilt d over the bank's clips: 1 on the clips whose labels carry the concept (the concept's prompt
    rule applied to the clip's labels), else 0. The random baseline marks as many clips chosen at random
    (same norm, no meaning), seeded by (seed, concept)."""
    concept = BY_NAME[steering.concept]
    carries = np.array([concept.prompt_has(labels) for labels in clip_labels], dtype=np.float64)
    count = int(carries.sum())
    if count == 0:
        raise InputError(f"intervention '{steering.id}': concept '{steering.concept}' marks no clip of the ideal "
                         "generator's bank (bank clips carry family, drum and source labels) — steer a family, source "
                         "or higher concept")
    if count == len(carries):
        raise InputError(f"intervention '{steering.id}': every bank clip carries '{steering.concept}', so tilting "
                         "the prior towards it changes nothing — steer another concept")
    if not steering.is_baseline:
        return carries
    rng = np.random.default_rng([int(steering.seed), zlib.crc32(steering.concept.encode())])
    random = np.zeros(len(carries))
    random[rng.choice(len(carries), count, replace=False)] = 1.0
    return random


class PriorSteering:
    """log pi_i + s d_i (renormalised) at the steps where the steering is active; the prompt's prior elsewhere."""

    def __init__(self, steering: Steering, clip_labels: Sequence[Sequence[str]]):
        self.steering = steering
        self.tilt = steering.strength * prior_direction(steering, clip_labels)
        self._tilted = None   # (the prompt's log prior, its tilted version): one per sampler call

    def log_prior(self, step: int, log_prior: np.ndarray) -> np.ndarray:
        if not self.steering.active(step):
            return log_prior
        if self._tilted is None or self._tilted[0] is not log_prior:
            tilted = log_prior + self.tilt
            self._tilted = (log_prior, tilted - np.logaddexp.reduce(tilted))
        return self._tilted[1]
