"""The embedded "spectral" embedder: deterministic timbre and envelope descriptors computed with librosa.

It needs no weights, so the whole pipeline runs offline and in CI; the descriptors are chosen so that linear
probes can tell instrument families and note qualities (percussive, fast decay, long release, bright/dark)
apart, which is what stage 6 asks of any embedder.

Input and window policy
    Mono audio at 16 kHz (the NSynth rate; the runner resamples generated clips to it). Every clip is reduced
    to its first 4.0 s (64,000 samples) — the length of an NSynth note — cropping longer clips and padding
    shorter ones with silence at the end. A note's onset sits at 0 s and its release ends by 4 s, so the same
    window sees the same part of the sound for notes and for generated clips, and envelope features (attack,
    decay, energy after 1 s) keep one meaning across both. One fixed length also lets a whole batch be
    analysed as one [batch, samples] array.

Analysis
    STFT with a 1024-point Hann window and hop 256 (64 ms / 16 ms; 251 frames), power spectrum P, magnitude S.
    Levels are in dB and divided by 20, and frequencies are divided by the Nyquist frequency, so every block
    is of order one and no block dominates an unscaled linear probe. "Weighted" statistics over time use each
    frame's energy as its weight, so the silent tail of a decayed note does not dilute the description of
    the sound itself.

Feature blocks (in this order; dim 248)
    mel_mean        64  mean over time of the log-mel spectrogram (64 bands, 30 Hz–8 kHz), dB/20, floor -80 dB
    mel_std         64  standard deviation over time of the same — how much each band moves
    mel_shape       64  energy-weighted mean of each frame's mel spectrum relative to that frame's total
                        energy (dB/20): the spectral envelope of the loud part, independent of the velocity
    spectral_mean   11  weighted mean of centroid, bandwidth, 85 % roll-off (÷ Nyquist), log10 flatness and
                        the 7 spectral-contrast bands (dB/20)
    spectral_std    11  weighted standard deviation of the same 11
    zcr              2  weighted mean and standard deviation of the zero-crossing rate (noisiness)
    envelope        28  from the frame RMS in dB relative to the clip's peak (floor -80 dB): peak level (dBFS/20);
                        attack time (s, from the first frame within 40 dB of the peak to the peak); decay slope
                        over the 0.5 s after the peak (dB/s ÷ 100); fraction of frames within 20 dB and within
                        40 dB of the peak; share of the energy in [0, .1), [.1, .5), [.5, 1), [1, 2), [2, 3),
                        [3, 4) s; mean relative level in each of 16 quarter-second segments (dB/20); crest
                        factor of the envelope (peak over mean, dB/20)
    onset            4  onset strength (spectral flux of the log-mel, ÷ 10): mean, standard deviation, maximum,
                        and the fraction of frames that are local peaks above mean + 2 std (onset density)
"""
import hashlib
import json

import librosa
import numpy as np
from threadpoolctl import threadpool_limits

from embeddings.base import Embedder

SAMPLE_RATE = 16_000
WINDOW_SECONDS = 4.0
WINDOW_SAMPLES = int(SAMPLE_RATE * WINDOW_SECONDS)
N_FFT = 1024
HOP = 256
N_MELS = 64
FMIN, FMAX = 30.0, 8000.0
FLOOR_DB = -80.0
DB_SCALE = 20.0
ATTACK_FLOOR_DB = -40.0
DECAY_SECONDS = 0.5
ENERGY_EDGES_S = (0.0, 0.1, 0.5, 1.0, 2.0, 3.0, 4.0)
ENVELOPE_SEGMENTS = 16
ONSET_SCALE = 10.0
CONTRAST_BANDS = 6      # octave bands above CONTRAST_FMIN, plus the band below it
CONTRAST_FMIN = 200.0
CONTRAST_QUANTILE = 0.02
ROLLOFF = 0.85

BLOCKS = (("mel_mean", N_MELS), ("mel_std", N_MELS), ("mel_shape", N_MELS), ("spectral_mean", 4 + CONTRAST_BANDS + 1),
          ("spectral_std", 4 + CONTRAST_BANDS + 1), ("zcr", 2),
          ("envelope", 5 + len(ENERGY_EDGES_S) - 1 + ENVELOPE_SEGMENTS + 1), ("onset", 4))
