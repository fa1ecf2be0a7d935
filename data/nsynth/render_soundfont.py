"""Render NSynth-format notes and mixes of the probes' instruments (data/note_instruments.py) for stage 4.

    python data/nsynth/render_soundfont.py --data data [--fluid-soundfont PATH] [--soundfont PATH] [--no-mixes]
        [--force]

Writes <data>/nsynth/nsynth-soundfont/ exactly as an NSynth split is laid out: audio/<note_str>.wav (16 kHz mono
PCM-16, 4 s: keys held 3 s, then released) and examples.json keyed by note_str with every NSynth field, so that
stage 4 reads it through the same code as nsynth-train/valid/test.

- Instruments: presets of FluidR3_GM (--fluid-soundfont, default Debian's /usr/share/sounds/sf2/FluidR3_GM.sf2)
  and of TimGM6mb (--soundfont, default the copy inside pretty_midi, which the generator's bank plays), and
  FluidR3_GM's drum kits for the mixes' drum parts. Before rendering, every key the plan presses (mix parts
  included) is checked against both soundfonts' sample tables: no recording they sound may be one the bank
  can play, and no two instruments may sound a common recording (data/note_instruments.py
  shared_recordings); otherwise the run is refused. So probe notes never share a recording with the bank,
  nor train notes with test notes, however stage 4 splits the instruments.
- What is played (data/nsynth/plan.py): every note instrument at every pitch of its playable range that is a
  multiple of --pitch-step (a shared grid, so that instruments meet at the same pitches), at each of
  --velocities (a subset of NSynth's 25/50/75/100/127), each note with a treatment (plain, staccato, ring,
  pulse, reverb, lowpass, drive; half plain); dyads (the note plus a fifth) at every other grid pitch at
  --dyad-velocity (default 50, which the single notes do not use, so note_str stays
  <instrument>-<pitch>-<velocity>; 0 renders none); and, unless --no-mixes, mixes of two or three
  instruments: every pair of families and drums as in the generator's bank, and every ensemble a concept
  names (orchestral, acoustic band, techno). The defaults give ~1,650 notes and ~900 mixes.
- Identity: instrument = the note instrument's number (the GM program for FluidR3_GM, 128 + program for
  TimGM6mb, 256 + kit for a drum kit), instrument_str = <family>_<source>_<number:03d> (drum_<number> for a
  kit), note = number * 16384 + pitch * 128 + velocity (unique and the same in every run; NSynth's own ids are
  arbitrary). Beside NSynth's fields each entry has `program` (GM program) and `treatment`; a mix has
  `parts` (every part's instrument, program, family, source, pitch), its NSynth fields are its lead's, and
  its note_str appends "+<instrument_str>[-<pitch>]" per further part (interp/nsynth.py reads them).
- Family and source come from the GM table (data/soundfont.py); qualities are decided by the treatment and
  the instruments, never measured from the audio (data/nsynth/qualities.py).
- Holes: an example whose int16 audio (or one of whose mix parts) is below data.audio.SILENCE_RMS is dropped
  (no wav, no entry) and listed in the sidecar.
- Resume: render.json (provenance: soundfont sha256, every setting and the plan's hash) is written before the
  first example; a rerun with the same provenance keeps every valid existing wav and re-renders missing or
  damaged ones; examples.json is written last. Renders are deterministic, so a resumed run writes the same
  bytes as an uninterrupted one. A rerun with other settings is refused unless --force, which clears the old
  wavs first. Temp files a killed run left (.<name>.wav.<random>.tmp) are removed on rerun.
"""
import io
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

from data import note_instruments as instruments_
from data import soundfont as gm
from data.audio import SILENCE_RMS
from data.files import atomic_path, read_json, remove_stale_temps, sha256_file, sha256_json, write_json
from data.nsynth import plan as planning
from data.nsynth import qualities as quality_rules
from data.provenance import Provenance, begin, commit, decide
from data.stage import InputError, add_progress_argument, main_exit, stage_parser

