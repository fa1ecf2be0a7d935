"""The cluster recipe (examples/slurm/run_study.sh, README "Shared clusters") on a small study of 6 prompts: the
documented order with 2 shards for each of stages 2, 3 and 5 gives the artifacts of an unsharded run, byte for
byte; the racing order (stage 3 after one of two stage-2 shards, stage 6 before every stage-5 chunk exists) is
refused in one line and writes nothing.

sbatch is the one fake (tests/fake_sbatch.py, SLURM's boundary): it runs each job once its dependencies succeeded,
array tasks last-to-first, with SLURM's array variables, so the stage scripts find their shard as on a cluster.
"""
import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from data.nsynth import render_soundfont
from data.prompts import stage1_prompts as stage1
from data.stage import run_stage
from diffusion import stage2_generate as stage2
from embeddings import stage3_embed_generated as stage3
from interp import stage4_concept_sets as stage4
from interp import stage5_embed_nsynth as stage5
from interp import stage6_probe as stage6

PROMPTS = 6
GENERATE = ["--generator", "ideal", "--samples", "1", "--steps", "10", "--capture-steps", "4,9"]
EMBED = ["--workers", "0", "--chunk-rows", "8"]   # 12 clips and ~100 notes: chunks that both shards write
RENDER = ["--pitch-step", "24", "--velocities", "100", "--dyad-velocity", "0"]
STAGE6 = ["--bootstrap", "20", "--random-baselines", "2", "--no-report"]


def small_study(data: Path) -> None:
    """prompts/prompts.csv with the first 6 embedded prompts: a study of its own (not --limit-prompts)."""
    assert run_stage(stage1.main, stage1.build_parser(), ["--data", str(data), "generate"]) == 0
    path = data / "prompts" / "prompts.csv"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.unlink()
    path.write_text("".join(lines[:PROMPTS + 1]), encoding="utf-8")


def run(module, data: Path, *argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = run_stage(module.main, module.build_parser(), ["--data", str(data), *argv])
    return code, err.getvalue()


def unsharded_run(data: Path) -> None:
    small_study(data)
    nsynth = str(render_soundfont.output_dir(data))
    for module, argv in ((stage1, ["annotate"]), (stage2, [*GENERATE, "--no-progress"]),
                         (stage3, ["--embedder", "spectral", *EMBED, "--no-progress"]),
                         (render_soundfont, [*RENDER, "--no-progress"]),
                         (stage4, ["--nsynth-dir", nsynth, "--no-progress"]),
                         (stage5, ["--embedder", "spectral", *EMBED, "--no-progress"]),
                         (stage6, ["--embedder", "spectral", *STAGE6, "--no-progress"])):
        code, err = run(module, data, *argv)
        assert code == 0, f"{module.__name__}: {err[-2000:]}"


def artifacts(data: Path) -> dict[str, str]:
    """Every artifact's sha256, except what records how the work was split or timed: requested.json (the shard
    count stage 2 was asked for), the stage-6 sidecar (its run time) and the jobs' logs."""
    skip = {"generated/requested.json", "results/spectral/logreg/x0/stage6.json"}
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(data.rglob("*"))
            if path.is_file() and (name := path.relative_to(data).as_posix()) not in skip
            and not name.startswith("logs/")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("unsharded") / "data"
    unsharded_run(data)
    return data


def test_the_documented_order_with_two_shards_per_stage_equals_an_unsharded_run(reference, tmp_path):
    data, state = tmp_path / "data", tmp_path / "slurm"
    small_study(data)
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHON": sys.executable,
               "DATA": str(data), "SBATCH": f"{sys.executable} {REPO_ROOT / 'tests' / 'fake_sbatch.py'}",
               "FAKE_SLURM_STATE": str(state), "SHARDS_2": "2", "SHARDS_3": "2", "SHARDS_5": "2",
               "GPU_ARGS": "--gres=gpu:1", "STAGE1_ARGS": "annotate", "GENERATE_ARGS": " ".join(GENERATE),
               "EMBEDDER_ARGS": "--embedder spectral", "EMBED_ARGS": " ".join(EMBED),
               "RENDER_ARGS": " ".join(RENDER), "STAGE6_ARGS": " ".join(STAGE6)}
    result = subprocess.run(["bash", str(REPO_ROOT / "examples" / "slurm" / "run_study.sh")], env=environ,
                            capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = {job["name"].removeprefix("musicologist-"): job for job in json.loads((state / "jobs.json").read_text())}
    logs = {path.name: path.read_text()[-1500:] for path in (data / "logs").glob("*.out")}
    assert all(job["ok"] for job in jobs.values()), (jobs, logs)
    ids = {name: job["id"] for name, job in jobs.items()}
    # The order the README documents: each stage waits for every task of the stages it reads.
    assert {name: job["after"] for name, job in jobs.items()} == {
        "stage1": [], "stage2": [ids["stage1"]], "stage3": [ids["stage2"]], "stage4": [],
        "stage5": [ids["stage4"]], "stage6": [ids["stage3"], ids["stage5"]]}
    assert {name: job["tasks"] for name, job in jobs.items()} == {
        "stage1": None, "stage2": 2, "stage3": 2, "stage4": None, "stage5": 2, "stage6": None}
    assert "--gres=gpu:1" in jobs["stage2"]["other"] and "--gres=gpu:1" not in jobs["stage6"]["other"]
    request = json.loads((data / "generated" / "requested.json").read_text())["reference"]
    assert request["shards"] == 2 and len(request["prompts"]) == PROMPTS
    assert artifacts(data) == artifacts(reference)


def test_stage3_after_one_of_two_stage2_shards_is_refused_and_writes_nothing(tmp_path):
    data = tmp_path / "data"
    small_study(data)
    assert run(stage1, data, "annotate")[0] == 0
    assert run(stage2, data, *GENERATE, "--no-progress", "--shard", "0/2")[0] == 0
    before = {path: path.read_bytes() for path in sorted(data.rglob("*")) if path.is_file()}
    code, err = run(stage3, data, "--embedder", "spectral", *EMBED)
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    request = json.loads((data / "generated" / "requested.json").read_text())["reference"]["prompts"]
    missing = sorted(prompt for prompt, owner in request.items() if owner == 1)
    assert f"3 of {PROMPTS} requested prompts have no complete index part ({', '.join(missing)})" in lines[0]
    assert "stage-2 shard 1/2" in lines[0] and "then run stage 3" in lines[0]
    assert {path: path.read_bytes() for path in sorted(data.rglob("*")) if path.is_file()} == before


def test_stage6_before_every_stage5_chunk_is_refused_naming_the_unfinished_shard(reference, tmp_path):
    data = shutil.copytree(reference, tmp_path / "data")
    shutil.rmtree(data / "concepts" / "embeddings")
    shutil.rmtree(data / "results")
    assert run(stage5, data, "--embedder", "spectral", *EMBED, "--shard", "0/2")[0] == 0
    before = {path: path.read_bytes() for path in sorted(data.rglob("*")) if path.is_file()}
    code, err = run(stage6, data, "--embedder", "spectral", *STAGE6)
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "spectral.npy: missing — stage 5 is unfinished" in lines[0] and "owned by shard 1/2" in lines[0]
    assert {path: path.read_bytes() for path in sorted(data.rglob("*")) if path.is_file()} == before
    assert run(stage5, data, "--embedder", "spectral", *EMBED, "--shard", "1/2")[0] == 0
    npy = "concepts/embeddings/spectral.npy"
    assert (data / npy).read_bytes() == (reference / npy).read_bytes()
