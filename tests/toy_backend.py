"""A toy generator backend with steering, in one file: what a new backend with interventions needs.

A tiny torch denoiser (a stack of residual blocks, conditioned on a hash of the prompt) predicts the noise, and
diffusers' EulerDiscreteScheduler runs the standard loop (scale_model_input -> model -> scheduler.step), observed
at every step. For interventions the backend only declares where (its blocks as hook points,
`blocks.{b}.hook_resid_post`) and when (the scheduler's own step, `StepClock`), and wraps its sampler call in the
generic steering hooks (diffusion/interventions/steering.py); stage 2 needs one registry line for it:
GENERATORS["toy"] = "tests.toy_backend:ToyGenerator".
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from data.generation import denoising_axis
from data.stage import InputError
from diffusion.base import Conditioning, Generator, TrajectoryObserver, default_capture
from diffusion.interventions.hooks import StepClock, hooks_applied, resid_post
from diffusion.interventions.steering import steering_hooks

TOKENS, DIM, BLOCKS, SAMPLE_RATE, SECONDS = 4, 8, 3, 8000, 0.25


class ToyBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(DIM, DIM)

    def forward(self, hidden: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return hidden + torch.tanh(self.linear(hidden) + condition[:, None, :])


class ToyDenoiser(torch.nn.Module):
    """latents [B, TOKENS, DIM], timestep, condition [B, DIM] -> predicted noise [B, TOKENS, DIM]."""

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(ToyBlock() for _ in range(BLOCKS))
        self.out = torch.nn.Linear(DIM, DIM)

    def forward(self, latents: torch.Tensor, timestep, condition: torch.Tensor) -> torch.Tensor:
        hidden = latents + float(timestep) / 1000.0
        for block in self.blocks:
            hidden = block(hidden, condition)
        return self.out(hidden)


class ToyGenerator(Generator):
    name = "toy"
    channels = 1
    sample_rate = SAMPLE_RATE
    max_seconds = default_seconds = SECONDS
    intervention_site = "blocks"
    intervention_clock = "denoising_step"

    def __init__(self, model=None, preset=None, steps=None, device=None, dtype=None, decode_dtype=None):
        for flag, value in (("--model", model), ("--preset", preset), ("--dtype", dtype),
                            ("--decode-dtype", decode_dtype)):
            if value is not None:
                raise InputError(f"{flag} does not apply to the toy generator — drop it")
        self.steps = int(steps or 8)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.model = ToyDenoiser().eval()
            self.decoder = torch.randn(TOKENS * DIM, int(SAMPLE_RATE * SECONDS), dtype=torch.float64) * 0.01
        from diffusers import EulerDiscreteScheduler

        self.scheduler = EulerDiscreteScheduler(num_train_timesteps=1000)
        self.axis = denoising_axis(self.steps)
        self.default_capture = default_capture(self.axis.positions)

    def provenance(self) -> dict:
        weights = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in self.model.parameters()))
        return {"model": "toy denoiser", "checkpoint_sha256": weights.hexdigest(), "preset": "reference",
                "steps": self.steps}

    def hook_points(self) -> dict[str, torch.nn.Module]:
        return {resid_post(block): module for block, module in enumerate(self.model.blocks)}

    def block_width(self) -> int:
        return DIM

    def hook_clock(self) -> StepClock:
        return StepClock(self.scheduler)

    def sample(self, conditioning: Conditioning, seed: int, num_samples: int, seconds: float,
               observer: TrajectoryObserver | None) -> torch.Tensor:
        digest = hashlib.sha256(conditioning.prompt.encode()).digest()
        condition = torch.tensor(np.frombuffer(digest[:DIM], dtype=np.uint8) / 255.0, dtype=torch.float32)
        condition = condition.expand(num_samples, DIM)
        generators = [torch.Generator().manual_seed(int(seed) + row) for row in range(num_samples)]
        scheduler = self.scheduler
        scheduler.set_timesteps(self.steps)
        latents = torch.stack([torch.randn(TOKENS, DIM, generator=g) for g in generators]) * scheduler.init_noise_sigma
        with torch.inference_mode(), hooks_applied(self.hook_points(),
                                                   steering_hooks(self, conditioning.steering, num_samples)):
            for step, timestep in enumerate(scheduler.timesteps):
                sigma = float(scheduler.sigmas[step])
                noise = self.model(scheduler.scale_model_input(latents, timestep), timestep, condition)
                output = scheduler.step(noise, timestep, latents, generator=generators[0])
                latents = output.prev_sample
                if observer is not None:
                    observer(step, sigma, latents, output.pred_original_sample)
        return latents

    def decode(self, latents: torch.Tensor, seconds: float) -> np.ndarray:
        samples = int(round(seconds * SAMPLE_RATE))
        audio = latents.reshape(latents.shape[0], -1).to(torch.float64) @ self.decoder[:, :samples]
        return audio.to(torch.float32)[:, None, :].numpy()
