"""What run_stage gives every stage: a lock per stage and --data, one-line OS faults with temp files cleaned,
SIGTERM that unwinds, and artifacts that respect the umask."""
import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from data.files import sha256_file
from data.nsynth import render_soundfont
from data.prompts import stage1_prompts as stage1
from data.stage import REPO_ROOT, file_lock, lock_path, run_stage
from embeddings import stage3_embed_generated as stage3
from embeddings.run import lock_name

STAGE1 = REPO_ROOT / "data" / "prompts" / "stage1_prompts.py"


def stage1_run(data, *extra) -> int:
    return run_stage(stage1.main, stage1.build_parser(), ["--data", str(data), *extra])


def tree(root) -> dict:
    """Every file under root with its hash: what a failed run must leave exactly as it was."""
    return {str(path.relative_to(root)): sha256_file(path) for path in sorted(root.rglob("*")) if path.is_file()}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ---- locks ----------------------------------------------------------------------------------------------------

def test_a_second_run_on_the_same_data_stops_with_one_line(tmp_path, capsys):
    data = tmp_path / "data"
    assert stage1_run(data) == 0
    before = tree(data)
    with file_lock(lock_path(data, "stage1_prompts"), blocking=False):
        assert stage1_run(data, "--force") == 2
        error = one_error_line(capsys)
        assert f"another run (pid {os.getpid()}) of this stage is using --data {data}" in error
    assert tree(data) == before
    # Released: the next run goes ahead, and a finished run leaves no lock file behind.
    assert stage1_run(data, "--force") == 0
    assert not list(data.glob(".*.lock"))


