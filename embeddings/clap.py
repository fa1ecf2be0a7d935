"""The CLAP embedder: LAION CLAP checkpoints through transformers' ClapModel, batched, with a fixed 10 s window.

Checkpoints
    `model` is a hub id (default laion/larger_clap_general, the reference's choice; laion/larger_clap_music,
    laion/clap-htsat-unfused and laion/clap-htsat-fused also work) resolved through the Hugging Face cache
    (HF_HOME, HF_TOKEN and HF_HUB_OFFLINE are honoured), or a local directory saved with save_pretrained
    holding config.json (model_type "clap"), the weights and the feature extractor's config; a tokenizer beside them
    enables the text path. The checkpoint's identity is data/hub.py's one rule (`checkpoint_sha256` over the
    files the loader reads: configs, tokenizer files, weights).

Window policy (deterministic: the same clip always gives the same vector, in any batch)
    Every clip is cut to exactly one window of `max_length_s` (10 s) at the extractor's rate (48 kHz) before
    the log-mel is computed:
    - shorter clips (4 s NSynth notes) are filled the way the checkpoint's feature extractor says, by default
      "repeatpad": as many whole copies as fit, then silence to 10 s. This is how LAION trained CLAP, so a
      padded note looks like the clips the model learnt from; zero-padding alone would show it 6 s of silence
      it never saw in training.
    - longer clips (generated clips) keep one 10 s stretch, chosen by `window` (stage 3/5 option --window):
      "centre" (default: start sample (n - window) // 2; generated music carries its content throughout, and
      the centre stays clear of fade-ins and tails) or "first" (the first 10 s, as the reference study kept).
      The choice is part of the embedder's provenance and window policy, so stage 3 and stage 5 outputs made
      with different windows are refused together by stage 6.
    Because no clip is ever longer than the window, the extractor's random paths never fire: "rand_trunc"
    has nothing to crop, and for fused checkpoints every clip is marked is_longer=False, so the fusion
    branch (three random crops of a longer clip) is never used. transformers' extractor would instead mark a
    random clip of every all-short batch as "longer", making a clip's vector depend on its batch.
    The truncation mode is chosen per checkpoint from the model's own config, never from the extractor's
    default (which is "fusion" and breaks unfused models): fused checkpoints use the fusion path's HTK mel
    filters, unfused ones the Slaney filters of "rand_trunc", exactly as ClapFeatureExtractor computes them.

Speed
    The log-mel is computed for the whole batch in torch on the model's device (tests check it against
    ClapFeatureExtractor); the extractor itself loops over STFT frames in numpy, one clip at a time. The forward
    runs under inference_mode; on CUDA, fp16/bf16 run under autocast (the mel stays float32, since a log of
    half-precision power loses the quiet bands). On CPU only fp32 is offered. Measured figures:
    bench/README_clap.md (bench/bench_clap.py).

Vectors
    `get_audio_features(...).pooler_output`: the audio projection, L2-normalised by ClapModel (unit vectors, as
    CLAP's contrastive space is cosine-based). `embed_text` gives the text projection, also L2-normalised, in
    the same space, for zero-shot probes.
"""
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from data.files import read_json
from data.hub import checkpoint_sha256, hub_error_message, loaded_files
from data.stage import InputError
from embeddings import DEFAULT_MODELS, embedding_stem
from embeddings.base import Embedder