DIM = sum(size for _, size in BLOCKS)

# Everything that changes the vectors; its hash (with the librosa version, whose filters and STFT we use)
# stands in for a checkpoint hash in the provenance. Bump `version` whenever the code of a block changes.
FEATURE_CONFIG = {
    "version": 1, "sample_rate": SAMPLE_RATE, "window_seconds": WINDOW_SECONDS, "n_fft": N_FFT, "hop": HOP,
    "window": "hann", "n_mels": N_MELS, "fmin": FMIN, "fmax": FMAX, "floor_db": FLOOR_DB, "db_scale": DB_SCALE,
    "attack_floor_db": ATTACK_FLOOR_DB, "decay_seconds": DECAY_SECONDS, "energy_edges_s": ENERGY_EDGES_S,
    "envelope_segments": ENVELOPE_SEGMENTS, "onset_scale": ONSET_SCALE, "contrast_bands": CONTRAST_BANDS,
    "contrast_fmin": CONTRAST_FMIN, "contrast_quantile": CONTRAST_QUANTILE, "rolloff": ROLLOFF,
    "blocks": BLOCKS,
}
WINDOW_POLICY = (f"first {WINDOW_SECONDS:g} s at {SAMPLE_RATE} Hz mono; longer clips cropped, shorter clips "
                 "zero-padded at the end")


def window(waveform: np.ndarray) -> np.ndarray:
    """Crop or zero-pad one mono waveform to the fixed analysis window."""
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"expected a mono waveform [samples], got shape {list(waveform.shape)}")
    out = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    length = min(len(waveform), WINDOW_SAMPLES)
    out[:length] = waveform[:length]
    return out


