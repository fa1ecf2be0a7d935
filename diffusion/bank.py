"""The reference bank: short labelled clips that the embedded "ideal" generator (diffusion/ideal.py) draws from.

The bank is rendered from a General MIDI soundfont (data/soundfont.py) with the "bank" programs only. Stage 4
builds its concept sets, and stage 6 trains its probes, on the "probe" programs; were an instrument on both
sides, a probe could recognise the instrument's samples in the generated audio instead of the concept.
`build_default_bank` asserts the two sides are disjoint.

Clips (4 s, 16 kHz mono, like NSynth notes):
- per bank program, three held notes in three registers of its playable range, and one arpeggio (labels: family,
  source). Held notes dominate on purpose: the probes of stage 6 are trained on NSynth-style held notes, and a
  reference model should end on clips whose concept a note-trained probe can read, so that what the study
  measures is the trajectory, not a notes-vs-phrases domain gap (measured: family-probe AUROC on held bank notes
  averages ~0.85 against ~0.75 on phrases);
- four drum grooves on the GM kit (label: "drum");
- two two-part mixes per pair of labels among the eleven families and "drum" (a melody of the first family over
  long notes, or a groove, of the second), so that multi-instrument prompts have clips that match them whole.
  The lead is a held note; a groove sits DRUM_MIX_GAIN below it, as drums under a sustained instrument do.
Every clip is loudness-normalised to CLIP_RMS (lowered where that would clip peaks), so that the noise levels
of the sampler mean the same for every clip (see diffusion/ideal.py on the sigma scale). Clips that render
silent (soundfont holes) are dropped.

On disk (a bank directory, `--model DIR` of the ideal generator): clips.npy (float32 [clips, samples]),
clips.csv (clip_id, labels) and bank.json (recipe, sample rate, content hash), written atomically, bank.json
last. The default bank lives in <repo>/data/bank/<recipe hash>/, so a changed recipe (soundfont, programs,
phrases) never reads a stale cache; rendering it takes 2–5 s on 2 shared cores.
"""
from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data import soundfont as gm
from data.contract import read_npy
from data.files import atomic_path, read_json, sha256_file, sha256_json, write_json, write_text
from data.stage import DEFAULT_DATA, InputError
from data.vocabulary import DRUM, FAMILIES, LABEL_SEPARATOR, SOURCES, format_labels, parse_labels

BANK_FORMAT = 1
SAMPLE_RATE = 16000
CLIP_SECONDS = 4.0
# -20 dBFS: loud enough to sit far above int16 quantisation, quiet enough that a two-part mix rarely clips.
CLIP_RMS = 0.1
PEAK_LIMIT = 0.99
# Each program's solo clips: (register as a fraction of the range left for the motif, motif).
SOLO_CLIPS = ((0.2, "held"), (0.5, "held"), (0.8, "held"), (0.4, "arpeggio"))
# Registers of a mix: the lead's and the accompaniment's.
REGISTERS = (0.3, 0.65)
DRUM_MIX_GAIN = 0.5
# Motifs as (onset beat, length in beats, semitones above the register's root); 120 bpm, 3 s of notes + release.
BEAT_SECONDS = 0.5
MOTIFS = {
    "arpeggio": ((0, 1, 0), (1, 1, 4), (2, 1, 7), (3, 1, 12), (4, 1, 7), (5, 1, 4)),
    "scale": ((0, 0.5, 0), (0.5, 0.5, 2), (1, 0.5, 4), (1.5, 0.5, 5), (2, 1, 7), (3, 1, 9), (4, 2, 12)),
    "held": ((0, 6, 0),),  # one note held 3 s, then released: the shape of an NSynth note
}
MOTIF_SPAN = 12
# The accompaniment of a mix: long root and fifth notes under the melody.
ACCOMPANIMENT = ((0, 3, 0), (0, 3, 7), (3, 3, 5), (3, 3, 9))
# Drum grooves on 8 eighth-note slots per bar, two bars: GM percussion key -> slots where it plays.
GROOVES = {
    "rock": {36: (0, 4, 8, 12), 38: (2, 6, 10, 14), 42: tuple(range(0, 16))},
    "four-on-the-floor": {36: (0, 2, 4, 6, 8, 10, 12, 14), 39: (2, 6, 10, 14), 46: (1, 3, 5, 7, 9, 11, 13, 15)},
    "half-time": {36: (0, 7, 8), 38: (4, 12), 42: (0, 2, 4, 6, 8, 10, 12, 14), 49: (0,)},
    "conga": {62: (0, 3, 6, 8, 11, 14), 63: (2, 5, 10, 13), 64: (4, 12), 70: tuple(range(0, 16))},
}
GROOVE_SLOT_SECONDS = BEAT_SECONDS / 2
MIX_LABELS = FAMILIES + (DRUM,)
# (melody motif, drum groove) of each mix variant.
MIX_VARIANTS = (("held", "rock"), ("held", "half-time"))


