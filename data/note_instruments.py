"""The probes' instruments: the soundfont presets whose notes and mixes stage 4 builds concept sets from.

The generator's bank (diffusion/bank.py) plays TimGM6mb's "bank" programs and its GM drum kit
(data/soundfont.py). The probes' notes (data/nsynth/render_soundfont.py) come from NOTE_INSTRUMENTS, presets
of FluidR3_GM (Debian's fluid-soundfont-gm, MIT) and of TimGM6mb, and their mixes add drum parts played on
DRUM_KITS, FluidR3_GM's drum kits.

A probe trained on a recording that also sounds in the generator's output would partly recognise that
recording rather than the concept, and a probe tested on a recording it was trained on would be scored too
kindly. GM program numbers do not keep them apart: TimGM6mb plays the same samples for Piano 1, 2 and 3 and
for Violin, Viola and Fiddle (23 bank/probe program pairs share samples), and FluidR3_GM's kits share most
of their samples with each other. So the rule is on recordings, read from the soundfonts' own preset ->
instrument -> sample tables (data/sf2_tables.py):

1. no recording that sounds in a rendered note or mix is one the bank can play (any key, any velocity of a
   bank preset or the drum kit), and
2. no recording sounds in the notes of two different instruments (a drum kit is one instrument), so however
   stage 4 splits instruments into train and test, the two sides share no recording.

`shared_recordings` checks both on the notes actually planned, mix parts included
(data/nsynth/render_soundfont.py refuses to render otherwise, and tests/test_soundfont.py checks the
defaults on the .sf2 files). A recording is the sha256 of its PCM data, so the same recording in both
soundfonts would count as shared too (none is). TimGM6mb alone cannot give every family five sample-disjoint
note instruments that avoid the bank (vocal has one, synth lead two), hence the second soundfont. The bank
stays on TimGM6mb.

NOTE_INSTRUMENTS takes, per family, six to eight instruments (vocal four, the most the two soundfonts give
without sharing), spanning the family's sources and both soundfonts, so that a probe cannot learn a
soundfont's character in place of a family, and holding the instruments the ensemble and playing-style
concepts name (orchestral strings, brass and woodwinds; acoustic guitars, basses and piano; synth leads and
basses; plucked strings). Stage 4 splits by instrument: six give two test and four train instruments at its
default test fraction (0.25), and vocal's four two and two (stage 4 sends at least two of four or more).

DRUM_KITS: five FluidR3_GM kits, three acoustic and two electronic, each playing its own kick, snare and
cymbal keys: the kits share samples, but not on these keys (checked like every note).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data import sf2_tables
from data.soundfont import BANK, BY_PROGRAM, DRUM_BANK, DRUM_FAMILY, GM_KITS, GMProgram, check_soundfont, programs_for
from data.stage import InputError

FLUIDR3 = "FluidR3_GM"
TIMGM6MB = "TimGM6mb"
# Where Debian's fluid-soundfont-gm installs it (`make install` does; see the Makefile).
DEBIAN_FLUIDR3 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
# NSynth's `instrument` number of a note instrument: the GM program for FluidR3_GM, 128 + program for TimGM6mb,
# 256 + kit for a FluidR3_GM drum kit (three digits, as NSynth's instrument_str needs).
_NUMBER_OFFSET = {FLUIDR3: 0, TIMGM6MB: 128}
_KIT_OFFSET = 256


@dataclass(frozen=True)
class NoteInstrument:
    soundfont: str      # FLUIDR3 or TIMGM6MB
    program: int        # GM program (bank 0 of the soundfont)
    gm: GMProgram       # family, source and playable range, from the GM table
    bank = 0

    @property
    def number(self) -> int:
        return _NUMBER_OFFSET[self.soundfont] + self.program

    family = property(lambda self: self.gm.family)
    source = property(lambda self: self.gm.source)
    lowest = property(lambda self: self.gm.lowest)
    highest = property(lambda self: self.gm.highest)
    name = property(lambda self: f"{self.gm.name} ({self.soundfont})")
    instrument_str = property(lambda self: f"{self.family}_{self.source}_{self.number:03d}")


@dataclass(frozen=True)
class DrumKit:
    """A drum part's instrument: one kit (a bank-128 preset) playing its own kick, snare and cymbal keys."""
    soundfont: str
    program: int                # the kit's preset number (GM_KITS)
    keys: tuple[int, int, int]  # GM percussion keys of its kick, snare and cymbal
    bank = DRUM_BANK
    family = DRUM_FAMILY
    source = None               # like the vocabulary's "drum" label and the bank's drum clips: no NSynth source

    @property
    def number(self) -> int:
        return _KIT_OFFSET + self.program

    name = property(lambda self: f"{GM_KITS[self.program][0]} kit ({self.soundfont})")
    instrument_str = property(lambda self: f"{DRUM_FAMILY}_{self.number:03d}")


def _notes_from(soundfont: str, *programs: int) -> tuple[NoteInstrument, ...]:
    return tuple(NoteInstrument(soundfont, program, BY_PROGRAM[program]) for program in programs)