SAMPLE_RATE = planning.SAMPLE_RATE
FRAMES = int(planning.SAMPLE_RATE * planning.SECONDS)
NSYNTH_VELOCITIES = (25, 50, 75, 100, 127)
DEFAULT_VELOCITIES = (75, 127)
DEFAULT_PITCH_STEP = 5
DEFAULT_DYAD_VELOCITY = 50
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
                        help=f"FluidR3_GM.sf2 (None: {instruments_.DEBIAN_FLUIDR3}, from Debian's fluid-soundfont-gm)")
    parser.add_argument("--instruments", "--programs", dest="programs", default=None,
                        help="comma-separated note instrument numbers (data/note_instruments.py NOTE_INSTRUMENTS and "
                             "DRUM_KITS: the GM program for FluidR3_GM, 128 + program for TimGM6mb, 256 + kit for a "
                             "drum kit); None means all of them")
    parser.add_argument("--pitch-step", type=int, default=DEFAULT_PITCH_STEP,
                        help="render pitches that are multiples of this within each instrument's range")
    parser.add_argument("--velocities", default=",".join(map(str, DEFAULT_VELOCITIES)),
                        help=f"comma-separated MIDI velocities, each one of NSynth's {NSYNTH_VELOCITIES}")
    parser.add_argument("--dyad-velocity", type=int, default=DEFAULT_DYAD_VELOCITY,
                        help="velocity of the multiphonic dyads (note + fifth) rendered at every other grid pitch; "
                             "must not be one of --velocities; 0 renders no dyads")
    parser.add_argument("--no-mixes", action="store_true",
                        help="render single notes and dyads only (no mixes: the ensemble concepts then have no "
                             "positives)")
    add_progress_argument(parser)
    return parser


def chosen_programs(text) -> list:
    """The note instruments and drum kits to render (named by number), all of them when text is None."""
    if text is None:
        return sorted(instruments_.NOTE_BY_NUMBER.values(), key=lambda entry: entry.number)
    chosen = []
    for number in _int_list(text):
        if number not in instruments_.NOTE_BY_NUMBER:
            raise InputError(f"--instruments: {number} is not a note instrument (see NOTE_INSTRUMENTS and DRUM_KITS "
                             "in data/note_instruments.py: the GM program for FluidR3_GM, 128 + program for "
                             "TimGM6mb, 256 + kit for a drum kit) — choose listed ones")
        if instruments_.NOTE_BY_NUMBER[number] not in chosen:
            chosen.append(instruments_.NOTE_BY_NUMBER[number])
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


def planned_examples(chosen, pitch_step: int, velocities, dyad_velocity: int = 0, mixes: bool = True) -> list:
    """Every example to render: single notes and dyads of the chosen note instruments, then their mixes."""
    if pitch_step < 1:
        raise InputError(f"--pitch-step: {pitch_step} — use a positive number of semitones")
    notes = [entry for entry in chosen if isinstance(entry, instruments_.NoteInstrument)]
    kits = [entry for entry in chosen if isinstance(entry, instruments_.DrumKit)]
    plan = planning.planned_notes(notes, pitch_step, velocities, dyad_velocity)
    return plan + (planning.planned_mixes(notes, kits) if mixes else [])


