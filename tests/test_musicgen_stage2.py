"""Stage 2 with --generator musicgen on a tiny random MusicGen saved in the hub layout, then stages 3-6 on its layer
trajectory, and stage 6 --space activations on its residual captures.

The first run goes through the script in a subprocess, offline, as a user runs it; the others call the same `main`
through data.stage.run_stage in-process.
"""
import json
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import stage_runs
from stage_runs import run_stages_3_to_6
from tiny_musicgen import save_model

from data.contract import read_generated_index
from data.directions import Direction
from data.stage import REPO_ROOT, run_stage
from diffusion import stage2_generate as stage2
from interp import stage6_activations
from interp import stage6_probe as stage6

SCRIPT = REPO_ROOT / "diffusion" / "stage2_generate.py"
PROMPTS = [
    ("p_brass1", "bright brass fanfare", "brass;bright"),
    ("p_brass2", "loud brass with drums", "brass;drum"),
    ("p_brass3", "slow brass melody", "brass"),
    ("p_keys1", "soft acoustic piano", "keyboard;acoustic"),
    ("p_keys2", "warm piano ballad", "keyboard;dark"),
    ("p_keys3", "fast piano solo", "keyboard"),
]
RUN = ["--generator", "musicgen", "--samples", "2", "--seconds", "0.2", "--seed", "3", "--no-progress"]


def write_annotated(data, prompts=PROMPTS):
    stage_runs.write_annotated(data, prompts)


def stage2_inprocess(data, model, *extra) -> int:
    return run_stage(stage2.main, stage2.build_parser(), ["--data", str(data), "--model", str(model), *RUN, *extra])


def listing(root):
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("musicgen-stage2") / "tiny-musicgen")


@pytest.fixture(scope="module")
def logit_run(tiny_model, tmp_path_factory):
    data = tmp_path_factory.mktemp("logit") / "data"
    write_annotated(data)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, str(SCRIPT), "--data", str(data), "--model", str(tiny_model), *RUN,
                             "--generator-option", "lens=logit", "--generator-option", "residuals=both"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    return data


def test_layer_trajectory_and_residual_captures_follow_the_contract(logit_run):
    index = read_generated_index(logit_run)
    assert len(index) == len(PROMPTS) * 2 * 4
    assert set(index["step"]) == {1, 2, 3, 4} and set(index["kind"]) == {"x0"} and index["sigma"].isna().all()
    generation = json.loads((logit_run / "generated" / "generation.json").read_text())
    assert generation["trajectory_axis"] == {"name": "layer", "unit": "layer", "positions": [1, 2, 3, 4]}
    assert generation["lens"] == "logit" and generation["residuals"] == "both"
    table = pd.read_csv(logit_run / "generated" / "activations" / "p_keys2.csv")
    vectors = np.load(logit_run / "generated" / "activations" / "p_keys2.npy")
    assert vectors.dtype == np.float16 and vectors.shape == (2 * 2 * 4 * 2, 64)
    assert list(table["row"]) == list(range(len(table)))
    assert set(table["branch"]) == {"cond", "uncond"} and set(table["pool"]) == {"mean", "last"}
    seeds = index[index["prompt_id"] == "p_keys2"].groupby("sample")["seed"].first()
    assert (table.groupby("sample")["seed"].first() == seeds).all()


