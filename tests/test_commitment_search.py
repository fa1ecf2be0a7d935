"""The commitment search on the ideal model: the truth search against a brute-force sweep of every start step, and
the command end to end (its tables, the probe refitted exactly as stage 6 fits it, resume after a kill, provenance,
the study's own files untouched)."""
import importlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from conftest import REPO_ROOT
from stage_runs import run_stages_3_to_6
from test_ideal import synthetic_bank
from test_planted import TOY, planted_study
from test_stage2 import PROMPTS, snapshot

from data.directions import Direction
from data.files import read_json
from data.stage import run_stage
from diffusion import GENERATORS
from diffusion.base import Conditioning
from diffusion.commitment import Run, final_content
from diffusion.ideal import IdealGenerator
from diffusion.stage2_generate import build_parser as stage2_parser
from diffusion.stage2_generate import main as stage2_main
from diffusion.trajectory import TrajectorySettings, prompt_seed
from interp import commitment_report, commitment_search, report
from interp.commitment_runs import SearchOptions, SearchRuns, SteeringSetting, search_concept
from interp.commitment_statistics import Reading, Resamples, random_directions_of, step_effect
from interp.records import load_generated

STEPS = 20


def test_the_truth_search_finds_what_a_sweep_of_every_start_step_finds(tmp_path):
    """Bisection through the runners (stage 2's intervened runs, realised content read back from disk) against
    every start step sampled directly (diffusion/commitment.py's final content): the same effects at the steps
    the search evaluated, and the same commitment step."""
    geometry = tmp_path / "geometry.json"
    geometry.write_text(json.dumps(TOY))
    generator = IdealGenerator(preset="planted", steps=STEPS, bank=synthetic_bank(), options={"geometry": str(geometry)})
    prompts = pd.DataFrame({"prompt_id": [f"p{i}" for i in range(4)], "prompt": ["anything"] * 4, "labels": [[]] * 4})
    settings = TrajectorySettings((STEPS - 1,), ("x0",), 4, generator.default_seconds, 0, 4, 8)
    runs = SearchRuns(tmp_path / "commitment", generator, prompts, settings, "annotated", None, {}, progress=False)
    setting = SteeringSetting("is_keyboard", 8.0, "prior")
    options = SearchOptions(samples=4, random_per_prompt=2, bootstrap=200, alpha=0.05, seed=0, progress=False)
    ids = list(prompts["prompt_id"])
    result = search_concept(runs, setting, ids, None, runs.reference(), options)
    assert result.readers == ("truth",)
    assert len(result.asked["truth"]) <= 1 + math.ceil(math.log2(STEPS))

    def final(prompt_id, steering):
        return final_content(generator, Run(Conditioning("anything", ()), prompt_seed(0, prompt_id), 4),
                             "is_keyboard", steering).astype(float)

    resamples = Resamples.draw(4, 200, 0)
    prompt = np.repeat(np.arange(4), 4)
    reference = {p: final(p, None) for p in ids}
    sweep = {}
    for step in range(STEPS):
        concept = np.concatenate([final(p, setting.steering("concept", step)) - reference[p] for p in ids])
        random = np.concatenate([np.stack([final(p, setting.steering("random", step, seed)) - reference[p]
                                           for seed in random_directions_of(number, 2)], axis=1)
                                 for number, p in enumerate(ids)])
        sweep[step] = step_effect(Reading(concept, random), prompt, 4, resamples, 8.0, 0.95)
    beyond = [step for step in range(STEPS) if sweep[step].beyond]
    # The premise of a bisection holds on this model: beyond up to some step, then never again.
    assert beyond == list(range(len(beyond))) and 0 < len(beyond) < STEPS
    assert result.commitment["truth"] == beyond[-1]
    for step, effect in result.effects["truth"].items():
        assert (effect.effect, effect.low, effect.high) == (sweep[step].effect, sweep[step].low, sweep[step].high)
    assert result.violations["truth"] == []


# ------------------------------------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Stages 1-6 on the planted preset of a small synthetic bank (its late group: keyboard or drum)."""
    data, bank_dir, generator = planted_study(tmp_path_factory.mktemp("commitment"), PROMPTS, 2,
                                              "--steps", str(STEPS))
    run_stages_3_to_6(data)
    argv = ["--data", str(data), "--embedder", "spectral", "--workers", "0", "--generator-model", str(bank_dir),
            "--steps", str(STEPS), *generator, "--concept", "is_keyboard", "--prompts", "4", "--samples", "4",
            "--random-directions-per-prompt", "3", "--bootstrap", "100", "--no-progress"]
    return data, argv


def search(argv, *extra):
    return run_stage(commitment_search.main, commitment_search.build_parser(), [*argv, *extra],
                     lock=commitment_search.lock_name)


def outputs(folder):
    return {name: (folder / name).read_bytes() for name in commitment_search.OUTPUT_FILES}


