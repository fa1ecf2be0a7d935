"""What data/nsynth/render_soundfont.py plays: single notes with their treatments, dyads, and mixes.

An Example is one 4 s NSynth-format clip: one part (a single note or a dyad) or several (a mix), a velocity
and a treatment (data/nsynth/qualities.py). Its qualities follow from those alone, before any audio exists.

- Single notes: every pitch of an instrument's playable range that is a multiple of the pitch step, at each
  velocity. Along the pitches, SCHEDULE alternates plain with staccato, ring, pulse, reverb, lowpass and
  drive, from an offset that differs between instruments and velocities, so half the notes are plain and
  every treatment meets every family and register.
- Dyads: at every other grid pitch, the note plus a perfect fifth, at the dyad velocity (multiphonic).
- Mixes: several instruments at once. Each melodic part holds one note for 3 s (the lead high in its range,
  the others lower, by VOICINGS, each snapped to a C-major triad tone so the parts agree); a drum part plays
  its kit's kick, snare and cymbal in eighths at 120 bpm for the same 3 s (GROOVE).
  Each part is brought to PART_RMS (a drum part DRUM_GAIN lower, as the bank's drums sit under a
  lead), summed, and peak-limited. Two sources of mixes:
  1. as in the generator's bank, every pair of labels among the eleven families and "drum": the first
     GENERIC_MIXES_PER_PAIR instrument pairs, cycling through each family's instruments, in the first voicing;
  2. every ensemble a concept names (data/concepts.py INSTRUMENT_GROUPS with `ensemble`): every pair of the
     group's instruments from different families and, for a group with drum kits, every such melodic pair
     over each kit, in every voicing.
  The lead is the part whose family comes first in the vocabulary (drums last), as in the bank.
"""
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from data import soundfont as gm
from data.concepts import INSTRUMENT_GROUPS
from data.note_instruments import DrumKit, NoteInstrument
from data.nsynth import qualities as quality_rules
from data.vocabulary import DRUM, FAMILIES, QUALITIES, SOURCES

SAMPLE_RATE = 16000
SECONDS = 4.0
HOLD_SECONDS = 3.0
SCHEDULE = tuple(step for effect in (quality_rules.STACCATO, quality_rules.RING, quality_rules.PULSE,
                                     quality_rules.REVERB, quality_rules.LOWPASS, quality_rules.DRIVE)
                 for step in (quality_rules.PLAIN, effect))
DYAD_INTERVAL = 7  # a perfect fifth: two clearly separate fundamentals that still blend
MIX_VELOCITY = 100
# (lead, accompaniment) registers as fractions of each part's playable range: the first voicing for every
# mix, all of them for the ensembles a concept names (their positives are few: every instrument pair counts).
VOICINGS = ((0.65, 0.3), (0.8, 0.45), (0.5, 0.15))
TRIAD = (0, 4, 7)
PART_RMS = 0.05
DRUM_GAIN = 0.5
GENERIC_MIXES_PER_PAIR = 3
MIX_LABELS = FAMILIES + (DRUM,)
# Eighth-note slots (0.25 s at 120 bpm) of the kit's kick, snare and cymbal over the 3 s a note is held.
GROOVE_SLOT_SECONDS = 0.25
GROOVE = ((0, 4, 8), (2, 6, 10), tuple(range(12)))
HIT_SECONDS = 0.1
DRUM_VELOCITY = 100


@dataclass(frozen=True)
class PlannedPart:
    instrument: NoteInstrument | DrumKit
    pitch: int | None               # MIDI key; None for a drum part

    @property
    def is_drum(self) -> bool:
        return self.instrument.family == DRUM

    @property
    def token(self) -> str:
        """How a further part of a mix appears in its note_str."""
        return self.instrument.instrument_str + ("" if self.is_drum else f"-{self.pitch:03d}")

    def entry(self) -> dict:
        instrument = self.instrument
        return {"instrument": instrument.number, "instrument_str": instrument.instrument_str,
                "program": instrument.program, "family": instrument.family, "source": instrument.source,
                "pitch": self.pitch}


