"""Stable Audio Open 1.0 through diffusers: the library's own StableAudioPipeline, observed at every step.

The pipeline is called as is (never a copy of its loop). Its `callback(step, t, latents)` fires after every
scheduler step, when the scheduler has just stored this step's clean estimate: for the DPM-Solver++ family
`scheduler.model_outputs[-1]` is `convert_model_output(...)`, i.e. c_skip(sigma) * x + c_out(sigma) * v, the
x0-prediction in latent space at the step's sigma (diffusers' scheduling_cosine_dpmsolver_multistep.py). So the
observer sees both the clean estimate (x0) and the noisy latent after the step (x_t) without touching the sampler.

Presets are scheduler configs built with `CosineDPMSolverMultistepScheduler.from_config(pipe.scheduler.config, ...)`;
README_stable_audio.md (diffusion/) says which sampler each realises and how it differs from stable-audio-tools.
"""
import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from data.files import read_json
from data.generation import denoising_axis
from data.hub import WEIGHT_SUFFIXES, checkpoint_sha256, hub_error_message, loaded_files, local_model_dir
from data.stage import InputError
from diffusion.base import Conditioning, Generator, TrajectoryObserver, default_capture
from diffusion.interventions.hooks import StepClock, hooks_applied, resid_post
from diffusion.interventions.steering import steering_hooks

HUB_ID = "stabilityai/stable-audio-open-1.0"
# What save_pretrained writes for StableAudioPipeline, and which file says a component is really there.
COMPONENTS = {
    "transformer": ("config.json",),
    "vae": ("config.json",),
    "text_encoder": ("config.json",),
    "projection_model": ("config.json",),
    "tokenizer": ("tokenizer_config.json", "tokenizer.json", "spiece.model"),
    "scheduler": ("scheduler_config.json",),
}
WEIGHTED = ("transformer", "vae", "text_encoder", "projection_model")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Preset:
    steps: int
    guidance_scale: float
    sigma_min: float
    sigma_max: float
    solver_order: int        # DPM-Solver++ SDE order diffusers runs (2 = 2M SDE)
    seconds: float           # seconds_total conditioning and clip length
    source_sampler: str      # the stable-audio-tools sampler the source used
    source: str


PRESETS = {
    # The reference study's settings: 50 steps, cfg 6, dpmpp-2m-sde, sigma 0.01-100, 10 s; its config
    # (dkytezab/musicologist, diffusion/diff_config.yml) saves x0 at steps 5, 10, ..., 45, and the final one.
    "reference": Preset(steps=50, guidance_scale=6.0, sigma_min=0.01, sigma_max=100.0, solver_order=2,
                        seconds=10.0, source_sampler="dpmpp-2m-sde", source="reference study"),
    # The model card's stable-audio-tools example: 100 steps, cfg 7, sigma 0.3-500, dpmpp-3m-sde, 30 s. diffusers
    # has no third-order SDE step for this parameterisation, so it runs 2M SDE (see README_stable_audio.md).
    "model-card": Preset(steps=100, guidance_scale=7.0, sigma_min=0.3, sigma_max=500.0, solver_order=2,
                         seconds=30.0, source_sampler="dpmpp-3m-sde", source="stabilityai/stable-audio-open-1.0 card"),
}
DEFAULT_PRESET = "reference"


