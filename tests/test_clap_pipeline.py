"""`--embedder clap --model <tiny dir>` through stages 3 and 5 (as subprocesses, as users run them) and 6, offline.

Stage 2's outputs are written here to the contract (a real generator run renders a soundfont bank first,
which is a minute of work unrelated to CLAP); the NSynth notes are rendered and selected by the real
soundfont renderer and stage 4.
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from stage_runs import stamp_parts
from tiny_clap import save_tiny_clap

from data.audio import read_audio, resample, to_mono, write_wav
from data.contract import INDEX_COLUMNS, read_embeddings, read_generated_index, read_notes, table_sha256
from data.files import read_json, write_json
from data.hub import checkpoint_sha256, loaded_files
from data.nsynth import render_soundfont
from data.stage import REPO_ROOT, run_stage
from embeddings import embedding_stem
from embeddings import stage3_embed_generated as stage3
from embeddings.clap import ClapEmbedder
from interp import stage4_concept_sets as stage4
from interp import stage5_embed_nsynth as stage5
from interp import stage6_probe

GENERATED_RATE = 44_100
PROMPTS = {"p_brass": ("a brass fanfare", "brass;bright"), "p_keys": ("a soft piano ballad", "keyboard;acoustic"),
           "p_flute": ("a flute over strings", "flute;string")}
STEPS = (0, 1, 2)


def run(script: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, str(REPO_ROOT / script), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO_ROOT)


def in_process(stage, *args) -> int:
    """Run a stage's main in this process (no second torch import): returns its exit code."""
    return run_stage(stage.main, stage.build_parser(), [str(arg) for arg in args])


def write_generated(data) -> None:
    """Three prompts, one sample, three steps of x0 clips: 3 s stereo, brighter at later steps."""
    annotated = pd.DataFrame([{"prompt_id": pid, "prompt": text, "labels": labels, "bpm": "", "annotator": "offline"}
                              for pid, (text, labels) in PROMPTS.items()])
    (data / "prompts").mkdir(parents=True)
    annotated[["prompt_id", "prompt"]].assign(origin="embedded").to_csv(data / "prompts" / "prompts.csv", index=False)
    annotated.to_csv(data / "prompts" / "annotated.csv", index=False)
    write_json(data / "generated" / "generation.json",
               {"generator": "fixture", "sample_rate": GENERATED_RATE, "channels": 2, "steps": len(STEPS),
                "capture_steps": list(STEPS), "kinds": ["x0"],
                "trajectory_axis": {"name": "denoising_step", "unit": "step", "positions": list(STEPS)}})
    t = np.arange(3 * GENERATED_RATE) / GENERATED_RATE
    for number, prompt_id in enumerate(PROMPTS):
        rows = []
        for step in STEPS:
            partials = 1 + 3 * step
            mono = sum(np.sin(2 * np.pi * k * 110 * (number + 2) * t) / k for k in range(1, partials + 1))
            path = f"audio/{prompt_id}/s0-x0-{step:03d}.wav"
            write_wav(data / "generated" / path, 0.2 * np.stack([mono, 0.8 * mono]), GENERATED_RATE)
            rows.append({"prompt_id": prompt_id, "sample": 0, "step": step, "sigma": 1.0 / (step + 1), "kind": "x0",
                         "seed": number, "seconds_total": 3.0, "sample_rate": GENERATED_RATE, "path": path})
        (data / "generated" / "index").mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows, columns=list(INDEX_COLUMNS)).to_csv(data / "generated" / "index" / f"{prompt_id}.csv",
                                                                index=False)
    stamp_parts(data / "generated")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("clap_pipeline")
    with pytest.MonkeyPatch.context() as patch:
        # The checkpoint-digest cache lives under XDG_CACHE_HOME (inherited by the subprocesses): not the user's.
        patch.setenv("XDG_CACHE_HOME", str(root / "cache"))
        checkpoint = save_tiny_clap(root / "tiny-clap")
        data = root / "data"
        write_generated(data)
        # Two instruments in each of four families: enough for stage 4's instrument-disjoint train/test split.
        assert in_process(render_soundfont, "--data", data, "--programs", "0,4,56,57,24,27,73,75",
                          "--pitch-step", "24", "--velocities", "127") == 0
        assert in_process(stage4, "--data", data, "--nsynth-dir", data / "nsynth" / "nsynth-soundfont") == 0
        clap = ("--embedder", "clap", "--model", checkpoint, "--device", "cpu", "--dtype", "fp32", "--batch-size", "4")
        stage3_run = run("embeddings/stage3_embed_generated.py", "--data", data, *clap)
        assert stage3_run.returncode == 0, stage3_run.stderr
        stage5_run = run("interp/stage5_embed_nsynth.py", "--data", data, *clap)
        assert stage5_run.returncode == 0, stage5_run.stderr
        yield data, checkpoint, ClapEmbedder(str(checkpoint))