@dataclass(frozen=True)
class Example:
    parts: tuple[PlannedPart, ...]
    velocity: int
    treatment: str

    @property
    def lead(self) -> PlannedPart:
        return self.parts[0]

    @property
    def note_str(self) -> str:
        lead = self.lead
        return (f"{lead.instrument.instrument_str}-{lead.pitch:03d}-{self.velocity:03d}"
                + "".join(f"+{part.token}" for part in self.parts[1:]))

    def pressed(self) -> list[tuple]:
        """(instrument, key, velocity) of every key the example presses: the recording check's input."""
        keys = []
        for part in self.parts:
            if part.is_drum:
                keys += [(part.instrument, key, DRUM_VELOCITY) for key in part.instrument.keys]
            else:
                keys.append((part.instrument, part.pitch, self.velocity))
                if self.treatment == quality_rules.DYAD:
                    keys.append((part.instrument, part.pitch + DYAD_INTERVAL, self.velocity))
        return keys

    def qualities(self) -> list[int]:
        melodic = [part for part in self.parts if not part.is_drum]
        return quality_rules.qualities_of(self.treatment, [part.instrument.program for part in melodic],
                                          drum_parts=len(self.parts) - len(melodic), pitched_parts=len(melodic))

    def entry(self) -> dict:
        """The examples.json entry: NSynth's fields (a mix's are its lead's), its program and treatment, and
        a mix's parts."""
        lead, quality_vector = self.lead.instrument, self.qualities()
        entry = {
            "note": lead.number * 16384 + self.lead.pitch * 128 + self.velocity,
            "note_str": self.note_str,
            "instrument": lead.number,
            "instrument_str": lead.instrument_str,
            "pitch": self.lead.pitch,
            "velocity": self.velocity,
            "sample_rate": SAMPLE_RATE,
            "qualities": quality_vector,
            "qualities_str": [name for name, present in zip(QUALITIES, quality_vector) if present],
            "instrument_family": FAMILIES.index(lead.family),
            "instrument_family_str": lead.family,
            "instrument_source": SOURCES.index(lead.source),
            "instrument_source_str": lead.source,
            "program": lead.program,
            "treatment": self.treatment,
        }
        if len(self.parts) > 1:
            entry["parts"] = [part.entry() for part in self.parts]
        return entry


def grid(instrument: NoteInstrument, pitch_step: int) -> range:
    return range(instrument.lowest + (-instrument.lowest) % pitch_step, instrument.highest + 1, pitch_step)


def planned_notes(instruments, pitch_step: int, velocities, dyad_velocity: int = 0) -> list[Example]:
    plan = []
    for position, instrument in enumerate(instruments):
        pitches = grid(instrument, pitch_step)
        for row, velocity in enumerate(velocities):
            offset = 5 * position + 7 * row
            plan += [Example((PlannedPart(instrument, pitch),), velocity, SCHEDULE[(index + offset) % len(SCHEDULE)])
                     for index, pitch in enumerate(pitches)]
        if dyad_velocity:
            plan += [Example((PlannedPart(instrument, pitch),), dyad_velocity, quality_rules.DYAD)
                     for pitch in pitches[::2] if pitch + DYAD_INTERVAL <= instrument.highest]
    return plan


def register_pitch(instrument: NoteInstrument, register: float) -> int:
    target = instrument.lowest + register * (instrument.highest - instrument.lowest)
    tones = [pitch for pitch in range(instrument.lowest, instrument.highest + 1) if pitch % 12 in TRIAD]
    return min(tones, key=lambda pitch: (abs(pitch - target), pitch))


def _ordered(instruments) -> tuple:
    return tuple(sorted(instruments, key=lambda item: (MIX_LABELS.index(item.family), item.number)))


