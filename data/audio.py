"""Reading, checking, resampling and writing the wav files that join the stages."""
import io
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from data.files import atomic_path
from data.stage import InputError

# Below this RMS a clip carries no usable sound (int16 quantisation noise is ~1e-5).
SILENCE_RMS = 1e-4


def read_audio(path, expect_rate: int | None = None, expect_channels: int | None = None,
               allow_silent: bool = False) -> tuple[np.ndarray, int]:
    """Return (audio float32 [channels, samples], rate), or raise InputError naming the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: audio file is missing — rerun the stage that writes it")
    try:
        with sf.SoundFile(path) as handle:
            rate, channels, frames = handle.samplerate, handle.channels, handle.frames
            audio = handle.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as error:
        raise InputError(f"{path}: unreadable audio ({_first_line(error)}) — delete it and rerun its stage") from None
    if audio.shape[0] != frames or frames == 0:
        raise InputError(f"{path}: truncated or empty audio ({audio.shape[0]} of {frames} frames) "
                         "— delete it and rerun its stage")
    if expect_rate is not None and rate != expect_rate:
        raise InputError(f"{path}: sample rate {rate} Hz, expected {expect_rate} Hz — regenerate it at {expect_rate} Hz")
    if expect_channels is not None and channels != expect_channels:
        raise InputError(f"{path}: {channels} channel(s), expected {expect_channels} — regenerate it")
    audio = np.ascontiguousarray(audio.T)
    if not np.all(np.isfinite(audio)):
        raise InputError(f"{path}: audio contains NaN or Inf — regenerate it")
    if not allow_silent and rms(audio) < SILENCE_RMS:
        raise InputError(f"{path}: audio is silent (RMS < {SILENCE_RMS}) — regenerate it or drop it")
    return audio, rate


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0


def to_mono(audio: np.ndarray) -> np.ndarray:
    """[channels, samples] or [samples] -> [samples] (channel mean)."""
    return audio if audio.ndim == 1 else audio.mean(axis=0, dtype=np.float32)


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample along the last axis with soxr (HQ). [samples] or [channels, samples]."""
    if rate_in == rate_out:
        return audio.astype(np.float32, copy=False)
    if audio.ndim == 1:
        return soxr.resample(audio, rate_in, rate_out, quality="HQ").astype(np.float32, copy=False)
    return soxr.resample(audio.T, rate_in, rate_out, quality="HQ").T.astype(np.float32, copy=False)


def write_wav(path, audio: np.ndarray, rate: int, subtype: str = "PCM_16") -> None:
    """Write [channels, samples] or [samples] float audio atomically; values are clipped to [-1, 1]."""
    data = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    data = data.T if data.ndim == 2 else data
    # Encoded in memory, written by Python: a full disk is then an OSError naming the file (ENOSPC), where
    # libsndfile writing the file itself reports a bare "System error".
    encoded = io.BytesIO()
    sf.write(encoded, data, rate, subtype=subtype, format="WAV")
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(encoded.getvalue())


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
