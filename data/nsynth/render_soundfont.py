"""Render NSynth-format single notes of the note instruments (data/soundfont.py NOTE_INSTRUMENTS) for stage 4.

    python data/nsynth/render_soundfont.py --data data [--fluid-soundfont PATH] [--soundfont PATH] [--force]

Writes <data>/nsynth/nsynth-soundfont/ exactly as an NSynth split is laid out: audio/<note_str>.wav (16 kHz mono
PCM-16, 4 s: key held 3 s, then released) and examples.json keyed by note_str with every NSynth field, so that
stage 4 reads it through the same code as nsynth-train/valid/test.

- Instruments: presets of FluidR3_GM (--fluid-soundfont, default Debian's /usr/share/sounds/sf2/FluidR3_GM.sf2)
  and of TimGM6mb (--soundfont, default the copy inside pretty_midi, which the generator's bank plays). Before
  rendering, the planned notes are checked against both soundfonts' sample tables: no recording they sound may
  be one the bank can play, and no two instruments may sound a common recording (data/soundfont.py
  shared_recordings); otherwise the run is refused. So probe notes never share a recording with the bank, nor
  train notes with test notes, however stage 4 splits the instruments.
- Notes: every note instrument, at every pitch of its playable range that is a multiple of --pitch-step (a
  shared grid, so that instruments meet at the same pitches), at each of --velocities (a subset of NSynth's
  25/50/75/100/127). The defaults give ~1,500 notes, ~15-40 per instrument, in ~10 s on 2 cores.
- Identity: instrument = the note instrument's number (the GM program for FluidR3_GM, 128 + program for
  TimGM6mb), instrument_str = <family>_<source>_<number:03d>, note = number * 16384 + pitch * 128 + velocity
  (unique and the same in every run; NSynth's own ids are arbitrary).
- Family and source come from the GM table (data/soundfont.py); qualities are derived from each note's audio by
  the rules in data/nsynth/qualities.py (reverb and tempo-synced are never set).
- Multiphonic notes: audio analysis cannot tell a second fundamental from a timbre's own partials, so they are
  made instead: at every other pitch of the grid, each probe instrument also plays a dyad (the note plus a
  perfect fifth) at velocity --dyad-velocity (default 50, which the single notes do not use, so note_str stays
  <instrument>-<pitch>-<velocity>); these carry the multiphonic quality. Without them the "harmonic" concept
  would have no positives. --dyad-velocity 0 renders single notes only.
- Holes: a note whose int16 audio is below data.audio.SILENCE_RMS is dropped (no wav, no entry) and listed
  in the sidecar.
- Resume: render.json (provenance: soundfont sha256 and every setting) is written before the first note; a
  rerun with the same provenance keeps every valid existing wav (re-reading it to derive its qualities) and
  re-renders missing or damaged ones; examples.json is written last. Renders are deterministic, so a resumed
  run writes the same bytes as an uninterrupted one. A rerun with other settings is refused unless --force,
  which clears the old wavs first. Temp files a killed run left (.<name>.wav.<random>.tmp) are removed on rerun.
"""
import os
import sys
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

import numpy as np
import soundfile as sf
from tqdm import tqdm

from data import soundfont as gm
from data.audio import SILENCE_RMS
from data.files import atomic_path, read_json, remove_stale_temps, sha256_file, write_json
from data.nsynth import qualities as quality_rules
from data.provenance import Provenance, begin, commit, decide
from data.stage import InputError, main_exit, stage_parser
from data.vocabulary import FAMILIES, QUALITIES, SOURCES

SAMPLE_RATE = 16000
SECONDS = 4.0
HOLD_SECONDS = 3.0
FRAMES = int(SAMPLE_RATE * SECONDS)
NSYNTH_VELOCITIES = (25, 50, 75, 100, 127)
DEFAULT_VELOCITIES = (75, 127)
DEFAULT_PITCH_STEP = 5
DEFAULT_DYAD_VELOCITY = 50
DYAD_INTERVAL = 7  # a perfect fifth: two clearly separate fundamentals that still blend
MULTIPHONIC = QUALITIES.index("multiphonic")
SIDECAR = "render.json"


def output_dir(data: Path) -> Path:
    return Path(data) / "nsynth" / "nsynth-soundfont"


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"'{text}' is not a comma-separated list of integers — e.g. 75,127") from None


