"""Stage 3 end to end on a small generated set written to the contract (data/ARTIFACTS.md, stage 2)."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from data.audio import read_audio, resample, to_mono, write_wav
from data.contract import INDEX_COLUMNS, read_embeddings, read_generated_index, table_sha256
from data.files import sha256_file
from data.stage import REPO_ROOT, InputError, run_stage
from embeddings import stage3_embed_generated as stage3
from embeddings.musicnn import MusicnnTagger
from embeddings.spectral import SpectralEmbedder

RATE = 44_100
SCRIPT = REPO_ROOT / "embeddings" / "stage3_embed_generated.py"


def clip(prompt_number: int, sample: int, step: int, seconds: float = 2.0) -> np.ndarray:
    """Distinct per (prompt, sample, step): pitch from the prompt and sample, decay from the step."""
    t = np.arange(int(seconds * RATE)) / RATE
    frequency = 110.0 * (prompt_number + 1) + 37.0 * sample
    mono = 0.4 * np.sin(2 * np.pi * frequency * t) * np.exp(-t / (0.2 + 0.5 * step))
    return np.stack([mono, 0.7 * mono]).astype(np.float32)


def write_prompt(data, prompt_id: str, prompt_number: int, samples=2, steps=(0, 5, 9)):
    rows = []
    # Written out of contract order (descending step, xt before x0): the reader must sort.
    for sample in reversed(range(samples)):
        for kind in ("xt", "x0"):
            for step in reversed(steps):
                path = f"audio/{prompt_id}/s{sample}-{kind}-{step:03d}.wav"
                audio = clip(prompt_number, sample, step) * (0.5 if kind == "xt" else 1.0)
                write_wav(data / "generated" / path, audio, RATE)
                rows.append({"prompt_id": prompt_id, "sample": sample, "step": step, "sigma": 1.0 / (step + 1),
                             "kind": kind, "seed": 1000 + sample, "seconds_total": 2.0, "sample_rate": RATE,
                             "path": path})
    frame = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    (data / "generated" / "index").mkdir(parents=True, exist_ok=True)
    # Stage 3 embeds only clips of prompts that annotated.csv has.
    annotated = data / "prompts" / "annotated.csv"
    if not annotated.is_file():
        annotated.parent.mkdir(parents=True, exist_ok=True)
        annotated.write_text("prompt_id,prompt,labels,bpm,annotator\n")
    if f"\n{prompt_id}," not in annotated.read_text():
        with open(annotated, "a") as handle:
            handle.write(f"{prompt_id},prompt {prompt_number},bass,,offline\n")
    frame.to_csv(data / "generated" / "index" / f"{prompt_id}.csv", index=False)


AXIS = {"name": "denoising_step", "unit": "step", "positions": list(range(10))}


@pytest.fixture
def data(tmp_path):
    data = tmp_path / "data"
    (data / "generated").mkdir(parents=True)
    (data / "generated" / "generation.json").write_text(json.dumps(
        {"generator": "fixture", "sample_rate": RATE, "channels": 2, "seed": 0, "steps": 10,
         "trajectory_axis": AXIS}))
    write_prompt(data, "p_b", 1)
    write_prompt(data, "p_a", 0)
    return data


def run_script(data, *extra):
    return subprocess.run([sys.executable, str(SCRIPT), "--data", str(data), "--workers", "1", *extra],
                          capture_output=True, text=True, timeout=120)


def embeddings_path(data):
    return data / "generated" / "embeddings" / "spectral.npy"


def test_embeddings_align_with_the_sorted_index_and_rerun_skips(data):
    result = run_script(data, "--embedder", "spectral", "--batch-size", "4")
    assert result.returncode == 0, result.stderr
    index = read_generated_index(data)
    matrix, sidecar = read_embeddings(embeddings_path(data), len(index), table_sha256(index), "index_sha256",
                                      fix="rerun")
    assert sidecar["generation_sha256"] == sha256_file(data / "generated" / "generation.json")
    # Each row is the embedding of the clip its index row names.
    for row in (0, 5, len(index) - 1):
        audio, rate = read_audio(data / "generated" / index.at[row, "path"])
        expected = SpectralEmbedder().embed([resample(to_mono(audio), rate, SpectralEmbedder.sample_rate)])[0]
        np.testing.assert_allclose(matrix[row], expected, rtol=1e-4, atol=1e-4)
    assert len(np.unique(matrix.round(4), axis=0)) == len(index)
    assert "% of wall time inside embed()" in result.stdout

    again = run_script(data)
    assert again.returncode == 0 and "up to date" in again.stdout


class CountingSpectral(SpectralEmbedder):
    """The spectral embedder, counting the clips it is asked to embed."""
    clips = 0

    def embed(self, waveforms):
        CountingSpectral.clips += len(waveforms)
        return super().embed(waveforms)


def test_more_prompts_embed_only_their_clips_and_equal_a_full_recompute(data, capsys, monkeypatch):
    argv = ["--data", str(data), "--workers", "0"]
    assert run_stage(stage3.main, stage3.build_parser(), argv) == 0
    old_index = read_generated_index(data)
    old_matrix = np.load(embeddings_path(data))
    write_prompt(data, "p_0", 2, samples=1)   # sorts first: every old row moves
    monkeypatch.setattr(stage3, "embedder_from_args", lambda args: CountingSpectral())
    CountingSpectral.clips = 0
    capsys.readouterr()
    assert run_stage(stage3.main, stage3.build_parser(), argv) == 0
    assert CountingSpectral.clips == 6, "only the new prompt's clips are embedded"
    assert "embedded 6 of 30 rows (24 rows reused from the previous output" in capsys.readouterr().out
    index = read_generated_index(data)
    matrix, _ = read_embeddings(embeddings_path(data), len(index), table_sha256(index), "index_sha256", fix="rerun")
    # Every old clip kept its own vector, at its new row (an independent join on the index columns).
    moved = index.reset_index().merge(old_index.reset_index(), on=["prompt_id", "sample", "kind", "step"])
    np.testing.assert_array_equal(matrix[moved["index_x"]], old_matrix[moved["index_y"]])
    incremental = embeddings_path(data).read_bytes()
    CountingSpectral.clips = 0
    assert run_stage(stage3.main, stage3.build_parser(), [*argv, "--force"]) == 0
    assert CountingSpectral.clips == 30 and embeddings_path(data).read_bytes() == incremental
    # Stage 6 refuses the old alignment.
    with pytest.raises(InputError, match="rows"):
        read_embeddings(embeddings_path(data), len(old_index), table_sha256(old_index), "index_sha256", fix="rerun")


def test_new_generation_settings_embed_every_clip_again(data, monkeypatch):
    argv = ["--data", str(data), "--workers", "0"]
    assert run_stage(stage3.main, stage3.build_parser(), argv) == 0
    generation = data / "generated" / "generation.json"
    generation.write_text(json.dumps({**json.loads(generation.read_text()), "seed": 1}))
    monkeypatch.setattr(stage3, "embedder_from_args", lambda args: CountingSpectral())
    CountingSpectral.clips = 0
    assert run_stage(stage3.main, stage3.build_parser(), argv) == 0
    assert CountingSpectral.clips == 24, "a clip made with other settings is another clip, even at the same path"


def test_embeddings_from_before_rows_were_keyed_are_adopted_without_embedding(data, monkeypatch):
    argv = ["--data", str(data), "--workers", "0"]
    assert run_stage(stage3.main, stage3.build_parser(), argv) == 0
    sidecar_path, keys = embeddings_path(data).with_suffix(".json"), embeddings_path(data).with_suffix(".rows.csv")
    expected_keys = keys.read_bytes()
    sidecar = json.loads(sidecar_path.read_text())
    sidecar.pop("row_keys_sha256")
    sidecar_path.write_text(json.dumps(sidecar))
    keys.unlink()
    monkeypatch.setattr(stage3, "embedder_from_args", lambda args: CountingSpectral())
    CountingSpectral.clips = 0
    assert run_stage(stage3.main, stage3.build_parser(), argv) == 0
    assert CountingSpectral.clips == 0 and keys.read_bytes() == expected_keys
    assert "row_keys_sha256" in json.loads(sidecar_path.read_text())


def run_in_process(data, capsys, *extra):
    """Same entry point as the script (run_stage), without a new interpreter per bad-input case."""
    code = run_stage(stage3.main, stage3.build_parser(), ["--data", str(data), "--workers", "1", *extra])
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


def _break_first_clip(data, how):
    index = read_generated_index(data)
    path = data / "generated" / index.at[0, "path"]
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:5000])
    elif how == "mono":
        write_wav(path, clip(0, 0, 0)[0], RATE)
    elif how == "rate":
        write_wav(path, resample(clip(0, 0, 0), RATE, 48_000), 48_000)
    elif how == "silent":
        write_wav(path, np.zeros((2, 2 * RATE), np.float32), RATE)  # full length (2 s), silent
    elif how == "missing":
        path.unlink()
    return path


@pytest.mark.parametrize("how, message", [("truncated", "truncated audio"), ("mono", "1 channel(s), expected 2"),
                                          ("rate", "sample rate 48000 Hz, expected 44100"), ("silent", "silent"),
                                          ("missing", "audio file is missing")])
def test_bad_clip_stops_with_one_line_naming_it(data, capsys, how, message):
    path = _break_first_clip(data, how)
    # One case through the script itself: the error raised in a loader thread must still exit 2 cleanly.
    result = run_script(data) if how == "truncated" else run_in_process(data, capsys)
    _one_line_error(result, str(path), message)
    assert not (data / "generated" / "embeddings").exists()


def test_missing_inputs_and_wrong_options(data, tmp_path, capsys):
    (data / "generated" / "generation.json").unlink()
    _one_line_error(run_script(data), "generation.json: missing", "run stage 2")
    _one_line_error(run_in_process(tmp_path / "empty", capsys), "generation.json: missing")

    empty = tmp_path / "no_index"
    (empty / "generated").mkdir(parents=True)
    (empty / "generated" / "generation.json").write_text(json.dumps({"trajectory_axis": AXIS}))
    _one_line_error(run_in_process(empty, capsys), "index: no index parts", "run stage 2 first")

    (data / "generated" / "generation.json").write_text(json.dumps({"channels": 2, "trajectory_axis": AXIS}))
    _one_line_error(run_in_process(data, capsys, "--model", "some/model"),
                    "--model is not an option of the spectral embedder")
    assert not (data / "generated" / "embeddings").exists()


def test_other_embedder_configuration_needs_force(data):
    argv = ["--data", str(data), "--workers", "0"]
    assert run_stage(stage3.main, stage3.build_parser(), argv) == 0
    sidecar_path = embeddings_path(data).with_suffix(".json")
    sidecar = json.loads(sidecar_path.read_text())
    sidecar["checkpoint_sha256"] = "from-an-older-librosa"
    sidecar_path.write_text(json.dumps(sidecar))
    before = embeddings_path(data).read_bytes()
    assert run_stage(stage3.main, stage3.build_parser(), argv) == 2
    assert embeddings_path(data).read_bytes() == before
    assert run_stage(stage3.main, stage3.build_parser(), [*argv, "--force"]) == 0
    current = SpectralEmbedder().provenance()["checkpoint_sha256"]
    assert json.loads(sidecar_path.read_text())["checkpoint_sha256"] == current


def test_clap_options_reach_the_embedder_and_rows_align(tmp_path, capsys):
    """The runner with the other registered embedder: a tiny CLAP saved in the hub layout, loaded by path."""
    from tiny_clap import save_tiny_clap

    from embeddings.clap import ClapEmbedder

    model_dir = save_tiny_clap(tmp_path / "tiny-clap", fused=False)
    data = tmp_path / "data"
    (data / "generated").mkdir(parents=True)
    (data / "generated" / "generation.json").write_text(json.dumps({"channels": 2, "trajectory_axis": AXIS}))
    write_prompt(data, "p_a", 0, samples=1, steps=(0, 9))
    argv = ["--embedder", "clap", "--model", str(model_dir), "--device", "cpu", "--dtype", "fp32"]
    result = run_in_process(data, capsys, *argv)
    assert result.returncode == 0, result.stderr
    index = read_generated_index(data)
    clap = ClapEmbedder(str(model_dir))
    npy = data / "generated" / "embeddings" / f"{clap.name}.npy"
    matrix, sidecar = read_embeddings(npy, len(index), table_sha256(index), "index_sha256", fix="rerun")
    assert sidecar["embedder"] == "clap" and sidecar["checkpoint_sha256"] == clap.checkpoint_sha256
    clips = [resample(to_mono(read_audio(data / "generated" / path)[0]), RATE, clap.sample_rate)
             for path in index["path"]]
    np.testing.assert_allclose(matrix, clap.embed(clips), rtol=1e-4, atol=1e-5)

    # The embedder's own refusal (half precision on CPU) comes out as the stage's one-line error.
    _one_line_error(run_in_process(data, capsys, *argv[:-1], "fp16", "--force"), "--dtype fp16 runs only on a CUDA")


def test_musicnn_tags_from_the_script_align_with_the_index(data):
    """The tagger through the stage script (run from embeddings/, where `musicnn` on sys.path is the project's
    module, not the wheel): one taggram row per index row, the tags named in the sidecar."""
    result = run_script(data, "--embedder", "musicnn-tags", "--model", "MTT_musicnn")
    assert result.returncode == 0, result.stderr
    index = read_generated_index(data)
    tagger = MusicnnTagger()
    npy = data / "generated" / "embeddings" / "musicnn-tags-MTT_musicnn.npy"
    matrix, sidecar = read_embeddings(npy, len(index), table_sha256(index), "index_sha256", fix="rerun")
    assert sidecar["tags"] == list(tagger.tags) and sidecar["layer"] == "taggram" and matrix.shape == (24, 50)
    clips = [resample(to_mono(read_audio(data / "generated" / path)[0]), RATE, tagger.sample_rate)
             for path in index["path"]]
    assert np.array_equal(matrix, tagger.embed(clips))


def test_a_slurm_array_shares_the_work_and_the_last_task_writes_the_matrix(data, tmp_path, monkeypatch, capsys):
    whole = tmp_path / "whole"
    shutil.copytree(data, whole)
    argv = ["--workers", "0", "--chunk-rows", "5"]
    assert run_stage(stage3.main, stage3.build_parser(), ["--data", str(whole), *argv]) == 0
    # An array --array=1-2: task ids start at 1, so the shard is the task's position in the array.
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    assert run_stage(stage3.main, stage3.build_parser(), ["--data", str(data), *argv]) == 0
    assert "chunks of other shards still missing" in capsys.readouterr().out
    assert not embeddings_path(data).exists()
    chunks = sorted(path.name for path in embeddings_path(data).with_name("spectral.chunks").glob("0*.npy"))
    assert chunks == ["00001.npy", "00003.npy"]  # 24 rows in chunks of 5: shard 1/2 owns chunks 1 and 3
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    assert run_stage(stage3.main, stage3.build_parser(), ["--data", str(data), *argv]) == 0
    assert embeddings_path(data).read_bytes() == embeddings_path(whole).read_bytes()
    assert not embeddings_path(data).with_name("spectral.chunks").exists()
