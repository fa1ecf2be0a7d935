"""data/nsynth/render_soundfont.py, its plan and quality rules: NSynth's format exactly (mixes with their parts),
qualities decided by the rendering, holes dropped, resume."""
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO_ROOT

from data.note_instruments import NOTE_BY_NUMBER
from data.nsynth import plan as planning
from data.nsynth import qualities as quality_rules
from data.nsynth.render_soundfont import DEFAULT_DYAD_VELOCITY, build_parser, main, output_dir
from data.soundfont import PLAYED
from data.stage import run_stage
from data.vocabulary import FAMILIES, QUALITIES, SOURCES
from interp.nsynth import FIELDS, read_examples

SCRIPT = REPO_ROOT / "data" / "nsynth" / "render_soundfont.py"
# FluidR3_GM's piano, choir and trumpet, every octave, and its standard drum kit for the mixes: ~45 examples in ~1 s.
SMALL = ["--instruments", "0,52,56,256", "--pitch-step", "12", "--velocities", "75,127"]
# FluidR3_GM's violin has a hole at D7 (pitch 102); a step of 34 plans pitches 68 and 102.
WITH_HOLE = ["--instruments", "40", "--pitch-step", "34", "--velocities", "75", "--dyad-velocity", "0"]
HOLE = "string_acoustic_040-102-075"
NOTE_STR = re.compile(r"^(?P<family>[a-z_]+)_(?P<source>acoustic|electronic|synthetic)_(?P<number>\d{3})"
                      r"-(?P<pitch>\d{3})-(?P<velocity>\d{3})(?P<more>(\+[a-z_]+_\d{3}(-\d{3})?)*)$")


def render(data, *extra) -> int:
    return run_stage(main, build_parser(), ["--data", str(data), *SMALL, *extra])


def render_subprocess(data, *extra):
    return subprocess.run([sys.executable, str(SCRIPT), "--data", str(data), *extra],
                          capture_output=True, text=True, timeout=120)