@dataclass
class ReferenceBank:
    audio: np.ndarray                # float32 [clips, samples], loudness-normalised
    clip_ids: list[str]
    labels: list[tuple[str, ...]]    # vocabulary terms of each clip: families (or "drum") and sources
    sample_rate: int
    recipe: dict                     # how it was made (empty for a bank given as is)

    def __post_init__(self):
        self.audio = np.ascontiguousarray(self.audio, dtype=np.float32)
        if self.audio.ndim != 2 or len(self.clip_ids) != len(self.audio) or len(self.labels) != len(self.audio):
            raise ValueError("a bank needs audio [clips, samples] and one id and label set per clip")
        if len(set(self.clip_ids)) != len(self.clip_ids):
            raise ValueError("bank clip ids must be unique")
        self.labels = [tuple(parse_labels(format_labels(labels))) for labels in self.labels]

    @property
    def seconds(self) -> float:
        return self.audio.shape[1] / self.sample_rate

    @property
    def sha256(self) -> str:
        """Content hash: the audio bytes, ids, labels and rate (what the generator's output depends on)."""
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.audio, dtype="<f4").tobytes())
        digest.update(sha256_json({"clip_ids": self.clip_ids, "labels": [list(labels) for labels in self.labels],
                                   "sample_rate": self.sample_rate, "shape": list(self.audio.shape)}).encode())
        return digest.hexdigest()


# -- on disk ---------------------------------------------------------------------------------------------------

def save_bank(bank: ReferenceBank, directory) -> dict:
    """Write a bank directory; bank.json goes last, so a killed write leaves no bank that looks complete."""
    directory = Path(directory)
    with atomic_path(directory / "clips.npy") as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, bank.audio, allow_pickle=False)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["clip_id", "labels"])
    for clip_id, labels in zip(bank.clip_ids, bank.labels):
        writer.writerow([clip_id, LABEL_SEPARATOR.join(labels)])
    write_text(directory / "clips.csv", table.getvalue())
    sidecar = {"bank_format": BANK_FORMAT, "bank_sha256": bank.sha256, "sample_rate": bank.sample_rate,
               "clips": len(bank.clip_ids), "samples": int(bank.audio.shape[1]), "recipe": bank.recipe,
               "clips_npy_sha256": sha256_file(directory / "clips.npy"),
               "clips_csv_sha256": sha256_file(directory / "clips.csv")}
    write_json(directory / "bank.json", sidecar)
    return sidecar


def read_bank_sidecar(directory) -> dict:
    """bank.json of a bank directory, or a one-line InputError."""
    path = Path(directory) / "bank.json"
    fix = "delete the directory to have the default bank rendered there, or pass another --model"
    try:
        sidecar = read_json(path)
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: unreadable bank sidecar ({str(error).splitlines()[0]}) — {fix}") from None
    if not isinstance(sidecar, dict):
        raise InputError(f"{path}: the bank sidecar is a JSON {type(sidecar).__name__}, not an object — {fix}")
    required = ("bank_format", "bank_sha256", "sample_rate", "clips", "samples", "clips_npy_sha256",
                "clips_csv_sha256")
    missing = [key for key in required if key not in sidecar]
    if missing or sidecar["bank_format"] != BANK_FORMAT:
        what = f"'{missing[0]}' is missing" if missing else f"bank_format {sidecar['bank_format']} is not {BANK_FORMAT}"
        raise InputError(f"{path}: {what} — {fix}")
    return sidecar


