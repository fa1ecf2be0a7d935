"""NSynth's ten note qualities, derived from a rendered note's audio where the audio can show them.

NSynth's qualities were judged by listeners; a soundfont render has no listener, so each quality that has a
measurable correlate gets a fixed rule over the note's own audio (and its known pitch), never over other notes:
a note's qualities are the same whether it is rendered alone or with a thousand others, and on resume.
Thresholds were chosen by measuring the 49 probe programs of TimGM6mb at every 4th pitch and velocities 75 and
127 (1,182 notes), so that each rule fires on the instruments NSynth's definitions name and at rates of the
order of NSynth's. Rates on those notes vs NSynth's test split: bright 16 % (16 %), dark 14 % (17 %),
distortion 10 % (22 %), fast_decay 23 % (17 %), long_release 9 % (14 %), nonlinear_env 23 % (11 %),
percussive 6 % (9 %).

Measurements (16 kHz mono, key held `hold_seconds` then released):
- envelope: frame RMS in dB (20 ms frames, 10 ms hop); the peak is its maximum, the note-off level the mean
  over the last 100 ms before note-off.
- centroid ratio: spectral centroid of the held part (0.1 s to 0.1 s before note-off) divided by the
  fundamental frequency of the note's MIDI pitch. 1 means all energy at the fundamental.

Rules (index: name — rule — NSynth's definition it stands in for):
- 0 bright — centroid ratio >= 3.5 — "a large amount of high frequency content and strong upper harmonics".
- 1 dark — centroid ratio < 1.1 and centroid < 1.5 kHz — "a distinct lack of high frequency content, giving a
  muted and bassy sound" (near-pure tones: flutes, ocarina, marimba, electric piano; the 1.5 kHz cap keeps
  high pure tones, which are not bassy, out).
- 2 distortion — at least 10 % of the held part's energy lies above the 8.5th harmonic — "a distinctive
  crunchy sound and presence of many harmonics". A waveshaper's signature on a single note is exactly such a
  spread of strong high harmonics; it also fires on very buzzy acoustic timbres (sitar, harpsichord).
- 3 fast_decay — the note-off level is >= 30 dB below the peak — "amplitude envelope of all harmonics decays
  substantially before the note-off point".
- 4 long_release — still audible at note-off (< 40 dB below the peak) and, after note-off, the envelope stays
  within 30 dB of the note-off level for >= 0.5 s — "amplitude envelope decays slowly after the note-off
  point, sometimes still present at the end of the sample".
- 5 multiphonic — not derived: telling overtones of a second fundamental from a timbre's own inharmonic
  partials needs a listener or a pitch tracker we cannot validate here. The renderer sets it on the dyads it
  plays on purpose (data/nsynth/render_soundfont.py), and on nothing else.
- 6 nonlinear_env — during the held part, after the peak, the envelope rises again by >= 6 dB above its
  lowest level so far — "modulation of the envelope, e.g. a swell or tremolo".
- 7 percussive — the peak comes within 50 ms of the onset, and the first 40 ms hold >= 15 % of their energy
  away from the harmonics of the pitch, at least 3 times the held part's own inharmonic share — "a loud
  non-harmonic sound at note onset" (a strike or pluck transient, not a steadily noisy timbre).
- 8 reverb — never set: tinysoundfont applies no reverb, and a sample's baked-in room cannot be told from its
  release in one note.
- 9 tempo-synced — never set: a single held note rendered from a soundfont has no tempo.
"""
import numpy as np

from data.vocabulary import QUALITIES

NOT_DERIVED = ("multiphonic", "reverb", "tempo-synced")

_FRAME_SECONDS = 0.02
_HOP_SECONDS = 0.01
_NOTE_OFF_WINDOW_SECONDS = 0.1
_SPECTRUM_SIZE = 4096
_ONSET_SECONDS = 0.04
# Harmonic bins: within 3 % of a multiple of f0 (6 % at the onset, whose short window smears more), and never
# narrower than 2 FFT bins, the window's main lobe.
_HARMONIC_TOLERANCE = 0.03
_ONSET_HARMONIC_TOLERANCE = 0.06

BRIGHT_CENTROID_RATIO = 3.5
DARK_CENTROID_RATIO = 1.1
DARK_MAX_CENTROID_HZ = 1500.0
DISTORTION_HARMONIC = 8.5
DISTORTION_ENERGY_SHARE = 0.10
FAST_DECAY_DB = 30.0
LONG_RELEASE_AUDIBLE_DB = 40.0
LONG_RELEASE_FALL_DB = 30.0
LONG_RELEASE_SECONDS = 0.5
NONLINEAR_SWELL_DB = 6.0
PERCUSSIVE_PEAK_SECONDS = 0.05
PERCUSSIVE_ONSET_INHARMONIC = 0.15
PERCUSSIVE_ONSET_OVER_HELD = 3.0


def midi_to_hz(pitch: int) -> float:
    return 440.0 * 2.0 ** ((pitch - 69) / 12.0)


def envelope_db(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    frame = int(round(_FRAME_SECONDS * sample_rate))
    hop = int(round(_HOP_SECONDS * sample_rate))
    frames = np.lib.stride_tricks.sliding_window_view(audio.astype(np.float64), frame)[::hop]
    return 10.0 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12)