def directory_bytes(directory):
    return {path.relative_to(directory).as_posix(): path.read_bytes()
            for path in sorted(directory.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    data = tmp_path_factory.mktemp("render")
    assert render(data) == 0
    return output_dir(data)


def test_rendered_notes_are_in_nsynth_format(rendered):
    examples = json.loads((rendered / "examples.json").read_text())
    mixes = {name: example for name, example in examples.items() if "parts" in example}
    assert 35 <= len(examples) <= 55 and 5 <= len(mixes) <= 10
    assert sum(example["velocity"] == DEFAULT_DYAD_VELOCITY for example in examples.values()) >= 5
    wavs = sorted(path.stem for path in (rendered / "audio").glob("*.wav"))
    assert wavs == sorted(examples)
    for name, example in examples.items():
        assert set(example) == set(FIELDS) | {"program", "treatment"} | ({"parts"} if name in mixes else set())
        match = NOTE_STR.match(name)
        assert match and example["note_str"] == name and bool(match["more"]) == (name in mixes)
        number = int(match["number"])
        gm = NOTE_BY_NUMBER[number]
        assert (example["instrument_family_str"], example["instrument_source_str"]) == (gm.family, gm.source)
        assert example["instrument_family"] == FAMILIES.index(gm.family)
        assert example["instrument_source"] == SOURCES.index(gm.source)
        assert example["instrument"] == number and example["instrument_str"] == name.split("-")[0]
        assert example["program"] == gm.program
        assert (example["pitch"], example["velocity"]) == (int(match["pitch"]), int(match["velocity"]))
        assert gm.lowest <= example["pitch"] <= gm.highest
        assert example["pitch"] % 12 == 0 or name in mixes
        assert example["sample_rate"] == 16000
        assert len(example["qualities"]) == 10 and set(example["qualities"]) <= {0, 1}
        assert example["qualities_str"] == [q for q, bit in zip(QUALITIES, example["qualities"]) if bit]
        assert "bright" not in example["qualities_str"]
        # Multiphonic exactly on the dyads (the only notes at the dyad velocity) and on mixes of two pitched parts.
        pitched = [part for part in example.get("parts", [example]) if part.get("family") != "drum"]
        assert ("multiphonic" in example["qualities_str"]) == (example["velocity"] == DEFAULT_DYAD_VELOCITY
                                                               or len(pitched) >= 2)
        info = sf.info(rendered / "audio" / f"{name}.wav")
        assert (info.samplerate, info.channels, info.frames, info.subtype, info.format) == \
            (16000, 1, 64000, "PCM_16", "WAV")
    for name, example in mixes.items():
        first = example["parts"][0]
        assert (first["instrument"], first["pitch"]) == (example["instrument"], example["pitch"])
        assert example["treatment"] == "mix" and len(example["parts"]) >= 2
        assert len({part["family"] for part in example["parts"]}) == len(example["parts"])  # families differ
    drum_mixes = [example for example in mixes.values() if any(p["family"] == "drum" for p in example["parts"])]
    assert drum_mixes and all("percussive" in example["qualities_str"] for example in drum_mixes)
    singles = [example["note"] for example in examples.values() if "parts" not in example]
    assert len(set(singles)) == len(examples) - len(mixes)
    assert {example["instrument_family_str"] for example in examples.values()} == {"keyboard", "vocal", "brass"}
    # The NSynth reader takes the mixes' parts and programs (stage 4's input).
    notes = read_examples(rendered)
    assert (notes["parts"] != "").sum() == len(mixes) and notes["program"].notna().all()


def test_qualities_are_decided_by_treatment_and_instrument(rendered):
    examples = json.loads((rendered / "examples.json").read_text())
    treatments = {example["treatment"] for example in examples.values()}
    assert {"plain", "staccato", "dyad", "mix"} <= treatments and len(treatments) >= 6
    for example in examples.values():
        programs = [part["program"] for part in example.get("parts", [example]) if part.get("family") != "drum"]
        drums = sum(part.get("family") == "drum" for part in example.get("parts", []))
        assert example["qualities"] == quality_rules.qualities_of(example["treatment"], programs, drums, len(programs))
        named = set(example["qualities_str"])
        assert ("fast_decay" in named) == (example["treatment"] == "staccato")
        assert ("dark" in named) == (example["treatment"] == "lowpass")
        # The piano is struck (percussive) on every note; a held trumpet or choir note is not.
        if "parts" not in example:
            assert ("percussive" in named) == (PLAYED[example["program"]] in ("struck", "plucked"))
    # Half of the single notes are plain, the rest spread over the effects.
    single = [example["treatment"] for example in examples.values() if example["treatment"] not in ("dyad", "mix")]
    assert 0.4 <= single.count("plain") / len(single) <= 0.6


def test_silent_notes_are_dropped_and_listed(rendered, tmp_path):
    sidecar = json.loads((rendered / "render.json").read_text())
    examples = json.loads((rendered / "examples.json").read_text())
    assert sidecar["complete"] and sidecar["n_examples"] == len(examples)
    assert sidecar["n_mixes"] == sum("parts" in example for example in examples.values())
    assert len(sidecar["soundfont_sha256"]) == 64 and len(sidecar["fluid_soundfont_sha256"]) == 64
    assert sidecar["programs"] == [0, 52, 56, 256]
    assert run_stage(main, build_parser(), ["--data", str(tmp_path), *WITH_HOLE]) == 0
    holed = output_dir(tmp_path)
    examples = json.loads((holed / "examples.json").read_text())
    assert set(examples) == {"string_acoustic_040-068-075"}
    assert not (holed / "audio" / f"{HOLE}.wav").exists()
    assert json.loads((holed / "render.json").read_text())["silent_notes_dropped"] == [HOLE]
    for name in json.loads((rendered / "examples.json").read_text()):
        audio, _ = sf.read(rendered / "audio" / f"{name}.wav")
        assert np.sqrt(np.mean(audio ** 2)) > 1e-4


def test_resume_after_interruption_equals_uninterrupted(rendered, tmp_path):
    resumed_dir = output_dir(tmp_path)
    shutil.copytree(rendered, resumed_dir)
    # An interrupted run: examples.json not yet written, half the wavs missing, one damaged.
    (resumed_dir / "examples.json").unlink()
    sidecar = json.loads((resumed_dir / "render.json").read_text())
    (resumed_dir / "render.json").write_text(json.dumps({**sidecar, "complete": False}))
    wavs = sorted((resumed_dir / "audio").glob("*.wav"))
    for path in wavs[::2]:
        path.unlink()
    damaged = wavs[1]
    damaged.write_bytes(damaged.read_bytes()[:5000])
    assert render(tmp_path) == 0
    assert directory_bytes(resumed_dir) == directory_bytes(rendered)


def test_up_to_date_run_is_skipped_and_other_settings_refused(rendered, tmp_path, capsys):
    data = tmp_path
    shutil.copytree(rendered, output_dir(data))
    before = directory_bytes(output_dir(data))
    assert render(data) == 0
    assert "up to date" in capsys.readouterr().out
    result = render_subprocess(data, "--instruments", "0,52,56,256", "--pitch-step", "12", "--velocities", "100")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
    assert "velocities" in result.stderr and "--force" in result.stderr
    assert directory_bytes(output_dir(data)) == before
    assert run_stage(main, build_parser(), ["--data", str(data), "--programs", "0", "--pitch-step", "24",
                                            "--velocities", "100", "--dyad-velocity", "0", "--force"]) == 0
    examples = json.loads((output_dir(data) / "examples.json").read_text())
    assert set(examples) == {f"keyboard_acoustic_000-{pitch:03d}-100" for pitch in (24, 48, 72, 96)}
    assert sorted(path.stem for path in (output_dir(data) / "audio").glob("*.wav")) == sorted(examples)


@pytest.mark.parametrize("arguments, message", [
    (["--instruments", "66"], "not a note instrument"),
    (["--instruments", "47"], "not a note instrument"),
    (["--fluid-soundfont", "missing.sf2"], "fluid-soundfont-gm"),
    (["--velocities", "80"], "NSynth's velocities"),
    (["--velocities", "50,75"], "--dyad-velocity: 50"),
    (["--pitch-step", "0"], "positive number"),
    (["--soundfont", "missing.sf2"], "not found"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, arguments, message):
    result = render_subprocess(tmp_path, *arguments)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.strip().count("\n") == 0
    assert message in result.stderr
    assert not output_dir(tmp_path).exists()


RATE = 16000
TIME = np.arange(4 * RATE) / RATE


def level_db(audio, start, stop):
    part = audio[int(start * RATE):int(stop * RATE)].astype(np.float64)
    return 10 * np.log10(np.mean(part ** 2) + 1e-20)


def high_share(audio, pitch):
    """Share of the energy above 1.5 times the fundamental."""
    spectrum = np.abs(np.fft.rfft(audio.astype(np.float64))) ** 2
    frequencies = np.fft.rfftfreq(audio.size, 1 / RATE)
    return spectrum[frequencies > 1.5 * quality_rules.midi_to_hz(pitch)].sum() / spectrum.sum()


def test_treatments_do_what_their_qualities_say():
    """Known answers on a synthetic held note (a 30-harmonic tone held 3 s, then cut)."""
    f0 = quality_rules.midi_to_hz(48)
    tone = sum(np.sin(2 * np.pi * f0 * k * TIME) / k for k in range(1, 31)) * 0.2 * (TIME < 3.0)
    tone = tone.astype(np.float32)

    def treated(name):
        return quality_rules.apply(name, tone, 48, RATE, 3.0)

    assert np.array_equal(treated("plain"), tone) and np.array_equal(treated("mix"), tone)
    assert high_share(treated("lowpass"), 48) < high_share(tone, 48) / 10                 # dark
    sine = (0.2 * np.sin(2 * np.pi * f0 * TIME)).astype(np.float32)
    assert high_share(quality_rules.apply("drive", sine, 48, RATE, 3.0), 48) > 0.1 > high_share(sine, 48)  # distortion
    assert level_db(treated("reverb"), 3.2, 3.6) > level_db(tone, 3.2, 3.6) + 60        # reverb tail
    pulse = treated("pulse")                                                              # gated in eighths
    assert level_db(pulse, 0.05, 0.13) - level_db(pulse, 0.17, 0.23) > 20
    assert abs(level_db(pulse, 0.05, 0.13) - level_db(tone, 0.05, 0.13)) < 1
    ringing = quality_rules.apply("ring", sine, 48, RATE, 3.0)                            # still there at the end
    assert level_db(ringing, 3.9, 4.0) > level_db(sine, 0.5, 1.0) - quality_rules.RING_FADE_DB - 1
    assert np.array_equal(ringing[:3 * RATE], sine[:3 * RATE])
    assert quality_rules.hold_seconds("staccato", 3.0, 4.0) == quality_rules.STACCATO_SECONDS
    assert quality_rules.hold_seconds("ring", 3.0, 4.0) == 4.0 and quality_rules.hold_seconds("reverb", 3.0, 4.0) == 3.0
    assert np.abs(treated("reverb")).max() <= quality_rules.PEAK_LIMIT
    with pytest.raises(ValueError):
        quality_rules.apply("echo", tone, 48, RATE, 3.0)


def test_quality_labels_name_their_rendering():
    def named(*args, **kwargs):
        return {q for q, bit in zip(QUALITIES, quality_rules.qualities_of(*args, **kwargs)) if bit}

    assert named("plain", [73]) == set()                                        # a held flute
    assert named("plain", [0]) == {"percussive"}                                # a piano is struck
    assert named("staccato", [73]) == {"fast_decay"}
    assert named("ring", [73]) == {"long_release"} and named("reverb", [73]) == {"reverb"}
    assert named("pulse", [73]) == {"nonlinear_env", "tempo-synced"}
    assert named("lowpass", [73]) == {"dark"} and named("drive", [73]) == {"distortion"}
    assert named("plain", [30]) == {"percussive", "distortion"}                  # Distortion Guitar, by name
    assert named("plain", [44]) == {"nonlinear_env"}                             # Tremolo Strings, by name
    assert named("dyad", [73]) == {"multiphonic"}
    assert named("mix", [73, 40], pitched_parts=2) == {"multiphonic"}
    assert named("mix", [80], drum_parts=1, pitched_parts=1) == {"percussive"}
    # Nothing ever sets bright.
    assert all("bright" not in named(treatment, [0, 30, 44], 1, 3) for treatment in quality_rules.TREATMENT_QUALITIES)


def test_plan_mixes_every_family_pair_and_the_named_ensembles():
    chosen = [NOTE_BY_NUMBER[number] for number in (0, 24, 32, 40, 56, 73, 80, 38, 256, 281)]
    notes = [item for item in chosen if item.family != "drum"]
    kits = [item for item in chosen if item.family == "drum"]
    mixes = planning.planned_mixes(notes, kits)
    families = {frozenset(part.instrument.family for part in mix.parts) for mix in mixes}
    labels = {item.family for item in chosen}
    assert {frozenset(pair) for pair in __import__("itertools").combinations(labels, 2)} <= families
    # Orchestral: violin with trumpet and flute, in every voicing; techno: synth lead over the electronic kit.
    names = {mix.note_str.split("-")[0] + "+" + "+".join(p.instrument.instrument_str for p in mix.parts[1:])
             for mix in mixes}
    assert "brass_acoustic_056+string_acoustic_040" in names and "flute_acoustic_073+string_acoustic_040" in names
    assert "synth_lead_synthetic_080+drum_281" in names
    assert "bass_synthetic_038+synth_lead_synthetic_080+drum_281" in names
    assert "guitar_acoustic_024+keyboard_acoustic_000+drum_256" in names
    assert sum(name == "brass_acoustic_056+string_acoustic_040" for name in names) == 1
    assert len([mix for mix in mixes if {p.instrument.number for p in mix.parts} == {56, 40}]) == len(planning.VOICINGS)
    assert len({mix.note_str for mix in mixes}) == len(mixes)
    for mix in mixes:
        assert mix.parts[-1].is_drum or not any(part.is_drum for part in mix.parts)
        for part in mix.parts:
            assert part.is_drum or part.pitch % 12 in planning.TRIAD