def test_a_killed_holder_releases_the_lock(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    path = lock_path(data, "stage1_prompts")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from data.stage import file_lock\n"
        "with file_lock(sys.argv[2]):\n    print('held', flush=True); time.sleep(600)"), str(REPO_ROOT), str(path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert stage1_run(data) == 2
        assert f"pid {holder.pid}" in one_error_line(capsys)
    finally:
        holder.kill()
        holder.wait()
    assert path.exists()  # kill -9 runs no cleanup: the file stays, but no process holds its lock
    assert stage1_run(data) == 0
    assert not path.exists()


def test_stage3_locks_per_embedder_and_shard(tmp_path):
    parse = stage3.build_parser().parse_args
    name = lock_name("stage3")
    assert name(parse(["--shard", "0/2"])) != name(parse(["--shard", "1/2"]))
    assert name(parse(["--shard", "0/2"])) == name(parse(["--shard", "0/2", "--workers", "0"]))
    assert name(parse([])) != name(parse(["--embedder", "clap", "--model", "laion/other"]))


# ---- operating-system faults ----------------------------------------------------------------------------------

def test_data_that_is_a_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "data"
    path.write_text("not a directory")
    assert stage1_run(path) == 2
    assert f"--data {path}: is not a directory" in one_error_line(capsys)
    assert path.read_text() == "not a directory"


def test_data_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert stage1_run(tmp_path / "file" / "data") == 2
    assert "Not a directory" in one_error_line(capsys)


@pytest.mark.parametrize("code, words, fix", [(errno.ENOSPC, "No space left on device", "free some space"),
                                              (errno.EROFS, "Read-only file system", "read-only"),
                                              (errno.EACCES, "Permission denied", "permissions")])
def test_a_failing_disk_is_one_line_and_leaves_nothing_behind(tmp_path, capsys, monkeypatch, code, words, fix):
    data = tmp_path / "data"
    assert stage1_run(data) == 0
    before = tree(data)

    def failing_fsync(fd):
        raise OSError(code, os.strerror(code), str(data / "prompts"))

    # Every artifact write goes through data.files.atomic_path, which fsyncs the temp file before the rename.
    monkeypatch.setattr(os, "fsync", failing_fsync)
    assert stage1_run(data, "--force") == 2
    error = one_error_line(capsys)
    assert str(data / "prompts") in error and words in error and fix in error
    assert tree(data) == before  # no temp file, nothing replaced
    monkeypatch.undo()
    fresh = tmp_path / "fresh"
    monkeypatch.setattr(os, "fsync", failing_fsync)
    assert stage1_run(fresh) == 2
    one_error_line(capsys)
    assert not [path for path in fresh.rglob("*") if path.is_file()]


# ---- SIGTERM and temp files of the note renderer --------------------------------------------------------------

def test_sigterm_mid_write_leaves_no_temp_file_and_the_rerun_resumes(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    arguments = ["--data", str(data), "--programs", "0,56", "--pitch-step", "24", "--velocities", "127"]
    real_write, calls = render_soundfont.sf.write, []

    def write_then_terminated(*args, **kwargs):
        real_write(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # as SLURM does at a time limit, while the temp file exists
            time.sleep(1)

    monkeypatch.setattr(render_soundfont.sf, "write", write_then_terminated)
    assert run_stage(render_soundfont.main, render_soundfont.build_parser(), arguments) == 143
    assert "interrupted" in capsys.readouterr().err
    audio = render_soundfont.output_dir(data) / "audio"
    assert len(list(audio.glob("*.wav"))) == 2 and not list(audio.glob(".*.tmp"))
    monkeypatch.undo()
    # A kill -9 leaves its temp file: the rerun removes it, resumes, and finishes.
    (audio / ".stale.wav.x1y2z3.tmp").write_bytes(b"half a note")
    assert run_stage(render_soundfont.main, render_soundfont.build_parser(), arguments) == 0
    assert "2 reused" in capsys.readouterr().out
    assert not list(render_soundfont.output_dir(data).rglob("*.tmp"))


# ---- umask ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_artifacts_respect_the_umask(tmp_path, umask, mode):
    data = tmp_path / "data"
    result = subprocess.run([sys.executable, str(STAGE1), "--data", str(data)], capture_output=True, text=True,
                            timeout=120, preexec_fn=lambda: os.umask(umask))
    assert result.returncode == 0, result.stderr
    for name in ("prompts.csv", "prompts.json", "annotated.csv", "annotated.json"):
        assert (data / "prompts" / name).stat().st_mode & 0o777 == mode, name


def test_stage6_locks_per_results_folder():
    from interp import stage6_probe

    parse = stage6_probe.build_parser().parse_args
    name = stage6_probe.lock_name
    assert name(parse(["--embedder", "spectral"])) != name(parse(["--embedder", "spectral", "--probe", "svm"]))
    assert name(parse(["--embedder", "spectral"])) != name(parse(["--embedder", "spectral", "--kind", "xt"]))
    assert name(parse(["--embedder", "spectral"])) == name(parse(["--embedder", "spectral", "--seed", "3"]))
    # Activation space: one lock per branch-pool folder, needing no --embedder.
    activations = name(parse(["--space", "activations"]))
    assert activations != name(parse(["--space", "activations", "--branch", "uncond"]))
    assert activations == name(parse(["--space", "activations", "--embedder", "spectral", "--seed", "3"]))


def test_stage2_locks_per_shard():
    from diffusion import stage2_generate

    parse = stage2_generate.build_parser().parse_args
    name = stage2_generate.lock_name
    assert name(parse(["--shard", "0/2"])) != name(parse(["--shard", "1/2"]))
    assert name(parse(["--shard", "1/2"])) == name(parse(["--shard", "1/2", "--seed", "5"]))


def test_a_failed_run_leaves_no_directories_it_created(tmp_path, capsys):
    from interp import stage5_embed_nsynth as stage5

    data = tmp_path / "new" / "nested" / "data"
    assert run_stage(stage5.main, stage5.build_parser(), ["--data", str(data)]) == 2
    assert "notes.csv: missing" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


# ---- the command line every stage offers ---------------------------------------------------------------------

def test_every_stage_describes_itself_in_whole_sentences_and_offers_no_progress():
    """--help's description is the docstring's whole first paragraph (never cut mid-sentence); every stage (each
    draws a progress bar somewhere) takes --no-progress; every option has help."""
    import importlib

    stages = ["data.prompts.stage1_prompts", "diffusion.stage2_generate", "embeddings.stage3_embed_generated",
              "data.nsynth.render_soundfont", "interp.stage4_concept_sets", "interp.stage5_embed_nsynth",
              "interp.stage6_probe", "interp.stage6_activations", "interp.directions"]
    for name in stages:
        parser = importlib.import_module(name).build_parser()
        assert parser.description.rstrip().endswith((".", "?")), (name, parser.description)
        options = {option: action for action in parser._actions for option in action.option_strings}
        assert "--no-progress" in options, name
        undocumented = sorted(option for option, action in options.items() if not action.help)
        assert not undocumented, (name, undocumented)
    from diffusion import stage2_generate
    model_help = next(a.help for a in stage2_generate.build_parser()._actions if "--model" in a.option_strings)
    assert "musicgen" in model_help and "stable-audio-open" in model_help
