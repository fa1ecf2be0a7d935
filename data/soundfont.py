"""General MIDI soundfonts as a source of NSynth-like notes and short phrases: the GM program table and rendering.

Two consumers, kept apart at the level of recordings (data/note_instruments.py says how):

- the generator's bank (diffusion/bank.py) plays the "bank" programs of GM_PROGRAMS, and the GM drum kit,
  from TimGM6mb (shipped inside pretty_midi);
- the probes' notes (data/nsynth/render_soundfont.py; stage 4 builds concept sets from them and stage 6 trains
  probes on them) come from data/note_instruments.py NOTE_INSTRUMENTS and DRUM_KITS: presets of FluidR3_GM
  (Debian's fluid-soundfont-gm, MIT) and of TimGM6mb that share no recording with the bank.

Families and sources follow NSynth's definitions: a family names how the sound is made (bowed strings are
"string", plucked ones "guitar", struck bars "mallet"); the source is "acoustic" for a mechanical
instrument, "electronic" for one with electric pickups or tone wheels, "synthetic" for a synthesizer patch.
GM programs that fit no NSynth family are left unmapped: synth pads and effects (88–103), timpani (47),
orchestra hit (55), the unpitched percussion 113 and 115–119, sound effects (120–127), and the hammered
dulcimer (15), whose struck strings are neither "string" nor "mallet". The GM drum kit (channel 10) has no
NSynth family: it is labelled "drum". In GM_PROGRAMS, role "bank" marks the programs the bank plays and
"probe" the ones it leaves out; the notes do not rely on that split (data/note_instruments.py).

PLAYED says how each mapped program's instrument makes its sound (struck, plucked, bowed, blown by a player,
wind from bellows or a blower, electric, sung, synthesized) and GM_KITS which drum kits are acoustic and which
electronic: documented facts about the instruments the GM names denote, written down before any audio exists.
The concepts (data/concepts.py) and the rendered notes' qualities (data/nsynth/qualities.py) read them.

Rendering uses tinysoundfont. Loading a soundfont is the slow part, so one synthesizer is kept per
(soundfont, sample rate). Renders are deterministic: every render starts from silence (see `_reset`).
Some soundfonts have holes (a preset with no sample for some key renders silence): `is_silent` detects them.
"""
from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from data.audio import SILENCE_RMS
from data.stage import InputError

PROBE = "probe"
BANK = "bank"
ROLES = (PROBE, BANK)
DRUM_FAMILY = "drum"

# tinysoundfont's bank number for percussion presets and the GM drum channel (channel 10, zero-based 9).
DRUM_BANK = 128
_DRUM_CHANNEL = 9
_MELODIC_CHANNELS = tuple(channel for channel in range(16) if channel != _DRUM_CHANNEL)
# sounds_off() fades voices out over a few milliseconds instead of cutting them; rendering this much silence
# afterwards lets the fade finish, so no earlier note's tail leaks into the next render.
_FLUSH_SECONDS = 0.1
# A rendered note below this RMS is a hole in the soundfont. It is the threshold below which every stage's
# audio reader refuses a clip as silent; holes measured in TimGM6mb render ~1e-8, while its quietest real
# notes (piano C8 at velocity 25) have RMS ~3e-4.
NOTE_SILENCE_RMS = SILENCE_RMS


@dataclass(frozen=True)
class GMProgram:
    program: int        # General MIDI program number, 0-based
    name: str           # GM instrument name
    family: str         # NSynth instrument family
    source: str         # NSynth instrument source
    role: str           # PROBE or BANK
    lowest: int         # playable MIDI pitch range of the real instrument (inclusive); a choir spans
                        # bass to soprano, a synthesizer patch C2-C7
    highest: int


def _gm(program, name, family, source, role, lowest, highest) -> GMProgram:
    return GMProgram(program, name, family, source, role, lowest, highest)


_A, _E, _S = "acoustic", "electronic", "synthetic"
_P, _B = PROBE, BANK