def _weighted_mean_std(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """values [B, k, T], weights [B, T] summing to 1 over T -> ([B, k], [B, k])."""
    mean = np.einsum("bkt,bt->bk", values, weights)
    variance = np.einsum("bkt,bt->bk", np.square(values - mean[..., None]), weights)
    return mean, np.sqrt(np.maximum(variance, 0.0))


def _db(power: np.ndarray) -> np.ndarray:
    return np.maximum(10.0 * np.log10(np.maximum(power, 1e-12)), FLOOR_DB)


def _envelope_features(frame_rms: np.ndarray) -> np.ndarray:
    """frame_rms [B, T] -> [B, 28] (see the module docstring)."""
    n_frames = frame_rms.shape[1]
    frame_seconds = HOP / SAMPLE_RATE
    level_db = np.maximum(20.0 * np.log10(np.maximum(frame_rms, 1e-8)), -160.0)
    peak_frame = np.argmax(level_db, axis=1)
    peak_db = level_db.max(axis=1)
    relative = np.maximum(level_db - peak_db[:, None], FLOOR_DB)

    # Attack from the first frame within 40 dB of the peak, so leading silence is not counted as attack.
    start_frame = np.argmax(relative > ATTACK_FLOOR_DB, axis=1)
    attack = (peak_frame - start_frame) * frame_seconds

    # Least-squares slope of the relative level over the frames after the peak (fewer if the clip ends).
    span = int(round(DECAY_SECONDS / frame_seconds))
    offsets = np.arange(1, span + 1)
    frames = peak_frame[:, None] + offsets[None, :]
    valid = frames < n_frames
    levels = np.take_along_axis(relative, np.minimum(frames, n_frames - 1), axis=1)
    times = offsets * frame_seconds
    count = np.maximum(valid.sum(axis=1), 1)
    t_mean = (times * valid).sum(axis=1) / count
    l_mean = (levels * valid).sum(axis=1) / count
    covariance = ((times - t_mean[:, None]) * (levels - l_mean[:, None]) * valid).sum(axis=1)
    spread = (np.square(times - t_mean[:, None]) * valid).sum(axis=1)
    decay_slope = np.where(spread > 0, covariance / np.maximum(spread, 1e-12), 0.0) / 100.0

    within_20 = (relative > -20.0).mean(axis=1)
    within_40 = (relative > -40.0).mean(axis=1)

    energy = np.square(frame_rms)
    total = np.maximum(energy.sum(axis=1, keepdims=True), 1e-20)
    frame_times = np.arange(n_frames) * frame_seconds
    shares = [energy[:, (frame_times >= lo) & (frame_times < hi)].sum(axis=1) / total[:, 0]
              for lo, hi in zip(ENERGY_EDGES_S[:-1], ENERGY_EDGES_S[1:])]
    # The centred STFT's last frame sits exactly at 4 s; it belongs to the last segment.
    shares[-1] = shares[-1] + energy[:, frame_times >= ENERGY_EDGES_S[-1]].sum(axis=1) / total[:, 0]

    segment_of_frame = np.minimum((frame_times / WINDOW_SECONDS * ENVELOPE_SEGMENTS).astype(int), ENVELOPE_SEGMENTS - 1)
    segment_means = np.stack([relative[:, segment_of_frame == k].mean(axis=1) for k in range(ENVELOPE_SEGMENTS)],
                             axis=1)

    crest_db = peak_db - 10.0 * np.log10(np.maximum(energy.mean(axis=1), 1e-20))
    return np.column_stack([
        peak_db / DB_SCALE, attack, decay_slope, within_20, within_40, *shares,
        segment_means / DB_SCALE, crest_db / DB_SCALE,
    ])


def _spectral_shape(magnitude: np.ndarray, power: np.ndarray) -> np.ndarray:
    """Per-frame centroid, bandwidth, roll-off (÷ Nyquist) and log10 flatness -> [B, 4, T].

    Written out in numpy rather than through librosa's per-feature calls: each of those renormalises the
    spectrogram again, which was most of the embedder's time.
    """
    nyquist = SAMPLE_RATE / 2
    freqs = (librosa.fft_frequencies(sr=SAMPLE_RATE, n_fft=N_FFT) / nyquist).astype(np.float32)
    distribution = magnitude / np.maximum(magnitude.sum(axis=1, keepdims=True), 1e-12)
    centroid = np.einsum("bft,f->bt", distribution, freqs)
    bandwidth = np.sqrt(np.maximum(np.einsum("bft,bft->bt", distribution,
                                             np.square(freqs[None, :, None] - centroid[:, None, :])), 0.0))
    cumulative = np.cumsum(magnitude, axis=1)
    rolloff_bin = np.minimum((cumulative < ROLLOFF * cumulative[:, -1:, :]).sum(axis=1), len(freqs) - 1)
    rolloff = freqs[rolloff_bin]
    floored = np.maximum(power, 1e-10)
    log_flatness = (np.log(floored).mean(axis=1) - np.log(floored.mean(axis=1))) / np.log(10.0)
    return np.stack([centroid, bandwidth, rolloff, log_flatness], axis=1)


def _spectral_contrast(power: np.ndarray) -> np.ndarray:
    """Octave-band peak-to-valley contrast (dB/20) -> [B, CONTRAST_BANDS + 1, T].

    The bands and 2 % quantiles follow librosa.feature.spectral_contrast, but levels are taken per element:
    librosa's version clips at 80 dB below the loudest value of the whole array, which would make one
    clip's features depend on the other clips in its batch.
    """
    freqs = librosa.fft_frequencies(sr=SAMPLE_RATE, n_fft=N_FFT)
    edges = np.concatenate([[0.0], CONTRAST_FMIN * 2.0 ** np.arange(CONTRAST_BANDS + 1)])
    bands = []
    for k, (low, high) in enumerate(zip(edges[:-1], edges[1:])):
        in_band = (freqs >= low) & (freqs <= high)
        if k == CONTRAST_BANDS:
            in_band |= freqs > high
        sub_band = np.sort(power[:, in_band, :], axis=1)
        take = max(int(np.rint(CONTRAST_QUANTILE * in_band.sum())), 1)
        peak = sub_band[:, -take:, :].mean(axis=1)
        valley = sub_band[:, :take, :].mean(axis=1)
        bands.append(10.0 * np.log10((peak + 1e-10) / (valley + 1e-10)))
    return np.stack(bands, axis=1) / DB_SCALE


def _zero_crossing_rate(batch: np.ndarray, n_frames: int) -> np.ndarray:
    """Sign changes per sample pair in each STFT frame (centred, silence beyond the ends) -> [B, 1, T].

    Counted with one cumulative sum over the batch; librosa's zero_crossing_rate runs a per-sample numba
    kernel that cost a fifth of the embedder's time.
    """
    crossings = np.signbit(batch[:, 1:]) != np.signbit(batch[:, :-1])
    before = np.concatenate([np.zeros((len(batch), 1), np.int32), np.cumsum(crossings, axis=1, dtype=np.int32)], axis=1)
    centres = np.arange(n_frames) * HOP
    first = np.clip(centres - N_FFT // 2, 0, batch.shape[1] - 1)
    last = np.clip(centres + N_FFT // 2 - 1, 0, batch.shape[1] - 1)
    return ((before[:, last] - before[:, first]) / (N_FFT - 1))[:, None, :]


def _onset_features(log_mel_db: np.ndarray) -> np.ndarray:
    strength = librosa.onset.onset_strength(S=log_mel_db, sr=SAMPLE_RATE, hop_length=HOP) / ONSET_SCALE
    mean, std = strength.mean(axis=1), strength.std(axis=1)
    inner = strength[:, 1:-1]
    peaks = (inner > strength[:, :-2]) & (inner >= strength[:, 2:]) & (inner > (mean + 2 * std)[:, None])
    return np.column_stack([mean, std, strength.max(axis=1), peaks.mean(axis=1)])


def spectral_features(batch: np.ndarray) -> np.ndarray:
    """[B, WINDOW_SAMPLES] float32 -> float32 [B, DIM]."""
    magnitude = np.abs(librosa.stft(batch, n_fft=N_FFT, hop_length=HOP, window="hann", center=True))
    power = np.square(magnitude)
    mel = librosa.feature.melspectrogram(S=power, sr=SAMPLE_RATE, n_mels=N_MELS, fmin=FMIN, fmax=FMAX)
    mel_db = _db(mel)

    frame_energy = power.sum(axis=1)
    # The tiny floor keeps an all-silent window (possible after cropping) from dividing by zero.
    weights = frame_energy + 1e-12
    weights = weights / weights.sum(axis=1, keepdims=True)

    shape_db = np.maximum(mel_db - 10.0 * np.log10(np.maximum(mel.sum(axis=1, keepdims=True), 1e-12)), FLOOR_DB)
    mel_shape = np.einsum("bkt,bt->bk", shape_db, weights)

    descriptors = np.concatenate([_spectral_shape(magnitude, power), _spectral_contrast(power)], axis=1)
    spectral_mean, spectral_std = _weighted_mean_std(descriptors, weights)

    zcr_mean, zcr_std = _weighted_mean_std(_zero_crossing_rate(batch, weights.shape[1]), weights)

    frame_rms = librosa.feature.rms(S=magnitude, frame_length=N_FFT)[:, 0]
    features = np.concatenate([
        mel_db.mean(axis=2) / DB_SCALE, mel_db.std(axis=2) / DB_SCALE, mel_shape / DB_SCALE,
        spectral_mean, spectral_std, zcr_mean, zcr_std,
        _envelope_features(frame_rms), _onset_features(mel_db),
    ], axis=1).astype(np.float32)
    return features


class SpectralEmbedder(Embedder):
    name = "spectral"
    # The stages' default batch: per-clip cost falls by about a quarter from batch 1 to 32 (numpy overheads).
    batch_size = 32
    sample_rate = SAMPLE_RATE
    dim = DIM
    window_policy = WINDOW_POLICY

    def __init__(self):
        # The config hash is fixed for a librosa version: computed once, it is the embedder's identity.
        config = {**FEATURE_CONFIG, "librosa": librosa.__version__}
        self._config_sha256 = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()

    def provenance(self) -> dict:
        return {"embedder": self.name, "model": f"librosa-descriptors-v{FEATURE_CONFIG['version']}",
                "checkpoint_sha256": self._config_sha256, "librosa": librosa.__version__,
                "window_policy": self.window_policy, "dim": self.dim, "sample_rate": self.sample_rate}

    def embed(self, waveforms: list[np.ndarray]) -> np.ndarray:
        if not waveforms:
            return np.zeros((0, self.dim), dtype=np.float32)
        # One BLAS thread: a multi-threaded matrix product may sum in another order, and the descriptors must be the
        # same bytes on every machine, whatever its cores (a resumed run is compared byte for byte with a fresh one).
        with threadpool_limits(limits=1):
            return spectral_features(np.stack([window(waveform) for waveform in waveforms]))