def test_stage3_rows_are_the_clips_of_the_sorted_index(pipeline):
    data, checkpoint, embedder = pipeline
    index = read_generated_index(data)
    npy = data / "generated" / "embeddings" / f"{embedder.name}.npy"
    matrix, sidecar = read_embeddings(npy, len(index), table_sha256(index), "index_sha256", fix="rerun stage 3")
    assert sidecar["embedder"] == "clap" and sidecar["model"] == str(checkpoint.resolve())
    assert sidecar["checkpoint_sha256"] == checkpoint_sha256(checkpoint, loaded_files(checkpoint))
    assert sidecar["window_policy"] == embedder.window_policy and sidecar["dim"] == embedder.dim
    for row in range(len(index)):
        audio, rate = read_audio(data / "generated" / index.at[row, "path"])
        expected = embedder.embed([resample(to_mono(audio), rate, embedder.sample_rate)])[0]
        np.testing.assert_allclose(matrix[row], expected, atol=1e-5)


def test_stage5_rows_are_the_notes_of_notes_csv(pipeline):
    data, _, embedder = pipeline
    notes = read_notes(data)
    npy = data / "concepts" / "embeddings" / f"{embedder.name}.npy"
    matrix, sidecar = read_embeddings(npy, len(notes), table_sha256(notes), "notes_sha256", fix="rerun stage 5")
    generated = read_json(data / "generated" / "embeddings" / f"{embedder.name}.json")
    for key in ("embedder", "model", "checkpoint_sha256", "window_policy", "dim"):
        assert sidecar[key] == generated[key]
    nsynth = data / "nsynth" / "nsynth-soundfont"
    for row in (0, len(notes) // 2, len(notes) - 1):
        audio, rate = read_audio(nsynth / notes.at[row, "path"])
        expected = embedder.embed([resample(to_mono(audio), rate, embedder.sample_rate)])[0]
        np.testing.assert_allclose(matrix[row], expected, atol=1e-5)


@pytest.mark.parametrize("probe", ["logreg", "text"])
def test_stage6_runs_on_clap_embeddings(pipeline, probe, capsys):
    """NSynth-trained probes, and zero-shot text probes from the tokenizer saved beside the checkpoint."""
    data, checkpoint, embedder = pipeline
    code = in_process(stage6_probe, "--data", data, "--embedder", "clap", "--model", checkpoint, "--probe", probe,
                      "--bootstrap", "20", "--random-baselines", "2", "--no-report")
    assert code == 0, capsys.readouterr().err
    out = stage6_probe.results_dir(data, embedder.name, probe, "x0")
    tables = {name: pd.read_csv(out / name) for name in stage6_probe.OUTPUT_FILES if name.endswith(".csv")}
    # The known-answer and judge tables hold rows only where the generator planted timing or a judge ran: this run
    # (the ideal model's default preset, no judge) has their headers alone.
    truthless = {"known_answers.csv", "known_order.csv", "known_commitment.csv", "judge_validation.csv"}
    assert all(len(table) for name, table in tables.items() if name not in truthless)
    assert all(len(tables[name]) == 0 for name in truthless)


def test_stage6_refuses_nsynth_embeddings_from_another_checkpoint(pipeline, tmp_path, capsys):
    """The same directory re-saved with other weights (a re-download, a fine-tune in place)."""
    data, checkpoint, embedder = pipeline
    original = shutil.copytree(checkpoint, tmp_path / "original")
    save_tiny_clap(checkpoint, seed=1)
    try:
        assert in_process(stage5, "--data", data, "--embedder", "clap", "--model", checkpoint, "--force") == 0
        capsys.readouterr()
        assert in_process(stage6_probe, "--data", data, "--embedder", "clap", "--model", checkpoint, "--bootstrap", "5",
                          "--random-baselines", "0", "--no-report", "--force") == 2
        error = capsys.readouterr().err.strip()
        assert "checkpoint_sha256" in error and len(error.splitlines()) == 1
    finally:
        shutil.rmtree(checkpoint)
        shutil.copytree(original, checkpoint)
        assert in_process(stage5, "--data", data, "--embedder", "clap", "--model", checkpoint, "--force") == 0


def test_a_checkpoint_that_is_not_clap_stops_stage3_with_one_line(pipeline, tmp_path, capsys):
    data, _, embedder = pipeline
    npy = data / "generated" / "embeddings" / f"{embedder.name}.npy"
    before = npy.read_bytes()
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    assert in_process(stage3, "--data", data, "--embedder", "clap", "--model", tmp_path / "bert", "--force") == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and len(error.splitlines()) == 1 and "not a CLAP checkpoint" in error
    assert npy.read_bytes() == before  # nothing half-written, nothing removed


def test_make_stage3_stage5_stage6_with_embedder_and_model(pipeline, tmp_path):
    """`--embedder clap --model X` names the same files in stages 3, 5 and 6, through the Makefile's variables.
    The data directory is a copy (stage 4's nsynth_dir is relative to it), run without PYTHONPATH."""
    data, checkpoint, embedder = pipeline
    copy = tmp_path / "data"
    shutil.copytree(data, copy, ignore=shutil.ignore_patterns("embeddings", "results"))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO_ROOT), "stage3", "stage5", "stage6", "EMBEDDER=clap",
         f"MODEL={checkpoint}", f"DATA={copy}", f"PY={sys.executable}",
         "STAGE6_ARGS=--bootstrap 20 --random-baselines 2 --no-report"],
        capture_output=True, text=True, timeout=600, env={**env, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    stem = embedding_stem("clap", str(checkpoint))
    assert stem == embedder.name
    for folder in ("generated", "concepts"):
        made = copy / folder / "embeddings" / f"{stem}.npy"
        assert made.read_bytes() == (data / folder / "embeddings" / f"{stem}.npy").read_bytes()
    assert (stage6_probe.results_dir(copy, stem, "logreg", "x0") / "emergence.csv").is_file()


def test_window_first_is_recorded_and_stage6_refuses_mixing_windows(pipeline, tmp_path, capsys):
    """--window first (the reference study's first 10 s) goes into the sidecar; stage 3 refuses to replace
    centre-window embeddings without --force, and stage 6 refuses generated and NSynth sides of two windows."""
    source, checkpoint, embedder = pipeline
    data = shutil.copytree(source, tmp_path / "data")
    clap = ("--embedder", "clap", "--model", checkpoint, "--batch-size", "4", "--window", "first")
    assert in_process(stage3, "--data", data, *clap) == 2
    error = capsys.readouterr().err
    assert "window_policy" in error and "--force" in error
    assert in_process(stage3, "--data", data, *clap, "--force") == 0
    sidecar = read_json(data / "generated" / "embeddings" / f"{embedder.name}.json")
    assert sidecar["long_clips"] == "first" and "first 10 s" in sidecar["window_policy"]
    capsys.readouterr()
    assert in_process(stage6_probe, "--data", data, "--embedder", "clap", "--model", checkpoint, "--bootstrap", "5",
                      "--random-baselines", "0", "--no-report") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "window_policy" in error
    assert in_process(stage3, "--data", data, "--embedder", "spectral", "--window", "first") == 2
    assert "--window is not an option of the spectral embedder" in capsys.readouterr().err
