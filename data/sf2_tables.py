"""Which recordings a SoundFont 2 preset plays: its preset -> instrument -> sample tables, read from the file.

A General MIDI soundfont reuses recordings across programs (TimGM6mb plays the same samples for Piano 1 and
Piano 2, for Violin, Viola and Fiddle), so two GM program numbers are not two instruments. What a probe must
never share with the generator's bank, and a test instrument never with a train instrument, is a recording.
This module answers "which recordings sound when preset (bank, program) plays key k at velocity v" from the
sf2's `pdta` chunk, following the SoundFont 2.04 specification:

- phdr (preset headers) -> pbag (preset zones) -> pgen (generators): a zone whose generators include
  `instrument` (41) points at an instrument; one without it, if first, is the preset's global zone.
- inst -> ibag -> igen: a zone whose generators include `sampleID` (53) points at a sample header; one
  without it, if first, is the instrument's global zone.
- keyRange (43) and velRange (44) restrict a zone (a global zone's range is the default of its local zones);
  a note sounds the samples of every instrument zone whose ranges hold it, inside every preset zone whose
  ranges hold it. Only these generators decide which samples sound; all others shape how they sound.
- shdr (sample headers) give each sample's first and last data point in the `smpl` chunk. A recording is
  identified by the sha256 of its PCM-16 data, so duplicated headers, and the same recording in two
  soundfonts, count as one.

Only the tables and the sample data the asked-for presets use are read; the 148 MB FluidR3_GM takes ~0.3 s.
"""
from __future__ import annotations

import functools
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from data.stage import InputError

_INSTRUMENT, _KEY_RANGE, _VELOCITY_RANGE, _SAMPLE_ID = 41, 43, 44, 53
_FULL_RANGE = (0, 127)
# Record sizes of the pdta sub-chunks (SoundFont 2.04, section 7).
_RECORDS = {"phdr": ("<20sHHH", 38), "pbag": ("<HH", 4), "pgen": ("<HH", 4), "inst": ("<20sH", 22),
            "ibag": ("<HH", 4), "igen": ("<HH", 4), "shdr": ("<20sIIIIIBbHH", 46)}


@dataclass(frozen=True)
class Zone:
    target: int                 # instrument index (preset zone) or sample index (instrument zone)
    keys: tuple[int, int]       # inclusive MIDI key range
    velocities: tuple[int, int]  # inclusive velocity range

    def holds(self, key: int, velocity: int) -> bool:
        return self.keys[0] <= key <= self.keys[1] and self.velocities[0] <= velocity <= self.velocities[1]


@dataclass(frozen=True)
class SampleHeader:
    name: str
    start: int                  # first data point in smpl (16-bit words)
    end: int                    # one past the last


@dataclass(frozen=True)
class Tables:
    path: str
    presets: dict               # (bank, program) -> (name, tuple[Zone, ...])
    instruments: tuple          # instrument index -> tuple[Zone, ...]
    samples: tuple              # sample index -> SampleHeader
    smpl_offset: int            # byte offset of the smpl chunk's data in the file

    def preset_name(self, bank: int, program: int) -> str:
        return self._preset(bank, program)[0]

    def _preset(self, bank: int, program: int):
        try:
            return self.presets[(bank, program)]
        except KeyError:
            raise InputError(f"{self.path}: no preset at bank {bank}, program {program} "
                             "— pass a General MIDI soundfont") from None

    def sample_indices(self, bank: int, program: int, key: int | None = None,
                       velocity: int | None = None) -> frozenset:
        """Sample headers the preset sounds for (key, velocity); every one it can sound when both are None."""
        chosen = set()
        for preset_zone in self._preset(bank, program)[1]:
            if key is not None and not preset_zone.holds(key, velocity):
                continue
            for zone in self.instruments[preset_zone.target]:
                if key is None or zone.holds(key, velocity):
                    chosen.add(zone.target)
        return frozenset(chosen)

    def recordings(self, sample_indices) -> frozenset:
        """sha256 digests of the PCM data of these sample headers."""
        return frozenset(_recording(self.path, self.smpl_offset + 2 * self.samples[index].start,
                                    2 * max(self.samples[index].end - self.samples[index].start, 0))
                         for index in sample_indices)


@functools.lru_cache(maxsize=None)
def _recording(path: str, offset: int, size: int) -> str:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return hashlib.sha256(handle.read(size)).hexdigest()


