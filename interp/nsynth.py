"""Reading an NSynth directory (examples.json + audio/<note_str>.wav) with every entry checked.

The real splits (nsynth-train/valid/test) and the one rendered by data/nsynth/render_soundfont.py go through
this same code. A rendered split adds two fields NSynth lacks, both optional: `program` (the note's GM
program) and, on a mix, `parts` (every part's instrument, program, family, source and pitch; the entry's own
NSynth fields are its first part's, and its note_str appends "+<instrument_str>[-<pitch>]" per further part).
The train split's metadata is ~150 MB of JSON for 289,205 notes: it is parsed once with
json.load and every check after that is a column operation over a pandas frame, so a bad entry is found by
masks rather than by a Python loop per note. Every failure is one InputError line naming the file, the note,
the field and the fix.
"""
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from tqdm import tqdm

from data.concepts import Note, Part
from data.files import unique_keys
from data.stage import InputError
from data.vocabulary import DRUM, FAMILIES, QUALITIES, SOURCES

EXAMPLES_FILE = "examples.json"
AUDIO_DIR = "audio"
SAMPLE_RATE = 16000
FRAMES = 4 * SAMPLE_RATE
# Every field an NSynth examples.json entry carries (https://magenta.tensorflow.org/datasets/nsynth).
FIELDS = ("note", "note_str", "instrument", "instrument_str", "pitch", "velocity", "sample_rate", "qualities",
          "qualities_str", "instrument_family", "instrument_family_str", "instrument_source", "instrument_source_str")
INTEGER_FIELDS = ("note", "instrument", "pitch", "velocity", "sample_rate", "instrument_family", "instrument_source")
INSTRUMENT_STR = re.compile(r"^(?P<family>[a-z_]+)_(?P<source>acoustic|electronic|synthetic)_\d{3}\Z")  # \Z: no trailing newline
QUALITY_SEPARATOR = ";"
# notes.csv's `parts`: "<instrument_str>:<program>" per part, ';'-joined (program empty when unknown).
PART_SEPARATOR = ";"
PART_FIELDS = ("instrument", "instrument_str", "program", "family", "source", "pitch")
DRUM_INSTRUMENT_STR = re.compile(r"^drum_\d{3}\Z")
FIX = ("fix or remove the entry, or restore the split (re-download it, or rerun "
       "data/nsynth/render_soundfont.py --force for a rendered one)")


def examples_path(nsynth_dir) -> Path:
    return Path(nsynth_dir) / EXAMPLES_FILE


