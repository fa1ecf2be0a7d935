"""MusicGen through transformers, with a trajectory over decoder layers (DecoderLens) and residual-stream capture.

MusicGen is autoregressive: it has no denoising steps. Its trajectory axis is the decoder layer ℓ = 1..L: the clip
at layer ℓ is the audio the model makes when its output is read after block ℓ through the decoder's final layer
norm and the per-codebook LM heads. Two lenses (generator option `lens`):

- `regenerate` (the published DecoderLens, Vélez Vásquez et al., ISMIR 2024): one whole generation per layer with
  `decoder.layers` truncated to the first ℓ blocks (restored afterwards); the delay pattern, KV cache and CFG run as
  in normal generation, so the layer-L generation *is* normal generation (tested).
- `logit` (cheap, default): one normal generation; forward hooks keep every layer's residual at every position;
  afterwards each layer's logits (final norm + heads, CFG-combined, warped like the model's) give a code per
  position, teacher-forced on the real prefix. At layer L the logits equal the model's own (tested).

Sampling, and why it is ours: transformers samples with the global RNG, one draw for the whole batch, so a sample
would depend on the batch it ran in. Stage 2 gives row r the seed seed + r (diffusion/base.py). The last logits
processor (`RowSeededSampler`) therefore applies the library's own warpers (temperature, top-k, top-p from the
generation config), draws one uniform per (row, codebook, position) from that row's torch.Generator, picks the token
by inverse CDF and masks every other token, so generate()'s greedy pick takes it. The logit lens reuses the same
uniforms on each layer's distribution (common random numbers): per-layer codes differ from the model's only where
that layer's distribution differs, and are identical at layer L. With do_sample false, both take the argmax.

Residual capture (generator option `residuals`): each decoder layer's output (the residual stream after block ℓ)
for the conditional rows (`cond`) or both halves of the CFG batch (`both`), mean-pooled over all generated positions
and at the last position, float32 in memory, float16 on disk (data/ARTIFACTS.md, stage 2 activations). Pitfalls
handled: generate() runs the prefill forward twice (the second replaces the first: positions are keyed, not counted);
the CFG batch is [cond×B, uncond×B]; a 5.x decoder layer returns a tensor, not a tuple; hidden states are read by
hooks, not by output_hidden_states (which generate() ignores unless the decoder config sets it).

Generator options (stage 2 `--generator-option KEY=VALUE`, repeatable; unset = the model's generation config):
lens, residuals, guidance_scale, top_k, top_p, temperature, do_sample, melody (MusicGen Melody only).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from data.generation import layer_axis
from data.hub import hub_error_message, local_model_dir
from data.stage import InputError
from diffusion.base import Conditioning, Generator, TrajectoryObserver

HUB_ID = "facebook/musicgen-small"
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LENSES = ("logit", "regenerate")
RESIDUALS = ("none", "cond", "both")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_SECONDS = 10.0

# name -> (parser, help). Sampling settings default to the model's generation_config.json.
OPTIONS = {
    "lens": (str, "logit (one generation, each layer read through the final norm and heads; default) or "
                  "regenerate (one generation per layer with the decoder truncated: the published DecoderLens)"),
    "residuals": (str, "none (default), cond (each layer's residual stream of the conditional rows) or both "
                       "(conditional and unconditional rows of the CFG batch)"),
    "guidance_scale": (float, "classifier-free guidance scale (1 = no CFG)"),
    "top_k": (int, "top-k sampling (0 = off)"),
    "top_p": (float, "nucleus sampling mass (1 = off)"),
    "temperature": (float, "sampling temperature"),
    "do_sample": (lambda text: _parse_bool(text), "true: sample; false: greedy"),
    "melody": (str, "MusicGen Melody only: a chroma .npy [frames, 12] or a wav the model's processor turns into "
                    "chroma (needs torchaudio)"),
}


def _parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not true/false")


def parse_options(options: dict | None) -> dict:
    """Typed generator options from stage 2's KEY=VALUE strings; InputError names the bad one."""
    parsed = {}
    for key, text in (options or {}).items():
        if key not in OPTIONS:
            raise InputError(f"--generator-option {key}: unknown for musicgen — choose from {', '.join(OPTIONS)}")
        convert, _ = OPTIONS[key]
        try:
            parsed[key] = convert(text) if isinstance(text, str) else text
        except ValueError:
            raise InputError(f"--generator-option {key}={text}: not a valid value ({OPTIONS[key][1]})") from None
    if parsed.get("lens", "logit") not in LENSES:
        raise InputError(f"--generator-option lens={parsed['lens']}: choose logit or regenerate")
    if parsed.get("residuals", "none") not in RESIDUALS:
        raise InputError(f"--generator-option residuals={parsed['residuals']}: choose from {', '.join(RESIDUALS)}")
    for key, low, inclusive in (("guidance_scale", 0.0, False), ("temperature", 0.0, False), ("top_p", 0.0, False),
                                ("top_k", 0, True)):
        if key in parsed and not (parsed[key] >= low if inclusive else parsed[key] > low):
            raise InputError(f"--generator-option {key}={parsed[key]}: must be {'>=' if inclusive else '>'} {low}")
    if "top_p" in parsed and parsed["top_p"] > 1:
        raise InputError(f"--generator-option top_p={parsed['top_p']}: must be at most 1")
    return parsed


