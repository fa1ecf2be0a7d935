"""Stage 2 end to end on the ideal generator with a small synthetic bank: contract outputs, resume, shards,
batching, provenance, and every bad input as a one-line error that writes nothing."""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO_ROOT
from test_ideal import SYNTHETIC_RATE, synthetic_bank

from data import contract
from data.audio import read_audio
from data.files import write_csv
from data.stage import InputError, Shard, parse_shard, run_stage
from diffusion import trajectory
from diffusion.bank import save_bank
from diffusion.base import default_capture_steps
from diffusion.ideal import IdealGenerator
from diffusion.stage2_generate import build_parser, main
from diffusion.trajectory import prompt_seed

PROMPTS = [
    ("p-brass", "a brass fanfare", "brass;acoustic"),
    ("p-strings", "slow strings", "string"),
    ("p-keys", "electric piano", "keyboard;electronic"),
    ("p-drums", "a drum groove", "drum"),
    ("p-duo", "brass and strings", "brass;string"),
    ("p-any", "something calm", ""),
]
CAPTURED = 10  # default capture steps of a 50-step trajectory


@pytest.fixture(scope="module")
def bank_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bank")
    save_bank(synthetic_bank(), directory)
    return directory


def make_data(root, prompts=PROMPTS):
    rows = [(pid, prompt, labels, None, "offline") for pid, prompt, labels in prompts]
    write_csv(contract.annotated_csv(root), pd.DataFrame(rows, columns=list(contract.ANNOTATED_COLUMNS)))
    return root


def stage2(data, bank_dir, *extra):
    return run_stage(main, build_parser(), ["--data", str(data), "--model", str(bank_dir), "--no-progress", *extra])


def snapshot(data) -> dict:
    """Every file under generated/ and its bytes."""
    root = contract.generated_dir(data)
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, bank_dir):
    """An uninterrupted, unsharded run with the defaults: what every other way of running must reproduce."""
    data = make_data(tmp_path_factory.mktemp("reference"))
    assert stage2(data, bank_dir) == 0
    return data, snapshot(data)


def test_outputs_follow_the_contract(reference_run, capsys):
    data, files = reference_run
    index = contract.read_generated_index(data)
    assert len(index) == len(PROMPTS) * 2 * CAPTURED
    assert sorted(index.prompt_id.unique()) == sorted(pid for pid, _, _ in PROMPTS)
    assert sorted(index.step.unique()) == default_capture_steps(50) == [5, 10, 15, 20, 25, 30, 35, 40, 45, 49]
    assert set(index.kind) == {"x0"} and set(index.sample_rate) == {SYNTHETIC_RATE}
    for (prompt_id, sample), rows in index.groupby(["prompt_id", "sample"]):
        assert set(rows.seed) == {prompt_seed(0, prompt_id) + sample}
        assert rows.sigma.is_monotonic_decreasing and rows.sigma.iloc[0] == pytest.approx(39.07, rel=1e-3)
    for path in index.path:
        audio, rate = read_audio(contract.generated_dir(data) / path, expect_rate=SYNTHETIC_RATE, expect_channels=1)
        assert audio.shape == (1, 4000)
    assert len([name for name in files if name.endswith(".wav")]) == len(index)
    generation = json.loads(files["generation.json"])
    for key in ("generator", "model", "checkpoint_sha256", "preset", "seed", "steps", "capture_steps", "kinds",
                "samples_per_prompt", "seconds_total", "sample_rate", "channels", "trajectory_axis",
                "annotated_sha256"):
        assert key in generation, key
    assert generation["model_kind"] == "reference model, not a trained one"
    assert generation["checkpoint_sha256"] == synthetic_bank().sha256
    assert generation["trajectory_axis"] == {"name": "denoising_step", "unit": "step", "positions": list(range(50))}


def test_rerun_skips_every_done_prompt_and_touches_nothing(reference_run, bank_dir, capsys):
    data, files = reference_run
    mtimes = {path: path.stat().st_mtime_ns for path in contract.generated_dir(data).rglob("*")}
    capsys.readouterr()
    assert stage2(data, bank_dir) == 0
    err = capsys.readouterr().err
    assert "reference model, not a trained one" in err and f"{len(PROMPTS)} already done, 0 generated" in err
    assert snapshot(data) == files
    assert {path: path.stat().st_mtime_ns for path in contract.generated_dir(data).rglob("*")} == mtimes


