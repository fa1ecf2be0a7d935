"""NSynth's ten note qualities for the rendered examples, decided by how each one is played, before its audio exists.

NSynth's qualities were judged by listeners. A soundfont render has no listener, and a rule over the note's
own envelope and spectrum would measure what the spectral embedder measures, so a probe's score on such
labels would be close to tautological. Here every quality comes from something the renderer decides, or a
documented fact about the instrument it plays (data/soundfont.py PLAYED): the note's treatment (how the key
is played, and the effect its audio goes through) and its parts. The labels are fixed before rendering, the
same on resume, and never read from audio.

Treatments (data/nsynth/render_soundfont.py schedules them over each instrument's pitches and velocities;
half of the single notes are plain):
- plain: key held 3 s, then released (NSynth's recording protocol).
- staccato: key held STACCATO_SECONDS, then released.
- ring: key held to the end of the clip (no damper, like a sustain pedal), the last second fading by
  RING_FADE_DB: the sound is still present at the end of the sample.
- pulse: the plain note's amplitude gated in eighth notes at PULSE_BPM (on for PULSE_DUTY of each eighth,
  PULSE_FLOOR_DB below otherwise, PULSE_RAMP_SECONDS ramps).
- reverb: the plain note convolved with a fixed synthetic room (white noise decaying 60 dB over
  REVERB_SECONDS, drawn once from REVERB_SEED), mixed REVERB_WET to 1 with the dry note.
- lowpass: the plain note through an order-LOWPASS_ORDER Butterworth low-pass at LOWPASS_HARMONIC times its
  fundamental: only the fundamental passes.
- drive: the plain note through a tanh waveshaper with gain DRIVE_GAIN (peak level kept).
- dyad: plain, with a perfect fifth held over the note.
- mix: several instruments' plain parts summed (render_soundfont.py says how).

Rules (index: name — rule — NSynth's definition it stands for):
- 0 bright — never set. Nothing the renderer decides makes a note bright (tinysoundfont applies no
  velocity-dependent filter), and no concept reads it.
- 1 dark — lowpass — "a distinct lack of high frequency content, giving a muted and bassy sound".
- 2 distortion — drive, or a part whose GM instrument is distorted by name (DISTORTED_PROGRAMS: Overdriven
  Guitar, Distortion Guitar, Lead 5 charang) — "a distinctive crunchy sound and presence of many harmonics".
- 3 fast_decay — staccato — "amplitude envelope of all harmonics decays substantially before the note-off
  point" (a struck or plucked instrument decays on its own while held; the `staccato` concept leaves such
  notes out of its negatives rather than call them fast).
- 4 long_release — ring — "decays slowly after the note-off point, sometimes still present at the end of
  the sample".
- 5 multiphonic — dyad, or a mix with two or more pitched parts — "presence of overtone frequencies related
  to more than one fundamental frequency".
- 6 nonlinear_env — pulse, or a part whose GM instrument modulates its own envelope by name
  (TREMOLO_PROGRAMS: Tremolo Strings) — "modulation of the envelope, e.g. a swell or tremolo".
- 7 percussive — a part whose instrument is struck or plucked (PLAYED), or a drum part — "a loud
  non-harmonic sound at note onset" (a strike or pluck transient).
- 8 reverb — reverb — "room acoustics that were not able to be removed from the original sample".
- 9 tempo-synced — pulse — "rhythmic modulation of the sound to a fixed tempo".
"""
import numpy as np

from data.soundfont import PLAYED, PLUCKED, STRUCK
from data.vocabulary import QUALITIES

PLAIN, STACCATO, RING, PULSE, REVERB, LOWPASS, DRIVE, DYAD, MIX = (
    "plain", "staccato", "ring", "pulse", "reverb", "lowpass", "drive", "dyad", "mix")
# Effects applied to a plain render, and the qualities each treatment gives.
TREATMENT_QUALITIES = {
    PLAIN: (), STACCATO: ("fast_decay",), RING: ("long_release",), PULSE: ("nonlinear_env", "tempo-synced"),
    REVERB: ("reverb",), LOWPASS: ("dark",), DRIVE: ("distortion",), DYAD: ("multiphonic",), MIX: (),
}
NEVER_SET = ("bright",)

