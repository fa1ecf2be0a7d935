"""`--generator organism`: the trained model organism (diffusion/organism/) sampled like the ideal reference model.

The organism is a tiny StableAudioDiTModel trained on the planted-timing bank of the ideal model
(diffusion/planted.py). This backend runs the ideal model's sampler loop (CosineDPMSolverMultistepScheduler with
the same sigma schedule, preconditioning and per-sample noise, diffusion/ideal.py) with the network's v-prediction
in place of the closed form, and decodes with the reference model's own linear decoder, so a latent means what it
means for `--generator ideal --preset planted` and every clip is comparable with that model's on the same seeds.

What it knows of its output. With every step the observer gets, as the ideal model gives it, the realised content
and the truth — computed by the closed form at the latent the network is given at that step: the posterior mass
of each label, and of each concept's clips, under the exact denoiser of the planted bank. That is the exact
answer of the ideal sampler continued from the organism's state; at the last step (sigma 0.01) it is the labels
of the bank clip the organism's sample sits on, i.e. what the organism made.

Prompts. `--generator-option condition=none` (default) shows the network no labels: like the planted preset,
whose prior has no prompt term, the sampler's noise decides every concept. `condition=labels` shows it the
prompt's annotation labels that its label tokens know; the closed form then uses the training posterior for
those labels (diffusion/organism/conditioning.py).

Hook points are Stable Audio's (diffusion/stable_audio.py): `blocks.{b}.hook_resid_post` is the output of the
transformer's block b, `blocks.{b}.attn.hook_out`, `.cross_attn.hook_out`, `.mlp.hook_out` its self-attention,
cross-attention and feed-forward outputs; the clock is the scheduler's step_index. So `--intervene` steering on
blocks runs unchanged; the network runs once per step with one row per sample (no classifier-free guidance).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from data.generation import denoising_axis
from data.stage import InputError
from data.truth import content_concepts
from diffusion.base import Conditioning, Generator, TrajectoryObserver, default_capture
from diffusion.ideal import IdealGenerator, PerSampleGaussianNoise
from diffusion.interventions.hooks import (COMPONENT_POINTS, Hooks, StepClock, blocks_of, component_out, hooks_applied,
                                          resid_post)
from diffusion.interventions.steering import steering_hooks
from diffusion.organism.banks import from_planted
from diffusion.organism.checkpoint import RECORD, WEIGHTS, load_checkpoint, read_record
from diffusion.organism.conditioning import log_prior, posterior_mean

if TYPE_CHECKING:
    import torch

# The committed checkpoint `make organism` reproduces (its recipe, loss log and evaluation beside it).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "planted"
PRESET = "planted"
CONDITIONS = ("none", "labels")
OPTIONS = {
    "condition": "none (default: the network sees no labels, as the planted preset's prior ignores the prompt) or "
                 "labels (the prompt's annotation labels condition the network and the closed form)",
    "bank": "the reference model's bank directory (default: the default soundfont bank, rendered on first use)",
    "residuals": "none (default) or blocks (every block's output, mean over its tokens, at each captured step: "
                 "stage 2 writes them to generated/activations/ for stage 6 --space activations)",
}
RESIDUALS = ("none", "blocks")
# The DiT block's submodules behind each component hook point.
SUBMODULES = {"attn": "attn1", "cross_attn": "attn2", "mlp": "ff"}


class OrganismGenerator(Generator):
    name = "organism"
    channels = 1
    content_labels = IdealGenerator.content_labels
    truth_concepts = content_concepts()
    options = OPTIONS
    intervention_site = "blocks"
    intervention_clock = "denoising_step"

    def __init__(self, model=None, preset: str | None = None, steps: int | None = None, device: str | None = None,
                 dtype: str | None = None, decode_dtype: str | None = None, options: dict | None = None):
        """`model`: an organism checkpoint directory (default: the committed one, DEFAULT_CHECKPOINT)."""
        if preset not in (None, PRESET):
            raise InputError(f"unknown preset {preset!r} for the organism — it samples the planted bank it was "
                             f"trained on: drop --preset or pass {PRESET}")
        for flag, value in (("--dtype", dtype), ("--decode-dtype", decode_dtype)):
            if value not in (None, "fp32"):
                raise InputError(f"{flag} {value}: the organism runs in fp32 — drop {flag} or pass fp32")
        if device not in (None, "cpu"):
            raise InputError(f"--device {device}: the organism runs on the CPU (1.3 M parameters) — drop --device")
        options = dict(options or {})
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise InputError(f"--generator-option {unknown[0]}: unknown for organism — choose from "
                             f"{', '.join(OPTIONS)}")
        self.condition = options.get("condition", "none")
        if self.condition not in CONDITIONS:
            raise InputError(f"--generator-option condition={self.condition}: choose one of {', '.join(CONDITIONS)}")
        self.residuals = options.get("residuals", "none")
        if self.residuals not in RESIDUALS:
            raise InputError(f"--generator-option residuals={self.residuals}: choose one of {', '.join(RESIDUALS)}")
        self.checkpoint = Path(model).expanduser() if model is not None else DEFAULT_CHECKPOINT
        if not (self.checkpoint / RECORD).is_file() or not (self.checkpoint / WEIGHTS).is_file():
            raise InputError(f"{self.checkpoint}: not an organism checkpoint ({RECORD} and {WEIGHTS} expected) — "
                             "run `make organism` and pass its folder as --model, or omit --model")
        self.record = read_record(self.checkpoint)
        self.steps = int(steps) if steps is not None else 50
        if self.steps < 1:
            raise InputError(f"--steps {self.steps} must be at least 1")
        # The reference model: the planted bank, its decoder, its closed form, content and truth.
        self.reference = IdealGenerator(model=options.get("bank"), preset=PRESET)
        self.sample_rate, self.max_seconds = self.reference.sample_rate, self.reference.max_seconds
        self.default_seconds = self.max_seconds
        self.axis = denoising_axis(self.steps)
        self.default_capture = default_capture(self.axis.positions)
        self._model = None
        self._bank = None

    # -- loading ---------------------------------------------------------------------------------------------------

    @property
    def model(self):
        """The organism's network (EMA weights), loaded on first use; refused if trained on another bank."""
        if self._model is None:
            model, _ = load_checkpoint(self.checkpoint)
            if self.bank.sha256 != self.record["bank"]["sha256"]:
                raise InputError(f"{self.checkpoint / RECORD}: trained on another bank than the planted bank built "
                                 "now — retrain with `make organism` (or pass the bank it was trained on)")
            self._model = model
        return self._model

    @property
    def bank(self):
        if self._bank is None:
            self._bank = from_planted(self.reference.planted_clips, self.reference.geometry)
        return self._bank

    @property
    def scheduler(self):
        """The ideal model's scheduler (same preset, same configuration)."""
        return self.reference.scheduler

    def prepare(self, interventions: Sequence = ()) -> None:
        self.model

    def provenance(self) -> dict:
        record = self.record
        reference = self.reference.provenance()
        return {
            "generator": self.name,
            "model": str(self.checkpoint),
            "checkpoint_sha256": record["weights_sha256"],
            "model_kind": "trained model organism (tiny StableAudioDiTModel) of the planted reference model",
            "preset": PRESET,
            "residuals": self.residuals,
            "settings": {"condition": self.condition, "steps": self.steps, "recipe": record["recipe"],
                         "bank_sha256": record["bank"]["sha256"], "reference": reference["settings"],
                         "reference_bank": reference["model"], "reference_bank_sha256": reference["checkpoint_sha256"]},
            "steps": self.steps,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "max_seconds": self.max_seconds,
        }

    # -- sampling ----------------------------------------------------------------------------------------------------

    def shown_labels(self, labels: Sequence[str]) -> tuple[str, ...]:
        """The prompt labels the network sees: none, or those its label tokens know (condition=labels)."""
        if self.condition == "none":
            return ()
        return tuple(label for label in labels if label in self.model.encoder.labels)

    def sample(self, conditioning: Conditioning, seed: int, num_samples: int, seconds: float,
               observer: TrajectoryObserver | None) -> torch.Tensor:
        if not isinstance(conditioning.prompt, str) or not conditioning.prompt.strip():
            raise InputError("empty prompt — every prompt needs text (fix prompts/annotated.csv or rerun stage 1)")
        if num_samples < 1:
            raise InputError(f"--samples {num_samples} must be at least 1")
        self.reference.latent_space(seconds)   # refuses a clip longer than the bank's
        rows = [int(seed) + row for row in range(num_samples)]
        with hooks_applied(self.hook_points(), steering_hooks(self, conditioning.steering, num_samples)):
            return self.sample_rows(conditioning.labels, rows, observer)

    def sample_rows(self, labels: Sequence[str], row_seeds: Sequence[int],
                    observer: TrajectoryObserver | None) -> torch.Tensor:
        """The sampler loop for rows seeded by `row_seeds` (any seeds: an analysis that runs the same trajectory
        under several interventions in one batch repeats its seed), under whatever hooks the caller applied."""
        import torch

        model, bank, num_samples = self.model, self.bank, len(row_seeds)
        shown = self.shown_labels(labels)
        try:
            prior = log_prior(shown, bank.labels, self.record["recipe"]["keep_probability"], bank.log_base)
        except ValueError:
            raise InputError(f"prompt labels {sorted(shown)}: no planted clip carries all of them — use "
                             "condition=none or a prompt the planted bank can realise") from None
        present = model.encoder.present([shown] * num_samples)
        scheduler = self.scheduler
        scheduler.set_timesteps(self.steps)
        generators = [torch.Generator().manual_seed(int(seed)) for seed in row_seeds]
        latents = torch.stack([torch.randn(bank.dim, generator=g) for g in generators]) * scheduler.init_noise_sigma
        scheduler.noise_sampler = PerSampleGaussianNoise(generators, (bank.dim,))
        kept = {} if observer is None or self.residuals == "none" else self.block_capture(observer.capture)
        for step, timestep in enumerate(scheduler.timesteps):
            model_input = scheduler.scale_model_input(latents, timestep)
            sigma = scheduler.sigmas[scheduler.step_index]
            # The closed form at the latent the network is given: what the ideal sampler would make from here.
            _, weights = posterior_mean(latents.double().numpy(), float(sigma), bank.latents, prior[None, :])
            with torch.no_grad(), hooks_applied(self.hook_points(), kept.get(step, (Hooks(), None))[0]):
                velocity = model.velocity(model_input, sigma.expand(num_samples).float(), present)
            latents = scheduler.step(velocity, timestep, latents).prev_sample
            if observer is not None:
                observer(step, float(sigma), latents, scheduler.model_outputs[-1],
                         self.reference.content_of(weights), truth=self.reference.truth_of(weights))
            if step in kept:
                observer.keep_activations(*self.block_rows(step, kept[step][1]))
        return latents

    def block_capture(self, steps) -> dict:
        """Per captured step, (hooks, {block: float32 [samples, dim]}): the hooks keep every block's output, its
        mean over tokens, after any steering hook on the same point (they attach later, so they see its output)."""
        captures = {}
        for step in steps:
            outputs = {}

            def keep(block, outputs=outputs):
                def hook(module, inputs, output):
                    hidden = output if not isinstance(output, tuple) else output[0]
                    outputs[block] = hidden.detach().float().mean(dim=1).numpy()
                return hook
            captures[int(step)] = (Hooks([(resid_post(block), keep(block))
                                          for block in blocks_of(self.hook_points())]), outputs)
        return captures

    @staticmethod
    def block_rows(step: int, outputs: dict) -> tuple[list[dict], np.ndarray]:
        """keep_activations' rows: one per (sample, block) at this step, pooled (mean) over the block's tokens."""
        blocks = sorted(outputs)
        samples = outputs[blocks[0]].shape[0]
        rows = [{"sample": sample, "block": block, "step": int(step), "pool": "mean"}
                for sample in range(samples) for block in blocks]
        return rows, np.stack([outputs[block][sample] for sample in range(samples) for block in blocks])

    def decode(self, latents: torch.Tensor, seconds: float) -> np.ndarray:
        """The reference model's decoder: latents [batch, dim] -> float32 audio [batch, 1, samples]."""
        return self.reference.decode(latents, seconds)

    # -- hook points ---------------------------------------------------------------------------------------------------

    def hook_points(self) -> dict:
        points = {}
        for block, module in enumerate(self.model.transformer.transformer_blocks):
            points[resid_post(block)] = module
            for component, point in COMPONENT_POINTS.items():
                points[component_out(block, component)] = getattr(module, SUBMODULES[point])
        return points

    def block_width(self) -> int:
        return int(self.model.transformer.inner_dim)

    def hook_clock(self) -> StepClock:
        return StepClock(self.scheduler)