def load_bank(directory) -> ReferenceBank:
    """Read a bank directory and check it against its sidecar's hashes."""
    directory = Path(directory)
    sidecar = read_bank_sidecar(directory)
    fix = "delete the directory to have the default bank rendered there, or pass another --model"
    clips_path = directory / "clips.npy"
    if not clips_path.is_file() or sha256_file(clips_path) != sidecar["clips_npy_sha256"]:
        raise InputError(f"{clips_path}: missing or not the file bank.json describes — {fix}")
    table_path = directory / "clips.csv"
    if not table_path.is_file() or sha256_file(table_path) != sidecar["clips_csv_sha256"]:
        raise InputError(f"{table_path}: missing or not the file bank.json describes — {fix}")
    audio = read_npy(clips_path, fix)
    if audio.dtype.kind != "f" or audio.ndim != 2:
        raise InputError(f"{clips_path}: expected float audio [clips, samples], found {audio.dtype} "
                         f"{list(audio.shape)} — {fix}")
    try:
        with open(table_path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        clip_ids = [row["clip_id"] for row in rows]
        labels = [tuple(parse_labels(row["labels"])) for row in rows]
        bank = ReferenceBank(audio, clip_ids, labels, int(sidecar["sample_rate"]), sidecar.get("recipe", {}))
    except (OSError, KeyError, ValueError) as error:
        raise InputError(f"{directory / 'clips.csv'}: unreadable ({str(error).splitlines()[0]}) — {fix}") from None
    # The file hashes above vouch for the content; rehashing 40 MB of audio for bank_sha256 would only repeat them.
    return bank


# -- the default bank: rendered from the soundfont ------------------------------------------------------------

def default_recipe(soundfont=None) -> dict:
    """Everything the default bank's content depends on; its hash names the cache directory."""
    soundfont = Path(soundfont) if soundfont is not None else gm.default_soundfont()
    programs = [[entry.program, entry.name, entry.family, entry.source, entry.lowest, entry.highest]
                for entry in bank_programs()]
    return {"bank_format": BANK_FORMAT, "soundfont": soundfont.name, "soundfont_sha256": sha256_file(soundfont),
            "sample_rate": SAMPLE_RATE, "clip_seconds": CLIP_SECONDS, "clip_rms": CLIP_RMS,
            "peak_limit": PEAK_LIMIT, "registers": list(REGISTERS), "beat_seconds": BEAT_SECONDS,
            "solo_clips": [list(clip) for clip in SOLO_CLIPS], "drum_mix_gain": DRUM_MIX_GAIN,
            "motifs": {name: [list(note) for note in notes] for name, notes in MOTIFS.items()},
            "accompaniment": [list(note) for note in ACCOMPANIMENT],
            "grooves": {name: {str(key): list(slots) for key, slots in groove.items()}
                        for name, groove in GROOVES.items()},
            "programs": programs, "mix_labels": list(MIX_LABELS),
            "mix_variants": [list(variant) for variant in MIX_VARIANTS]}


def default_bank_dir(recipe: dict) -> Path:
    return DEFAULT_DATA / "bank" / sha256_json(recipe)[:16]


def bank_programs():
    """The soundfont table's bank-side programs; refuses to run if any is also a probe program."""
    bank = gm.programs_for(gm.BANK)
    probe_programs = {entry.program for entry in gm.programs_for(gm.PROBE)}
    shared = sorted({entry.program for entry in bank} & probe_programs)
    if shared:
        raise RuntimeError(f"data/soundfont.py gives GM programs {shared} both the bank and the probe role; "
                           "the generator's bank must not contain probe instruments")
    return bank


def build_default_bank(soundfont=None, recipe: dict | None = None) -> ReferenceBank:
    """Render the default bank (2–5 s on 2 shared cores)."""
    soundfont = Path(soundfont) if soundfont is not None else gm.default_soundfont()
    recipe = recipe or default_recipe(soundfont)
    programs = bank_programs()
    clips, clip_ids, labels = [], [], []

    def keep(clip_id, audio, clip_labels):
        if gm.is_silent(audio):
            return
        clips.append(normalise(audio))
        clip_ids.append(clip_id)
        labels.append(tuple(clip_labels))

    for entry in programs:
        for register, motif in SOLO_CLIPS:
            root = _register_root(entry, register)
            keep(f"p{entry.program:03d}-{motif}-{root}", _melody(soundfont, entry.program, motif, root),
                 (entry.family, entry.source))
    for name in GROOVES:
        keep(f"drum-{name}", _groove(soundfont, name), (DRUM,))

    # MIX_LABELS ends with "drum", so the lead of a mix is always a melodic family. Variant v of a mix uses
    # each family's v-th bank program (cycling), the v-th melody and groove: samples of a two-instrument prompt
    # then have more than one clip to end on. Each part is brought to the clip loudness before the two are
    # summed, so that neither drowns the other.
    for variant, (motif, groove) in enumerate(MIX_VARIANTS):
        for position, lead in enumerate(MIX_LABELS[:-1]):
            top = _nth_program(lead, variant)
            melody = _melody(soundfont, top.program, motif, _register_root(top, REGISTERS[1]))
            for accompanying in MIX_LABELS[position + 1:]:
                if accompanying == DRUM:
                    second, second_labels = DRUM_MIX_GAIN * normalise(_groove(soundfont, groove)), (DRUM,)
                else:
                    bottom = _nth_program(accompanying, variant)
                    second, second_labels = _accompaniment(soundfont, bottom), (accompanying, bottom.source)
                if gm.is_silent(melody) or gm.is_silent(second):
                    continue
                keep(f"mix{variant}-{lead}-{accompanying}", normalise(melody) + (
                     second if accompanying == DRUM else normalise(second)),
                     (lead, top.source) + second_labels)
    return ReferenceBank(np.stack(clips), clip_ids, labels, SAMPLE_RATE, recipe)


def open_bank_dir(model) -> tuple[Path, dict]:
    """The bank directory for `--model` (default: the default bank's cache) and its sidecar, rendering the
    default bank there first if the directory holds no bank yet."""
    recipe = None
    if model is None:
        recipe = default_recipe()
        directory = default_bank_dir(recipe)
    else:
        directory = Path(model).expanduser()
        if directory.exists() and not directory.is_dir():
            raise InputError(f"{directory}: is a file — the ideal generator's --model is a bank directory "
                             "(omit it to use the default soundfont bank)")
    if not (directory / "bank.json").is_file():
        save_bank(build_default_bank(recipe=recipe), directory)
    return directory, read_bank_sidecar(directory)


def normalise(audio: np.ndarray) -> np.ndarray:
    """A clip at the bank's loudness, CLIP_RMS (lowered where a peak would pass PEAK_LIMIT), as float32."""
    audio = np.asarray(audio, dtype=np.float64)
    audio = audio * (CLIP_RMS / np.sqrt(np.mean(np.square(audio))))
    peak = np.max(np.abs(audio))
    if peak > PEAK_LIMIT:
        audio *= PEAK_LIMIT / peak
    return audio.astype(np.float32)


def _register_root(entry, register: float) -> int:
    room = max(0, entry.highest - entry.lowest - MOTIF_SPAN)
    return entry.lowest + int(round(register * room))


def _phrase_notes(notes, root: int, part: int = 0):
    return [(onset * BEAT_SECONDS, length * BEAT_SECONDS, root + step, 100, part) for onset, length, step in notes]


def _melody(soundfont, program: int, motif: str, root: int) -> np.ndarray:
    return gm.render_phrase(soundfont, [program], _phrase_notes(MOTIFS[motif], root), SAMPLE_RATE, CLIP_SECONDS)


def _nth_program(family: str, variant: int):
    programs = gm.programs_for(gm.BANK, family)
    return programs[variant % len(programs)]


def _accompaniment(soundfont, entry) -> np.ndarray:
    notes = _phrase_notes(ACCOMPANIMENT, _register_root(entry, REGISTERS[0]))
    return gm.render_phrase(soundfont, [entry.program], notes, SAMPLE_RATE, CLIP_SECONDS)


def _groove(soundfont, name: str) -> np.ndarray:
    notes = [(slot * GROOVE_SLOT_SECONDS, GROOVE_SLOT_SECONDS, key, 100)
             for key, slots in GROOVES[name].items() for slot in slots]
    return gm.render_phrase(soundfont, [], notes, SAMPLE_RATE, CLIP_SECONDS, drums=True)


def family_labels(labels) -> set[str]:
    return {label for label in labels if label in FAMILIES or label == DRUM}


def source_labels(labels) -> set[str]:
    return {label for label in labels if label in SOURCES}