def build_parser():
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--soundfont", type=Path, default=None,
                        help="the generator bank's soundfont, TimGM6mb.sf2 (None: the copy inside pretty_midi); "
                             "its note instruments are rendered from it and every note is checked against it")
    parser.add_argument("--fluid-soundfont", type=Path, default=None,
                        help=f"FluidR3_GM.sf2 (None: {gm.DEBIAN_FLUIDR3}, from Debian's fluid-soundfont-gm)")
    parser.add_argument("--instruments", "--programs", dest="programs", default=None,
                        help="comma-separated note instrument numbers (data/soundfont.py NOTE_INSTRUMENTS: the GM "
                             "program for FluidR3_GM, 128 + program for TimGM6mb); None means all of them")
    parser.add_argument("--pitch-step", type=int, default=DEFAULT_PITCH_STEP,
                        help="render pitches that are multiples of this within each instrument's range")
    parser.add_argument("--velocities", default=",".join(map(str, DEFAULT_VELOCITIES)),
                        help=f"comma-separated MIDI velocities, each one of NSynth's {NSYNTH_VELOCITIES}")
    parser.add_argument("--dyad-velocity", type=int, default=DEFAULT_DYAD_VELOCITY,
                        help="velocity of the multiphonic dyads (note + fifth) rendered at every other grid pitch; "
                             "must not be one of --velocities; 0 renders no dyads")
    return parser


def chosen_programs(text) -> list[gm.NoteInstrument]:
    """The note instruments to render (named by number), all of them when text is None."""
    if text is None:
        return list(gm.NOTE_INSTRUMENTS)
    chosen = []
    for number in _int_list(text):
        if number not in gm.NOTE_BY_NUMBER:
            raise InputError(f"--instruments: {number} is not a note instrument (see NOTE_INSTRUMENTS in "
                             "data/soundfont.py: the GM program for FluidR3_GM, 128 + program for TimGM6mb) "
                             "— choose listed ones")
        if gm.NOTE_BY_NUMBER[number] not in chosen:
            chosen.append(gm.NOTE_BY_NUMBER[number])
    if not chosen:
        raise InputError("--instruments: none given — list at least one note instrument or omit the option")
    return sorted(chosen, key=lambda entry: entry.number)


def chosen_velocities(text: str) -> list[int]:
    velocities = sorted(set(_int_list(text)))
    bad = [velocity for velocity in velocities if velocity not in NSYNTH_VELOCITIES]
    if bad or not velocities:
        raise InputError(f"--velocities: {bad[0] if bad else 'none given'} — use NSynth's velocities "
                         f"{','.join(map(str, NSYNTH_VELOCITIES))}")
    return velocities


def chosen_dyad_velocity(dyad_velocity: int, velocities) -> int:
    if dyad_velocity and (dyad_velocity not in NSYNTH_VELOCITIES or dyad_velocity in velocities):
        raise InputError(f"--dyad-velocity: {dyad_velocity} — use one of NSynth's velocities "
                         f"{','.join(map(str, NSYNTH_VELOCITIES))} that is not in --velocities, or 0 for no dyads")
    return dyad_velocity


def planned_notes(programs, pitch_step: int, velocities,
                  dyad_velocity: int = 0) -> list[tuple[gm.NoteInstrument, int, int]]:
    if pitch_step < 1:
        raise InputError(f"--pitch-step: {pitch_step} — use a positive number of semitones")
    plan = []
    for entry in programs:
        pitches = range(entry.lowest + (-entry.lowest) % pitch_step, entry.highest + 1, pitch_step)
        plan += [(entry, pitch, velocity) for pitch in pitches for velocity in velocities]
        if dyad_velocity:
            plan += [(entry, pitch, dyad_velocity) for pitch in pitches[::2]
                     if pitch + DYAD_INTERVAL <= entry.highest]
    return plan


def played_keys(plan, dyad_velocity: int) -> dict:
    """Per instrument, every (key, velocity) its planned notes press (a dyad presses two keys)."""
    keys = {}
    for entry, pitch, velocity in plan:
        pressed = keys.setdefault(entry, [])
        pressed.append((pitch, velocity))
        if dyad_velocity and velocity == dyad_velocity:
            pressed.append((pitch + DYAD_INTERVAL, velocity))
    return keys


