"""The six stages end to end on the embedded default, as `make demo` runs them, at a small size."""
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from conftest import REPO_ROOT

from data.concepts import CONCEPT_NAMES

CAPTURE_STEPS = [3, 6, 9]


def stage_commands(data):
    return [
        ["data/prompts/stage1_prompts.py", "--data", data],
        ["diffusion/stage2_generate.py", "--data", data, "--generator", "ideal", "--limit-prompts", "24",
         "--samples", "1", "--steps", "10", "--capture-steps", ",".join(map(str, CAPTURE_STEPS)), "--no-progress"],
        ["embeddings/stage3_embed_generated.py", "--data", data, "--embedder", "spectral"],
        ["data/nsynth/render_soundfont.py", "--data", data, "--pitch-step", "12", "--velocities", "100"],
        ["interp/stage4_concept_sets.py", "--data", data, "--nsynth-dir", f"{data}/nsynth/nsynth-soundfont"],
        ["interp/stage5_embed_nsynth.py", "--data", data, "--embedder", "spectral"],
        ["interp/stage6_probe.py", "--data", data, "--embedder", "spectral", "--bootstrap", "50",
         "--random-baselines", "4"],
    ]


def run_all(data):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for command in stage_commands(str(data)):
        result = subprocess.run([sys.executable, *command], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"{command[0]} failed:\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    data = tmp_path_factory.mktemp("demo")
    run_all(data)
    return data


def test_results_cover_every_concept_at_every_captured_step(demo_data):
    results = demo_data / "results" / "spectral" / "logreg" / "x0"
    emergence = pd.read_csv(results / "emergence.csv")
    # The ideal model records its realised content: a second yardstick beside the prompts.
    assert sorted(emergence.yardstick.unique()) == ["content", "prompt"]
    emergence = emergence[emergence.yardstick == "prompt"]
    assert set(emergence.concept) == set(CONCEPT_NAMES)
    assert sorted(emergence.step.unique()) == CAPTURE_STEPS
    assert len(emergence) == len(CONCEPT_NAMES) * len(CAPTURE_STEPS)
    quality = pd.read_csv(results / "probe_quality.csv")
    assert set(quality.concept) == set(CONCEPT_NAMES)
    # Families with positives and negatives among the prompts get real numbers, not NaN.
    families = emergence[emergence.concept.isin(["is_bass", "is_guitar", "is_keyboard"])]
    assert families.auroc.notna().all() and families.tpr.between(0, 1).all()
    plots = {path.name for path in (results / "plots").glob("*.png")}
    assert {f"concept_{name}.png" for name in CONCEPT_NAMES} <= plots
    assert {"heatmap_auroc.png", "family_rates.png", "trajectories_pca.png", "drift.png"} <= plots
    assert (results / "report.html").stat().st_size > 10_000


def test_a_second_run_skips_everything(demo_data):
    before = {path: path.stat().st_mtime_ns for path in demo_data.rglob("*") if path.is_file()}
    run_all(demo_data)
    after = {path: path.stat().st_mtime_ns for path in demo_data.rglob("*") if path.is_file()}
    assert after == before, sorted(str(path) for path in after if before.get(path) != after[path])[:5]


def test_a_copied_data_directory_is_up_to_date_and_never_reads_the_old_tree(demo_data, tmp_path):
    copy = tmp_path / "copied"
    shutil.copytree(demo_data, copy)
    hidden = demo_data.with_name(demo_data.name + "-hidden")
    demo_data.rename(hidden)  # any read of the old tree now fails
    try:
        before = {path: path.read_bytes() for path in copy.rglob("*") if path.is_file()}
        run_all(copy)
        after = {path: path.read_bytes() for path in copy.rglob("*") if path.is_file()}
        assert after == before, sorted(str(path) for path in after if before.get(path) != after[path])[:5]
        # No artifact names the directory it was made in: every stored path is relative.
        for path in copy.rglob("*"):
            if path.suffix in (".json", ".csv", ".html"):
                assert str(demo_data) not in path.read_text(encoding="utf-8"), path
    finally:
        hidden.rename(demo_data)