class StableAudioGenerator(Generator):
    name = "stable-audio-open"
    # Steering acts on the DiT blocks' outputs at the scheduler's own step; CFG runs [uncond x B, cond x B] when
    # guidance > 1 (has_unconditional_rows, set from the preset).
    intervention_site = "blocks"
    intervention_clock = "denoising_step"
    cfg_layout = "uncond_first"

    def __init__(self, model: str | os.PathLike | None = None, preset: str | None = None, steps: int | None = None,
                 device: str | None = None, dtype: str | None = None, decode_dtype: str | None = None):
        """`dtype`: of the sampler (text encoder, projection, DiT); `decode_dtype`: of the VAE decoder, fp32 unless
        asked otherwise, because the Oobleck decoder's Snake activations divide by (beta + 1e-9) and that 1e-9
        vanishes in half precision; the decoder is a small part of the work (README_stable_audio.md)."""
        preset = preset or DEFAULT_PRESET
        if preset not in PRESETS:
            raise InputError(f"unknown preset {preset!r} for stable-audio-open — choose one of {', '.join(PRESETS)}")
        dtype = dtype or "fp32"
        decode_dtype = decode_dtype or "fp32"
        for flag, value in (("--dtype", dtype), ("--decode-dtype", decode_dtype)):
            if value not in DTYPES:
                raise InputError(f"{flag} {value!r} is not a dtype — choose one of {', '.join(DTYPES)}")
        self.preset_name = preset
        self.preset = PRESETS[preset]
        self.steps = int(steps) if steps is not None else self.preset.steps
        if self.steps < 1:
            raise InputError(f"--steps {self.steps} must be at least 1")
        self.model = str(model) if model is not None else HUB_ID
        self.dtype_name = dtype
        self.decode_dtype_name = decode_dtype
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"--device {device} asked for, but torch sees no CUDA device — use --device cpu")

        self.model_dir = resolve_model_dir(self.model)
        check_layout(self.model_dir, self.model)
        # Sampling asks the pipeline for latents (output_type="latent"), so the pipeline never runs its VAE: the
        # decoder can be loaded in its own dtype (diffusers takes a per-component dtype).
        self.pipeline = load_pipeline(self.model_dir, {"default": DTYPES[dtype], "vae": DTYPES[decode_dtype]},
                                      self.device)
        self.pipeline.scheduler = scheduler_for(self.pipeline.scheduler, self.preset)

        vae, transformer = self.pipeline.vae, self.pipeline.transformer
        self.sample_rate = int(vae.config.sampling_rate)
        self.channels = int(vae.config.audio_channels)
        # The pipeline always denoises the DiT's full window and crops the decoded audio to seconds_total.
        self.max_seconds = transformer.config.sample_size * vae.hop_length / self.sample_rate
        self.default_seconds = min(self.preset.seconds, self.max_seconds)
        self.axis = denoising_axis(self.steps)
        self.default_capture = default_capture(self.axis.positions)
        self.has_unconditional_rows = self.preset.guidance_scale > 1.0
        self._checkpoint_sha256 = None
        self.decode_context_frames = decoder_context_frames(vae)

    # -- the Generator interface -------------------------------------------------------------------------------

    def provenance(self) -> dict:
        if self._checkpoint_sha256 is None:
            self._checkpoint_sha256 = checkpoint_sha256(self.model_dir, pipeline_files(self.model_dir))
        scheduler = self.pipeline.scheduler
        return {
            "generator": self.name,
            "model": self.model,
            "checkpoint_sha256": self._checkpoint_sha256,
            "preset": self.preset_name,
            "settings": {**asdict(self.preset), "steps": self.steps,
                         "scheduler": type(scheduler).__name__,
                         "scheduler_config": {k: v for k, v in scheduler.config.items() if not k.startswith("_")}},
            "steps": self.steps,
            "guidance_scale": self.preset.guidance_scale,
            "dtype": self.dtype_name,
            "decode_dtype": self.decode_dtype_name,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "max_seconds": self.max_seconds,
        }

    def check_seconds(self, seconds: float) -> None:
        if not (seconds > 0) or seconds > self.max_seconds + 1e-9:
            raise InputError(f"seconds_total {seconds:g} is outside (0, {self.max_seconds:.3f}] — the longest clip "
                             f"{self.model} can make is {self.max_seconds:.3f} s; pass a shorter --seconds")

    def sample(self, conditioning: Conditioning, seed: int, num_samples: int, seconds: float,
               observer: TrajectoryObserver | None) -> torch.Tensor:
        """Call StableAudioPipeline once for `num_samples` samples; the observer sees every step.

        Only the prompt text and seconds condition Stable Audio; `conditioning.labels` are not read.
        """
        prompt = conditioning.prompt
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("empty prompt — every prompt needs text (fix prompts/annotated.csv or rerun stage 1)")
        self.check_seconds(seconds)
        if num_samples < 1:
            raise InputError(f"--samples {num_samples} must be at least 1")
        pipe = self.pipeline
        scheduler = pipe.scheduler

        def on_step(step: int, timestep, latents: torch.Tensor) -> None:
            # After scheduler.step(): step_index has moved on, model_outputs[-1] is this step's x0-prediction.
            if scheduler.step_index != step + 1:
                raise RuntimeError(f"scheduler is at index {scheduler.step_index} after step {step}; "
                                   "the x0 read would belong to another step")
            observer(step, float(scheduler.sigmas[step]), latents, scheduler.model_outputs[-1])

        # Row r is seeded by seed + r (diffusion/base.py), so a sample does not depend on the batch it ran in:
        # with one generator per row, diffusers draws each row's initial noise from its own generator and gives
        # each row its own Brownian tree seeded with that generator's seed. CPU generators make the initial noise
        # the same on any device.
        generator = [torch.Generator("cpu").manual_seed(int(seed) + row) for row in range(int(num_samples))]
        # Steering hooks on the DiT blocks (diffusion/interventions/steering.py), taken off when the call ends.
        with warnings.catch_warnings(), hooks_applied(self.hook_points(),
                                                      steering_hooks(self, conditioning.steering, int(num_samples))):
            # diffusers asks its Brownian tree for noise down to the final sigma 0, below the tree's start
            # (sigma_min); torchsde warns at every such step and returns the end value, which the last update
            # multiplies by sigma = 0. The warnings say nothing about this run.
            warnings.filterwarnings("ignore", message="Should have", category=UserWarning, module="torchsde")
            output = pipe(prompt, audio_start_in_s=0.0, audio_end_in_s=float(seconds),
                          num_inference_steps=self.steps, guidance_scale=self.preset.guidance_scale,
                          num_waveforms_per_prompt=int(num_samples), generator=generator,
                          callback=on_step if observer is not None else None, callback_steps=1, output_type="latent")
        return output.audios

    def hook_points(self) -> dict[str, torch.nn.Module]:
        """Block b's output (`blocks.{b}.hook_resid_post`) is transformer_blocks[b]'s."""
        return {resid_post(block): module for block, module in enumerate(self.pipeline.transformer.transformer_blocks)}

    def block_width(self) -> int:
        return int(self.pipeline.transformer.inner_dim)

    def hook_clock(self) -> StepClock:
        """The scheduler's own step_index: the pipeline calls the transformer once per step with [uncond x B,
        cond x B] rows."""
        return StepClock(self.pipeline.scheduler)

    def decode(self, latents: torch.Tensor, seconds: float) -> np.ndarray:
        """Latents [B, C, frames] -> float32 audio [B, channels, samples], cropped to `seconds` like the pipeline
        crops to seconds_total, in the decoder's dtype (`decode_dtype`).

        The pipeline decodes the model's whole window (47.55 s for Stable Audio Open) and then keeps the first
        seconds_total; the decoder is convolutional, so decoding only the frames that reach the kept samples
        (plus its receptive radius) gives the same audio for a fraction of the work (10 s: ~4.5x less).
        """
        vae = self.pipeline.vae
        samples = int(seconds * vae.config.sampling_rate)  # StableAudioPipeline's own slice end
        keep = min(latents.shape[-1], math.ceil(samples / vae.hop_length) + self.decode_context_frames)
        with torch.inference_mode():
            audio = vae.decode(latents[..., :keep].to(device=self.device, dtype=vae.dtype)).sample
        return audio[:, :, :samples].float().cpu().numpy()