def instrument_str(entry: gm.NoteInstrument) -> str:
    return f"{entry.family}_{entry.source}_{entry.number:03d}"


def note_str(entry: gm.NoteInstrument, pitch: int, velocity: int) -> str:
    return f"{instrument_str(entry)}-{pitch:03d}-{velocity:03d}"


def example_entry(entry: gm.NoteInstrument, pitch: int, velocity: int, quality_vector: list[int]) -> dict:
    return {
        "note": entry.number * 16384 + pitch * 128 + velocity,
        "note_str": note_str(entry, pitch, velocity),
        "instrument": entry.number,
        "instrument_str": instrument_str(entry),
        "pitch": pitch,
        "velocity": velocity,
        "sample_rate": SAMPLE_RATE,
        "qualities": list(quality_vector),
        "qualities_str": [name for name, present in zip(QUALITIES, quality_vector) if present],
        "instrument_family": FAMILIES.index(entry.family),
        "instrument_family_str": entry.family,
        "instrument_source": SOURCES.index(entry.source),
        "instrument_source_str": entry.source,
    }


def quantise(audio: np.ndarray) -> np.ndarray:
    return np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)


def as_float(samples: np.ndarray) -> np.ndarray:
    """int16 -> float exactly as soundfile reads a PCM-16 wav, so fresh and resumed notes are analysed alike."""
    return samples.astype(np.float32) / 32768.0


def read_existing(path: Path) -> np.ndarray | None:
    """The int16 samples of a finished wav, or None when it is missing, unreadable or not in NSynth's format."""
    if not path.is_file():
        return None
    try:
        info = sf.info(path)
        if (info.samplerate, info.channels, info.frames, info.subtype) != (SAMPLE_RATE, 1, FRAMES, "PCM_16"):
            return None
        samples = sf.read(path, dtype="int16")[0]
    except (sf.LibsndfileError, RuntimeError, ValueError):
        return None
    # A wav zeroed by a crash before the final sync reads as silence: render it again.
    if samples.shape != (FRAMES,) or gm.is_silent(as_float(samples), SILENCE_RMS):
        return None
    return samples


def write_note(path: Path, samples: np.ndarray) -> None:
    """Atomic like every artifact, but without a per-file fsync: at ~7 ms each, fsyncs would double the render
    time. A killed process loses nothing (the page cache survives it); after an OS crash, wavs renamed before
    the single sync in main() may be damaged, and read_existing re-renders them."""
    with atomic_path(path, fsync=False) as tmp:
        sf.write(tmp, samples, SAMPLE_RATE, subtype="PCM_16", format="WAV")


def quality_rule_settings() -> dict:
    """The constants of data/nsynth/qualities.py: changing one changes the labels, so they are provenance."""
    return {name.lstrip("_"): value for name, value in sorted(vars(quality_rules).items())
            if name.lstrip("_").isupper() and isinstance(value, (int, float, tuple))}


def is_complete(directory: Path) -> bool:
    """examples.json is the one render.json certifies, and every wav it lists is still there."""
    examples_path = directory / "examples.json"
    existing = read_json(directory / SIDECAR)
    if not existing.get("complete") or sha256_file(examples_path) != existing.get("examples_sha256"):
        return False
    try:
        names = read_json(examples_path)
    except ValueError:
        return False
    return isinstance(names, dict) and all((directory / "audio" / f"{name}.wav").is_file() for name in names)


def prepare_output(prov: Provenance, force: bool) -> None:
    """Wavs are reused only under a render.json of these very settings (written before the first note);
    otherwise (--force, or wavs of unknown origin) they are cleared. Temp files of a killed run are removed."""
    directory = prov.sidecar.parent
    if force or not prov.sidecar.exists():
        begin(prov)
        for stale in (directory / "audio").glob("*.wav"):
            stale.unlink()
        (directory / "examples.json").unlink(missing_ok=True)
    remove_stale_temps(directory / "audio")
    remove_stale_temps(directory)
    # Describes the partial wavs, so that a killed run resumes them; "complete" says examples.json is not yet.
    commit(Provenance(prov.sidecar, prov.record, outputs=[]), extra={"complete": False})


