"""The fixed clips on which the musicnn port is compared with the original TensorFlow graph.

Made deterministically from TimGM6mb (shipped in pretty_midi) through data/soundfont.py and a seeded numpy
generator, so tests/fixtures/make_musicnn_reference.py (run in a scratch environment with TensorFlow) and the
tests (run in the project's environment) see the same samples. All mono float32 at 16 kHz.
"""
import numpy as np

from data.soundfont import default_soundfont, render_note, render_phrase

SAMPLE_RATE = 16_000
BEAT = 0.5   # seconds at 120 bpm


def _drum_groove(seconds: float) -> list[tuple]:
    """Kick on beats 1 and 3, snare on 2 and 4, closed hi-hat on every eighth note."""
    notes = []
    for beat in range(int(seconds / BEAT)):
        onset = beat * BEAT
        notes.append((onset, 0.1, 36 if beat % 2 == 0 else 38, 110))
        notes.append((onset, 0.05, 42, 80))
        notes.append((onset + BEAT / 2, 0.05, 42, 70))
    return notes


def _peak_normalised(audio: np.ndarray, peak: float) -> np.ndarray:
    return (audio * np.float32(peak / np.abs(audio).max())).astype(np.float32)


def reference_clips() -> dict[str, np.ndarray]:
    soundfont = default_soundfont()
    piano = render_note(soundfont, program=0, pitch=60, velocity=100, sample_rate=SAMPLE_RATE, seconds=4.0)
    # Nylon guitar arpeggio under a held violin note, played loud: its mel bins exceed float16's range in the
    # original's log compression, the case the port saturates.
    guitar = [(0.5 * k, 0.45, pitch, 100, 0) for k, pitch in enumerate((52, 56, 59, 64, 59, 56, 52, 56))]
    mix = render_phrase(soundfont, [24, 40], guitar + [(0.0, 3.5, 76, 90, 1)], sample_rate=SAMPLE_RATE, seconds=4.0)
    drums = render_phrase(soundfont, [], _drum_groove(10.0), sample_rate=SAMPLE_RATE, seconds=10.0, drums=True)
    bass_line = [(2 * BEAT * k, 0.9, pitch, 100, 0) for k, pitch in enumerate((40, 40, 43, 45, 40, 40, 47, 45, 43, 40))]
    bass = render_phrase(soundfont, [33], bass_line, sample_rate=SAMPLE_RATE, seconds=10.0)
    return {
        "piano_note": piano.astype(np.float32),
        "guitar_violin_mix": _peak_normalised(mix, 0.9),
        "white_noise": (0.1 * np.random.default_rng(0).standard_normal(3 * SAMPLE_RATE)).astype(np.float32),
        "silence": np.zeros(3 * SAMPLE_RATE, dtype=np.float32),
        "drums_bass_10s": _peak_normalised(drums + bass, 0.5),
    }