# -- loading -------------------------------------------------------------------------------------------------------

def resolve_model_dir(model: str) -> Path:
    """A local directory as is; a hub id through the HF cache (HF_TOKEN, HF_HOME, HF_HUB_OFFLINE honoured)."""
    path = local_model_dir(model, HUB_ID)
    if path is not None:
        return path
    from diffusers import StableAudioPipeline
    from diffusers.utils import logging as diffusers_logging

    # diffusers logs "Couldn't connect to the Hub ... will try the cache" before failing; the translated
    # one-line error below says what matters.
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        return Path(StableAudioPipeline.download(model))
    except Exception as error:  # noqa: BLE001 - translated below, re-raised when not a hub failure
        message = hub_error_message(model, error)
        if message is None:
            raise
        raise InputError(message) from None
    finally:
        diffusers_logging.set_verbosity(verbosity)


def check_layout(model_dir: Path, model: str) -> None:
    """Refuse, in one line, a directory that is not StableAudioPipeline's save_pretrained layout."""
    expected = "model_index.json, " + ", ".join(f"{name}/" for name in COMPONENTS)
    index_path = model_dir / "model_index.json"
    if not index_path.is_file():
        raise InputError(f"{model}: not a Stable Audio Open layout — model_index.json is missing "
                         f"(expected {expected} as save_pretrained writes them)")
    try:
        index = read_json(index_path)
    except ValueError as error:
        raise InputError(f"{index_path}: unreadable JSON ({' '.join(str(error).split())}) — re-download the model") \
            from None
    class_name = index.get("_class_name") if isinstance(index, dict) else None
    if class_name != "StableAudioPipeline":
        raise InputError(f"{index_path}: _class_name is {class_name!r}, not 'StableAudioPipeline' — "
                         "this is not a Stable Audio Open model")
    for component, markers in COMPONENTS.items():
        folder = model_dir / component
        if component not in index or not folder.is_dir():
            raise InputError(f"{model}: not a complete Stable Audio Open layout — {component}/ is missing "
                             f"(expected {expected})")
        if not any((folder / marker).is_file() for marker in markers):
            raise InputError(f"{folder}: {markers[0]} is missing — re-download or re-save the model")
        if component in WEIGHTED and not any(p.name.endswith(WEIGHT_SUFFIXES) for p in folder.iterdir()):
            raise InputError(f"{folder}: no weights (*.safetensors or *.bin) — re-download or re-save the model")