def played_keys(plan) -> dict:
    """Per instrument, every (key, velocity) the plan presses (a dyad presses two keys, a mix part its own)."""
    keys = {}
    for example in plan:
        for instrument, key, velocity in example.pressed():
            keys.setdefault(instrument, []).append((key, velocity))
    return keys


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
    the single sync in main() may be damaged, and read_existing re-renders them. The wav is encoded in memory:
    libsndfile syncs a file it closes (sf_write_sync), which cost ~6 ms per note."""
    encoded = io.BytesIO()
    sf.write(encoded, samples, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    with atomic_path(path, fsync=False) as tmp:
        Path(tmp).write_bytes(encoded.getvalue())


def _plain(value) -> bool:
    return isinstance(value, (int, float, str)) or isinstance(value, tuple) and all(map(_plain, value))


def quality_rule_settings() -> dict:
    """The constants of data/nsynth/qualities.py and plan.py: changing one changes the audio or the labels."""
    return {f"{module.__name__.rsplit('.', 1)[-1]}.{name}": value
            for module in (quality_rules, planning) for name, value in sorted(vars(module).items())
            if name.isupper() and _plain(value)}


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
    chosen = chosen_programs(args.programs)
    velocities = chosen_velocities(args.velocities)
    dyad_velocity = chosen_dyad_velocity(args.dyad_velocity, velocities)
    plan = planned_examples(chosen, args.pitch_step, velocities, dyad_velocity, mixes=not args.no_mixes)
    uses_fluidr3 = any(entry.soundfont == instruments_.FLUIDR3 for entry in chosen)
    fluid_path = instruments_.fluidr3_soundfont(args.fluid_soundfont) if uses_fluidr3 else None
    paths = {instruments_.TIMGM6MB: soundfont_path, instruments_.FLUIDR3: fluid_path}
    conflict = instruments_.shared_recordings(played_keys(plan), paths, soundfont_path)
    if conflict:
        raise InputError(f"{conflict} — probe notes must share no recording with the bank ({soundfont_path}) "
                         "or between instruments: choose other --instruments or fix NOTE_INSTRUMENTS")
    directory = output_dir(args.data)
    audio_dir = directory / "audio"
    # Soundfonts are identified by their hashes; their paths may differ between machines.
    provenance = {
        "soundfont_sha256": sha256_file(soundfont_path),
        "fluid_soundfont_sha256": sha256_file(fluid_path) if fluid_path else None,
        "pitch_step": args.pitch_step, "velocities": velocities, "programs": [entry.number for entry in chosen],
        "dyad_velocity": dyad_velocity, "mixes": not args.no_mixes, "silence_rms": SILENCE_RMS,
        "quality_rules": quality_rule_settings(),
        "plan_sha256": sha256_json([[example.note_str, example.treatment] for example in plan]),
    }
    prov = Provenance(sidecar=directory / SIDECAR, record=provenance, outputs=[directory / "examples.json"])
    if decide(prov, args.force, "rerun with --force to replace them") and is_complete(directory):
        print(f"{directory}: up to date ({len(plan)} planned examples already rendered); --force renders again")
        return
    prepare_output(prov, args.force)
    audio_dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    examples, holes, reused, part_cache = {}, [], 0, {}
    for example in tqdm(plan, desc="render notes and mixes", unit="example", disable=args.no_progress):
        name = example.note_str
        path = audio_dir / f"{name}.wav"
        samples = read_existing(path)
        if samples is None:
            audio = planning.render_example(example, paths, part_cache)
            samples = None if audio is None else quantise(audio)
            if samples is None or gm.is_silent(as_float(samples), SILENCE_RMS):
                holes.append(name)
                path.unlink(missing_ok=True)
                continue
            write_note(path, samples)
        else:
            reused += 1
        examples[name] = example.entry()
    if not examples:
        raise InputError(f"{soundfont_path}: every planned note rendered silent — pass --soundfont PATH to a "
                         "General MIDI soundfont that tinysoundfont can play")
    # Every wav reaches the disk before the file that lists them (see write_note).
    os.sync()
    examples_path = directory / "examples.json"
    write_json(examples_path, examples)
    families = Counter(example["instrument_family_str"] for example in examples.values() if "parts" not in example)
    n_mixes = sum("parts" in example for example in examples.values())
    commit(prov, extra={
        "soundfont": str(soundfont_path), "fluid_soundfont": str(fluid_path) if fluid_path else None,
        "complete": True, "examples_sha256": sha256_file(examples_path), "n_examples": len(examples),
        "n_mixes": n_mixes, "notes_per_family": dict(sorted(families.items())), "silent_notes_dropped": holes,
    })
    seconds = time.perf_counter() - started
    print(f"{len(examples) - n_mixes} notes and {n_mixes} mixes from {len(chosen)} instruments in {seconds:.1f} s "
          f"({reused} reused, {len(holes)} silent dropped) → {directory}")
    print("notes per family: " + ", ".join(f"{family} {count}" for family, count in sorted(families.items())))


if __name__ == "__main__":
    main_exit(main, build_parser())
