"""Stage 5 end to end on a small NSynth-format directory and a notes.csv written to the contract (stage 4)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from data.audio import read_audio, write_wav
from data.contract import NOTES_COLUMNS, read_embeddings, read_notes, table_sha256
from data.files import sha256_file
from data.stage import REPO_ROOT, run_stage
from embeddings.spectral import SpectralEmbedder
from interp import stage5_embed_nsynth as stage5

RATE = 16_000
SCRIPT = REPO_ROOT / "interp" / "stage5_embed_nsynth.py"
FAMILIES = ("keyboard", "brass", "mallet")


def nsynth_note(family: str, pitch: int, velocity: int, rate: int = RATE, channels: int = 1) -> np.ndarray:
    t = np.arange(4 * rate) / rate
    frequency = 440.0 * 2 ** ((pitch - 69) / 12)
    harmonics = {"keyboard": 3, "brass": 8, "mallet": 1}[family]
    decay = {"keyboard": 1.0, "brass": 3.0, "mallet": 0.15}[family]
    signal = sum(np.sin(2 * np.pi * k * frequency * t) / k for k in range(1, harmonics + 1))
    audio = (velocity / 127 * 0.3 * signal * np.exp(-t / decay)).astype(np.float32)
    return np.stack([audio] * channels) if channels > 1 else audio


@pytest.fixture
def data(tmp_path):
    """An NSynth-format directory outside the data root, recorded by absolute path as stage 4 would."""
    nsynth = tmp_path / "nsynth-fixture"
    rows = []
    for i, family in enumerate(FAMILIES):
        for pitch in (48, 60, 72):
            for velocity in (50, 100):
                note_str = f"{family}_fixture_{i:03d}-{pitch:03d}-{velocity:03d}"
                write_wav(nsynth / "audio" / f"{note_str}.wav", nsynth_note(family, pitch, velocity), RATE)
                rows.append({"note_str": note_str, "instrument_str": f"{family}_fixture_{i:03d}", "family": family,
                             "source": "synthetic", "qualities": "fast_decay" if family == "mallet" else "",
                             "pitch": pitch, "velocity": velocity, "split": "test" if family == "mallet" else "train",
                             "path": f"audio/{note_str}.wav"})
    # Stage 5 reads only the hash of examples.json: it must be the file the sets were built from.
    (nsynth / "examples.json").write_text(json.dumps({row["note_str"]: {} for row in rows}))
    data = tmp_path / "data"
    (data / "concepts").mkdir(parents=True)
    pd.DataFrame(rows, columns=list(NOTES_COLUMNS)).to_csv(data / "concepts" / "notes.csv", index=False)
    write_concepts_json(data, str(nsynth))
    return data


def write_concepts_json(data, nsynth_dir: str):
    directory = Path(nsynth_dir) if Path(nsynth_dir).is_absolute() else data / nsynth_dir
    examples = directory / "examples.json"
    examples_sha256 = sha256_file(examples) if examples.is_file() else "absent"
    (data / "concepts" / "concepts.json").write_text(json.dumps(
        {"nsynth_dir": nsynth_dir, "examples_sha256": examples_sha256, "concepts": [], "split_seed": 0}))


def nsynth_dir(data):
    return data.parent / "nsynth-fixture"


def run_script(data, *extra):
    return subprocess.run([sys.executable, str(SCRIPT), "--data", str(data), "--workers", "1", *extra],
                          capture_output=True, text=True, timeout=120)


def out_path(data):
    return data / "concepts" / "embeddings" / "spectral.npy"


def test_embeddings_align_with_notes_csv(data):
    result = run_script(data, "--embedder", "spectral", "--batch-size", "5")
    assert result.returncode == 0, result.stderr
    notes = read_notes(data)
    matrix, sidecar = read_embeddings(out_path(data), len(notes), table_sha256(notes), "notes_sha256", fix="rerun")
    assert sidecar["examples_sha256"] == sha256_file(nsynth_dir(data) / "examples.json")
    assert sidecar["embedder"] == "spectral"
    for row in (0, 7, len(notes) - 1):
        audio, _ = read_audio(nsynth_dir(data) / notes.at[row, "path"])
        np.testing.assert_allclose(matrix[row], SpectralEmbedder().embed([audio[0]])[0], rtol=1e-4, atol=1e-4)
    # Rows of one family sit closer to each other than to other families' rows: the order was kept.
    standardized = (matrix - matrix.mean(0)) / (matrix.std(0) + 1e-6)
    families = notes["family"].to_numpy()
    for family in FAMILIES:
        inside = standardized[families == family]
        outside = standardized[families != family]
        centre = inside.mean(0)
        assert np.linalg.norm(inside - centre, axis=1).max() < np.linalg.norm(outside - centre, axis=1).min()


def test_nsynth_dir_relative_to_the_data_root(data):
    moved = data / "nsynth" / "fixture"
    moved.parent.mkdir()
    nsynth_dir(data).rename(moved)
    write_concepts_json(data, "nsynth/fixture")
    # A copied data directory reads its own copy of the notes: the original is gone before the run.
    copy = data.parent / "copied"
    shutil.copytree(data, copy)
    shutil.rmtree(data)
    assert run_stage(stage5.main, stage5.build_parser(), ["--data", str(copy), "--workers", "0"]) == 0
    assert out_path(copy).is_file()


def test_outside_nsynth_dir_must_still_hold_the_same_examples(data, capsys):
    examples = nsynth_dir(data) / "examples.json"
    examples.write_text(examples.read_text().replace("{}", '{"pitch": 1}', 1))
    _one_line_error(run_in_process(data, capsys), str(examples), "not the examples.json", "rerun stage 4")
    assert not (data / "concepts" / "embeddings").exists()


def run_in_process(data, capsys, *extra):
    """Same entry point as the script (run_stage), without a new interpreter per bad-input case."""
    code = run_stage(stage5.main, stage5.build_parser(), ["--data", str(data), "--workers", "1", *extra])
    return subprocess.CompletedProcess([], code, *capsys.readouterr())


def _one_line_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    # Nothing else on stderr either (no progress-bar fragment before the error).
    assert result.stderr.strip() == errors[0], result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.mark.parametrize("how, message", [("rate", "sample rate 22050 Hz, expected 16000 Hz"),
                                          ("stereo", "2 channel(s), expected 1"),
                                          ("nan", "NaN"), ("zero", "0 samples, but its table declares 64000")])
def test_notes_that_are_not_nsynth_audio_are_refused(data, capsys, how, message):
    notes = read_notes(data)
    path = nsynth_dir(data) / notes.at[4, "path"]
    if how == "rate":
        write_wav(path, nsynth_note("brass", 60, 100, rate=22_050), 22_050)
    elif how == "stereo":
        write_wav(path, nsynth_note("brass", 60, 100, channels=2), RATE)
    elif how == "nan":
        audio = nsynth_note("brass", 60, 100)
        audio[1000:1010] = np.nan
        sf.write(path, audio, RATE, subtype="FLOAT")
    else:
        sf.write(path, np.zeros(0, np.float32), RATE, subtype="PCM_16")
    result = run_script(data) if how == "rate" else run_in_process(data, capsys)
    _one_line_error(result, str(path), message)
    assert not (data / "concepts" / "embeddings").exists()


def test_missing_or_broken_stage4_outputs(data, capsys):
    (data / "concepts" / "concepts.json").write_text("{not json")
    _one_line_error(run_script(data), "concepts.json: not valid JSON", "rerun stage 4")
    write_concepts_json(data, str(data / "nowhere"))
    _one_line_error(run_in_process(data, capsys), "nsynth_dir", "is not a directory")
    (data / "concepts" / "notes.csv").unlink()
    _one_line_error(run_in_process(data, capsys), "notes.csv: missing", "run stage 4 first")
    assert not (data / "concepts" / "embeddings").exists()