def load_pipeline(model_dir: Path, dtype: dict, device: torch.device):
    """`dtype`: {"default": dtype, component: dtype, ...} as diffusers' from_pretrained takes it."""
    from diffusers import StableAudioPipeline
    from diffusers.utils import logging as diffusers_logging
    from safetensors import SafetensorError
    from transformers.utils import logging as transformers_logging

    # Loading bars and the "install accelerate" advice would drown stage 2's own progress bar.
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            # diffusers' Oobleck VAE still builds with torch.nn.utils.weight_norm; that deprecation is theirs.
            warnings.filterwarnings("ignore", message=".*weight_norm.*is deprecated", category=FutureWarning)
            # A resolved directory never needs the network; this also keeps transformers from probing the hub.
            pipe = StableAudioPipeline.from_pretrained(model_dir, local_files_only=True,
                                                       **{_dtype_argument(): dtype})
        # Inside the quieted block: in half precision diffusers warns that a CPU cannot run it; torch's CPU
        # kernels do (tests run there).
        pipe = pipe.to(device)
    except (OSError, ValueError, KeyError, SafetensorError) as error:   # SafetensorError: a cut-off weights file
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{model_dir}: cannot load the Stable Audio pipeline ({first}) — re-download or "
                         "re-save the model") from None
    finally:
        diffusers_logging.set_verbosity(verbosity)
        diffusers_logging.enable_progress_bar()
        transformers_logging.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def decoder_context_frames(vae) -> int:
    """Latent frames past a decoded sample that still change it: the Oobleck decoder's receptive radius.

    Walks the decoder's convolutions in order, converting each one's reach at its own rate into latent frames.
    """
    radius, rate = 0.0, 1
    for module in vae.decoder.modules():
        if isinstance(module, torch.nn.ConvTranspose1d):
            radius += math.ceil(module.kernel_size[0] / module.stride[0]) / rate
            rate *= module.stride[0]
        elif isinstance(module, torch.nn.Conv1d):
            radius += (module.kernel_size[0] - 1) * module.dilation[0] / 2 / rate
    return math.ceil(radius) + 1


def _dtype_argument() -> str:
    """diffusers renamed from_pretrained's torch_dtype to dtype and warns on the old name where it did."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def scheduler_for(loaded_scheduler, preset: Preset):
    """The preset's sampler as diffusers' CosineDPMSolverMultistepScheduler (DPM-Solver++ SDE, v-prediction).

    The model's own noise parameterisation (prediction_type, sigma_data) comes from its scheduler config; the
    preset sets only the sampler: sigma range of the exponential schedule and the solver order.
    """
    from diffusers import CosineDPMSolverMultistepScheduler

    return CosineDPMSolverMultistepScheduler.from_config(
        loaded_scheduler.config, sigma_min=preset.sigma_min, sigma_max=preset.sigma_max,
        sigma_schedule="exponential", solver_order=preset.solver_order, final_sigmas_type="zero")


def pipeline_files(model_dir: Path) -> list[Path]:
    """The files StableAudioPipeline.from_pretrained reads from a model directory: model_index.json and, in each
    component folder model_index.json names, what from_pretrained reads there (data/hub.py `loaded_files`).

    The hub repository holds more (the original stable-audio-tools checkpoint model.ckpt and model.safetensors,
    licence, images, attribution tables) that the pipeline never reads; a full snapshot and the pipeline's own
    download of the same weights must hash alike.
    """
    model_dir = Path(model_dir)
    index = read_json(model_dir / "model_index.json")
    files = [model_dir / "model_index.json"]
    for component, entry in sorted(index.items()):
        folder = model_dir / component
        if component.startswith("_") or not isinstance(entry, list) or None in entry or not folder.is_dir():
            continue
        files += loaded_files(folder)
    return sorted(files)