def _power_spectrum(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean Hann-windowed power spectrum over half-overlapping frames (one zero-padded frame if short)."""
    size = _SPECTRUM_SIZE
    if audio.size >= size:
        frames = np.lib.stride_tricks.sliding_window_view(audio.astype(np.float64), size)[::size // 2]
        power = (np.abs(np.fft.rfft(frames * np.hanning(size), axis=1)) ** 2).mean(axis=0)
    else:
        power = np.abs(np.fft.rfft(audio.astype(np.float64) * np.hanning(audio.size), n=size)) ** 2
    return np.fft.rfftfreq(size, 1.0 / sample_rate), power


def _inharmonic_share(frequencies, power, f0: float, tolerance: float, bin_hz: float) -> float:
    nearest = np.maximum(np.round(frequencies / f0), 1.0) * f0
    harmonic = np.abs(frequencies - nearest) <= max(tolerance * f0, 2.0 * bin_hz)
    total = power.sum()
    return float(power[~harmonic].sum() / total) if total > 0 else 0.0


def measure(audio: np.ndarray, pitch: int, sample_rate: int, hold_seconds: float) -> dict:
    """The measurements the rules use (see the module docstring)."""
    f0 = midi_to_hz(pitch)
    hop = int(round(_HOP_SECONDS * sample_rate))
    envelope = envelope_db(audio, sample_rate)
    note_off_frame = int(round(hold_seconds / _HOP_SECONDS))
    window_frames = int(round(_NOTE_OFF_WINDOW_SECONDS / _HOP_SECONDS))
    held_envelope = envelope[:note_off_frame]
    peak_frame = int(np.argmax(held_envelope))
    peak_db = float(held_envelope[peak_frame])
    note_off_db = float(held_envelope[-window_frames:].mean())

    released = envelope[note_off_frame:]
    fallen = np.flatnonzero(released < note_off_db - LONG_RELEASE_FALL_DB)
    release_seconds = (fallen[0] if fallen.size else released.size) * _HOP_SECONDS

    after_peak = held_envelope[peak_frame:]
    swell_db = float(np.max(after_peak - np.minimum.accumulate(after_peak)))

    held = audio[int(0.1 * sample_rate):int((hold_seconds - 0.1) * sample_rate)]
    frequencies, power = _power_spectrum(held, sample_rate)
    total = power.sum()
    centroid_hz = float((frequencies * power).sum() / total) if total > 0 else 0.0
    high_share = float(power[frequencies >= DISTORTION_HARMONIC * f0].sum() / total) if total > 0 else 0.0
    bin_hz = sample_rate / _SPECTRUM_SIZE
    held_inharmonic = _inharmonic_share(frequencies, power, f0, _HARMONIC_TOLERANCE, bin_hz)

    onset = audio[:int(round(_ONSET_SECONDS * sample_rate))].astype(np.float64)
    onset_power = np.abs(np.fft.rfft(onset * np.hanning(onset.size), n=_SPECTRUM_SIZE)) ** 2
    onset_inharmonic = _inharmonic_share(frequencies, onset_power, f0, _ONSET_HARMONIC_TOLERANCE,
                                         sample_rate / onset.size)
    return {
        "peak_seconds": peak_frame * hop / sample_rate,
        "decay_db": peak_db - note_off_db,
        "release_seconds": float(release_seconds),
        "swell_db": swell_db,
        "centroid_hz": centroid_hz,
        "centroid_ratio": centroid_hz / f0,
        "high_harmonic_share": high_share,
        "held_inharmonic_share": held_inharmonic,
        "onset_inharmonic_share": onset_inharmonic,
    }


def derive_qualities(audio: np.ndarray, pitch: int, sample_rate: int = 16000, hold_seconds: float = 3.0) -> list[int]:
    """NSynth's 10-element 0/1 quality vector, in QUALITIES order, for one mono note."""
    m = measure(np.asarray(audio), pitch, sample_rate, hold_seconds)
    present = {
        "bright": m["centroid_ratio"] >= BRIGHT_CENTROID_RATIO,
        "dark": m["centroid_ratio"] < DARK_CENTROID_RATIO and m["centroid_hz"] < DARK_MAX_CENTROID_HZ,
        "distortion": m["high_harmonic_share"] >= DISTORTION_ENERGY_SHARE,
        "fast_decay": m["decay_db"] >= FAST_DECAY_DB,
        "long_release": m["decay_db"] < LONG_RELEASE_AUDIBLE_DB and m["release_seconds"] >= LONG_RELEASE_SECONDS,
        "nonlinear_env": m["swell_db"] >= NONLINEAR_SWELL_DB,
        "percussive": (m["peak_seconds"] <= PERCUSSIVE_PEAK_SECONDS
                       and m["onset_inharmonic_share"] >= PERCUSSIVE_ONSET_INHARMONIC
                       and m["onset_inharmonic_share"] >= PERCUSSIVE_ONSET_OVER_HELD * m["held_inharmonic_share"]),
    }
    return [int(present.get(name, False)) for name in QUALITIES]