DEFAULT_MODEL = DEFAULT_MODELS["clap"]
KNOWN_CHECKPOINTS = ("laion/larger_clap_general", "laion/larger_clap_music", "laion/clap-htsat-unfused",
                     "laion/clap-htsat-fused")
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
PADDING_MODES = ("repeatpad", "repeat", "pad")
EXTRACTOR_FILES = ("preprocessor_config.json", "processor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
# Files fetched from the hub: config, extractor and tokenizer files, and the weights (safetensors preferred).
HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
# Per-clip work is small next to the forward, so the default only bounds peak memory (a 10 s window is
# 1.9 MB of samples and ~100 MB of HTSAT activations per clip).
DEFAULT_BATCH = {"cpu": 8, "cuda": 32}
# Which 10 s of a longer clip is embedded.
WINDOWS = ("centre", "first")


class ClapEmbedder(Embedder):
    def __init__(self, model: str = DEFAULT_MODEL, device: str = "cpu", dtype: str = "fp32",
                 batch_size: int | None = None, window: str = "centre"):
        from transformers import ClapFeatureExtractor, ClapModel
        from transformers.utils import logging as hf_logging

        self.device = _device(device)
        if window not in WINDOWS:
            raise InputError(f"--window {window!r} is not one of {', '.join(WINDOWS)} — pick one")
        self.long_clips = window
        if str(dtype).lower() not in DTYPES:
            raise InputError(f"--dtype {dtype!r} is not one of fp32, fp16, bf16 — pick one")
        self.dtype = DTYPES[str(dtype).lower()]
        if self.dtype != torch.float32 and self.device.type != "cuda":
            raise InputError(f"--dtype {DTYPE_NAMES[self.dtype]} runs only on a CUDA device (half-precision matmuls "
                             "on CPU are slower and less exact) — use --dtype fp32 on CPU")
        self.batch_size = int(batch_size) if batch_size else DEFAULT_BATCH.get(self.device.type, 8)
        if self.batch_size < 1:
            raise InputError(f"batch size {batch_size} must be ≥ 1 — fix the option")
        self.model_id, self.checkpoint_dir = resolve_checkpoint(str(model))

        config = _clap_config(self.checkpoint_dir)
        # Hub checkpoints carry preprocessor_config.json; transformers 5 saves a ClapProcessor as processor_config.json.
        if not any((self.checkpoint_dir / name).is_file() for name in EXTRACTOR_FILES):
            raise InputError(f"{self.checkpoint_dir}: no {' or '.join(EXTRACTOR_FILES)} — save the ClapProcessor "
                             "(or ClapFeatureExtractor) beside the model with save_pretrained")
        weights = weight_files(self.checkpoint_dir)
        if not weights:
            raise InputError(f"{self.checkpoint_dir}: no weights (*.safetensors or pytorch_model*.bin) — "
                             "download the checkpoint completely or save it with save_pretrained")
        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()  # a random-init warning would hide the error we raise below
        hf_logging.disable_progress_bar()  # a loading bar per stage run is noise next to the stage's own bar
        try:
            self.feature_extractor = ClapFeatureExtractor.from_pretrained(self.checkpoint_dir)
            loaded = ClapModel.from_pretrained(self.checkpoint_dir, output_loading_info=True)
        except (OSError, ValueError, RuntimeError, TypeError, KeyError, SafetensorError) as error:
            raise InputError(f"{self.checkpoint_dir}: cannot load the CLAP checkpoint ({_first_line(error)}) — "
                             "re-download or re-save it") from None
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        self.model, info = loaded
        if info.get("missing_keys") or info.get("mismatched_keys"):
            bad = sorted(info.get("missing_keys") or [key for key, *_ in info["mismatched_keys"]])
            raise InputError(f"{self.checkpoint_dir}: the weights do not fit config.json ({len(bad)} missing or "
                             f"mismatched tensors, e.g. {bad[0]}) — re-download or re-save the checkpoint")
        self.model.eval().to(self.device)

        extractor, audio_config = self.feature_extractor, config.audio_config
        if extractor.feature_size != audio_config.num_mel_bins:
            raise InputError(f"{self.checkpoint_dir}: the feature extractor config makes {extractor.feature_size} mel "
                             f"bins but the audio tower expects {audio_config.num_mel_bins} — save the matching "
                             "feature extractor with the model")
        if extractor.padding not in PADDING_MODES:
            raise InputError(f"{self.checkpoint_dir}: the feature extractor config's padding {extractor.padding!r} "
                             f"is not one of {', '.join(PADDING_MODES)} — fix the file")
        self.fused = bool(audio_config.enable_fusion)
        self.truncation = "fusion" if self.fused else "rand_trunc"
        self.padding = extractor.padding
        self.sample_rate = int(extractor.sampling_rate)
        self.window_samples = int(extractor.nb_max_samples)
        self.window_seconds = self.window_samples / self.sample_rate
        self.dim = int(config.projection_dim)
        filters = extractor.mel_filters if self.fused else extractor.mel_filters_slaney
        self._mel_filters = torch.from_numpy(np.asarray(filters, dtype=np.float32)).to(self.device)
        self._hann = torch.hann_window(extractor.fft_window_size, periodic=True, dtype=torch.float32,
                                       device=self.device)
        self.checkpoint_sha256 = checkpoint_sha256(self.checkpoint_dir, loaded_files(self.checkpoint_dir))
        self.name = embedding_stem("clap", str(model))
        fill = {"repeatpad": "repeat-padded (whole copies, then silence)", "repeat": "repeated and cut",
                "pad": "zero-padded at the end"}[self.padding]
        self.window_policy = (f"one {self.window_seconds:g} s window at {self.sample_rate} Hz: shorter clips "
                              f"{fill}, longer clips cropped to their "
                              f"{'centred' if window == 'centre' else 'first'} {self.window_seconds:g} s; "
                              f"{'HTK mel filters (fusion)' if self.fused else 'Slaney mel filters (rand_trunc)'}, "
                              "is_longer=False")
        self._tokenizer = None

    # ------------------------------------------------------------------------------------------ identity

    def provenance(self) -> dict:
        import transformers
        return {
            "embedder": "clap", "name": self.name,
            # What stage 6 passes back to load_embedder for the text path: the hub id, or the absolute directory.
            "model": self.model_id if self.model_id is not None else str(self.checkpoint_dir),
            "checkpoint_sha256": self.checkpoint_sha256, "window_policy": self.window_policy, "dim": self.dim,
            "sample_rate": self.sample_rate, "window_seconds": self.window_seconds, "padding": self.padding,
            "long_clips": self.long_clips, "truncation": self.truncation, "fused": self.fused,
            "output": "get_audio_features pooler_output (audio projection)", "l2_normalised": True,
            "dtype": DTYPE_NAMES[self.dtype], "transformers": transformers.__version__,
        }

    # ------------------------------------------------------------------------------------------ audio

    def window(self, waveform: np.ndarray) -> np.ndarray:
        """One mono clip -> exactly window_samples float32 samples (the policy in the module docstring)."""
        n, length = waveform.shape[0], self.window_samples
        if n > length:
            start = (n - length) // 2 if self.long_clips == "centre" else 0
            return waveform[start:start + length]
        if n == length:
            return waveform
        if self.padding == "repeat":
            return np.tile(waveform, length // n + 1)[:length]
        if self.padding == "repeatpad":
            waveform = np.tile(waveform, length // n)
        return np.pad(waveform, (0, length - waveform.shape[0]))

    def log_mel(self, windows: torch.Tensor) -> torch.Tensor:
        """[batch, window_samples] -> [batch, 1, frames, mel bins] in dB, as ClapFeatureExtractor computes it."""
        extractor = self.feature_extractor
        spectrum = torch.stft(windows, n_fft=extractor.fft_window_size, hop_length=extractor.hop_length,
                              window=self._hann, center=True, pad_mode="reflect", return_complex=True)
        power = spectrum.real.square() + spectrum.imag.square()
        mel = torch.matmul(self._mel_filters.T, power).clamp_(min=1e-10)
        return (10.0 * torch.log10(mel)).transpose(1, 2).unsqueeze(1)

    def embed(self, waveforms: list[np.ndarray]) -> np.ndarray:
        windows = [self.window(_check_waveform(waveform, i)) for i, waveform in enumerate(waveforms)]
        out = np.empty((len(windows), self.dim), dtype=np.float32)
        for start in range(0, len(windows), self.batch_size):
            batch = torch.from_numpy(np.stack(windows[start:start + self.batch_size])).to(self.device)
            out[start:start + len(batch)] = self._forward_audio(batch)
        return out

    @torch.inference_mode()
    def _forward_audio(self, batch: torch.Tensor) -> np.ndarray:
        features = self.log_mel(batch)
        # Fused towers read channel 0 (the whole window) and use channels 1-3 only for is_longer clips, which
        # our windowing never produces, so the three copies the extractor would stack are left out.
        is_longer = torch.zeros((len(batch), 1), dtype=torch.bool, device=self.device)
        with self._autocast():
            vectors = self.model.get_audio_features(input_features=features, is_longer=is_longer).pooler_output
        return vectors.float().cpu().numpy()

    # ------------------------------------------------------------------------------------------ text

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Short descriptions ("the sound of a brass instrument") -> float32 [n, dim] unit vectors."""
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"text {i}: {text!r} is not a non-empty description — fix the concept text")
        tokenizer = self.tokenizer()
        text_config = self.model.config.text_config
        # RoBERTa positions start after the padding index, so two position slots are never usable.
        max_length = min(int(tokenizer.model_max_length), int(text_config.max_position_embeddings) - 2)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            tokens = tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                               max_length=max_length, return_tensors="pt").to(self.device)
            with torch.inference_mode(), self._autocast():
                vectors = self.model.get_text_features(input_ids=tokens["input_ids"],
                                                       attention_mask=tokens["attention_mask"]).pooler_output
            out[start:start + len(vectors)] = vectors.float().cpu().numpy()
        return out

    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer
            fix = "save the checkpoint's tokenizer (or its ClapProcessor) beside the model"
            # Without vocabulary files transformers 5 builds an empty RoBERTa tokenizer that maps every word to
            # <unk>: text vectors would be silently meaningless.
            if not any((self.checkpoint_dir / name).is_file() for name in TOKENIZER_FILES):
                raise InputError(f"{self.checkpoint_dir}: no usable tokenizer (none of "
                                 f"{', '.join(TOKENIZER_FILES)}) — {fix}")
            try:
                tokenizer = AutoTokenizer.from_pretrained(self.checkpoint_dir)
            except (OSError, ValueError, TypeError, KeyError) as error:
                raise InputError(f"{self.checkpoint_dir}: no usable tokenizer ({_first_line(error)}) — {fix}") \
                    from None
            vocab_size = int(self.model.config.text_config.vocab_size)
            if len(tokenizer) > vocab_size:
                raise InputError(f"{self.checkpoint_dir}: the tokenizer has {len(tokenizer)} tokens but the text "
                                 f"tower only {vocab_size} — {fix}")
            self._tokenizer = tokenizer
        return self._tokenizer

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)


# ---------------------------------------------------------------------------------------------- checkpoints

def resolve_checkpoint(model: str) -> tuple[str | None, Path]:
    """(hub id or None, local directory). A directory that exists wins over a hub id of the same spelling."""
    path = Path(model).expanduser()
    if path.is_dir():
        return None, path.resolve()
    if path.is_absolute() or model.startswith((".", "~")) or model.count("/") != 1:
        raise InputError(f"{model}: no such checkpoint directory, and not a hub id (owner/name, e.g. "
                         f"{DEFAULT_MODEL}) — fix --model")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError
    try:
        directory = Path(snapshot_download(model, allow_patterns=HUB_PATTERNS))
        if not weight_files(directory):  # older repositories carry only pytorch_model.bin
            directory = Path(snapshot_download(model, allow_patterns=HUB_PATTERNS + ["pytorch_model*.bin"]))
    except (HfHubHTTPError, OSError) as error:
        message = hub_error_message(model, error) or (
            f"{model}: download failed ({_first_line(error)}) — check the network and HF_TOKEN, "
            "or pass a local checkpoint directory")
        raise InputError(message) from None
    return model, directory


def _clap_config(directory: Path):
    from transformers import ClapConfig
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise InputError(f"{directory}: no config.json — not a transformers checkpoint directory; pass a CLAP "
                         "checkpoint saved with save_pretrained")
    try:
        model_type = read_json(config_path).get("model_type")
    except (ValueError, OSError, AttributeError) as error:
        raise InputError(f"{config_path}: unreadable ({_first_line(error)}) — re-download or re-save it") from None
    if model_type != "clap":
        raise InputError(f"{config_path}: model_type is {model_type!r}, not 'clap' — not a CLAP checkpoint; pass "
                         f"one such as {DEFAULT_MODEL}")
    return ClapConfig.from_pretrained(directory)


def weight_files(directory: Path) -> list[Path]:
    for pattern in WEIGHT_PATTERNS:
        found = sorted(directory.glob(pattern))
        if found:
            return found
    return []


# ---------------------------------------------------------------------------------------------- helpers

def _device(device) -> torch.device:
    try:
        device = torch.device(device or "cpu")
    except (RuntimeError, TypeError):
        raise InputError(f"--device {device!r} is not a torch device — use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available here — use --device cpu") from None
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device {device}: the CLAP embedder runs on cpu or cuda — pick one") from None
    return device


def _check_waveform(waveform, i: int) -> np.ndarray:
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"waveform {i} of the batch has shape {list(waveform.shape)}; embed() takes mono "
                         "[samples] arrays (the runner downmixes)")
    if waveform.size == 0:
        raise InputError(f"waveform {i} of the batch is empty — drop the clip or regenerate it")
    if not np.isfinite(waveform).all():
        raise InputError(f"waveform {i} of the batch contains NaN or Inf — regenerate the clip")
    return waveform


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
