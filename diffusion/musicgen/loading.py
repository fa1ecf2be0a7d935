"""Loading MusicGen: a hub id through the Hugging Face cache or a save_pretrained directory, and a melody for
MusicGen Melody; every failure a user can fix is one line."""
from pathlib import Path

import numpy as np
import torch

from data.contract import first_line, read_npy
from data.files import read_json
from data.hub import hub_error_message, local_model_dir
from data.stage import InputError

HUB_ID = "facebook/musicgen-small"
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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
    from safetensors import SafetensorError
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration
    from transformers.utils import logging as transformers_logging

    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise InputError(f"{model_dir}: no config.json — not a MusicGen checkpoint (save_pretrained layout, e.g. "
                         f"{HUB_ID})")
    try:
        model_type = read_json(config_path).get("model_type")
    except (ValueError, AttributeError) as error:
        raise InputError(f"{config_path}: unreadable ({first_line(error)}) — re-download the model") from None
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
    except (OSError, ValueError, KeyError, SafetensorError) as error:   # SafetensorError: a cut-off weights file
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{model_dir}: cannot load MusicGen ({first}) — re-download or re-save the model") from None
    finally:
        transformers_logging.set_verbosity(verbosity)
        transformers_logging.enable_progress_bar()
    return model.to(device).eval(), tokenizer, model_type == "musicgen_melody"


def load_melody(path: str, model_dir: Path) -> np.ndarray:
    """Chroma [frames, 12] for MusicGen Melody: a .npy as is, or a wav through the model's own feature extractor."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--generator-option melody={path}: no such file — pass a chroma .npy or a wav")
    if path.suffix == ".npy":
        chroma = read_npy(path, "pass a chroma .npy [frames, 12] or a wav")
        if chroma.ndim != 2 or chroma.shape[1] != 12 or not np.isfinite(chroma).all():
            raise InputError(f"{path}: a chroma array must be finite with shape [frames, 12], got {list(chroma.shape)}")
        return chroma.astype(np.float32)
    try:
        from transformers import AutoFeatureExtractor
        extractor = AutoFeatureExtractor.from_pretrained(model_dir, local_files_only=True)
    except (ImportError, OSError, ValueError) as error:
        raise InputError(f"{model_dir}: cannot build the melody feature extractor ({str(error).strip()[:80]}) "
                         "— it needs torchaudio; or pass a chroma .npy instead of a wav") from None
    import soundfile
    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    features = extractor(audio.mean(axis=1), sampling_rate=rate, return_tensors="np")["input_features"]
    return features[0].astype(np.float32)