STACCATO_SECONDS = 0.25
RING_FADE_DB = 20.0
PULSE_BPM = 120.0
PULSE_DUTY = 0.6
PULSE_FLOOR_DB = 30.0
PULSE_RAMP_SECONDS = 0.005
REVERB_SECONDS = 2.0
REVERB_WET = 0.7
REVERB_SEED = 0
LOWPASS_HARMONIC = 1.5
LOWPASS_ORDER = 4
DRIVE_GAIN = 8.0
PEAK_LIMIT = 0.99
DISTORTED_PROGRAMS = (29, 30, 84)
TREMOLO_PROGRAMS = (44,)


def midi_to_hz(pitch: int) -> float:
    return 440.0 * 2.0 ** ((pitch - 69) / 12.0)


def hold_seconds(treatment: str, held: float, seconds: float) -> float:
    """How long the key is held: the rendering parameter of staccato and ring."""
    return {STACCATO: STACCATO_SECONDS, RING: seconds}.get(treatment, held)


def _limit(audio: np.ndarray) -> np.ndarray:
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    return audio * (PEAK_LIMIT / peak) if peak > PEAK_LIMIT else audio


def apply(treatment: str, audio: np.ndarray, pitch: int, sample_rate: int, held: float) -> np.ndarray:
    """The treatment's effect on a render (float32 in and out; the key timing is hold_seconds')."""
    audio = np.asarray(audio, dtype=np.float64)
    time = np.arange(audio.size) / sample_rate
    if treatment == RING:
        after = time >= held
        audio = audio.copy()
        audio[after] *= 10.0 ** (-RING_FADE_DB / 20.0 * (time[after] - held) / max(time[-1] - held, 1e-9))
    elif treatment == PULSE:
        period = 60.0 / PULSE_BPM / 2.0
        gate = np.where((time / period) % 1.0 < PULSE_DUTY, 1.0, 10.0 ** (-PULSE_FLOOR_DB / 20.0))
        ramp = max(int(round(PULSE_RAMP_SECONDS * sample_rate)), 1)
        audio = audio * np.convolve(gate, np.ones(ramp) / ramp, mode="same")
    elif treatment == REVERB:
        size = int(round(REVERB_SECONDS * sample_rate))
        room = np.random.default_rng(REVERB_SEED).standard_normal(size) * 10.0 ** (-3.0 * np.arange(size) / size)
        room /= np.sqrt(np.sum(room ** 2))
        audio = audio + REVERB_WET * _signal().fftconvolve(audio, room)[:audio.size]
    elif treatment == LOWPASS:
        cutoff = min(LOWPASS_HARMONIC * midi_to_hz(pitch), 0.45 * sample_rate)
        signal = _signal()
        audio = signal.sosfilt(signal.butter(LOWPASS_ORDER, cutoff, fs=sample_rate, output="sos"), audio)
    elif treatment == DRIVE:
        peak = float(np.max(np.abs(audio))) or 1.0
        audio = np.tanh(DRIVE_GAIN * audio / peak) / np.tanh(DRIVE_GAIN) * peak
    elif treatment not in TREATMENT_QUALITIES:
        raise ValueError(f"unknown treatment {treatment!r}")
    return _limit(audio).astype(np.float32)


def qualities_of(treatment: str, programs, drum_parts: int = 0, pitched_parts: int = 1) -> list[int]:
    """NSynth's 10-element 0/1 quality vector, in QUALITIES order, for an example of this treatment whose
    melodic parts play these GM programs (plus `drum_parts` drum kits)."""
    present = set(TREATMENT_QUALITIES[treatment])
    if pitched_parts >= 2:
        present.add("multiphonic")
    if drum_parts or any(PLAYED.get(program) in (STRUCK, PLUCKED) for program in programs):
        present.add("percussive")
    if any(program in DISTORTED_PROGRAMS for program in programs):
        present.add("distortion")
    if any(program in TREMOLO_PROGRAMS for program in programs):
        present.add("nonlinear_env")
    return [int(name in present) for name in QUALITIES]


def _signal():
    """scipy.signal, imported when a note is treated: its import costs a second that an up-to-date rerun of the
    renderer (which treats no note) need not pay."""
    from scipy import signal
    return signal