# -- sampling: the library's warpers, one RNG per row -----------------------------------------------------------------

@dataclass(frozen=True)
class Sampling:
    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    guidance_scale: float

    def warpers(self):
        """The warpers transformers' generate() would build for these settings, in its order."""
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        warpers = LogitsProcessorList()
        if not self.do_sample:
            return warpers
        if self.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k:
            warpers.append(TopKLogitsWarper(self.top_k))
        if self.top_p < 1.0:
            warpers.append(TopPLogitsWarper(self.top_p))
        return warpers


def pick_tokens(scores: torch.Tensor, uniforms: torch.Tensor | None) -> torch.Tensor:
    """Inverse-CDF pick per row of warped scores [rows, vocab] with uniforms [rows] in [0, 1); argmax without."""
    if uniforms is None:
        return scores.argmax(dim=-1)
    probs = torch.softmax(scores.float(), dim=-1)
    cdf = probs.cumsum(dim=-1)
    # Smallest index whose cdf exceeds u * total: tokens of zero mass (cut by top-k/top-p) are never picked.
    threshold = (uniforms.to(cdf.device, cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, threshold, right=True).squeeze(-1).clamp_(max=scores.shape[-1] - 1)


class RowSeededSampler:
    """The one logits processor we add: CFG-combine, warp, draw each row's token from its own generator, and leave
    only that token standing.

    generate() appends its ClassifierFreeGuidanceLogitsProcessor *after* processors passed to it, so scores arrive
    here still as the CFG batch [cond rows, uncond rows] × codebooks. We combine them with that same library class,
    warp, pick, and return for both halves the same mask (0 for the pick, a large finite negative elsewhere — finite
    so that generate()'s own CFG step, uncond + g·(cond − uncond), leaves the mask unchanged instead of making NaN).
    Row b of the batch owns score rows b·K … b·K+K−1 and generator b.
    """
    MASKED = -1e9

    def __init__(self, sampling: Sampling, generators: list[torch.Generator], num_codebooks: int):
        from transformers import ClassifierFreeGuidanceLogitsProcessor

        self.guidance = ClassifierFreeGuidanceLogitsProcessor(sampling.guidance_scale) \
            if sampling.guidance_scale > 1 else None
        self.warpers = sampling.warpers()
        self.do_sample = sampling.do_sample
        self.generators = generators
        self.num_codebooks = num_codebooks
        self.uniforms: list[torch.Tensor] = []   # per position: [B*K] float64 on CPU (sampling only)
        self.tokens: list[torch.Tensor] = []     # per position: [B*K] long on CPU

    def draw(self) -> torch.Tensor:
        return torch.cat([torch.rand(self.num_codebooks, generator=g, dtype=torch.float64) for g in self.generators])

    def combine(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        """CFG-combined and warped scores [B*K, vocab] from the model's (or a lens layer's) raw scores."""
        if self.guidance is not None:
            scores = self.guidance(input_ids, scores)
        return self.warpers(input_ids, scores)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        uniforms = self.draw() if self.do_sample else None
        tokens = pick_tokens(self.combine(input_ids, scores), uniforms)
        if uniforms is not None:
            self.uniforms.append(uniforms)
        self.tokens.append(tokens.cpu())
        chosen = torch.full((tokens.shape[0], scores.shape[-1]), self.MASKED, dtype=scores.dtype,
                            device=scores.device)
        chosen.scatter_(1, tokens.unsqueeze(-1), 0.0)
        return chosen.repeat(scores.shape[0] // tokens.shape[0], 1)


# -- hooks: TransformerLens-style names, removed cleanly ---------------------------------------------------------------

class ResidualRecorder:
    """Keeps every decoder layer's output at every generated position while attached.

    It hooks the site TransformerLens names `blocks.{i}.hook_resid_post` (0-based block i = layer i + 1). A position is
    keyed by where it sits in the audio-code sequence, not by counting calls: generate() runs the prefill twice and
    the second result replaces the first. Melody models prepend their conditioning to the decoder input; only the
    last n positions of a forward (n = code positions fed) are audio positions.
    """

    def __init__(self, decoder, layers: list[int] | None = None):
        self.decoder = decoder                      # MusicgenDecoder (…ForCausalLM.model.decoder)
        self.layers = list(range(len(decoder.layers))) if layers is None else list(layers)
        # block -> first position of a forward -> that forward's outputs [rows, n, D]
        self.residuals: dict[int, dict[int, torch.Tensor]] = {i: {} for i in self.layers}
        self._next_position = 0
        self._first_position = 0
        self._new_positions = 0
        self._handles = []

    def _before_decoder(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        cached = cache.get_seq_length() if cache is not None else 0
        if cached == 0:  # a prefill: the sequence starts again (generate() prefills twice)
            self._next_position = 0
        self._new_positions = int(input_ids.shape[-1])
        self._first_position = self._next_position
        self._next_position += self._new_positions

    def _after_layer(self, index):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output   # 5.x: a tensor; older: a tuple
            # A reference, not a copy: every forward makes new output tensors (float() copies only half precision).
            self.residuals[index][self._first_position] = hidden[:, -self._new_positions:].detach().float()
        return hook

    def __enter__(self):
        self._handles.append(self.decoder.register_forward_pre_hook(self._before_decoder, with_kwargs=True))
        for index in self.layers:
            self._handles.append(self.decoder.layers[index].register_forward_hook(self._after_layer(index)))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return False

    def stacked(self, index: int) -> torch.Tensor:
        """Layer `index`'s residuals [positions, rows, D] in position order."""
        store = self.residuals[index]
        chunks, position = [], 0
        for first in sorted(store):
            if first != position:
                raise RuntimeError(f"block {index}: positions jump from {position} to {first}")
            chunks.append(store[first])
            position += store[first].shape[1]
        return torch.cat(chunks, dim=1).transpose(0, 1)


@contextmanager
def truncated_decoder(decoder, layers: int):
    """Run the decoder with its first `layers` blocks only (DecoderLens regenerate); always restored."""
    original = decoder.layers
    decoder.layers = torch.nn.ModuleList(list(original)[:layers])
    try:
        yield decoder
    finally:
        decoder.layers = original


# -- generation --------------------------------------------------------------------------------------------------------

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
    """Loading, conditioning, generation, lenses and decoding; the Generator below adds the stage 2 contract."""

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
        recorder = ResidualRecorder(self.decoder) if record_residuals else None
        layers = self.num_layers if layers is None else int(layers)
        with torch.inference_mode(), truncated_decoder(self.decoder, layers), \
                (recorder if recorder is not None else nullcontext()):
            # Warpers run inside our sampler; generate() itself goes greedy over the one token we leave finite.
            audio = self.model.generate(**inputs, max_new_tokens=frames + self.delay,
                                        guidance_scale=sampling.guidance_scale, do_sample=False,
                                        temperature=None, top_k=None, top_p=None,
                                        logits_processor=_processor_list(sampler))
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
        return {"model": self.model_id, "model_sha256": model_sha256(self.model_dir), "dtype": self.dtype_name,
                "model_class": type(self.model).__name__, "num_layers": self.num_layers,
                "num_codebooks": self.num_codebooks, "frame_rate": self.frame_rate}


def _processor_list(sampler):
    from transformers import LogitsProcessorList
    return LogitsProcessorList([sampler])


# -- loading -----------------------------------------------------------------------------------------------------------

def resolve_model_dir(model: str) -> Path:
    """A local directory as is; a hub id through the HF cache (HF_TOKEN, HF_HOME, HF_HUB_OFFLINE honoured)."""
    path = local_model_dir(model, HUB_ID)
    if path is not None:
        return path.resolve()
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(model, allow_patterns=HUB_PATTERNS))
    except Exception as error:  # noqa: BLE001 - translated below, re-raised when not a hub failure
        message = hub_error_message(model, error)
        if message is None:
            raise
        raise InputError(message) from None


def load_model(model_dir: Path, dtype: torch.dtype, device: torch.device):
    """(model, tokenizer, is_melody) from a save_pretrained directory; one-line errors for the wrong layout."""
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration
    from transformers.utils import logging as transformers_logging

    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise InputError(f"{model_dir}: no config.json — not a MusicGen checkpoint (save_pretrained layout, e.g. "
                         f"{HUB_ID})")
    try:
        model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise InputError(f"{config_path}: unreadable ({error}) — re-download the model") from None
    classes = {"musicgen": MusicgenForConditionalGeneration, "musicgen_melody": MusicgenMelodyForConditionalGeneration}
    if model_type not in classes:
        raise InputError(f"{config_path}: model_type is {model_type!r}, not musicgen or musicgen_melody — pass a "
                         f"MusicGen checkpoint such as {HUB_ID}")
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # token-id range notes and loading bars would drown stage 2's bar
    transformers_logging.disable_progress_bar()
    try:
        model = classes[model_type].from_pretrained(model_dir, local_files_only=True, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{model_dir}: cannot load MusicGen ({first}) — re-download or re-save the model") from None
    finally:
        transformers_logging.set_verbosity(verbosity)
        transformers_logging.enable_progress_bar()
    return model.to(device).eval(), tokenizer, model_type == "musicgen_melody"


def load_melody(path: str, runner: MusicgenRunner) -> np.ndarray:
    """Chroma [frames, 12] for MusicGen Melody: a .npy as is, or a wav through the model's own feature extractor."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--generator-option melody={path}: no such file — pass a chroma .npy or a wav")
    if path.suffix == ".npy":
        chroma = np.load(path, allow_pickle=False)
        if chroma.ndim != 2 or chroma.shape[1] != 12 or not np.isfinite(chroma).all():
            raise InputError(f"{path}: a chroma array must be finite with shape [frames, 12], got {list(chroma.shape)}")
        return chroma.astype(np.float32)
    try:
        from transformers import AutoFeatureExtractor
        extractor = AutoFeatureExtractor.from_pretrained(runner.model_dir, local_files_only=True)
    except (ImportError, OSError, ValueError) as error:
        raise InputError(f"{runner.model_dir}: cannot build the melody feature extractor ({str(error).strip()[:80]}) "
                         "— it needs torchaudio; or pass a chroma .npy instead of a wav") from None
    import soundfile
    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    features = extractor(audio.mean(axis=1), sampling_rate=rate, return_tensors="np")["input_features"]
    return features[0].astype(np.float32)


def model_sha256(model_dir: Path) -> str:
    """Identity of a model directory: sha256 over (relative path, file sha256) of every file in it. Hub snapshot
    files are symlinks to blobs named by their sha256, so hub models hash in no time."""
    from data.files import sha256_file

    digest = hashlib.sha256()
    for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_file() and not p.name.startswith(".")):
        blob = Path(os.path.realpath(path)).name
        file_hash = blob if HEX64.match(blob) else sha256_file(path)
        digest.update(f"{path.relative_to(model_dir).as_posix()}\0{file_hash}\n".encode())
    return digest.hexdigest()


# -- the stage 2 generator ---------------------------------------------------------------------------------------------

POOLS = ("mean", "last")   # residual summaries: mean over generated positions, and the last position


class MusicgenGenerator(Generator):
    """Stage 2's `musicgen` backend: a layer trajectory (positions 1..L) of EnCodec code sequences.

    Latents are codes [K, frames] (long); x0 at layer ℓ is the lens's codes; there is no noisy latent (no `xt`)."""
    name = "musicgen"
    kinds = ("x0",)
    options = {key: text for key, (_, text) in OPTIONS.items()}

    def __init__(self, model=None, preset=None, steps=None, device=None, dtype=None, decode_dtype=None,
                 options: dict | None = None):
        for flag, value in (("--preset", preset), ("--steps", steps), ("--decode-dtype", decode_dtype)):
            if value is not None:
                raise InputError(f"{flag} does not apply to musicgen (its sampling comes from the model's generation "
                                 "config and --generator-option; its trajectory is the decoder's layers) — drop it")
        self.settings = parse_options(options)
        self.lens = self.settings.get("lens", "logit")
        self.residuals = self.settings.get("residuals", "none")
        self.runner = MusicgenRunner(model, device, dtype)
        self.sampling = self.runner.sampling(self.settings)
        if self.residuals == "both" and self.sampling.guidance_scale <= 1:
            raise InputError("--generator-option residuals=both needs classifier-free guidance (guidance_scale > 1): "
                             "without it there are no unconditional rows — use residuals=cond")
        self.melody = load_melody(self.settings["melody"], self.runner) if "melody" in self.settings else None
        if self.melody is not None and not self.runner.melody_model:
            raise InputError(f"{self.runner.model_id}: --generator-option melody needs a MusicGen Melody checkpoint "
                             "(e.g. facebook/musicgen-melody)")
        # Where and when an intervention (issue 11, diffusion/interventions.py) may act: the decoder layers, at
        # generated positions (not the layer axis); CFG rows exist only with guidance.
        from diffusion.interventions import musicgen_sites
        self.intervention_sites = musicgen_sites(self.runner.decoder)
        self.has_unconditional_rows = self.sampling.guidance_scale > 1
        self.intervention_steps = None
        self.sample_rate = self.runner.sample_rate
        self.channels = self.runner.channels
        self.max_seconds = self.runner.max_seconds
        self.default_seconds = min(DEFAULT_SECONDS, self.max_seconds)
        self.axis = layer_axis(self.runner.num_layers)
        # Every layer: the logit lens reads them all from one generation; DecoderLens studies every layer.
        self.default_capture = list(self.axis.positions)
        self._provenance = None

    def provenance(self) -> dict:
        if self._provenance is None:
            record = self.runner.provenance()
            record.update({
                "generator": self.name, "preset": "generation-config", "lens": self.lens,
                "residuals": self.residuals, "residual_pools": list(POOLS),
                "sampling": {**asdict(self.sampling), "scheme": "row-seeded inverse CDF after the library's CFG "
                                                                 "and warpers (diffusion/musicgen.py)"},
                "generator_options": {key: self.settings[key] for key in sorted(self.settings)},
                "melody_sha256": None if self.melody is None else hashlib.sha256(self.melody.tobytes()).hexdigest(),
                "sample_rate": self.sample_rate, "channels": self.channels, "max_seconds": self.max_seconds,
            })
            self._provenance = record
        return dict(self._provenance)

    def sample(self, conditioning: Conditioning, seed: int, num_samples: int, seconds: float,
               observer: TrajectoryObserver | None) -> torch.Tensor:
        if not isinstance(conditioning.prompt, str) or not conditioning.prompt.strip():
            raise InputError("empty prompt — every prompt needs text (fix prompts/annotated.csv or rerun stage 1)")
        if not 0 < seconds <= self.max_seconds + 1e-9:
            raise InputError(f"--seconds {seconds:g} is outside (0, {self.max_seconds:g}] for {self.runner.model_id}")
        if observer is not None and "xt" in getattr(observer, "kinds", ()):
            raise InputError("musicgen has no noisy latent (xt): its trajectory is over decoder layers — use --kinds x0")
        wanted = self._wanted(observer)
        full, per_layer = self._generate_layers(conditioning.prompt, [seed + row for row in range(num_samples)],
                                                seconds, wanted, lambda: self.steering(conditioning, num_samples))
        self._report(observer, wanted, full, per_layer, range(num_samples))
        return full.codes

    def _wanted(self, observer) -> list[int]:
        wanted = sorted(getattr(observer, "capture", self.axis.positions)) if observer is not None else []
        return [layer for layer in wanted if layer in self.axis.positions]

    def _generate_layers(self, prompt: str, row_seeds: list[int], seconds: float, wanted: list[int], hooks):
        """One generation of len(row_seeds) rows under hooks() (a fresh hook context per generate() call), and
        each wanted layer's codes through the lens."""
        last, rows = self.runner.num_layers, len(row_seeds)
        record = (self.lens == "logit" and any(layer != last for layer in wanted)) or self.residuals != "none"
        with hooks():
            full = self.runner.generate(prompt, row_seeds[0], rows, seconds, self.sampling, record_residuals=record,
                                        melody=self.melody, row_seeds=row_seeds)
        if self.lens == "logit":
            per_layer = self.runner.logit_lens(full, self.sampling, wanted).codes
        else:
            per_layer = {last: full.codes}
            for layer in (layer for layer in wanted if layer != last):
                # The intervention's hooks sit on the layer modules, which the truncated decoder keeps.
                with hooks():
                    per_layer[layer] = self.runner.generate(prompt, row_seeds[0], rows, seconds, self.sampling,
                                                            layers=layer, melody=self.melody,
                                                            row_seeds=row_seeds).codes
        return full, per_layer

    def _report(self, observer, wanted: list[int], full: Generation, per_layer: dict, rows: range) -> None:
        """Give the observer the codes (and residual summaries) of batch rows `rows` as its samples 0.."""
        if observer is None:
            return
        for layer in wanted:
            observer(layer, None, None, per_layer[layer][rows.start:rows.stop])
        if self.residuals != "none":
            keep = getattr(observer, "keep_activations", None)
            if keep is None:
                raise RuntimeError("residual capture needs an observer with keep_activations (diffusion/base.py)")
            summaries, array = residual_summaries(full.residuals, full.codes.shape[0], self.residuals == "both")
            chosen = [i for i, row in enumerate(summaries) if row["sample"] in rows]
            keep([{**summaries[i], "sample": summaries[i]["sample"] - rows.start} for i in chosen], array[chosen])

    def sample_sites(self, prompt: str, seed: int, num_samples: int, seconds: float, observers: list,
                     means_a: np.ndarray, means_b: np.ndarray, sites: list, op: str) -> None:
        """Interchange (issue 11): every (component, layer) site of `sites` for samples seed .. seed + n - 1 in ONE
        batched generation, site i on rows i*n .. i*n + n - 1 (each with its sample's seed, so it pairs with the
        reference clip); observers[i] gets site i's layers as its samples 0..n-1."""
        from diffusion.interventions import interchange_hooks

        assignments = [site for site in sites for _ in range(num_samples)]
        row_seeds = [seed + sample for _ in sites for sample in range(num_samples)]
        wanted = self._wanted(observers[0])
        full, per_layer = self._generate_layers(
            prompt, row_seeds, seconds, wanted,
            lambda: interchange_hooks(self.runner.decoder, means_a, means_b, assignments, op))
        for i, observer in enumerate(observers):
            self._report(observer, wanted, full, per_layer, range(i * num_samples, (i + 1) * num_samples))

    def component_means(self, prompts: list[tuple[str, int]], num_samples: int, seconds: float) -> np.ndarray:
        """Mean output of every (component, layer, generated position, CFG branch) over the samples of
        `prompts` ((text, seed of sample 0) pairs): diffusion/interventions.py ComponentMeans."""
        from diffusion.interventions import ComponentMeans

        with ComponentMeans(self.runner.decoder, num_samples) as recorder:
            for prompt, seed in prompts:
                self.runner.generate(prompt, seed, num_samples, seconds, self.sampling, melody=self.melody)
        return recorder.means()

    def decode(self, latents: torch.Tensor, seconds: float) -> np.ndarray:
        return self.runner.decode(latents, seconds)

    def steering(self, conditioning: Conditioning, num_samples: int):
        """The intervention's named hooks on the decoder layers while generating (nothing without one)."""
        if conditioning.intervention is None:
            return nullcontext()
        from diffusion.interventions import musicgen_hooks  # issue 11; imported only when an intervention is asked
        return musicgen_hooks(self.runner.decoder, conditioning.intervention, num_samples)


def residual_summaries(recorder: ResidualRecorder, num_samples: int, unconditional: bool):
    """Per (sample, branch, layer, pool) one vector: rows (list of dicts) and float32 [n_rows, D].

    branch cond = rows 0..B−1 of the CFG batch, uncond = rows B..2B−1; layer is 1-based (output of block ℓ);
    pool mean = mean over every generated position, last = the last position.
    """
    branches = [("cond", 0)] + ([("uncond", num_samples)] if unconditional else [])
    per_layer = {index: recorder.stacked(index) for index in recorder.layers}   # [positions, rows, D]
    rows, vectors = [], []
    for sample in range(num_samples):
        for branch, offset in branches:
            for index in recorder.layers:
                residual = per_layer[index][:, offset + sample]
                for pool, vector in (("mean", residual.mean(dim=0)), ("last", residual[-1])):
                    rows.append({"sample": sample, "branch": branch, "layer": index + 1, "pool": pool})
                    vectors.append(vector)
    return rows, torch.stack(vectors).cpu().numpy()