# Per family (comments: FluidR3_GM | TimGM6mb). Chosen by hand for sources, registers and the instruments the
# concepts name; every pick is checked against the sample tables (shared_recordings), and several obvious ones
# fail it: TimGM6mb's pianos, violin, viola, alto sax and most leads share recordings with bank programs;
# FluidR3's Piano 2 and Honky-tonk share Piano 1's, its String Ensembles share Tremolo's, its Charang and
# Bass & Lead share the Saw lead's.
NOTE_INSTRUMENTS: tuple[NoteInstrument, ...] = tuple(sorted(
    _notes_from(FLUIDR3,
                32, 33, 38, 39,          # bass: acoustic, finger, synth 1, synth 2 | acoustic, slap
                56, 57, 60, 62,          # brass: trumpet, trombone, French horn, synth brass | trumpet, tuba
                72, 73, 75, 77,          # flute: piccolo, flute, pan flute, shakuhachi | flute, ocarina
                24, 25, 27, 30, 105,     # guitar: nylon, steel, clean, distortion, banjo | nylon, jazz, sitar
                0, 2, 4, 6, 7,           # keyboard: grand, electric grand, Rhodes, harpsichord, clavinet | EP 1
                9, 11, 12, 114,          # mallet: glockenspiel, vibraphone, marimba, steel drums | xylo, kalimba
                16, 18, 19, 20,          # organ: drawbar, rock, church, reed | drawbar, church
                21, 22, 65, 70, 71,      # reed: accordion, harmonica, alto sax, bassoon, clarinet | tenor sax, oboe
                40, 41, 42, 44, 45, 46, 50,  # string: violin, viola, cello, tremolo, pizzicato, harp, synth 1
                                             # | contrabass
                80, 81, 82, 85,          # synth lead: square, saw, calliope, voice | square, saw
                52, 53, 54)              # vocal: choir aahs, voice oohs, synth voice | choir aahs
    + _notes_from(TIMGM6MB, 32, 36, 56, 58, 73, 79, 24, 26, 104, 4, 13, 108, 16, 19, 66, 68, 43, 80, 81, 52),
    key=lambda instrument: instrument.number))
# Standard, Power and Brush (acoustic), Electronic and TR-808 (electronic): kick, snare (or clap), cymbal.
DRUM_KITS: tuple[DrumKit, ...] = (
    DrumKit(FLUIDR3, 0, (36, 38, 42)), DrumKit(FLUIDR3, 16, (36, 38, 49)), DrumKit(FLUIDR3, 24, (36, 40, 44)),
    DrumKit(FLUIDR3, 25, (36, 39, 46)), DrumKit(FLUIDR3, 40, (35, 40, 51)),
)
NOTE_BY_NUMBER: dict[int, NoteInstrument | DrumKit] = {
    instrument.number: instrument for instrument in NOTE_INSTRUMENTS + DRUM_KITS}


def fluidr3_soundfont(path=None) -> Path:
    """FluidR3_GM.sf2: the given path, or where Debian's fluid-soundfont-gm puts it."""
    path = Path(path) if path is not None else DEBIAN_FLUIDR3
    if not path.is_file():
        raise InputError(f"{path}: FluidR3_GM.sf2 not found — install Debian's fluid-soundfont-gm (`make install` "
                         "does) or pass --fluid-soundfont PATH")
    return check_soundfont(path)


def bank_recordings(bank_soundfont) -> frozenset:
    """Every recording the generator's bank can play: all zones of its programs' presets and of the drum kit."""
    tables = sf2_tables.read_tables(bank_soundfont)
    indices = set(tables.sample_indices(DRUM_BANK, 0))
    for entry in programs_for(BANK):
        indices |= tables.sample_indices(0, entry.program)
    return tables.recordings(indices)


def played_recordings(soundfont, program: int, keys_and_velocities, bank: int = 0) -> frozenset:
    """The recordings that sound when preset (bank, program) plays each (key, velocity)."""
    tables = sf2_tables.read_tables(soundfont)
    indices = set()
    for key, velocity in keys_and_velocities:
        indices |= tables.sample_indices(bank, program, int(key), int(velocity))
    return tables.recordings(indices)


def shared_recordings(notes_by_instrument: dict, soundfont_paths: dict, bank_soundfont) -> str | None:
    """None when the planned notes share no recording with the bank nor between two instruments; otherwise a
    sentence naming the first conflict. `notes_by_instrument`: NoteInstrument or DrumKit -> [(key, velocity),
    ...] (every key its notes and mix parts press); `soundfont_paths`: FLUIDR3/TIMGM6MB -> path."""
    bank = bank_recordings(bank_soundfont)
    owner = {}
    for instrument in sorted(notes_by_instrument, key=lambda item: item.number):
        played = played_recordings(soundfont_paths[instrument.soundfont], instrument.program,
                                   notes_by_instrument[instrument], instrument.bank)
        if played & bank:
            return (f"note instrument {instrument.number} ({instrument.name}) plays {len(played & bank)} "
                    "recording(s) that the generator's bank also plays")
        for recording in played:
            if recording in owner and owner[recording] != instrument:
                return (f"note instruments {owner[recording].number} ({owner[recording].name}) and "
                        f"{instrument.number} ({instrument.name}) play a common recording")
            owner[recording] = instrument
    return None