# Within each family the probe side takes the larger share and spans the family's sources (and registers)
# where the table allows, because stage 4 splits probe instruments into train and test by instrument.
GM_PROGRAMS: tuple[GMProgram, ...] = (
    _gm(0, "Acoustic Grand Piano", "keyboard", _A, _P, 21, 108),
    _gm(1, "Bright Acoustic Piano", "keyboard", _A, _B, 21, 108),
    _gm(2, "Electric Grand Piano", "keyboard", _E, _B, 21, 108),
    _gm(3, "Honky-tonk Piano", "keyboard", _A, _P, 21, 108),
    _gm(4, "Electric Piano 1", "keyboard", _E, _P, 28, 103),
    _gm(5, "Electric Piano 2", "keyboard", _E, _B, 28, 103),
    _gm(6, "Harpsichord", "keyboard", _A, _P, 29, 89),
    _gm(7, "Clavinet", "keyboard", _E, _P, 29, 96),
    _gm(8, "Celesta", "mallet", _A, _B, 60, 108),
    _gm(9, "Glockenspiel", "mallet", _A, _P, 79, 108),
    _gm(10, "Music Box", "mallet", _A, _B, 60, 96),
    _gm(11, "Vibraphone", "mallet", _A, _P, 53, 89),
    _gm(12, "Marimba", "mallet", _A, _P, 45, 96),
    _gm(13, "Xylophone", "mallet", _A, _P, 65, 108),
    _gm(14, "Tubular Bells", "mallet", _A, _B, 60, 77),
    _gm(16, "Drawbar Organ", "organ", _E, _P, 36, 96),
    _gm(17, "Percussive Organ", "organ", _E, _B, 36, 96),
    _gm(18, "Rock Organ", "organ", _E, _P, 36, 96),
    _gm(19, "Church Organ", "organ", _A, _P, 24, 96),
    _gm(20, "Reed Organ", "organ", _A, _B, 36, 96),
    _gm(21, "Accordion", "reed", _A, _B, 53, 89),
    _gm(22, "Harmonica", "reed", _A, _P, 60, 96),
    _gm(23, "Tango Accordion", "reed", _A, _B, 53, 89),
    _gm(24, "Acoustic Guitar (nylon)", "guitar", _A, _P, 40, 83),
    _gm(25, "Acoustic Guitar (steel)", "guitar", _A, _B, 40, 84),
    _gm(26, "Electric Guitar (jazz)", "guitar", _E, _P, 40, 86),
    _gm(27, "Electric Guitar (clean)", "guitar", _E, _P, 40, 86),
    _gm(28, "Electric Guitar (muted)", "guitar", _E, _B, 40, 86),
    _gm(29, "Overdriven Guitar", "guitar", _E, _P, 40, 86),
    _gm(30, "Distortion Guitar", "guitar", _E, _B, 40, 86),
    _gm(31, "Guitar Harmonics", "guitar", _E, _B, 52, 96),
    _gm(32, "Acoustic Bass", "bass", _A, _P, 28, 67),
    _gm(33, "Electric Bass (finger)", "bass", _E, _P, 28, 67),
    _gm(34, "Electric Bass (pick)", "bass", _E, _B, 28, 67),
    _gm(35, "Fretless Bass", "bass", _E, _B, 28, 67),
    _gm(36, "Slap Bass 1", "bass", _E, _P, 28, 67),
    _gm(37, "Slap Bass 2", "bass", _E, _B, 28, 67),
    _gm(38, "Synth Bass 1", "bass", _S, _P, 24, 67),
    _gm(39, "Synth Bass 2", "bass", _S, _B, 24, 67),
    _gm(40, "Violin", "string", _A, _P, 55, 103),
    _gm(41, "Viola", "string", _A, _P, 48, 91),
    _gm(42, "Cello", "string", _A, _P, 36, 76),
    _gm(43, "Contrabass", "string", _A, _P, 28, 67),
    _gm(44, "Tremolo Strings", "string", _A, _B, 28, 96),
    _gm(45, "Pizzicato Strings", "string", _A, _B, 28, 96),
    _gm(46, "Orchestral Harp", "string", _A, _B, 24, 103),
    _gm(48, "String Ensemble 1", "string", _A, _P, 28, 96),
    _gm(49, "String Ensemble 2", "string", _A, _B, 28, 96),
    _gm(50, "Synth Strings 1", "string", _S, _P, 36, 96),
    _gm(51, "Synth Strings 2", "string", _S, _B, 36, 96),
    _gm(52, "Choir Aahs", "vocal", _A, _P, 40, 84),
    _gm(53, "Voice Oohs", "vocal", _A, _B, 40, 84),
    _gm(54, "Synth Voice", "vocal", _S, _P, 36, 96),
    _gm(56, "Trumpet", "brass", _A, _P, 54, 86),
    _gm(57, "Trombone", "brass", _A, _P, 40, 72),
    _gm(58, "Tuba", "brass", _A, _P, 28, 58),
    _gm(59, "Muted Trumpet", "brass", _A, _B, 54, 82),
    _gm(60, "French Horn", "brass", _A, _B, 34, 77),
    _gm(61, "Brass Section", "brass", _A, _B, 36, 84),
    _gm(62, "Synth Brass 1", "brass", _S, _P, 36, 84),
    _gm(63, "Synth Brass 2", "brass", _S, _B, 36, 84),
    _gm(64, "Soprano Sax", "reed", _A, _P, 56, 87),
    _gm(65, "Alto Sax", "reed", _A, _B, 49, 81),
    _gm(66, "Tenor Sax", "reed", _A, _P, 44, 76),
    _gm(67, "Baritone Sax", "reed", _A, _B, 36, 69),
    _gm(68, "Oboe", "reed", _A, _P, 58, 91),
    _gm(69, "English Horn", "reed", _A, _B, 52, 81),
    _gm(70, "Bassoon", "reed", _A, _P, 34, 72),
    _gm(71, "Clarinet", "reed", _A, _P, 50, 91),
    _gm(72, "Piccolo", "flute", _A, _B, 74, 108),
    _gm(73, "Flute", "flute", _A, _P, 60, 96),
    _gm(74, "Recorder", "flute", _A, _B, 60, 96),
    _gm(75, "Pan Flute", "flute", _A, _P, 60, 96),
    _gm(76, "Blown Bottle", "flute", _A, _B, 60, 84),
    _gm(77, "Shakuhachi", "flute", _A, _P, 55, 84),
    _gm(78, "Whistle", "flute", _A, _B, 72, 96),
    _gm(79, "Ocarina", "flute", _A, _P, 60, 84),
    _gm(80, "Lead 1 (square)", "synth_lead", _S, _P, 36, 96),
    _gm(81, "Lead 2 (sawtooth)", "synth_lead", _S, _P, 36, 96),
    _gm(82, "Lead 3 (calliope)", "synth_lead", _S, _P, 36, 96),
    _gm(83, "Lead 4 (chiff)", "synth_lead", _S, _B, 36, 96),
    _gm(84, "Lead 5 (charang)", "synth_lead", _S, _P, 36, 96),
    _gm(85, "Lead 6 (voice)", "synth_lead", _S, _B, 36, 96),
    _gm(86, "Lead 7 (fifths)", "synth_lead", _S, _B, 36, 96),
    _gm(87, "Lead 8 (bass + lead)", "synth_lead", _S, _B, 36, 96),
    _gm(104, "Sitar", "guitar", _A, _P, 48, 77),
    _gm(105, "Banjo", "guitar", _A, _P, 48, 84),
    _gm(106, "Shamisen", "guitar", _A, _B, 50, 79),
    _gm(107, "Koto", "guitar", _A, _B, 55, 90),
    _gm(108, "Kalimba", "mallet", _A, _P, 48, 84),
    _gm(109, "Bagpipe", "reed", _A, _B, 55, 77),
    _gm(110, "Fiddle", "string", _A, _B, 55, 96),
    _gm(111, "Shanai", "reed", _A, _B, 60, 88),
    _gm(112, "Tinkle Bell", "mallet", _A, _B, 72, 96),
    _gm(114, "Steel Drums", "mallet", _A, _B, 52, 88),
)
BY_PROGRAM: dict[int, GMProgram] = {entry.program: entry for entry in GM_PROGRAMS}
UNMAPPED_PROGRAMS = tuple(program for program in range(128) if program not in BY_PROGRAM)

