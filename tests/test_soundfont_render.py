"""data/nsynth/render_soundfont.py and its quality rules: NSynth's format exactly, holes dropped, resume."""
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO_ROOT

from data.nsynth import qualities as quality_rules
from data.nsynth.render_soundfont import DEFAULT_DYAD_VELOCITY, build_parser, main, output_dir
from data.soundfont import NOTE_BY_NUMBER
from data.stage import run_stage
from data.vocabulary import FAMILIES, QUALITIES, SOURCES
from interp.nsynth import FIELDS

SCRIPT = REPO_ROOT / "data" / "nsynth" / "render_soundfont.py"
# FluidR3_GM's piano, choir and trumpet, every octave: ~35 notes in ~1 s.
SMALL = ["--instruments", "0,52,56", "--pitch-step", "12", "--velocities", "75,127"]
# FluidR3_GM's violin has a hole at D7 (pitch 102); a step of 34 plans pitches 68 and 102.
WITH_HOLE = ["--instruments", "40", "--pitch-step", "34", "--velocities", "75", "--dyad-velocity", "0"]
HOLE = "string_acoustic_040-102-075"
NOTE_STR = re.compile(r"^(?P<family>[a-z_]+)_(?P<source>acoustic|electronic|synthetic)_(?P<number>\d{3})"
                      r"-(?P<pitch>\d{3})-(?P<velocity>\d{3})$")


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
    assert 25 <= len(examples) <= 50
    assert sum(example["velocity"] == DEFAULT_DYAD_VELOCITY for example in examples.values()) >= 5
    wavs = sorted(path.stem for path in (rendered / "audio").glob("*.wav"))
    assert wavs == sorted(examples)
    for name, example in examples.items():
        assert set(example) == set(FIELDS)
        match = NOTE_STR.match(name)
        assert match and example["note_str"] == name
        number = int(match["number"])
        gm = NOTE_BY_NUMBER[number]
        assert (example["instrument_family_str"], example["instrument_source_str"]) == (gm.family, gm.source)
        assert example["instrument_family"] == FAMILIES.index(gm.family)
        assert example["instrument_source"] == SOURCES.index(gm.source)
        assert example["instrument"] == number and example["instrument_str"] == name.split("-")[0]
        assert (example["pitch"], example["velocity"]) == (int(match["pitch"]), int(match["velocity"]))
        assert gm.lowest <= example["pitch"] <= gm.highest and example["pitch"] % 12 == 0
        assert example["sample_rate"] == 16000
        assert len(example["qualities"]) == 10 and set(example["qualities"]) <= {0, 1}
        assert example["qualities_str"] == [q for q, bit in zip(QUALITIES, example["qualities"]) if bit]
        for never in set(quality_rules.NOT_DERIVED) - {"multiphonic"}:
            assert never not in example["qualities_str"]
        # Multiphonic exactly on the dyads, which are the only notes at the dyad velocity.
        assert ("multiphonic" in example["qualities_str"]) == (example["velocity"] == DEFAULT_DYAD_VELOCITY)
        info = sf.info(rendered / "audio" / f"{name}.wav")
        assert (info.samplerate, info.channels, info.frames, info.subtype, info.format) == \
            (16000, 1, 64000, "PCM_16", "WAV")
    assert len({example["note"] for example in examples.values()}) == len(examples)
    assert {example["instrument_family_str"] for example in examples.values()} == {"keyboard", "vocal", "brass"}


def test_silent_notes_are_dropped_and_listed(rendered, tmp_path):
    sidecar = json.loads((rendered / "render.json").read_text())
    assert sidecar["complete"] and sidecar["n_notes"] == len(json.loads((rendered / "examples.json").read_text()))
    assert len(sidecar["soundfont_sha256"]) == 64 and len(sidecar["fluid_soundfont_sha256"]) == 64
    assert sidecar["programs"] == [0, 52, 56]
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
    result = render_subprocess(data, "--instruments", "0,52,56", "--pitch-step", "12", "--velocities", "100")
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


def held_note(waveform, envelope):
    return (waveform * envelope).astype(np.float32)


def sine(pitch, harmonics=1):
    """A tone with `harmonics` equally strong harmonics (a band-limited pulse train when many)."""
    f0 = quality_rules.midi_to_hz(pitch)
    return sum(np.sin(2 * np.pi * f0 * k * TIME) for k in range(1, harmonics + 1)) / harmonics


def sustain_then_release(release_seconds):
    """Full level while held, then an exponential fall of 60 dB over release_seconds."""
    envelope = np.ones_like(TIME)
    after = TIME >= 3.0
    envelope[after] = 10 ** (-3 * (TIME[after] - 3.0) / release_seconds)
    return 0.3 * envelope


def named(vector):
    return {name for name, bit in zip(QUALITIES, vector) if bit}


def test_quality_rules_on_synthetic_notes():
    pure = named(quality_rules.derive_qualities(held_note(sine(60), sustain_then_release(0.05)), 60))
    assert pure == {"dark"}

    rich = named(quality_rules.derive_qualities(held_note(sine(48, harmonics=30), sustain_then_release(0.05)), 48))
    assert {"bright", "distortion"} <= rich and "dark" not in rich
    # A sawtooth's 1/k harmonics are rich but not extreme: neither bright nor distorted by these rules.
    sawtooth = sum(np.sin(2 * np.pi * quality_rules.midi_to_hz(48) * k * TIME) / k for k in range(1, 31))
    assert not {"bright", "distortion", "dark"} & named(
        quality_rules.derive_qualities(held_note(sawtooth, sustain_then_release(0.05)), 48))

    plucked_envelope = 0.5 * 10 ** (-3 * TIME / 1.0)  # 60 dB down after 1 s, long before note-off
    assert "fast_decay" in named(quality_rules.derive_qualities(held_note(sine(60), plucked_envelope), 60))

    assert "long_release" in named(quality_rules.derive_qualities(held_note(sine(60), sustain_then_release(3.0)), 60))

    tremolo = sustain_then_release(0.05) * (0.55 + 0.45 * np.sin(2 * np.pi * 4 * TIME))
    assert "nonlinear_env" in named(quality_rules.derive_qualities(held_note(sine(60), tremolo), 60))

    rng = np.random.default_rng(0)
    struck = held_note(sine(60), plucked_envelope)
    struck[:400] += (rng.standard_normal(400) * np.linspace(0.8, 0.0, 400)).astype(np.float32)
    assert "percussive" in named(quality_rules.derive_qualities(struck, 60))
    assert "percussive" not in named(quality_rules.derive_qualities(held_note(sine(60), plucked_envelope), 60))
