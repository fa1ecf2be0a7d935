"""Loading, conditioning, generation, the layer lenses and decoding of MusicGen (the Generator in generator.py adds
stage 2's contract).

Two lenses read a layer trajectory (generator option `lens`):
- `regenerate` (the published DecoderLens, Vélez Vásquez et al., ISMIR 2024): one whole generation per layer with
  `decoder.layers` truncated to the first ℓ blocks (restored afterwards); the delay pattern, KV cache and CFG run as
  in normal generation, so the layer-L generation *is* normal generation (tested).
- `logit` (cheap, default): one normal generation; hooks keep every block's residual at every position; afterwards
  each layer's logits (final norm + heads, CFG-combined, warped like the model's) give a code per position,
  teacher-forced on the real prefix. At layer L the logits equal the model's own (tested).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from data.hub import checkpoint_sha256, loaded_files
from data.stage import InputError
from diffusion.interventions.hooks import Hooks, hooks_applied
from diffusion.musicgen.hooks import ResidualRecorder, hook_points
from diffusion.musicgen.loading import DTYPES, HUB_ID, load_model, resolve_model_dir
from diffusion.musicgen.sampling import RowSeededSampler, Sampling, pick_tokens, processor_list


@contextmanager
def truncated_decoder(decoder, layers: int):
    """Run the decoder with its first `layers` blocks only (DecoderLens regenerate); always restored."""
    original = decoder.layers
    decoder.layers = torch.nn.ModuleList(list(original)[:layers])
    try:
        yield decoder
    finally:
        decoder.layers = original


@dataclass
class Generation:
    codes: torch.Tensor                 # [B, K, frames] long: the model's own codes
    tokens: torch.Tensor                # [positions, B*K] long: the sampled token of every position
    uniforms: torch.Tensor | None       # [positions, B*K] float64: the draws (None when greedy)
    residuals: ResidualRecorder | None = None
    audio: torch.Tensor | None = None   # generate()'s own decoded audio [B, C, samples] (for tests)


@dataclass
class LayerOutputs:
    codes: dict[int, torch.Tensor] = field(default_factory=dict)   # layer (1-based) -> [B, K, frames]


class MusicgenRunner:
    """Loading, conditioning, generation, lenses and decoding of one MusicGen checkpoint."""

    def __init__(self, model: str | os.PathLike | None = None, device: str | None = None, dtype: str | None = None):
        self.model_id = str(model) if model is not None else HUB_ID
        self.dtype_name = dtype or "fp32"
        if self.dtype_name not in DTYPES:
            raise InputError(f"--dtype {self.dtype_name}: choose one of {', '.join(DTYPES)}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"--device {device} asked for, but torch sees no CUDA device — use --device cpu")
        self.model_dir = resolve_model_dir(self.model_id)
        self.model, self.tokenizer, self.melody_model = load_model(self.model_dir, DTYPES[self.dtype_name],
                                                                    self.device)
        decoder_config = self.model.decoder.config
        self.num_codebooks = int(decoder_config.num_codebooks)
        self.num_layers = len(self.decoder.layers)
        self.frame_rate = float(self.model.audio_encoder.config.frame_rate)
        self.sample_rate = int(self.model.audio_encoder.config.sampling_rate)
        self.channels = int(getattr(decoder_config, "audio_channels", 1))
        config = self.model.generation_config
        # The delay pattern shifts codebook k by k positions (stereo checkpoints interleave two such stacks).
        self.delay = (self.num_codebooks // 2 if self.channels == 2 else self.num_codebooks) - 1
        self.max_frames = int(config.max_length or decoder_config.max_position_embeddings) - 1 - self.delay
        self.max_seconds = self.max_frames / self.frame_rate
        self.hook_points = hook_points(self.decoder)

    @property
    def decoder(self):
        """The stack of decoder blocks with its final layer norm (…ForCausalLM.model.decoder)."""
        return self.model.decoder.model.decoder

    def sampling(self, overrides: dict) -> Sampling:
        config = self.model.generation_config
        guidance = overrides.get("guidance_scale", config.guidance_scale)
        return Sampling(do_sample=bool(overrides.get("do_sample", config.do_sample)),
                        temperature=float(overrides.get("temperature", config.temperature or 1.0)),
                        top_k=int(overrides.get("top_k", config.top_k or 0)),
                        top_p=float(overrides.get("top_p", config.top_p if config.top_p is not None else 1.0)),
                        guidance_scale=float(guidance if guidance is not None else 1.0))

    def frames(self, seconds: float) -> int:
        return max(1, int(round(seconds * self.frame_rate)))

    def inputs(self, prompt: str, num_samples: int, melody: np.ndarray | None = None) -> dict:
        encoded = self.tokenizer([prompt] * num_samples, padding=True, return_tensors="pt")
        inputs = {key: value.to(self.device) for key, value in encoded.items()}
        if self.melody_model:
            if melody is not None:
                chroma = torch.as_tensor(melody, dtype=torch.float32)[None].repeat(num_samples, 1, 1)
                # Processor outputs are float32; the model runs in its own dtype.
                inputs["input_features"] = chroma.to(self.device, self.model.dtype)
        elif melody is not None:
            raise InputError(f"{self.model_id}: a melody was given but this is not a MusicGen Melody model — drop "
                             "--generator-option melody or pass facebook/musicgen-melody")
        return inputs

    def generate(self, prompt: str, seed: int, num_samples: int, seconds: float, sampling: Sampling,
                 layers: int | None = None, record_residuals: bool = False,
                 melody: np.ndarray | None = None, row_seeds: list[int] | None = None) -> Generation:
        """One generate() call for `num_samples` rows (row r seeded with seed + r, or row_seeds[r]: a batched
        interchange repeats each sample's seed once per site), optionally with the decoder truncated to its first
        `layers` blocks and every block's residual recorded."""
        frames = self.frames(seconds)
        seeds = [int(seed) + row for row in range(num_samples)] if row_seeds is None else list(row_seeds)
        generators = [torch.Generator("cpu").manual_seed(int(row_seed)) for row_seed in seeds]
        sampler = RowSeededSampler(sampling, generators, self.num_codebooks)
        inputs = self.inputs(prompt, num_samples, melody)
        recorder = ResidualRecorder(range(self.num_layers)) if record_residuals else None
        layers = self.num_layers if layers is None else int(layers)
        with torch.inference_mode(), truncated_decoder(self.decoder, layers), \
                hooks_applied(self.hook_points, recorder.hooks if recorder is not None else Hooks()):
            # Warpers run inside our sampler; generate() itself goes greedy over the one token we leave finite.
            audio = self.model.generate(**inputs, max_new_tokens=frames + self.delay,
                                        guidance_scale=sampling.guidance_scale, do_sample=False,
                                        temperature=None, top_k=None, top_p=None,
                                        logits_processor=processor_list(sampler))
        tokens = torch.stack(sampler.tokens)
        uniforms = torch.stack(sampler.uniforms) if sampler.uniforms else None
        codes = self.codes_from_tokens(tokens, num_samples)
        return Generation(codes=codes, tokens=tokens, uniforms=uniforms, residuals=recorder, audio=audio.float().cpu())

    def codes_from_tokens(self, tokens: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Tokens per position [positions, B*K] -> codes [B, K, frames], undoing the delay pattern as generate()
        does (codebook k at position s is frame s − k; positions outside the pattern are dropped)."""
        start = self.model.generation_config.decoder_start_token_id
        rows = num_samples * self.num_codebooks
        sequence = torch.cat([torch.full((rows, 1), start, dtype=torch.long), tokens.T.cpu()], dim=1)
        _, pattern = self.model.decoder.build_delay_pattern_mask(sequence[:, :1], pad_token_id=start,
                                                                 max_length=sequence.shape[1])
        masked = self.model.decoder.apply_delay_pattern_mask(sequence, pattern.cpu())
        return masked[masked != start].reshape(num_samples, self.num_codebooks, -1)

    def layer_logits(self, residual: torch.Tensor) -> torch.Tensor:
        """Residual [..., D] after some block -> logits [..., K, vocab] through the final norm and the heads."""
        with torch.inference_mode():
            normed = self.decoder.layer_norm(residual.to(self.model.dtype))
            return torch.stack([head(normed) for head in self.model.decoder.lm_heads], dim=-2)

    def logit_lens(self, generation: Generation, sampling: Sampling, layers: list[int]) -> LayerOutputs:
        """Per-layer codes from one normal generation's residuals (teacher-forced on the real prefix)."""
        recorder = generation.residuals
        num_samples = generation.codes.shape[0]
        sampler = RowSeededSampler(sampling, [], self.num_codebooks)   # the same CFG and warpers; draws replayed
        conditional_rows = num_samples * self.num_codebooks
        uniforms = None if generation.uniforms is None else generation.uniforms.reshape(-1)
        outputs = LayerOutputs()
        for layer in layers:
            if layer == self.num_layers:
                outputs.codes[layer] = generation.codes  # the model's own logits and draws (equality is tested)
                continue
            residual = recorder.stacked(layer - 1)                    # [positions, rows (2B with CFG), D]
            logits = self.layer_logits(residual).float()              # [positions, rows, K, V]
            positions, vocab = logits.shape[0], logits.shape[-1]
            # generate() scores rows as [row*K + k] with cond rows first: flatten (rows, K) the same way, then put
            # every position's cond rows before every position's uncond rows, so that the library's CFG processor
            # (which splits its batch in halves) and warpers handle all positions in one call.
            scores = logits.reshape(positions, -1, vocab)
            halves = [scores[:, :conditional_rows]] + ([scores[:, conditional_rows:]] if scores.shape[1] >
                                                       conditional_rows else [])
            batch = torch.cat([half.reshape(-1, vocab) for half in halves])
            dummy_ids = torch.zeros((positions * conditional_rows, 1), dtype=torch.long)
            tokens = pick_tokens(sampler.combine(dummy_ids, batch), uniforms)
            outputs.codes[layer] = self.codes_from_tokens(tokens.reshape(positions, -1).cpu(), num_samples)
        return outputs

    def decode(self, codes: torch.Tensor, seconds: float) -> np.ndarray:
        """Codes [B, K, frames] -> float32 audio [B, channels, samples] through EnCodec; pure."""
        codes = codes.to(self.device, torch.long)
        samples = int(round(seconds * self.sample_rate))
        with torch.inference_mode():
            if self.channels == 1:
                audio = self.model.audio_encoder.decode(codes[None], [None] * codes.shape[0]).audio_values
            else:  # stereo checkpoints interleave left/right codebooks, as generate() decodes them
                left = self.model.audio_encoder.decode(codes[None, :, ::2], [None] * codes.shape[0]).audio_values
                right = self.model.audio_encoder.decode(codes[None, :, 1::2], [None] * codes.shape[0]).audio_values
                audio = torch.cat([left, right], dim=1)
        return audio[..., :samples].float().cpu().numpy()

    def provenance(self) -> dict:
        return {"model": self.model_id,
                "checkpoint_sha256": checkpoint_sha256(self.model_dir, loaded_files(self.model_dir)),
                "dtype": self.dtype_name,
                "model_class": type(self.model).__name__, "num_layers": self.num_layers,
                "num_codebooks": self.num_codebooks, "frame_rate": self.frame_rate}
