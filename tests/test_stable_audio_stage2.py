"""Stage 2 with --generator stable-audio-open on a tiny random model saved in the real layout: the CLI end to end
into stages 3-6, sharding, resume, and every bad input as a one-line error with nothing written.

The full run goes through the script in a subprocess, offline; shard, resume and bad-input runs call the same
`main` through data.stage.run_stage in-process, which is what the script does minus the interpreter start.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import stage_runs
from stage_runs import run_stages_3_to_6
from tiny_stable_audio import save_model

from data.audio import read_audio
from data.contract import read_generated_index
from data.stage import REPO_ROOT, run_stage
from diffusion import stage2_generate as stage2

SCRIPT = REPO_ROOT / "diffusion" / "stage2_generate.py"
PROMPTS = [
    ("p_brass", "bright brass fanfare with drums", "brass;drum;bright"),
    ("p_keys", "soft acoustic piano ballad", "keyboard;acoustic"),
    ("p_guitar", "distorted electric guitar riff", "guitar;distortion;electronic"),
    ("p_organ", "dark church organ with long reverb", "organ;dark;reverb"),
    ("p_strings", "orchestral string quartet", "string;acoustic"),
]
# Small enough for 2 cores: 4 steps, 2 samples, two captured steps of both kinds -> 8 clips per prompt.
RUN = ["--generator", "stable-audio-open", "--steps", "4", "--capture-steps", "1,3", "--kinds", "x0,xt",
       "--samples", "2", "--seconds", "1", "--seed", "7", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("sao-stage2") / "tiny-stable-audio")


def write_annotated(data, prompts=PROMPTS):
    stage_runs.write_annotated(data, prompts)


def stage2_inprocess(data, model, *extra) -> int:
    return run_stage(stage2.main, stage2.build_parser(), ["--data", str(data), "--model", str(model), *RUN, *extra])


def listing(data):
    """Every file under data/generated with its bytes' identity (size, content)."""
    root = data / "generated"
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*"))
            if path.is_file()}