def main(args) -> None:
    soundfont_path = gm.check_soundfont(args.soundfont) if args.soundfont else gm.default_soundfont()
    programs = chosen_programs(args.programs)
    velocities = chosen_velocities(args.velocities)
    dyad_velocity = chosen_dyad_velocity(args.dyad_velocity, velocities)
    plan = planned_notes(programs, args.pitch_step, velocities, dyad_velocity)
    uses_fluidr3 = any(entry.soundfont == gm.FLUIDR3 for entry in programs)
    fluid_path = gm.fluidr3_soundfont(args.fluid_soundfont) if uses_fluidr3 else None
    paths = {gm.TIMGM6MB: soundfont_path, gm.FLUIDR3: fluid_path}
    conflict = gm.shared_recordings(played_keys(plan, dyad_velocity), paths, soundfont_path)
    if conflict:
        raise InputError(f"{conflict} — probe notes must share no recording with the bank ({soundfont_path}) "
                         "or between instruments: choose other --instruments or fix NOTE_INSTRUMENTS")
    directory = output_dir(args.data)
    audio_dir = directory / "audio"
    # Soundfonts are identified by their hashes; their paths may differ between machines.
    provenance = {
        "soundfont_sha256": sha256_file(soundfont_path),
        "fluid_soundfont_sha256": sha256_file(fluid_path) if fluid_path else None,
        "sample_rate": SAMPLE_RATE, "seconds": SECONDS, "hold_seconds": HOLD_SECONDS,
        "pitch_step": args.pitch_step, "velocities": velocities, "programs": [entry.number for entry in programs],
        "quality_rules": quality_rule_settings(), "silence_rms": SILENCE_RMS,
        "dyad_velocity": dyad_velocity, "dyad_interval": DYAD_INTERVAL,
    }
    prov = Provenance(sidecar=directory / SIDECAR, record=provenance, outputs=[directory / "examples.json"])
    if decide(prov, args.force, "rerun with --force to replace them") and is_complete(directory):
        print(f"{directory}: up to date ({len(plan)} planned notes already rendered); --force renders again")
        return
    prepare_output(prov, args.force)
    audio_dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    examples, holes, reused = {}, [], 0
    for entry, pitch, velocity in tqdm(plan, desc="render notes", unit="note"):
        name = note_str(entry, pitch, velocity)
        path = audio_dir / f"{name}.wav"
        samples = read_existing(path)
        is_dyad = bool(dyad_velocity) and velocity == dyad_velocity
        if samples is None:
            samples = quantise(gm.render_note(paths[entry.soundfont], entry.program, pitch, velocity, SAMPLE_RATE,
                                              SECONDS, HOLD_SECONDS, DYAD_INTERVAL if is_dyad else 0))
            if gm.is_silent(as_float(samples), SILENCE_RMS):
                holes.append(name)
                path.unlink(missing_ok=True)
                continue
            write_note(path, samples)
        else:
            reused += 1
        quality_vector = quality_rules.derive_qualities(as_float(samples), pitch, SAMPLE_RATE, HOLD_SECONDS)
        quality_vector[MULTIPHONIC] = int(is_dyad)
        examples[name] = example_entry(entry, pitch, velocity, quality_vector)
    if not examples:
        raise InputError(f"{soundfont_path}: every planned note rendered silent — pass --soundfont PATH to a "
                         "General MIDI soundfont that tinysoundfont can play")
    # Every wav reaches the disk before the file that lists them (see write_note).
    os.sync()
    examples_path = directory / "examples.json"
    write_json(examples_path, examples)
    families = Counter(example["instrument_family_str"] for example in examples.values())
    commit(prov, extra={
        "soundfont": str(soundfont_path), "fluid_soundfont": str(fluid_path) if fluid_path else None,
        "complete": True, "examples_sha256": sha256_file(examples_path), "n_notes": len(examples),
        "notes_per_family": dict(sorted(families.items())), "silent_notes_dropped": holes,
    })
    seconds = time.perf_counter() - started
    print(f"{len(examples)} notes from {len(programs)} instruments in {seconds:.1f} s "
          f"({reused} reused, {len(holes)} silent dropped) → {directory}")
    print("notes per family: " + ", ".join(f"{family} {count}" for family, count in sorted(families.items())))


if __name__ == "__main__":
    main_exit(main, build_parser())