def test_regenerate_lens_ends_at_the_same_clip_and_a_rerun_skips(logit_run, tiny_model, tmp_path, capsys):
    data = tmp_path / "data"
    write_annotated(data, PROMPTS[:2])
    assert stage2_inprocess(data, tiny_model, "--generator-option", "lens=regenerate",
                            "--capture-steps", "2,4") == 0
    for sample in (0, 1):
        name = f"audio/p_brass1/s{sample}-x0-004.wav"
        # Layer L of DecoderLens regenerate is normal generation: the same bytes as the logit lens run's.
        assert (data / "generated" / name).read_bytes() == (logit_run / "generated" / name).read_bytes()
    before = listing(data / "generated")
    # --lens is the same setting as --generator-option lens=...: the rerun finds its outputs done.
    assert stage2_inprocess(data, tiny_model, "--lens", "regenerate", "--capture-steps", "2,4") == 0
    assert "2 already done, 0 generated" in capsys.readouterr().err
    assert listing(data / "generated") == before
    # Other settings on the same outputs are refused, naming the setting.
    assert stage2_inprocess(data, tiny_model, "--generator-option", "lens=logit", "--capture-steps", "2,4") == 2
    assert "lens" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--kinds", "x0,xt"], "gives no xt"),
    (["--generator-option", "lens=tuned"], "choose logit or regenerate"),
    (["--generator-option", "lens"], "is not KEY=VALUE"),
    (["--lens", "logit", "--generator-option", "lens=regenerate"], "disagree"),
    (["--steps", "5"], "--steps does not apply to musicgen"),
    (["--capture-steps", "0"], "outside"),
    (["--generator-option", "residuals=both", "--generator-option", "guidance_scale=1"], "needs classifier-free"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tiny_model, tmp_path, capsys, extra, message):
    data = tmp_path / "data"
    write_annotated(data)
    assert stage2_inprocess(data, tiny_model, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (data / "generated").exists()


def test_stages_3_to_6_run_on_the_layer_trajectory(logit_run, tmp_path):
    """Done when: the layer trajectory feeds stages 3-6 offline; positions are the layers."""
    data = tmp_path / "data"
    shutil.copytree(logit_run, data)
    run_stages_3_to_6(data, "--random-baselines", "2", judge=True)
    emergence = pd.read_csv(data / "results" / "spectral" / "logreg" / "x0" / "emergence.csv")
    assert set(emergence["step"]) == {1, 2, 3, 4}
    assert set(emergence["trajectory_axis"]) == {"layer"}
    # The judge heard the last layer's clip of each trajectory; every layer is scored against it.
    judged = emergence[emergence["yardstick"] == "judged"]
    assert set(judged["step"]) == {1, 2, 3, 4}
    assert (judged.groupby("concept")["n_positive_clips"].nunique() == 1).all()
    assert "layer" in (data / "results" / "spectral" / "logreg" / "x0" / "report.html").read_text()


def test_activation_probes_by_layer(logit_run, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(logit_run, data)
    arguments = ["--data", str(data), "--space", "activations", "--bootstrap", "20", "--random-baselines", "3"]
    assert run_stage(stage6.main, stage6.build_parser(), arguments) == 0
    out = data / "results" / "activations" / "cond-mean" / "logreg"
    emergence = pd.read_csv(out / "emergence.csv")
    assert set(emergence["trajectory_axis"]) == {"layer"} and set(emergence["step"]) == {1, 2, 3, 4}
    brass = emergence[emergence["concept"] == "is_brass"]
    assert brass["auroc"].notna().all() and (brass["n_positive_prompts"] == 3).all()
    assert emergence[emergence["concept"] == "is_vocal"]["auroc"].isna().all()   # no vocal prompt: no probe
    # The tables have the embedding-space columns (one emergence computation, one probe_quality schema).
    steps = pd.read_csv(out / "emergence_steps.csv")
    assert {"yardstick", "status", "first_above", "final_direction"} <= set(steps.columns)
    assert set(pd.read_csv(out / "probe_quality.csv").columns) >= {"n_train_positive", "test_auroc", "note"}
    sidecar = json.loads((out / "stage6.json").read_text())
    assert sidecar["n_tests"] == int(emergence.filter(regex="_p$").notna().to_numpy().sum())
    # Directions are the one direction artifact: row b = block b, whose output is layer b + 1.
    direction = Direction.load(out / "directions" / "is_brass.npy")
    assert direction.vectors.shape == (4, 64) and direction.blocks == (0, 1, 2, 3) and direction.method == "probe"
    assert direction.provenance["branch"] == "cond" and len(direction.provenance["auroc"]) == 4
    np.testing.assert_allclose(np.linalg.norm(direction.vectors, axis=1), 1.0, rtol=1e-5)
    page = (out / "report.html").read_text()
    assert "layer" in page and "Generator <b>musicgen</b>" in page and "logit lens" in page
    assert run_stage(stage6.main, stage6.build_parser(), arguments) == 0
    assert "up to date" in capsys.readouterr().out
    assert run_stage(stage6.main, stage6.build_parser(), arguments[:-2] + ["--random-baselines", "4"]) == 2
    assert "random_baselines" in capsys.readouterr().err


@pytest.mark.parametrize("damage, extra, message", [
    ("drop_npy", [], "missing for a generated prompt"),
    ("empty_npy", [], "p_keys1.npy: empty file (0 bytes)"),
    ("wider_npy", [], "p_keys1.npy: vectors of width 65, but"),
    ("text_npy", [], "p_keys1.npy: holds <U1 values, not floats"),
    ("npz_npy", [], "p_keys1.npy: an .npz archive, not an .npy array"),
    (None, ["--branch", "sideways"], "choose --branch from cond, uncond"),
    (None, ["--pool", "last", "--branch", "uncond"], None),
    ("no_residuals", [], "captured no residuals"),
    (None, ["--probe", "svm"], "--probe does not apply to --space activations"),
])
def test_activation_space_bad_inputs_are_one_line(logit_run, tmp_path, capsys, damage, extra, message):
    data = tmp_path / "data"
    shutil.copytree(logit_run, data)
    if damage == "drop_npy":
        (data / "generated" / "activations" / "p_keys1.npy").unlink()
    elif damage == "empty_npy":
        (data / "generated" / "activations" / "p_keys1.npy").write_bytes(b"")
    elif damage == "wider_npy":   # the other prompts' captures are 64 wide
        path = data / "generated" / "activations" / "p_keys1.npy"
        vectors = np.load(path)
        np.save(path, np.concatenate([vectors, vectors[:, :1]], axis=1))
    elif damage == "text_npy":   # no pickle inside, so np.load reads it
        path = data / "generated" / "activations" / "p_keys1.npy"
        np.save(path, np.full(np.load(path).shape, "x"))
    elif damage == "npz_npy":
        path = data / "generated" / "activations" / "p_keys1.npy"
        vectors = np.load(path)
        with path.open("wb") as file:
            np.savez(file, vectors)
    elif damage == "no_residuals":
        generation = json.loads((data / "generated" / "generation.json").read_text())
        generation["residuals"] = "none"
        (data / "generated" / "generation.json").write_text(json.dumps(generation))
    arguments = ["--data", str(data), "--space", "activations", "--bootstrap", "5", "--random-baselines", "0",
                 "--no-report", *extra]
    code = run_stage(stage6.main, stage6.build_parser(), arguments)
    if message is None:   # the unconditional half at the last position is there too (residuals=both)
        assert code == 0 and (data / "results" / "activations" / "uncond-last" / "logreg" / "emergence.csv").is_file()
        return
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err
    assert not (data / "results").exists()


def test_the_readmes_activation_command_runs_as_written(logit_run, tmp_path):
    """README.md's `--space activations` command, run as a user runs it: the script in a subprocess, under the
    stage's lock. Only --data is added (the README's command works on the default data/). The activation-space
    entry point then finds the same results folder up to date: the two commands are one stage."""
    line = next(line for line in (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()
                if line.startswith(".venv/bin/python interp/stage6_probe.py --space activations"))
    command = shlex.split(line.split("#")[0])
    data = tmp_path / "data"
    shutil.copytree(logit_run, data)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, *command[1:], "--data", str(data)], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (data / "results" / "activations" / "cond-mean" / "logreg" / "stage6.json").is_file()
    assert not list(data.glob(".*.lock"))   # the lock was taken and released
    again = subprocess.run([sys.executable, "interp/stage6_activations.py", "--data", str(data)], cwd=REPO_ROOT,
                           env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "up to date" in again.stdout, again.stderr
    parse = stage6.build_parser().parse_args
    assert stage6.lock_name(parse(["--space", "activations"])) == \
        stage6_activations.lock_name(stage6_activations.build_parser().parse_args([]))