def _chunks(handle, start: int, end: int):
    """(id, data offset, size) of the RIFF chunks between two file offsets."""
    position = start
    while position + 8 <= end:
        handle.seek(position)
        header = handle.read(8)
        if len(header) < 8:
            return
        chunk_id, size = header[:4].decode("latin-1"), struct.unpack("<I", header[4:])[0]
        yield chunk_id, position + 8, size
        position += 8 + size + (size & 1)


def _records(raw: bytes, name: str) -> list[tuple]:
    fmt, size = _RECORDS[name]
    return [struct.unpack_from(fmt, raw, offset) for offset in range(0, len(raw) - size + 1, size)]


def _range(amount: int) -> tuple[int, int]:
    return amount & 0xFF, amount >> 8


def _zones(bags, generators, first: int, stop: int, target_operator: int) -> tuple[Zone, ...]:
    """The local zones of one preset or instrument; a leading zone without a target is global (its ranges
    become the default of the others, spec 7.3/7.7)."""
    default = {_KEY_RANGE: _FULL_RANGE, _VELOCITY_RANGE: _FULL_RANGE}
    zones = []
    for bag in range(first, stop):
        found = {operator: amount for operator, amount in generators[bags[bag][0]:bags[bag + 1][0]]}
        if target_operator not in found:
            if bag == first:
                default = {key: _range(found[key]) if key in found else value for key, value in default.items()}
            continue
        zones.append(Zone(found[target_operator],
                          _range(found[_KEY_RANGE]) if _KEY_RANGE in found else default[_KEY_RANGE],
                          _range(found[_VELOCITY_RANGE]) if _VELOCITY_RANGE in found else default[_VELOCITY_RANGE]))
    return tuple(zones)


@functools.lru_cache(maxsize=4)
def _read(path: str, size: int, mtime_ns: int) -> Tables:
    raw, smpl_offset = {}, None
    with open(path, "rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"sfbk":
            raise InputError(f"{path}: not a SoundFont 2 file (no RIFF sfbk header) — pass a .sf2 soundfont")
        for chunk_id, offset, chunk_size in _chunks(handle, 12, size):
            if chunk_id != "LIST":
                continue
            handle.seek(offset)
            kind = handle.read(4)
            for sub_id, sub_offset, sub_size in _chunks(handle, offset + 4, offset + chunk_size):
                if kind == b"pdta" and sub_id in _RECORDS:
                    handle.seek(sub_offset)
                    raw[sub_id] = handle.read(sub_size)
                elif kind == b"sdta" and sub_id == "smpl":
                    smpl_offset = sub_offset
    missing = [name for name in _RECORDS if name not in raw]
    if missing or smpl_offset is None:
        raise InputError(f"{path}: the soundfont has no {(missing or ['smpl'])[0]} table — pass a valid .sf2 file")
    table = {name: _records(data, name) for name, data in raw.items()}
    instrument_generators = [(operator, amount) for operator, amount in table["igen"]]
    preset_generators = [(operator, amount) for operator, amount in table["pgen"]]
    inst, phdr = table["inst"], table["phdr"]
    try:
        instruments = tuple(_zones(table["ibag"], instrument_generators, inst[i][1], inst[i + 1][1], _SAMPLE_ID)
                            for i in range(len(inst) - 1))
        presets = {}
        for i in range(len(phdr) - 1):  # the last record of every table is the terminal "EOP"/"EOI"/"EOS"
            name, program, bank, first_bag = phdr[i]
            presets[(bank, program)] = (name.split(b"\0")[0].decode("latin-1").strip(),
                                        _zones(table["pbag"], preset_generators, first_bag, phdr[i + 1][3],
                                               _INSTRUMENT))
    except IndexError:
        raise InputError(f"{path}: inconsistent preset/instrument tables — pass a valid .sf2 file") from None
    samples = tuple(SampleHeader(name.split(b"\0")[0].decode("latin-1").strip(), start, end)
                    for name, start, end, *_ in table["shdr"][:-1])
    return Tables(path, presets, instruments, samples, smpl_offset)


def read_tables(path) -> Tables:
    """The preset/instrument/sample tables of a .sf2 file (cached per path, size and modification time)."""
    path = Path(path).resolve()
    if path.suffix.lower() != ".sf2":
        raise InputError(f"{path}: sample tables are read from .sf2 files only — pass a .sf2 soundfont")
    stat = path.stat()
    return _read(str(path), stat.st_size, stat.st_mtime_ns)