def test_resume_after_a_kill_reproduces_the_uninterrupted_run(tmp_path, reference_run, bank_dir, monkeypatch):
    _, reference_files = reference_run
    data = make_data(tmp_path)
    calls = {"count": 0}
    real_sample = IdealGenerator.sample

    def killed_on_sixth_call(self, *args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 6:
            raise KeyboardInterrupt
        return real_sample(self, *args, **kwargs)

    # One sample per call (two per prompt): the kill lands after sample 0 of the third prompt was written.
    monkeypatch.setattr(IdealGenerator, "sample", killed_on_sixth_call)
    assert stage2(data, bank_dir, "--batch-size", "1") == 130
    generated = contract.generated_dir(data)
    done = sorted(part.stem for part in (generated / "index").glob("*.csv"))
    third = sorted(pid for pid, _, _ in PROMPTS)[2]
    assert done == sorted(pid for pid, _, _ in PROMPTS)[:2]
    assert sorted(path.name for path in (generated / "audio" / third).iterdir()) == \
        [f"s0-x0-{step:03d}.wav" for step in default_capture_steps(50)]
    assert not list(generated.rglob("*.tmp"))

    monkeypatch.setattr(IdealGenerator, "sample", real_sample)
    assert stage2(data, bank_dir, "--batch-size", "1") == 0
    assert snapshot(data) == reference_files


def test_shards_partition_the_prompts_and_their_union_is_the_unsharded_run(tmp_path, reference_run, bank_dir,
                                                                           monkeypatch):
    _, reference_files = reference_run
    data = make_data(tmp_path)
    written = []
    real_write_wav, real_write_text = trajectory.write_wav, trajectory.write_text
    monkeypatch.setattr(trajectory, "write_wav",
                        lambda path, *a, **k: (written.append(path), real_write_wav(path, *a, **k)))
    monkeypatch.setattr(trajectory, "write_text", lambda path, *a: (written.append(path), real_write_text(path, *a)))
    assert stage2(data, bank_dir, "--shard", "1/2") == 0
    after_first = snapshot(data)
    assert stage2(data, bank_dir, "--shard", "0/2") == 0
    # requested.json says what was asked (here: two shards), so it alone differs from the unsharded run's. Every
    # other file is written once, but generation.json and the truth tables (written by the last shard, data/truth.py).
    reference = {name: content for name, content in reference_files.items() if name != "requested.json"}
    assert len(written) == len(set(written)) == len([name for name in reference
                                                     if not name.startswith("truth_tables/")]) - 1
    sharded = snapshot(data)
    request = json.loads(sharded.pop("requested.json"))["reference"]
    assert sharded == reference
    ids = sorted(pid for pid, _, _ in PROMPTS)
    assert request == {"shards": 2, "prompts": {pid: position % 2 for position, pid in enumerate(ids)}}
    assert {name.split("/")[1].removesuffix(".csv") for name in after_first if name.startswith("index/")} == \
        set(ids[1::2])


def test_batch_sizes_change_nothing_and_decoding_is_batched(tmp_path, reference_run, bank_dir, monkeypatch):
    _, reference_files = reference_run
    data = make_data(tmp_path)
    decoded = []
    real_decode = IdealGenerator.decode
    monkeypatch.setattr(IdealGenerator, "decode",
                        lambda self, latents, seconds: (decoded.append(len(latents)),
                                                         real_decode(self, latents, seconds))[1])
    assert stage2(data, bank_dir, "--batch-size", "1", "--decode-batch-size", "3") == 0
    assert snapshot(data) == reference_files
    # Per sampler call (1 sample, 10 clips): decoder calls of 3, 3, 3 and 1.
    assert decoded == [3, 3, 3, 1] * (len(PROMPTS) * 2)


def test_both_kinds_more_samples_and_a_prompt_limit(tmp_path, bank_dir):
    data = make_data(tmp_path)
    assert stage2(data, bank_dir, "--kinds", "xt,x0", "--samples", "3", "--capture-steps", "0,49",
                  "--limit-prompts", "2", "--seconds", "0.25") == 0
    index = contract.read_generated_index(data)
    assert sorted(index.prompt_id.unique()) == ["p-brass", "p-strings"]
    assert len(index) == 2 * 3 * 2 * 2 and set(index.kind) == {"x0", "xt"}
    assert (contract.generated_dir(data) / "audio/p-brass/s2-xt-049.wav").is_file()
    audio, _ = read_audio(contract.generated_dir(data) / "audio/p-brass/s2-x0-049.wav")
    assert audio.shape == (1, 2000)
    final_x0 = read_audio(contract.generated_dir(data) / "audio/p-brass/s1-x0-049.wav")[0]
    final_xt = read_audio(contract.generated_dir(data) / "audio/p-brass/s1-xt-049.wav")[0]
    np.testing.assert_array_equal(final_x0, final_xt)  # the last step lands on sigma 0: x_t is the estimate


def test_changed_prompts_are_refused_then_forced_with_stale_parts_removed(tmp_path, bank_dir, capsys):
    data = make_data(tmp_path)
    assert stage2(data, bank_dir, "--limit-prompts", "3") == 0
    before = snapshot(data)
    make_data(data, PROMPTS[1:3])
    capsys.readouterr()
    assert stage2(data, bank_dir) == 2
    assert "annotated_sha256" in one_error_line(capsys) and snapshot(data) == before
    assert stage2(data, bank_dir, "--force") == 0
    parts = sorted(path.stem for path in (contract.generated_dir(data) / "index").glob("*.csv"))
    assert parts == ["p-keys", "p-strings"]
    assert not (contract.generated_dir(data) / "audio" / "p-brass").exists()
    # Same seed and prompt: the regenerated clips are the ones made before.
    assert snapshot(data)["audio/p-keys/s1-x0-049.wav"] == before["audio/p-keys/s1-x0-049.wav"]


BAD_INPUTS = [
    (["--generator", "jukebox"], "unknown generator 'jukebox'"),
    (["--preset", "fast"], "unknown preset 'fast'"),
    (["--capture-steps", "5,50"], "--capture-steps 50 is outside [0, 50)"),
    (["--capture-steps=-1"], "--capture-steps -1 is outside"),
    (["--capture-steps", "five"], "not a comma-separated list"),
    (["--seconds", "9"], "--seconds 9 is outside (0, 0.5]"),
    (["--shard", "2/2"], "--shard '2/2' is not a shard"),
    (["--shard", "one/two"], "--shard 'one/two' is not a shard"),
    (["--shard", "0/0"], "--shard '0/0' is not a shard"),
    (["--kinds", "noise"], "--kinds 'noise'"),
    (["--samples", "0"], "--samples 0 must be at least 1"),
    (["--steps", "0"], "--steps 0 must be at least 1"),
    (["--dtype", "fp16"], "--dtype fp16"),
    (["--decode-dtype", "bf16"], "--decode-dtype bf16"),
    (["--capture-steps", ""], "--capture-steps is empty"),
]


@pytest.mark.parametrize("extra,message", BAD_INPUTS, ids=[" ".join(case[0]) for case in BAD_INPUTS])
def test_bad_arguments_are_one_line_errors_that_write_nothing(tmp_path, bank_dir, capsys, extra, message):
    data = make_data(tmp_path)
    assert stage2(data, bank_dir, *extra) == 2
    assert message in one_error_line(capsys)
    assert not contract.generated_dir(data).exists()


def test_bad_annotations_are_one_line_errors_that_write_nothing(tmp_path, bank_dir, capsys, monkeypatch):
    cases = {
        "missing": None,
        "empty prompt": "prompt_id,prompt,labels,bpm,annotator\np1,,brass,,offline\n",
        "unknown label": "prompt_id,prompt,labels,bpm,annotator\np1,tuba,tuba,,offline\n",
        "no rows": "prompt_id,prompt,labels,bpm,annotator\n",
        "bad id": "prompt_id,prompt,labels,bpm,annotator\np 1,brass,brass,,offline\n",
    }
    for name, text in cases.items():
        data = tmp_path / name.replace(" ", "-")
        if text is not None:
            contract.annotated_csv(data).parent.mkdir(parents=True)
            contract.annotated_csv(data).write_text(text)
        assert stage2(data, bank_dir) == 2, name
        assert "annotated.csv" in one_error_line(capsys), name
        assert not contract.generated_dir(data).exists(), name
    data = make_data(tmp_path / "slurm")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    assert stage2(data, bank_dir) == 2
    assert "SLURM_ARRAY_TASK_ID" in one_error_line(capsys)
    assert not contract.generated_dir(data).exists()


def test_script_refuses_other_provenance_in_one_line_and_changes_nothing(tmp_path, bank_dir):
    data = make_data(tmp_path, PROMPTS[:1])
    assert stage2(data, bank_dir, "--samples", "1") == 0
    before = snapshot(data)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("SLURM_ARRAY_TASK_ID", None)
    script = str(REPO_ROOT / "diffusion" / "stage2_generate.py")
    result = subprocess.run([sys.executable, script, "--data", str(data), "--model", str(bank_dir), "--samples", "1",
                             "--seed", "1"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "seed=0" in lines[0], lines
    assert "--force" in lines[0]
    assert snapshot(data) == before


def test_shard_parsing_and_selection():
    assert parse_shard(None, environ={}) == Shard(0, 1)
    assert parse_shard("1/3", environ={}) == Shard(1, 3)
    slurm = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}
    assert parse_shard(None, environ=slurm) == Shard(2, 4)
    ids = [f"p{k:02d}" for k in range(10)][::-1]
    chosen = [Shard(index, 3).select(ids) for index in range(3)]
    assert sorted(sum(chosen, [])) == sorted(ids) and chosen[0] == ["p00", "p03", "p06", "p09"]
    assert prompt_seed(0, "p01") == prompt_seed(0, "p01") != prompt_seed(1, "p01")


def test_index_parts_are_written_last(tmp_path, bank_dir, monkeypatch):
    """Within a prompt, every wav and its realised content and truth parts are on disk before its index part
    appears."""
    data = make_data(tmp_path, PROMPTS[:2])
    events = []
    real_write_wav, real_write_text = trajectory.write_wav, trajectory.write_text
    monkeypatch.setattr(trajectory, "write_wav", lambda path, *a, **k: (real_write_wav(path, *a, **k),
                                                                           events.append(("wav", path.parent.name))))
    monkeypatch.setattr(trajectory, "write_text", lambda path, *a: (events.append((path.parent.name, path.stem)),
                                                                     real_write_text(path, *a)))
    assert stage2(data, bank_dir, "--samples", "1") == 0
    for prompt_id in ("p-brass", "p-strings"):
        positions = [i for i, event in enumerate(events) if event[1] == prompt_id]
        assert [events[i] for i in positions[-3:]] == [("content", prompt_id), ("truth", prompt_id),
                                                         ("index", prompt_id)]
        assert [event for event in events if event == ("index", prompt_id)] == [("index", prompt_id)]
    with open(contract.generated_dir(data) / "index" / "p-brass.csv", newline="") as handle:
        assert next(csv.reader(handle)) == list(contract.INDEX_COLUMNS)


def test_realised_content_is_row_aligned_and_ends_on_the_labels_of_the_chosen_clip(reference_run, bank_dir,
                                                                                   tmp_path, capsys):
    from data.realised_content import read_realised_content

    data, files = reference_run
    index = contract.read_generated_index(data)
    content = read_realised_content(data, index)
    labels = json.loads(files["generation.json"])["content_labels"]
    assert list(content.columns) == [f"content_{label}" for label in labels] and len(content) == len(index)
    assert ((content >= 0) & (content <= 1)).all().all()
    bank = synthetic_bank()
    for row in np.flatnonzero(index.step.to_numpy() == 49):
        audio, _ = read_audio(contract.generated_dir(data) / index.path[row])
        chosen = int(np.argmin(np.abs(bank.audio - audio[0]).max(axis=1)))
        assert np.abs(bank.audio[chosen] - audio[0]).max() < 1e-3      # the clip the trajectory committed to
        assert content.loc[row].to_dict() == {f"content_{label}": float(label in bank.labels[chosen])
                                              for label in labels}
    early = content[index.step.to_numpy() == 5].to_numpy()
    assert ((early > 1e-3) & (early < 1 - 1e-3)).any()                  # a blend early on
    # A prompt whose content part is missing is not done: the rerun makes it again, byte for byte.
    data = tmp_path / "copy"
    shutil.copytree(reference_run[0], data)
    (contract.generated_dir(data) / "content" / "p-keys.csv").unlink()
    with pytest.raises(InputError, match="p-keys.csv: missing"):
        read_realised_content(data, index)
    assert stage2(data, bank_dir) == 0
    assert "5 already done, 1 generated" in capsys.readouterr().err
    assert snapshot(data) == files


def test_force_with_new_settings_never_splits_provenance(tmp_path, bank_dir, capsys):
    """A partial --force must not leave clips of two settings under one generation.json."""
    data = make_data(tmp_path)
    assert stage2(data, bank_dir, "--samples", "1") == 0
    before = snapshot(data)
    capsys.readouterr()
    # --limit-prompts with new settings: refused, nothing changed.
    assert stage2(data, bank_dir, "--samples", "1", "--seed", "7", "--force", "--limit-prompts", "2") == 2
    line = one_error_line(capsys)
    assert "generation.json" in line and "seed differs" in line and "4 prompts" in line
    assert "without --limit-prompts" in line and snapshot(data) == before
    # --limit-prompts with the same settings: only those prompts are redone, identical bytes; the request (what
    # a later stage checks is complete) is now those prompts.
    assert stage2(data, bank_dir, "--samples", "1", "--force", "--limit-prompts", "2") == 0
    after = snapshot(data)
    assert sorted(json.loads(after.pop("requested.json"))["reference"]["prompts"]) == \
        sorted(pid for pid, _, _ in PROMPTS[:2])
    assert after == {name: content for name, content in before.items() if name != "requested.json"}
    # A shard with new settings removes the other shard's old clips; that shard then remakes them.
    assert stage2(data, bank_dir, "--samples", "1", "--seed", "7", "--force", "--shard", "0/2") == 0
    assert "removed 3 other shards' prompts" in capsys.readouterr().err
    ids = sorted(pid for pid, _, _ in PROMPTS)
    generated = contract.generated_dir(data)
    assert sorted(part.stem for part in (generated / "index").glob("*.csv")) == ids[0::2]
    assert sorted(path.name for path in (generated / "audio").iterdir()) == ids[0::2]
    assert sorted(part.stem for part in (generated / "content").glob("*.csv")) == ids[0::2]
    assert stage2(data, bank_dir, "--samples", "1", "--seed", "7", "--shard", "1/2") == 0
    fresh = make_data(tmp_path / "fresh")
    assert stage2(fresh, bank_dir, "--samples", "1", "--seed", "7") == 0
    sharded, unsharded = snapshot(data), snapshot(fresh)
    assert json.loads(sharded.pop("requested.json"))["reference"]["shards"] == 2
    assert json.loads(unsharded.pop("requested.json"))["reference"]["shards"] == 1
    assert sharded == unsharded
    # Parts without a generation.json: what made them is unknown, so they are not resumed silently.
    (generated / "generation.json").unlink()
    after = snapshot(data)
    capsys.readouterr()
    assert stage2(data, bank_dir, "--samples", "1", "--seed", "7") == 2
    assert "missing beside existing index parts" in one_error_line(capsys) and snapshot(data) == after


def test_a_corrupt_generation_json_is_refused_in_one_line_and_force_replaces_it(tmp_path, bank_dir, capsys):
    data = make_data(tmp_path, PROMPTS[:2])
    assert stage2(data, bank_dir, "--samples", "1") == 0
    reference = snapshot(data)
    provenance = contract.generated_dir(data) / "generation.json"
    provenance.write_text("[1, 2]")
    before = snapshot(data)
    capsys.readouterr()
    assert stage2(data, bank_dir, "--samples", "1") == 2
    line = one_error_line(capsys)
    assert "generation.json" in line and "not an object" in line and snapshot(data) == before
    assert stage2(data, bank_dir, "--samples", "1", "--force") == 0
    assert snapshot(data) == reference


def test_capture_positions_are_checked_against_the_generators_axis():
    import torch

    from data.generation import denoising_axis, layer_axis
    from diffusion.base import TrajectoryObserver, default_capture
    from diffusion.trajectory import parse_capture_steps

    steps, layers = denoising_axis(50), layer_axis(24)
    assert steps.record() == {"name": "denoising_step", "unit": "step", "positions": list(range(50))}
    assert layers.record() == {"name": "layer", "unit": "layer", "positions": list(range(1, 25))}
    assert default_capture(steps.positions) == default_capture_steps(50) == [5, 10, 15, 20, 25, 30, 35, 40, 45, 49]
    assert default_capture(layers.positions) == [3, 5, 7, 9, 11, 13, 15, 17, 19, 24]
    assert default_capture(layer_axis(3).positions) == [2, 3]
    assert parse_capture_steps("24,1", layers, []) == [1, 24]
    with pytest.raises(InputError, match=r"--capture-steps 0 is outside \[1, 25\) for a 24-layer trajectory "
                                         r"\(1–24\) — pick layers from 1 to 24"):
        parse_capture_steps("0,3", layers, [])
    # A layer trajectory has no noise level and no noisy latent: the observer keeps what it is given.
    observer = TrajectoryObserver([2], ["x0"])
    for layer in layers.positions[:3]:
        observer(layer, None, None, torch.full((2, 3), float(layer)), {"brass": np.array([0.25, 1.0])})
    (kept,) = observer.captured
    assert (kept.position, kept.sigma, kept.kind) == (2, None, "x0") and kept.latent[0, 0] == 2.0
    np.testing.assert_array_equal(kept.content["brass"], [0.25, 1.0])