# How each mapped program's instrument sounds (module docstring). Harpsichord and music box pluck; slap bass
# counts as plucked (thumb and popped strings); electric pianos and clavinet strike tines or strings.
STRUCK, PLUCKED, BOWED, BLOWN, BELLOWS, ELECTRIC, SUNG, SYNTHESIZED = (
    "struck", "plucked", "bowed", "blown", "bellows", "electric", "sung", "synthesized")
PLAYED: dict[int, str] = {
    **dict.fromkeys((0, 1, 2, 3, 4, 5, 7, 8, 9, 11, 12, 13, 14, 112, 114), STRUCK),
    **dict.fromkeys((6, 10, *range(24, 38), 45, 46, 104, 105, 106, 107, 108), PLUCKED),
    **dict.fromkeys((40, 41, 42, 43, 44, 48, 49, 110), BOWED),
    **dict.fromkeys((22, *range(56, 62), *range(64, 80), 109, 111), BLOWN),
    **dict.fromkeys((19, 20, 21, 23), BELLOWS),
    **dict.fromkeys((16, 17, 18), ELECTRIC),
    **dict.fromkeys((52, 53), SUNG),
    **dict.fromkeys((38, 39, 50, 51, 54, 62, 63, *range(80, 88)), SYNTHESIZED),
}
# GM's drum kits (bank 128 presets, the GS numbering both soundfonts follow): name and whether the kit's
# sounds are recorded drums ("acoustic") or drum machines ("electronic").
GM_KITS: dict[int, tuple[str, str]] = {
    0: ("Standard", "acoustic"), 8: ("Room", "acoustic"), 16: ("Power", "acoustic"), 24: ("Electronic", "electronic"),
    25: ("TR-808", "electronic"), 32: ("Jazz", "acoustic"), 40: ("Brush", "acoustic"), 48: ("Orchestra", "acoustic"),
}