@pytest.fixture(scope="module")
def full_run(tiny_model, tmp_path_factory):
    """The CLI as a user runs it: a subprocess, offline, all prompts, no shard."""
    data = tmp_path_factory.mktemp("full") / "data"
    write_annotated(data)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for variable in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"):
        env.pop(variable, None)
    result = subprocess.run([sys.executable, str(SCRIPT), "--data", str(data), "--model", str(tiny_model), *RUN],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    return data


def test_cli_writes_the_contract(full_run, tiny_model):
    index = read_generated_index(full_run)
    assert len(index) == len(PROMPTS) * 2 * 2 * 2
    assert set(index["prompt_id"]) == {pid for pid, _, _ in PROMPTS}
    assert set(index["step"]) == {1, 3} and set(index["kind"]) == {"x0", "xt"} and set(index["sample"]) == {0, 1}
    assert (index["sample_rate"] == 8000).all() and (index["seconds_total"] == 1.0).all()
    # Sigma is the step's noise level on the reference preset's schedule (100 -> 0.01 over 4 steps).
    sigmas = index.groupby("step")["sigma"].unique()
    assert len(sigmas[1]) == 1 and len(sigmas[3]) == 1 and sigmas[3][0] == pytest.approx(0.01)
    assert sigmas[1][0] == pytest.approx(100 * (0.01 / 100) ** (1 / 3))
    # Samples of a prompt are seeded seed, seed + 1.
    seeds = index[index.prompt_id == "p_keys"].groupby("sample")["seed"].unique()
    assert seeds[1][0] == seeds[0][0] + 1
    for path in index["path"][:6]:
        audio, rate = read_audio(full_run / "generated" / path, expect_rate=8000, expect_channels=2)
        assert audio.shape == (2, 8000)
    generation = json.loads((full_run / "generated" / "generation.json").read_text())
    assert generation["generator"] == "stable-audio-open" and generation["model"] == str(tiny_model)
    assert generation["preset"] == "reference" and generation["steps"] == 4 and generation["channels"] == 2
    assert generation["settings"]["scheduler"] == "CosineDPMSolverMultistepScheduler"
    assert len(generation["checkpoint_sha256"]) == 64


def test_final_x0_clip_is_the_final_audio(full_run):
    """At the last step the clean estimate is the final latent, so its x0 and xt clips are the same audio."""
    index = read_generated_index(full_run)
    last = index[(index.step == 3) & (index.prompt_id == "p_brass") & (index["sample"] == 0)]
    x0, _ = read_audio(full_run / "generated" / last[last.kind == "x0"].path.iloc[0])
    xt, _ = read_audio(full_run / "generated" / last[last.kind == "xt"].path.iloc[0])
    np.testing.assert_array_equal(x0, xt)


@pytest.fixture(scope="module")
def sharded(tiny_model, tmp_path_factory):
    """The same prompts made by two shards into one data directory: shard 0 by --shard, shard 1 by SLURM."""
    data = tmp_path_factory.mktemp("sharded") / "data"
    write_annotated(data)
    assert stage2_inprocess(data, tiny_model, "--shard", "0/2") == 0
    first_parts = {path for path in listing(data) if path.startswith("index/") and path.endswith(".csv")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_ARRAY_TASK_ID", "1")
        patch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
        assert stage2_inprocess(data, tiny_model) == 0
    second_parts = {path for path in listing(data) if path.startswith("index/")
                    and path.endswith(".csv")} - first_parts
    return data, first_parts, second_parts


def assert_same_audio(data, reference, paths):
    for path in paths:
        ours, _ = read_audio(data / "generated" / path, allow_silent=True)
        theirs, _ = read_audio(reference / "generated" / path, allow_silent=True)
        np.testing.assert_allclose(ours, theirs, atol=2 / 32768)


def test_shards_split_the_prompts_and_their_union_is_the_full_run(full_run, sharded):
    data, first_parts, second_parts = sharded
    # No prompt belongs to two shards, every prompt to one.
    assert first_parts and second_parts and not first_parts & second_parts
    assert len(first_parts | second_parts) == len(PROMPTS)
    sharded_index, whole = read_generated_index(data), read_generated_index(full_run)
    pd.testing.assert_frame_equal(sharded_index, whole)
    assert_same_audio(data, full_run, whole["path"])


def test_rerun_skips_finished_prompts_and_an_interrupted_prompt_is_redone(full_run, sharded, tiny_model, tmp_path,
                                                                          capsys):
    data = tmp_path / "data"
    shutil.copytree(sharded[0], data)
    done = listing(data)
    capsys.readouterr()
    assert stage2_inprocess(data, tiny_model) == 0
    assert f"{len(PROMPTS)} already done, 0 generated" in capsys.readouterr().err
    # Nothing is made again; only requested.json now records this run's request (one shard, not two).
    after = listing(data)
    assert json.loads(after.pop("requested.json"))["reference"]["shards"] == 1
    assert after == {path: content for path, content in done.items() if path != "requested.json"}

    # A run killed inside p_organ: its index part not yet written, half of its clips on disk.
    (data / "generated" / "index" / "p_organ.csv").unlink()
    for wav in sorted((data / "generated" / "audio" / "p_organ").glob("*.wav"))[::2]:
        wav.unlink()
    assert stage2_inprocess(data, tiny_model) == 0
    assert f"{len(PROMPTS) - 1} already done, 1 generated" in capsys.readouterr().err
    assert set(listing(data)) == set(done)
    assert_same_audio(data, full_run, [path for path in done if path.endswith(".wav")])


@pytest.mark.parametrize("extra, message", [
    (["--preset", "turbo"], "unknown preset 'turbo' for stable-audio-open"),
    (["--capture-steps", "2,4"], "--capture-steps 4 is outside [0, 4)"),
    (["--seconds", "3"], "--seconds 3 is outside (0, 2.048]"),
    (["--shard", "2/2"], "--shard '2/2' is not a shard"),
    (["--dtype", "fp8"], "--dtype 'fp8' is not a dtype"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tiny_model, tmp_path, capsys, extra, message):
    data = tmp_path / "data"
    write_annotated(data)
    # argparse takes the last of a repeated option, so `extra` overrides RUN's value.
    assert stage2_inprocess(data, tiny_model, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (data / "generated").exists()


def test_empty_prompt_and_incomplete_model_dir(tiny_model, tmp_path, capsys):
    data = tmp_path / "data"
    write_annotated(data, PROMPTS[:1] + [("p_empty", "   ", "")])
    assert stage2_inprocess(data, tiny_model) == 2
    assert "row 3: empty prompt" in capsys.readouterr().err
    assert not (data / "generated").exists()

    write_annotated(data)
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    shutil.rmtree(broken / "projection_model")
    assert stage2_inprocess(data, broken) == 2
    err = capsys.readouterr().err.strip()
    assert "projection_model/ is missing" in err and "\n" not in err
    assert not (data / "generated").exists()


def test_stages_3_to_6_run_on_the_generated_trajectories(full_run, tmp_path):
    """Done when: the Stable Audio trajectories feed stages 3-6 offline, and the judge gives them a second
    yardstick (the generator records no realised content, so the judge is not validated on the run itself)."""

    data = full_run
    run_stages_3_to_6(data, "--random-baselines", "2", "--no-report", judge=True)
    results = data / "results" / "spectral" / "logreg" / "x0"
    emergence = pd.read_csv(results / "emergence.csv")
    assert len(emergence) > 0 and set(emergence["step"]) <= {1, 3}
    assert set(emergence["yardstick"]) == {"prompt", "judged"}
    validation = pd.read_csv(results / "judge_validation.csv")
    judgeable = validation["evidence_tags"].notna()
    assert judgeable.any() and validation.loc[judgeable, "status"].str.startswith("not validated").all()
    assert validation["auroc"].isna().all()


def test_uncached_hub_model_offline_is_the_only_line_on_stderr(tiny_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    data = tmp_path / "data"
    write_annotated(data)
    assert stage2_inprocess(data, tiny_model, "--model", "stabilityai/stable-audio-open-1.0") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: stabilityai/stable-audio-open-1.0: not in the Hugging Face cache")
    assert "\n" not in err and not (data / "generated").exists()
