"""The shared core every stage leans on: atomic files, one-line errors, contract readers, audio checks."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO_ROOT

from data import contract
from data.audio import read_audio, resample, write_wav
from data.concepts import BY_NAME, CONCEPTS, Note
from data.files import atomic_path, write_csv, write_npy
from data.stage import InputError
from data.vocabulary import VOCABULARY, format_labels, parse_labels


def test_atomic_path_leaves_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["out.txt"]


def test_labels_round_trip_and_reject_unknown():
    assert parse_labels(format_labels(["reverb", "brass", "brass"])) == ["brass", "reverb"]
    assert parse_labels("") == []
    with pytest.raises(ValueError, match="accordion"):
        parse_labels("brass;accordion")
    with pytest.raises(ValueError):
        format_labels(["electric"])
    assert len(VOCABULARY) == 11 + 1 + 10 + 3


def _annotated(tmp_path, rows):
    write_csv(contract.annotated_csv(tmp_path), pd.DataFrame(rows, columns=list(contract.ANNOTATED_COLUMNS)))


def test_read_annotated_parses_labels_and_bpm(tmp_path):
    _annotated(tmp_path, [["p1", "brass at 120 bpm", "brass;acoustic", 120, "offline"],
                          ["p2", "ambient pad", "", None, "offline"]])
    frame = contract.read_annotated(tmp_path)
    assert frame.labels.tolist() == [["brass", "acoustic"], []]
    assert frame.bpm.iloc[0] == 120 and pd.isna(frame.bpm.iloc[1])


@pytest.mark.parametrize("rows, message", [
    ([["p1", "a", "accordion", None, "offline"]], "row 2: label 'accordion' is not in the vocabulary"),
    ([["p1", "a", "", None, "offline"], ["p1", "b", "", None, "offline"]], "row 3: duplicate prompt_id 'p1'"),
    ([["p1", "  ", "", None, "offline"]], "row 2: empty prompt"),
    ([["p 1", "a", "", None, "offline"]], "row 2: prompt_id 'p 1'"),
    ([["p1", "a", "", "fast", "offline"]], "row 2: bpm 'fast'"),
])
def test_read_annotated_rejects_bad_rows(tmp_path, rows, message):
    _annotated(tmp_path, rows)
    with pytest.raises(InputError, match=message):
        contract.read_annotated(tmp_path)


def test_read_table_names_missing_file_and_column(tmp_path):
    with pytest.raises(InputError, match="annotated.csv: missing"):
        contract.read_annotated(tmp_path)
    contract.annotated_csv(tmp_path).parent.mkdir(parents=True)
    contract.annotated_csv(tmp_path).write_text("prompt_id,prompt\np1,a\n")
    with pytest.raises(InputError, match="column 'labels' is missing"):
        contract.read_annotated(tmp_path)
    contract.annotated_csv(tmp_path).write_text("")
    with pytest.raises(InputError, match="not a readable CSV"):
        contract.read_annotated(tmp_path)


def test_read_embeddings_checks_rows_dtype_and_alignment(tmp_path):
    path = tmp_path / "e.npy"
    write_npy(path, np.zeros((3, 4), np.float32))
    (tmp_path / "e.json").write_text('{"rows_sha256": "abc", "dim": 4}')
    matrix, _ = contract.read_embeddings(path, 3, "abc", "rows_sha256", "rerun")
    assert matrix.shape == (3, 4)
    with pytest.raises(InputError, match="3 rows but its table has 5"):
        contract.read_embeddings(path, 5, "abc", "rows_sha256", "rerun")
    with pytest.raises(InputError, match="different rows"):
        contract.read_embeddings(path, 3, "xyz", "rows_sha256", "rerun")
    write_npy(path, np.zeros((3, 4), np.float64))
    with pytest.raises(InputError, match="expected float32"):
        contract.read_embeddings(path, 3, "abc", "rows_sha256", "rerun")


def test_check_same_embedder_refuses_mixing():
    spectral = {"embedder": "spectral", "model": None, "checkpoint_sha256": None, "window_policy": "w", "dim": 8}
    clap = dict(spectral, embedder="clap", dim=512)
    contract.check_same_embedder(spectral, "a.json", dict(spectral), "b.json")
    with pytest.raises(InputError, match="b.json: embedder is 'clap'"):
        contract.check_same_embedder(spectral, "a.json", clap, "b.json")


def test_audio_checks(tmp_path):
    rate = 16000
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate).astype(np.float32)
    write_wav(tmp_path / "ok.wav", tone, rate)
    audio, got_rate = read_audio(tmp_path / "ok.wav", expect_rate=rate, expect_channels=1)
    assert got_rate == rate and audio.shape == (1, rate)
    np.testing.assert_allclose(audio[0], tone, atol=1e-4)
    with pytest.raises(InputError, match="sample rate 16000 Hz, expected 48000"):
        read_audio(tmp_path / "ok.wav", expect_rate=48000)
    write_wav(tmp_path / "silent.wav", np.zeros(rate, np.float32), rate)
    with pytest.raises(InputError, match="silent"):
        read_audio(tmp_path / "silent.wav")
    (tmp_path / "truncated.wav").write_bytes((tmp_path / "ok.wav").read_bytes()[:30])
    with pytest.raises(InputError, match="truncated.wav"):
        read_audio(tmp_path / "truncated.wav")
    write_wav(tmp_path / "nan.wav", tone, rate, subtype="FLOAT")
    raw = bytearray((tmp_path / "nan.wav").read_bytes())
    raw[-4:] = np.float32(np.nan).tobytes()
    (tmp_path / "nan.wav").write_bytes(bytes(raw))
    with pytest.raises(InputError, match="NaN"):
        read_audio(tmp_path / "nan.wav")
    assert resample(tone, rate, 48000).shape == (3 * rate,)


def test_concept_rules():
    assert len(CONCEPTS) == 28 and len({concept.name for concept in CONCEPTS}) == 28
    brass, reed, piano = (Note("brass", "acoustic"), Note("reed", "acoustic"), Note("keyboard", "acoustic"))
    assert BY_NAME["is_brass"].label_note(brass) == 1
    assert BY_NAME["is_brass"].label_note(reed) is None  # like notes never become negatives
    assert BY_NAME["is_brass"].label_note(piano) == 0
    assert BY_NAME["orchestral"].label_note(Note("string", "synthetic")) == 0  # one note is no orchestra
    assert BY_NAME["blown"].label_note(Note("brass", "synthetic", program=62)) is None  # synth brass: not blown
    assert BY_NAME["atmospheric"].label_note(Note("organ", "acoustic", frozenset({"reverb", "percussive"}))) is None
    assert BY_NAME["orchestral"].prompt_has({"string", "brass", "acoustic"})
    assert not BY_NAME["orchestral"].prompt_has({"string", "acoustic"})  # two orchestral families
    assert not BY_NAME["orchestral"].prompt_has({"string", "electronic"})
    assert not BY_NAME["atmospheric"].prompt_has({"reverb", "drum"})


def test_stage_error_is_one_line_exit_2(tmp_path):
    script = ("from data.stage import stage_parser, main_exit, InputError\n"
              "def main(args): raise InputError('x.csv row 3: bad — fix it')\n"
              "main_exit(main, stage_parser('t'))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 2
    assert result.stderr == "error: x.csv row 3: bad — fix it\n"


@pytest.mark.parametrize("value, kind, safe", [
    ("p_01-a", "prompt_id", True), ("p.1", "prompt_id", False), ("x" * 100, "prompt_id", True),
    ("x" * 101, "prompt_id", False), ("is_brass_concept_prior_s-0.5_k5", "intervention id", True),
    ("s1e+06", "intervention id", True), (".", "intervention id", False), ("..", "intervention id", False),
    (".hidden", "intervention id", False), ("x\n", "intervention id", False), ("a/b", "intervention id", False),
    ("", "intervention id", False), (None, "intervention id", False), (float("nan"), "prompt_id", False),
    (3, "prompt_id", False), ("component-means", "intervention id", False)])
def test_one_rule_for_names_that_become_paths(value, kind, safe):
    from data.identifiers import name_problem

    assert (name_problem(value, kind) is None) == safe


def test_path_inside_refuses_a_link_out_of_its_folder(tmp_path):
    from data.identifiers import path_inside

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "inner").mkdir(parents=True)
    outside.mkdir()
    (root / "out").symlink_to(outside)
    (root / "in").symlink_to(root / "inner")
    assert path_inside(root, "in", "intervention id", root, "fix") == root / "in"
    with pytest.raises(InputError, match="is a symbolic link to .*outside"):
        path_inside(root, "out", "intervention id", root, "fix")
    with pytest.raises(InputError, match=r"where: intervention id '\.\.' must match"):
        path_inside(root, "..", "intervention id", "where", "fix")


def test_yaml_is_read_like_json(tmp_path):
    from data.files import read_yaml

    path = tmp_path / "x.yaml"
    path.write_text("a: 1\nb: {c: 2, c: 3}\n")
    with pytest.raises(ValueError, match="'c' appears twice in one mapping"):
        read_yaml(path)
    path.write_text("a: [1, 2]\n")
    assert read_yaml(path) == {"a": [1, 2]}
    path.write_text("[" * 100_000)
    with pytest.raises(ValueError, match="nested too deeply"):
        read_yaml(path)
