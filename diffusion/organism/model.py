"""The organism's network: a tiny diffusers StableAudioDiTModel, its label encoder and its preconditioning.

The transformer is the class Stable Audio Open's pipeline runs (only the widths are small), so every hook,
capture and intervention written for Stable Audio's DiT blocks runs on it unchanged. It is called the way
StableAudioPipeline calls it: the scheduler's preconditioned input c_in(sigma) · x, the scheduler's timestep
(atan(sigma) · 2 / pi for the cosine DPM-Solver), conditioning tokens as `encoder_hidden_states`, a global
token and the rotary embedding; it answers a v-prediction, which the scheduler turns into the clean estimate
x0 = c_skip · x + c_out · v (EDM preconditioning with sigma_data, the ideal model's, diffusion/ideal.py).

Latent layout. A bank latent is a vector of `dim` numbers; the DiT wants [channels, frames]. The vector is
zero-padded to channels · frames and laid out frame-major (frame f holds coordinates f·channels ...
(f+1)·channels − 1). The padding is not part of the bank's space: the sampler only ever feeds the network
latents with zero padding, because the training target there is zero and its output there is dropped.

Conditioning. The labels a bank clip can carry (FAMILIES, "drum", SOURCES) are one token slot each; slot j's
token is a learned "label j present" or "label j absent" vector (`LabelEncoder`), so the unconditional model
is the all-absent sequence. A small learned table, not a text encoder: the organism must know the prompt's
labels exactly so that its ideal answer (diffusion/organism/conditioning.py) is computable.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

SIGMA_DATA = 1.0


@dataclass(frozen=True)
class NetworkConfig:
    """The organism's shape. `channels` · `frames` must hold the bank latent's dim."""
    channels: int = 32
    frames: int = 12
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 32
    cross_dim: int = 64
    time_proj_dim: int = 64

    @property
    def width(self) -> int:
        return self.heads * self.head_dim


def layout_for(dim: int, channels: int) -> tuple[int, int]:
    """(channels, frames) holding a `dim`-vector with `channels` numbers per frame."""
    return channels, math.ceil(dim / channels)


def build_transformer(config: NetworkConfig):
    from diffusers import StableAudioDiTModel

    return StableAudioDiTModel(sample_size=config.frames, in_channels=config.channels, num_layers=config.layers,
                               attention_head_dim=config.head_dim, num_attention_heads=config.heads,
                               num_key_value_attention_heads=config.kv_heads, out_channels=config.channels,
                               cross_attention_dim=config.cross_dim, time_proj_dim=config.time_proj_dim,
                               global_states_input_dim=config.cross_dim, cross_attention_input_dim=config.cross_dim)


def config_of(transformer) -> dict:
    """The transformer's own config (what a checkpoint records beside its weights)."""
    return {key: value for key, value in transformer.config.items() if not key.startswith("_")}