def mix_combinations(instruments, kits) -> list[tuple]:
    """(instruments, lead first; voicing index) of every mix (see the module docstring), without repeats."""
    by_label = {label: [item for item in (*instruments, *kits) if item.family == label] for label in MIX_LABELS}
    labels = [label for label in MIX_LABELS if by_label[label]]
    combos = []
    for shift, (first, second) in enumerate(combinations(labels, 2)):
        leads, others = by_label[first], by_label[second]
        combos += [((leads[i % len(leads)], others[(i + shift) % len(others)]), 0)
                   for i in range(GENERIC_MIXES_PER_PAIR)]
    for group in INSTRUMENT_GROUPS:
        if not group.ensemble:
            continue
        members = [item for item in instruments if item.program in group.programs]
        drums = [kit for kit in kits if kit.program in group.kits]
        pairs = [(a, b) for a, b in combinations(members + drums, 2) if a.family != b.family]
        ensembles = pairs + [(a, b, kit) for a, b in pairs if DRUM not in (a.family, b.family) for kit in drums]
        combos += [(ensemble, voicing) for ensemble in ensembles for voicing in range(len(VOICINGS))]
    return list(dict.fromkeys((_ordered(combo), voicing) for combo, voicing in combos))


def planned_mixes(instruments, kits) -> list[Example]:
    plan = {}
    for combo, voicing in mix_combinations(instruments, kits):
        registers = VOICINGS[voicing]
        parts = tuple(PlannedPart(item, None) if item.family == DRUM else
                      PlannedPart(item, register_pitch(item, registers[min(index, 1)]))
                      for index, item in enumerate(combo))
        example = Example(parts, MIX_VELOCITY, quality_rules.MIX)
        plan.setdefault(example.note_str, example)  # narrow ranges may give two voicings the same pitches
    return list(plan.values())


# -- rendering ---------------------------------------------------------------------------------------------------

def _groove_notes(kit: DrumKit) -> list[tuple]:
    return [(slot * GROOVE_SLOT_SECONDS, HIT_SECONDS, key, DRUM_VELOCITY)
            for key, slots in zip(kit.keys, GROOVE) for slot in slots]


def render_part(part: PlannedPart, paths: dict, velocity: int) -> np.ndarray:
    """A mix part as a plain render: a held note, or the kit's groove."""
    instrument = part.instrument
    if part.is_drum:
        return gm.render_phrase(paths[instrument.soundfont], [], _groove_notes(instrument), SAMPLE_RATE, SECONDS,
                                drums=True, kit=instrument.program)
    return gm.render_note(paths[instrument.soundfont], instrument.program, part.pitch, velocity, SAMPLE_RATE,
                          SECONDS, HOLD_SECONDS)


def render_example(example: Example, paths: dict, part_cache: dict) -> np.ndarray | None:
    """Float32 audio of the example, or None when a part is a soundfont hole."""
    if len(example.parts) == 1:
        instrument, pitch = example.lead.instrument, example.lead.pitch
        interval = DYAD_INTERVAL if example.treatment == quality_rules.DYAD else 0
        held = quality_rules.hold_seconds(example.treatment, HOLD_SECONDS, SECONDS)
        audio = gm.render_note(paths[instrument.soundfont], instrument.program, pitch, example.velocity,
                               SAMPLE_RATE, SECONDS, held, interval)
        return None if gm.is_silent(audio) else quality_rules.apply(example.treatment, audio, pitch, SAMPLE_RATE,
                                                                   HOLD_SECONDS)
    mix = np.zeros(int(round(SECONDS * SAMPLE_RATE)))
    for part in example.parts:
        key = (part.instrument, part.pitch, example.velocity)
        if key not in part_cache:
            part_cache[key] = render_part(part, paths, example.velocity)
        audio = part_cache[key].astype(np.float64)
        if gm.is_silent(audio):
            return None
        mix += (DRUM_GAIN if part.is_drum else 1.0) * PART_RMS * audio / np.sqrt(np.mean(audio ** 2))
    peak = np.max(np.abs(mix))
    return (mix * (quality_rules.PEAK_LIMIT / peak if peak > quality_rules.PEAK_LIMIT else 1.0)).astype(np.float32)