# GM percussion key map (channel 10), for the bank's drum grooves.
GM_PERCUSSION: dict[int, str] = {
    35: "Acoustic Bass Drum", 36: "Bass Drum 1", 37: "Side Stick", 38: "Acoustic Snare", 39: "Hand Clap",
    40: "Electric Snare", 41: "Low Floor Tom", 42: "Closed Hi-Hat", 43: "High Floor Tom", 44: "Pedal Hi-Hat",
    45: "Low Tom", 46: "Open Hi-Hat", 47: "Low-Mid Tom", 48: "Hi-Mid Tom", 49: "Crash Cymbal 1",
    50: "High Tom", 51: "Ride Cymbal 1", 52: "Chinese Cymbal", 53: "Ride Bell", 54: "Tambourine",
    55: "Splash Cymbal", 56: "Cowbell", 57: "Crash Cymbal 2", 58: "Vibraslap", 59: "Ride Cymbal 2",
    60: "Hi Bongo", 61: "Low Bongo", 62: "Mute Hi Conga", 63: "Open Hi Conga", 64: "Low Conga",
    65: "High Timbale", 66: "Low Timbale", 67: "High Agogo", 68: "Low Agogo", 69: "Cabasa", 70: "Maracas",
    71: "Short Whistle", 72: "Long Whistle", 73: "Short Guiro", 74: "Long Guiro", 75: "Claves",
    76: "Hi Wood Block", 77: "Low Wood Block", 78: "Mute Cuica", 79: "Open Cuica", 80: "Mute Triangle",
    81: "Open Triangle",
}