class LabelEncoder(nn.Module):
    """Label set -> conditioning tokens [batch, slots, cross_dim] (slot j: label j present or absent)."""

    def __init__(self, labels: tuple[str, ...], cross_dim: int):
        super().__init__()
        self.labels = tuple(labels)
        self.table = nn.Embedding(2 * len(self.labels), cross_dim)
        nn.init.normal_(self.table.weight, std=1.0)
        self.register_buffer("slots", torch.arange(len(self.labels)) * 2, persistent=False)
        # The global token (Stable Audio's seconds conditioning): one learned vector, the same for every clip.
        self.global_token = nn.Parameter(torch.zeros(1, 1, cross_dim))

    def present(self, label_sets) -> torch.Tensor:
        """bool [batch, slots]: which labels each set names (labels outside the vocabulary are ignored)."""
        index = {label: slot for slot, label in enumerate(self.labels)}
        mask = torch.zeros(len(label_sets), len(self.labels), dtype=torch.bool)
        for row, labels in enumerate(label_sets):
            for label in labels:
                if label in index:
                    mask[row, index[label]] = True
        return mask

    def forward(self, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """present bool [batch, slots] -> (encoder_hidden_states, global_hidden_states)."""
        tokens = self.table(self.slots + present.long())
        return tokens, self.global_token.expand(len(present), 1, -1)


def rotary_embedding(config: NetworkConfig):
    """The rotary embedding StableAudioPipeline builds: frames + 1 positions (the global token comes first)."""
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    return get_1d_rotary_pos_embed(config.head_dim // 2, config.frames + 1, use_real=True,
                                   repeat_interleave_real=False)


def to_frames(latents: torch.Tensor, config: NetworkConfig) -> torch.Tensor:
    """[batch, dim] -> [batch, channels, frames], zero-padded, frame-major."""
    batch, dim = latents.shape
    padded = torch.zeros(batch, config.channels * config.frames, dtype=latents.dtype)
    padded[:, :dim] = latents
    return padded.reshape(batch, config.frames, config.channels).transpose(1, 2)


def from_frames(frames: torch.Tensor, dim: int) -> torch.Tensor:
    """[batch, channels, frames] -> [batch, dim] (drops the padding)."""
    return frames.transpose(1, 2).reshape(len(frames), -1)[:, :dim]


def eigen_basis(latents) -> torch.Tensor:
    """Orthonormal eigenvectors of the bank's second-moment matrix C^T C, largest first, each signed so that its
    largest-magnitude entry is positive: frame 0 then holds the directions the clips differ most along."""
    values, vectors = np.linalg.eigh(np.asarray(latents, dtype=np.float64).T @ np.asarray(latents, dtype=np.float64))
    vectors = vectors[:, np.argsort(-values, kind="stable")]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    return torch.from_numpy(vectors * signs)


def preconditioning(sigma: torch.Tensor, data_scale: float = SIGMA_DATA) -> tuple[torch.Tensor, ...]:
    """(c_in, c_skip, c_out) of EDM's preconditioning at noise level sigma (per row) for data of scale
    `data_scale`; with SIGMA_DATA they are the cosine DPM-Solver scheduler's (its v-prediction)."""
    scale = torch.sqrt(sigma ** 2 + data_scale ** 2)
    return 1 / scale, data_scale ** 2 / scale ** 2, -sigma * data_scale / scale


def timestep_of(sigma: torch.Tensor) -> torch.Tensor:
    """The scheduler's timestep for sigma (CosineDPMSolverMultistepScheduler.precondition_noise)."""
    return torch.atan(sigma) / math.pi * 2


class Organism(nn.Module):
    """The transformer and its label encoder, called as the Stable Audio pipeline calls its DiT.

    `data_scale` is the bank latent's root-mean-square coordinate. The transformer's own preconditioning uses it
    in place of the scheduler's sigma_data = 1, and `velocity` converts the result to the v the scheduler
    expects, so that the transformer's output F need not carry the input's noise through to its output: with
    the scheduler's c_skip, a latent whose coordinates are ~0.5 leaves F to reproduce a noise of norm ~sigma ·
    sqrt(dim) at mid sigma, which a small network cannot (README.md, "The model organism").
    """

    def __init__(self, config: NetworkConfig, labels: tuple[str, ...], dim: int, data_scale: float = SIGMA_DATA,
                 basis: torch.Tensor | None = None):
        super().__init__()
        self.config, self.dim, self.data_scale = config, int(dim), float(data_scale)
        if config.channels * config.frames < self.dim:
            raise ValueError(f"{config.channels} channels x {config.frames} frames cannot hold a {dim}-dim latent")
        self.transformer = build_transformer(config)
        self.encoder = LabelEncoder(labels, config.cross_dim)
        # The frames' coordinates: latent @ basis (orthonormal columns; saved with the weights).
        self.register_buffer("basis", torch.eye(self.dim) if basis is None else basis.to(torch.float32).clone())
        cos, sin = rotary_embedding(config)
        self.register_buffer("rotary_cos", cos, persistent=False)
        self.register_buffer("rotary_sin", sin, persistent=False)

    def network(self, x: torch.Tensor, sigma: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The transformer's raw output F [batch, dim] for noisy latents x [batch, dim] at sigma [batch]."""
        c_in, _, _ = preconditioning(sigma, self.data_scale)
        tokens, global_tokens = self.encoder(present)
        frames = self.transformer(to_frames((x * c_in[:, None]) @ self.basis, self.config), timestep_of(sigma),
                                  encoder_hidden_states=tokens, global_hidden_states=global_tokens,
                                  rotary_embedding=(self.rotary_cos, self.rotary_sin), return_dict=False)[0]
        return from_frames(frames, self.dim) @ self.basis.T

    def target(self, x0: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The F whose clean estimate is x0 (the regression target of training)."""
        _, c_skip, c_out = preconditioning(sigma, self.data_scale)
        return (x0 - c_skip[:, None] * x) / c_out[:, None]

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Clean estimate [batch, dim] of noisy latents x [batch, dim] at sigma [batch]."""
        _, c_skip, c_out = preconditioning(sigma, self.data_scale)
        return c_skip[:, None] * x + c_out[:, None] * self.network(x, sigma, present)

    def velocity(self, model_input: torch.Tensor, sigma: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The scheduler's v for its preconditioned input c_in(sigma) · x [batch, dim] (sigma_data 1)."""
        c_in, c_skip, c_out = preconditioning(sigma)
        x = model_input / c_in[:, None]
        return (self.denoise(x, sigma, present) - c_skip[:, None] * x) / c_out[:, None]

    def describe(self) -> dict:
        return {"network": asdict(self.config), "dim": self.dim, "data_scale": self.data_scale,
                "labels": list(self.encoder.labels), "parameters": sum(p.numel() for p in self.parameters())}