def test_the_search_writes_both_methods_and_leaves_the_study_alone(study, capsys):
    data, argv = study
    before = {part: snapshot(data) for part in ("generated",)}
    study_files = {path: path.read_bytes() for path in (data / "results").rglob("*") if path.is_file()}
    assert search(argv) == 0
    folder = commitment_search.results_folder(data, "spectral", "logreg", "x0")
    table = pd.read_csv(folder / "commitment_search.csv")
    assert list(table.columns) == commitment_report.SEARCH_COLUMNS
    assert table["method"].tolist() == ["probe", "truth"] and (table["concept"] == "is_keyboard").all()
    assert (table[["n_prompts", "n_samples", "n_random_directions"]].to_numpy() == [4, 4, 12]).all()
    truth = table.set_index("method").loc["truth"]
    assert 0 <= truth["commitment_step"] < STEPS
    # With 16 trajectories some resamples find no step beyond (the note says how many): no lower bound then.
    assert pd.isna(truth["commitment_low"]) or truth["commitment_low"] <= truth["commitment_step"]
    assert truth["commitment_step"] <= truth["commitment_high"]
    curve = pd.read_csv(folder / "commitment_curve.csv")
    assert list(curve.columns) == commitment_report.CURVE_COLUMNS
    steps = [int(step) for step in truth["steps_evaluated"].split(";")]
    for method in ("probe", "truth"):
        assert curve.loc[curve["method"] == method, "from_step"].tolist() == steps
    assert "Commitment step, searched to one sampler step" in (folder / "section.html").read_text()
    # The study's clips, index and analysis are as they were; the search's runs live in its own folder.
    assert {part: snapshot(data) for part in ("generated",)} == before
    assert all(path.read_bytes() == content for path, content in study_files.items())
    assert (folder / "runs" / "interventions").is_dir()
    # Stage 6's report includes the search's section.
    results = folder.parent
    page = report.write_report(results, data, read_json(results / "stage6.json"), {}).read_text()
    assert "id='commitment-search'" in page and "is_keyboard" in page
    assert "up to date" not in capsys.readouterr().out
    assert search(argv) == 0 and "up to date" in capsys.readouterr().out


def test_the_probe_is_the_one_stage_6_fitted(study):
    data, _ = study
    clips = load_generated(data, "spectral", "x0")
    probes = commitment_search.fit_probes(data, "spectral", "logreg", 0, ["is_keyboard", "is_brass"], clips)
    stored = pd.read_csv(data / "results" / "spectral" / "logreg" / "x0" / "probabilities.csv")
    for concept, (model, outputs_of) in probes.items():
        assert np.allclose(outputs_of(model, clips.embeddings)[0], stored[concept].to_numpy(float), atol=1e-12)


def test_a_killed_search_resumes_byte_identical_and_changed_settings_are_refused(study, tmp_path, capsys):
    """SIGKILL mid-search (its runs half made), rerun: no temp file is left and the tables, figure and section are
    the bytes of an uninterrupted search."""
    data, argv = study
    assert search(argv) == 0
    finished = outputs(commitment_search.results_folder(data, "spectral", "logreg", "x0"))
    copy = shutil.copytree(data, tmp_path / "data")
    folder = commitment_search.results_folder(copy, "spectral", "logreg", "x0")
    shutil.rmtree(folder)
    mine = ["--data", str(copy), *argv[2:]]
    environ = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "interp/commitment_search.py", *mine], cwd=REPO_ROOT, env=environ,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = folder / "runs" / "interventions"
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline and len(list(runs.glob("*/index/*.csv"))) < 30:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert not (folder / commitment_search.SIDECAR).exists()
    assert search(mine) == 0
    assert outputs(folder) == finished and not list(copy.rglob("*.tmp"))
    capsys.readouterr()
    assert search(argv[:-1], "--bootstrap", "50", "--no-progress") == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "bootstrap" in error and len(error.splitlines()) == 1


def test_block_steering_with_a_direction_file_goes_through_the_same_search(study, monkeypatch, tmp_path):
    """A backend that steers its blocks (tests/toy_backend.py, as Stable Audio's DiT blocks): the concept's
    direction file and random directions of its norms, found by the same bisection; no truth, so the probe alone."""
    toy = importlib.import_module("tests.toy_backend")
    monkeypatch.setitem(GENERATORS, "toy", "tests.toy_backend:ToyGenerator")
    source, _ = study
    data = tmp_path / "data"
    for part in ("prompts", "concepts"):
        shutil.copytree(source / part, data / part)
    assert run_stage(stage2_main, stage2_parser(), ["--data", str(data), "--generator", "toy", "--steps", "8",
                                                    "--samples", "1", "--no-progress"]) == 0
    vectors = np.random.default_rng(0).standard_normal((toy.BLOCKS, toy.DIM))
    direction = Direction(vectors, range(toy.BLOCKS), "is_keyboard", "probe").save(tmp_path / "is_keyboard")
    argv = ["--data", str(data), "--embedder", "spectral", "--workers", "0", "--generator", "toy", "--steps", "8",
            "--concept", "is_keyboard", "--where", "1", "--direction", str(direction), "--strength", "2",
            "--prompts", "5", "--samples", "2", "--random-directions-per-prompt", "2", "--bootstrap", "50",
            "--no-progress"]
    assert search(argv) == 0
    folder = commitment_search.results_folder(data, "spectral", "logreg", "x0")
    table = pd.read_csv(folder / "commitment_search.csv")
    assert table["method"].tolist() == ["probe"] and "blocks 1" in table.loc[0, "note"]
    assert "sampler step clock" in table.loc[0, "note"]
    runs = sorted(path.name for path in (folder / "runs" / "interventions").iterdir())
    assert "is_keyboard_is_keyboard_B1_s2_k0" in runs and "is_keyboard_random9_B1_s2_k0" in runs