def audio_path(nsynth_dir, note_str: str) -> Path:
    return Path(nsynth_dir) / AUDIO_DIR / f"{note_str}.wav"


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"{path}: missing — point --nsynth-dir at an NSynth split (examples.json + audio/) "
                         "or render one with data/nsynth/render_soundfont.py")
    try:
        with open(path, encoding="utf-8") as handle:
            # Duplicate keys are refused: json.load would keep the last entry of a note without a word.
            examples = json.load(handle, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON (line {error.lineno}: {error.msg}) — {FIX}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text — {FIX}") from None
    except RecursionError:
        raise InputError(f"{path}: nested too deeply to be NSynth metadata — {FIX}") from None
    except ValueError as error:  # unique_keys (after UnicodeDecodeError, which is a ValueError too)
        raise InputError(f"{path}: {error} — {FIX}") from None
    if not isinstance(examples, dict):
        raise InputError(f"{path}: expected an object keyed by note_str, found a {type(examples).__name__} — {FIX}")
    if not examples:
        raise InputError(f"{path}: has no notes — {FIX}")
    return examples


def _fail(path: Path, note, message: str):
    raise InputError(f"{path}: note {str(note)!r}: {message} — {FIX}")


def _first(mask: pd.Series):
    return mask.idxmax()


def read_examples(nsynth_dir, require_audio: bool = True) -> pd.DataFrame:
    """The split's notes, sorted by note_str, with every entry checked.

    Columns: note_str, note, instrument, instrument_str, family, source, qualities (';'-joined names in NSynth's
    index order), pitch, velocity, program (GM program, <NA> when unknown), parts (a mix's parts as
    "<instrument_str>:<program>", ';'-joined; "" for a single note), path (wav path relative to nsynth_dir).
    With require_audio, every note's
    wav must exist (its contents are checked by check_audio, for the notes a stage actually uses).
    """
    nsynth_dir = Path(nsynth_dir)
    path = examples_path(nsynth_dir)
    examples = _load_json(path)
    keys = list(examples)
    not_object = [key for key in keys if not isinstance(examples[key], dict)]
    if not_object:
        _fail(path, not_object[0], "entry is not an object of NSynth fields")
    frame = pd.DataFrame.from_records(list(examples.values()), index=pd.Index(keys, name="key"))
    del examples

    for field in FIELDS:
        if field not in frame.columns:
            _fail(path, keys[0], f"field '{field}' is missing")
        missing = frame[field].isna()
        if missing.any():
            _fail(path, _first(missing), f"field '{field}' is missing")

    mismatched = frame["note_str"].astype(str) != frame.index.to_series()
    if mismatched.any():
        key = _first(mismatched)
        _fail(path, key, f"note_str is '{frame.at[key, 'note_str']}' but the entry is keyed '{key}'")

    for field in INTEGER_FIELDS:
        numbers = pd.to_numeric(frame[field], errors="coerce")
        bad = numbers.isna() | (numbers % 1 != 0)
        if bad.any():
            key = _first(bad)
            _fail(path, key, f"field '{field}' is {frame.at[key, field]!r}, not an integer")
        frame[field] = numbers.astype(np.int64)
    for field in ("pitch", "velocity"):
        bad = ~frame[field].between(0, 127)
        if bad.any():
            _fail(path, _first(bad), f"{field} {frame.at[_first(bad), field]} is outside MIDI's 0-127")
    bad = frame["sample_rate"] != SAMPLE_RATE
    if bad.any():
        _fail(path, _first(bad), f"sample_rate {frame.at[_first(bad), 'sample_rate']} is not NSynth's {SAMPLE_RATE}")

    for name_field, code_field, names, kind in (("instrument_family_str", "instrument_family", FAMILIES, "family"),
                                                ("instrument_source_str", "instrument_source", SOURCES, "source")):
        unknown = ~frame[name_field].isin(names)
        if unknown.any():
            key = _first(unknown)
            _fail(path, key, f"unknown instrument {kind} '{frame.at[key, name_field]}' (NSynth's are {', '.join(names)})")
        expected_code = frame[name_field].map({name: index for index, name in enumerate(names)})
        bad = frame[code_field] != expected_code
        if bad.any():
            key = _first(bad)
            _fail(path, key, f"{code_field} {frame.at[key, code_field]} does not match {name_field} "
                             f"'{frame.at[key, name_field]}' (NSynth's code is {expected_code[key]})")

    instrument = frame["instrument_str"].astype(str)
    parsed = instrument.str.extract(INSTRUMENT_STR)
    bad = (parsed["family"] != frame["instrument_family_str"]) | (parsed["source"] != frame["instrument_source_str"])
    if bad.any():
        key = _first(bad)
        _fail(path, key, f"instrument_str '{instrument[key]}' is not <family>_<source>_<3 digits> for "
                         f"{frame.at[key, 'instrument_family_str']}_{frame.at[key, 'instrument_source_str']}")
    expected_note = (instrument + "-" + frame["pitch"].map("{:03d}".format) + "-"
                     + frame["velocity"].map("{:03d}".format))
    programs = _programs(path, frame)
    parts = _parts(path, frame, expected_note)
    expected_note = expected_note + parts.map(_note_suffix)
    bad = frame.index.to_series() != expected_note
    if bad.any():
        key = _first(bad)
        _fail(path, key, f"note_str does not match its instrument, pitch and velocity (expected '{expected_note[key]}')")

    qualities = _quality_names(path, frame)

    result = pd.DataFrame({
        "note_str": frame.index.to_numpy(dtype=object),
        "note": frame["note"].to_numpy(),
        "instrument": frame["instrument"].to_numpy(),
        "instrument_str": instrument.to_numpy(dtype=object),
        "family": frame["instrument_family_str"].to_numpy(dtype=object),
        "source": frame["instrument_source_str"].to_numpy(dtype=object),
        "qualities": qualities.to_numpy(dtype=object),
        "pitch": frame["pitch"].to_numpy(),
        "velocity": frame["velocity"].to_numpy(),
        "program": programs.to_numpy(),
        "parts": parts.map(_parts_text).to_numpy(dtype=object),
        "path": (AUDIO_DIR + "/" + frame.index.to_series() + ".wav").to_numpy(dtype=object),
    }).sort_values("note_str", kind="stable").reset_index(drop=True)
    if require_audio:
        _check_audio_present(nsynth_dir, result)
    return result


def _programs(path: Path, frame: pd.DataFrame) -> pd.Series:
    """The optional `program` field: a GM program 0-127, or null; <NA> where absent."""
    if "program" not in frame.columns:
        return pd.Series(pd.NA, index=frame.index, dtype="Int64")
    numbers = pd.to_numeric(frame["program"], errors="coerce")
    out_of_range = (numbers % 1 != 0) | ~numbers.between(0, 127)
    bad = (frame["program"].notna() & numbers.isna()) | (numbers.notna() & out_of_range)
    if bad.any():
        _fail(path, _first(bad), f"program {frame.at[_first(bad), 'program']} is not a GM program 0-127 (or null)")
    return numbers.astype("Int64")


def _parts(path: Path, frame: pd.DataFrame, own_note: pd.Series) -> pd.Series:
    """The optional `parts` of a mix, checked: a tuple of part dicts per mix, () for a single note."""
    if "parts" not in frame.columns:
        return pd.Series([()] * len(frame), index=frame.index, dtype=object)
    result = {}
    for key, parts in frame["parts"].items():
        if parts is None or (isinstance(parts, float) and parts != parts):
            result[key] = ()
            continue
        if not isinstance(parts, list) or len(parts) < 2 or not all(isinstance(part, dict) for part in parts):
            _fail(path, key, "parts must be a list of two or more part objects (a mix) or absent")
        for part in parts:
            missing = [name for name in PART_FIELDS if name not in part]
            if missing:
                _fail(path, key, f"a part lacks '{missing[0]}' (a part has {', '.join(PART_FIELDS)})")
            drum = part["family"] == DRUM
            valid = ((part["family"] in FAMILIES or drum)
                     and (part["source"] is None if drum else part["source"] in SOURCES)
                     and isinstance(part["instrument"], int)
                     and (part["program"] is None or isinstance(part["program"], int) and 0 <= part["program"] <= 127)
                     and (part["pitch"] is None if drum
                          else isinstance(part["pitch"], int) and 0 <= part["pitch"] <= 127)
                     and isinstance(part["instrument_str"], str)
                     and (DRUM_INSTRUMENT_STR.match(part["instrument_str"]) if drum else
                          part["instrument_str"].startswith(f"{part['family']}_{part['source']}_")
                          and INSTRUMENT_STR.match(part["instrument_str"])))
            if not valid:
                _fail(path, key, f"part {part!r} is not an NSynth family/source (or a drum part with null source and "
                                 "pitch) with a matching instrument_str, integer instrument, pitch and program")
        first = parts[0]
        own = (frame.at[key, "instrument"], frame.at[key, "instrument_str"], frame.at[key, "instrument_family_str"],
               frame.at[key, "instrument_source_str"], frame.at[key, "pitch"])
        if (first["instrument"], first["instrument_str"], first["family"], first["source"], first["pitch"]) != own \
                or first["family"] == DRUM:
            _fail(path, key, "the first part must be the entry's own instrument, family, source and pitch")
        result[key] = tuple(parts)
    return pd.Series(result, dtype=object).reindex(frame.index)


def _note_suffix(parts: tuple) -> str:
    return "".join(f"+{part['instrument_str']}" + (f"-{part['pitch']:03d}" if part["pitch"] is not None else "")
                   for part in parts[1:])


def _parts_text(parts: tuple) -> str:
    return PART_SEPARATOR.join(f"{part['instrument_str']}:{'' if part['program'] is None else part['program']}"
                               for part in parts)


def _quality_names(path: Path, frame: pd.DataFrame) -> pd.Series:
    """';'-joined quality names per note, after checking qualities (10 zeros/ones) against qualities_str.

    Both fields are reduced to a 10-bit mask; only the few distinct masks are turned back into names."""
    weights = 1 << np.arange(len(QUALITIES))
    try:
        vectors = np.array(frame["qualities"].tolist())
        well_formed = (vectors.shape == (len(frame), len(QUALITIES)) and vectors.dtype.kind in "iub"
                       and bool(np.isin(vectors, (0, 1)).all()))
    except ValueError:  # ragged lists
        well_formed = False
    if not well_formed:
        shape_ok = frame["qualities"].map(
            lambda vector: isinstance(vector, list) and len(vector) == len(QUALITIES)
            and all(isinstance(value, int) and value in (0, 1) for value in vector))
        key = _first(~shape_ok) if not shape_ok.all() else frame.index[0]
        _fail(path, key, f"qualities must be {len(QUALITIES)} zeros or ones in NSynth's order, "
                         f"found {frame.at[key, 'qualities']!r}")
    masks = vectors.astype(np.int64) @ weights

    listed = frame["qualities_str"].map(lambda names: tuple(names) if isinstance(names, list) else None)
    codes, distinct = pd.factorize(listed, use_na_sentinel=True)
    bit = {name: 1 << index for index, name in enumerate(QUALITIES)}
    distinct_masks = np.array([sum(bit[name] for name in set(names)) if set(names) <= set(bit) else -1
                               for names in distinct] + [-1], dtype=np.int64)
    listed_masks = distinct_masks[codes]  # code -1 (not a list) picks the trailing -1
    bad = listed_masks != masks
    if bad.any():
        key = frame.index[int(np.argmax(bad))]
        _fail(path, key, f"qualities_str {frame.at[key, 'qualities_str']!r} does not match qualities "
                         f"{frame.at[key, 'qualities']!r}")
    names_of_mask = {int(mask): QUALITY_SEPARATOR.join(name for name in QUALITIES if int(mask) & bit[name])
                     for mask in np.unique(masks)}
    return pd.Series(masks, index=frame.index).map(names_of_mask)


def _check_audio_present(nsynth_dir: Path, frame: pd.DataFrame) -> None:
    audio_dir = nsynth_dir / AUDIO_DIR
    if not audio_dir.is_dir():
        raise InputError(f"{audio_dir}: missing — restore the split's audio, or pass --metadata-only to build "
                         "concept sets from examples.json alone (stage 5 then has no audio to embed)")
    present = set(os.listdir(audio_dir))
    missing = ~(frame["note_str"] + ".wav").isin(present)
    if missing.any():
        note = frame.at[_first(missing), "note_str"]
        raise InputError(f"{audio_path(nsynth_dir, note)}: audio of note '{note}' is missing ({int(missing.sum())} "
                         f"missing in all) — {FIX}")


def check_audio(nsynth_dir, note_strs, progress: bool = True) -> None:
    """Each note's wav must be NSynth's format: a readable 16 kHz mono PCM-16 file of exactly 4 s."""
    note_strs = list(note_strs)
    for note in tqdm(note_strs, desc="check audio", unit="wav", disable=not progress or len(note_strs) < 5000):
        path = audio_path(nsynth_dir, note)
        try:
            info = sf.info(path)
        except (sf.LibsndfileError, RuntimeError, OSError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise InputError(f"{path}: unreadable audio of note '{note}' ({reason}) — {FIX}") from None
        if info.frames != FRAMES:
            raise InputError(f"{path}: note '{note}' has {info.frames} frames, NSynth's notes have {FRAMES} "
                             f"(4 s at {SAMPLE_RATE} Hz); the file is truncated or not NSynth's — {FIX}")
        if (info.samplerate, info.channels, info.subtype) != (SAMPLE_RATE, 1, "PCM_16"):
            raise InputError(f"{path}: note '{note}' is {info.samplerate} Hz, {info.channels} channel(s), "
                             f"{info.subtype}; NSynth's are {SAMPLE_RATE} Hz mono PCM_16 — {FIX}")


def parse_parts(text) -> tuple[Part, ...]:
    """notes.csv's `parts` text back into concept parts (family and source read from each instrument_str)."""
    parts = []
    for token in filter(None, str(text if isinstance(text, str) else "").split(PART_SEPARATOR)):
        instrument, _, program = token.rpartition(":")
        number = int(program) if program else None
        if DRUM_INSTRUMENT_STR.match(instrument):
            parts.append(Part(DRUM, None, number))
            continue
        match = INSTRUMENT_STR.match(instrument)
        if not match:
            raise ValueError(f"part '{token}' is not <instrument_str>:<program>")
        parts.append(Part(match["family"], match["source"], number))
    return tuple(parts)


def note_of(family: str, source: str, qualities: str, program=None, parts="") -> Note:
    """The concept rules' view of an example (data.concepts.Note)."""
    names = frozenset(name for name in str(qualities).split(QUALITY_SEPARATOR) if name)
    program = None if program is None or pd.isna(program) or program == "" else int(program)
    return Note(family=family, source=source, qualities=names, program=program, parts=parse_parts(parts))


def notes_of(frame: pd.DataFrame) -> list[Note]:
    programs = frame["program"] if "program" in frame else [None] * len(frame)
    parts = frame["parts"] if "parts" in frame else [""] * len(frame)
    return [note_of(*row) for row in zip(frame["family"], frame["source"], frame["qualities"], programs, parts)]