def programs_for(role: str, family: str | None = None) -> tuple[GMProgram, ...]:
    """The mapped GM programs of one role ("probe" or "bank"), optionally of one NSynth family."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    return tuple(entry for entry in GM_PROGRAMS if entry.role == role and (family is None or entry.family == family))


def default_soundfont() -> Path:
    """TimGM6mb.sf2 as shipped inside the installed pretty_midi package (found at run time, never copied)."""
    spec = importlib.util.find_spec("pretty_midi")
    if spec is None or spec.origin is None:
        raise InputError("pretty_midi is not installed, so its TimGM6mb.sf2 cannot be found "
                         "— install the project's dependencies or pass --soundfont PATH")
    path = Path(spec.origin).parent / "TimGM6mb.sf2"
    if not path.is_file():
        raise InputError(f"{path}: missing from the pretty_midi package — reinstall pretty_midi or pass --soundfont PATH")
    return path


def check_soundfont(path) -> Path:
    """A readable .sf2/.sf3 file, or a one-line InputError."""
    path = Path(path)
    if path.suffix.lower() not in (".sf2", ".sf3"):
        raise InputError(f"{path}: not a soundfont (.sf2 or .sf3 expected) — pass --soundfont PATH to one")
    if not path.is_file():
        raise InputError(f"{path}: soundfont not found — pass --soundfont PATH to an existing .sf2 file")
    return path


class _LoadedSoundfont(NamedTuple):
    path: str
    synth: object
    soundfont_id: int


@functools.lru_cache(maxsize=4)
def _load(path: str, sample_rate: int) -> _LoadedSoundfont:
    import tinysoundfont  # imported here so that reading the program table needs no synthesizer

    synth = tinysoundfont.Synth(samplerate=sample_rate)
    try:
        soundfont_id = synth.sfload(path)
    except Exception as error:  # tinysoundfont raises its own exception type or OSError for corrupt files
        raise InputError(f"{path}: tinysoundfont cannot load it ({error}) — pass --soundfont PATH "
                         "to a valid .sf2 file") from None
    return _LoadedSoundfont(path, synth, soundfont_id)


def _synth(soundfont, sample_rate: int) -> _LoadedSoundfont:
    return _load(str(Path(soundfont).resolve()), int(sample_rate))


def _reset(loaded: _LoadedSoundfont, sample_rate: int) -> None:
    synth = loaded.synth
    # Only channels that have a program can be silenced (tinysoundfont refuses the others).
    for channel in list(synth.channel):
        synth.sounds_off(channel)
    _generate_mono(synth, int(round(_FLUSH_SECONDS * sample_rate)))
    # A phrase may have used more channels than the next render selects; none may keep its old program.
    for channel in list(synth.channel):
        synth.program_unset(channel)


def _select(loaded: _LoadedSoundfont, channel: int, program: int, drums: bool = False) -> None:
    bank = DRUM_BANK if drums else 0
    try:
        loaded.synth.program_select(channel, loaded.soundfont_id, bank, program, is_drums=drums)
    except Exception as error:  # the soundfont has no preset at (bank, program)
        what = f"drum kit {program}" if drums else f"GM program {program}"
        raise InputError(f"{loaded.path}: no preset for the {what} ({error}) "
                         "— pass --soundfont PATH to a General MIDI soundfont") from None


def _generate_mono(synth, frames: int) -> np.ndarray:
    if frames <= 0:
        return np.zeros(0, dtype=np.float32)
    stereo = np.frombuffer(synth.generate(frames), dtype=np.float32).reshape(-1, 2)
    return stereo.mean(axis=1, dtype=np.float32)


def render_note(soundfont, program: int, pitch: int, velocity: int, sample_rate: int = 16000,
                seconds: float = 4.0, hold_seconds: float = 3.0, interval: int = 0) -> np.ndarray:
    """One note as NSynth records it: key held for hold_seconds, then released; mono float32 of
    round(seconds * sample_rate) samples (a release longer than the remainder is cut, as in NSynth).
    interval > 0 also holds pitch + interval: a dyad, two fundamentals sounding at once (multiphonic)."""
    if not 0 <= hold_seconds <= seconds:
        raise ValueError(f"hold_seconds must be within [0, seconds], got {hold_seconds} of {seconds}")
    loaded = _synth(soundfont, sample_rate)
    _reset(loaded, sample_rate)
    _select(loaded, 0, program)
    total = int(round(seconds * sample_rate))
    held = int(round(hold_seconds * sample_rate))
    keys = [int(pitch)] + ([int(pitch) + int(interval)] if interval else [])
    for key in keys:
        loaded.synth.noteon(0, key, int(velocity))
    attack = _generate_mono(loaded.synth, held)
    for key in keys:
        loaded.synth.noteoff(0, key)
    release = _generate_mono(loaded.synth, total - held)
    return np.concatenate([attack, release])


class PhraseNote(NamedTuple):
    onset: float        # seconds from the start of the phrase
    duration: float     # seconds the key is held
    pitch: int          # MIDI key; for drums a GM percussion key (GM_PERCUSSION)
    velocity: int       # 1-127
    part: int = 0       # index into the phrase's programs (ignored for drums)


def render_phrase(soundfont, programs: Sequence[int], notes: Sequence, sample_rate: int = 16000,
                  seconds: float | None = None, drums: bool = False, kit: int = 0) -> np.ndarray:
    """A short multi-part phrase (melody, chords, bass line) or, with drums=True, a groove on drum kit `kit`
    (a bank-128 preset, GM_KITS; 0 is the standard GM kit).

    `notes` are PhraseNote or plain (onset, duration, pitch, velocity[, part]) tuples; part i plays GM program
    programs[i] on its own channel. `seconds` defaults to the last release plus one second.
    Returns mono float32.
    """
    notes = sorted((PhraseNote(*note) for note in notes), key=lambda note: (note.onset, note.part, note.pitch))
    if not drums and not programs:
        raise ValueError("a melodic phrase needs at least one program")
    if drums and programs:
        raise ValueError("a drum phrase plays the GM kit: pass programs=[]")
    if len(programs) > len(_MELODIC_CHANNELS):
        raise ValueError(f"at most {len(_MELODIC_CHANNELS)} parts fit on the MIDI channels")
    for note in notes:
        if note.onset < 0 or note.duration <= 0:
            raise ValueError(f"note {note} needs onset >= 0 and duration > 0")
        if not drums and not 0 <= note.part < len(programs):
            raise ValueError(f"note {note} plays part {note.part} but only {len(programs)} program(s) were given")
    if seconds is None:
        seconds = max((note.onset + note.duration for note in notes), default=0.0) + 1.0
    total = int(round(seconds * sample_rate))

    loaded = _synth(soundfont, sample_rate)
    _reset(loaded, sample_rate)
    if drums:
        _select(loaded, _DRUM_CHANNEL, kit, drums=True)
    else:
        for part, program in enumerate(programs):
            _select(loaded, _MELODIC_CHANNELS[part], int(program))

    def channel_of(note: PhraseNote) -> int:
        return _DRUM_CHANNEL if drums else _MELODIC_CHANNELS[note.part]

    # Key events in time order; at equal times releases go first so a repeated key is re-struck cleanly.
    events = []
    for note in notes:
        events.append((int(round(note.onset * sample_rate)), 1, channel_of(note), note.pitch, note.velocity))
        events.append((int(round((note.onset + note.duration) * sample_rate)), 0, channel_of(note), note.pitch, 0))
    events.sort(key=lambda event: (event[0], event[1]))

    pieces, position = [], 0
    for frame, is_on, channel, pitch, velocity in events:
        frame = min(frame, total)
        pieces.append(_generate_mono(loaded.synth, frame - position))
        position = frame
        if is_on:
            loaded.synth.noteon(channel, int(pitch), int(velocity))
        else:
            loaded.synth.noteoff(channel, int(pitch))
    pieces.append(_generate_mono(loaded.synth, total - position))
    return np.concatenate(pieces)


def is_silent(audio: np.ndarray, threshold: float = NOTE_SILENCE_RMS) -> bool:
    """True for a soundfont hole: a render with (almost) no energy."""
    audio = np.asarray(audio, dtype=np.float64)
    return audio.size == 0 or float(np.sqrt(np.mean(np.square(audio)))) < threshold
