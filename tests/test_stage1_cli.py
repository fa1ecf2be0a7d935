"""Stage 1's command line on the offline path: artifacts per the contract, skip/--force/refuse, and every bad
input → one line on stderr, exit 2, nothing overwritten. Error cases run the real script in a subprocess."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from data.contract import read_annotated, read_prompts
from data.files import read_json
from data.prompts.prompt_list import embedded_prompts
from data.prompts.stage1_prompts import build_parser, main
from data.stage import run_stage
from data.vocabulary import VOCABULARY

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "data" / "prompts" / "stage1_prompts.py"


def run_script(data: Path, *args, env_extra=None):
    env = {key: value for key, value in os.environ.items() if key != "OPENAI_API_KEY"}
    env.update(env_extra or {})
    # From another directory, so the script cannot lean on the working directory.
    return subprocess.run([sys.executable, str(SCRIPT), "--data", str(data), *args], capture_output=True,
                          text=True, env=env, cwd=data.parent, timeout=120)


def run_in_process(data: Path, *args) -> int:
    return run_stage(main, build_parser(), ["--data", str(data), *args])


def snapshot(folder: Path) -> dict:
    return {path.name: path.read_bytes() for path in sorted(folder.glob("*")) if path.is_file()}


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in lines if line.startswith("error")]
    assert len(errors) == 1
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


@pytest.fixture
def stage1_outputs(tmp_path):
    data = tmp_path / "data"
    assert run_in_process(data) == 0
    return data


def test_default_run_writes_contract_artifacts(stage1_outputs):
    data = stage1_outputs
    prompts = read_prompts(data)
    annotated = read_annotated(data)
    embedded = embedded_prompts()
    assert list(prompts["prompt_id"]) == list(embedded["prompt_id"])
    assert set(prompts["origin"]) == {"embedded"}
    assert list(annotated["prompt_id"]) == list(prompts["prompt_id"])
    assert list(annotated["prompt"]) == list(prompts["prompt"])
    assert set(annotated["annotator"]) == {"offline"}
    assert list(pd.read_csv(data / "prompts" / "annotated.csv").columns) == [
        "prompt_id", "prompt", "labels", "bpm", "annotator"]
    assert annotated["bpm"].notna().sum() >= 15
    sidecar = read_json(data / "prompts" / "annotated.json")
    assert sidecar["settings"]["vocabulary"] == list(VOCABULARY)
    assert sidecar["settings"]["annotator"]["name"] == "offline"
    assert len(sidecar["inputs"]["prompts.csv"]) == 64
    assert not list((data / "prompts").glob("*.tmp"))


def test_rerun_skips_and_force_redoes(stage1_outputs, caplog):
    folder = stage1_outputs / "prompts"
    inodes = {path.name: path.stat().st_ino for path in folder.glob("*.*")}
    before = snapshot(folder)
    with caplog.at_level("INFO", logger="stage1"):
        assert run_in_process(stage1_outputs) == 0
    assert caplog.text.count("skipped") == 2
    assert {path.name: path.stat().st_ino for path in folder.glob("*.*")} == inodes
    assert run_in_process(stage1_outputs, "--force") == 0
    # Atomic writes replace the file, so a redone artifact has a new inode and the same content.
    assert all(folder.joinpath(name).stat().st_ino != inode for name, inode in inodes.items())
    assert snapshot(folder) == before


def test_hand_written_prompts_csv_is_kept_and_annotated(tmp_path):
    data = tmp_path / "data"
    (data / "prompts").mkdir(parents=True)
    pd.DataFrame({"prompt_id": ["mine1", "mine2"], "prompt": ["Solo cello, no drums", "Synth lead at 128 BPM"],
                  "origin": ["embedded", "embedded"]}).to_csv(data / "prompts" / "prompts.csv", index=False)
    assert run_in_process(data) == 0
    assert list(read_prompts(data)["prompt_id"]) == ["mine1", "mine2"]
    annotated = read_annotated(data)
    assert annotated["labels"].tolist() == [["string", "acoustic"], ["synth_lead", "synthetic"]]
    assert annotated["bpm"].tolist()[1] == 128


def test_unfinished_annotation_without_sidecar_is_redone(stage1_outputs):
    folder = stage1_outputs / "prompts"
    expected = (folder / "annotated.csv").read_bytes()
    (folder / "annotated.json").unlink()
    (folder / "annotated.csv").write_text("prompt_id,prompt,labels,bpm,annotator\nhalf", encoding="utf-8")
    assert run_in_process(stage1_outputs, "annotate") == 0
    assert (folder / "annotated.csv").read_bytes() == expected
    assert (folder / "annotated.json").is_file()


# --- bad input: one line, exit 2, nothing overwritten ------------------------------------------------------

def test_missing_prompts_csv(tmp_path):
    result = run_script(tmp_path / "data", "annotate")
    assert_one_line_error(result, "prompts.csv: missing", "run stage 1 generate")
    assert not (tmp_path / "data" / "prompts" / "annotated.csv").exists()


@pytest.mark.parametrize("content, fragment", [
    ("", "not a readable CSV"),
    ("prompt_id,prompt,origin\n", "has no rows"),
    ("prompt_id,prompt,origin\np1,Solo cello,embedded\np2,Harp,embedded\np1,Marimba,embedded\n",
     "row 4: duplicate prompt_id 'p1'"),
    ("prompt_id,prompt,origin\np1,Solo cello,embedded\np2,,embedded\n", "row 3: empty prompt"),
    ("prompt_id,prompt,origin\nhas space,Solo cello,embedded\n", "row 2: prompt_id 'has space'"),
    ("prompt_id,text\np1,Solo cello\n", "column 'prompt' is missing"),
    # Row numbers are the lines an editor shows, after blank lines and quoted fields that span lines.
    ("prompt_id,prompt,origin\n\np1,Solo cello,embedded\n\n\np2,,embedded\n", "row 6: empty prompt"),
    ('prompt_id,prompt,origin\np1,"Solo\ncello",embedded\np2,,embedded\n', "row 4: empty prompt"),
], ids=["empty-file", "header-only", "duplicate-id", "empty-prompt", "bad-id", "wrong-columns", "after-blank-lines",
        "after-multiline-field"])
def test_bad_prompts_csv(stage1_outputs, content, fragment):
    folder = stage1_outputs / "prompts"
    (folder / "prompts.csv").write_text(content, encoding="utf-8")
    before = snapshot(folder)
    result = run_script(stage1_outputs)
    assert_one_line_error(result, "prompts.csv", fragment)
    assert snapshot(folder) == before


def test_unknown_label_in_hand_edited_annotated_csv(stage1_outputs):
    folder = stage1_outputs / "prompts"
    path = folder / "annotated.csv"
    path.write_text(path.read_text(encoding="utf-8").replace("brass;reverb;acoustic", "brass;accordion", 1),
                    encoding="utf-8")
    before = snapshot(folder)
    result = run_script(stage1_outputs)
    assert_one_line_error(result, "annotated.csv row 2", "label 'accordion' is not in the vocabulary", "--force")
    assert snapshot(folder) == before


def test_prompts_edited_after_annotation_are_refused(stage1_outputs):
    folder = stage1_outputs / "prompts"
    path = folder / "prompts.csv"
    path.write_text(path.read_text(encoding="utf-8").replace("solo trumpet", "solo cornet", 1), encoding="utf-8")
    before = snapshot(folder)
    result = run_script(stage1_outputs)
    assert_one_line_error(result, "annotated.json", "inputs.prompts.csv=", "prompts.csv was edited", "--force")
    assert snapshot(folder) == before


def test_other_settings_are_refused_before_any_network(stage1_outputs):
    folder = stage1_outputs / "prompts"
    before = snapshot(folder)
    # An unreachable server: were the refusal to come after a request, this would be a connection error.
    result = run_script(stage1_outputs, "--annotator", "llm", "--base-url", "http://127.0.0.1:9/v1",
                        env_extra={"OPENAI_API_KEY": "sk-test"})
    assert_one_line_error(result, "annotator.name='offline'", "this run has 'llm'", "--force")
    result = run_script(stage1_outputs, "generate", "--prompts", "llm", env_extra={"OPENAI_API_KEY": "sk-test"})
    assert_one_line_error(result, "prompts.json", "settings.source='embedded'")
    assert snapshot(folder) == before


@pytest.mark.parametrize("args, fallback", [(("--annotator", "llm"), "--annotator offline"),
                                            (("--prompts", "llm"), "--prompts embedded")])
def test_llm_without_key_points_to_offline_path(tmp_path, args, fallback):
    result = run_script(tmp_path / "data", *args)
    assert_one_line_error(result, "OPENAI_API_KEY is not set", fallback)


def test_bad_option_value_is_one_line(tmp_path):
    assert_one_line_error(run_script(tmp_path / "data", "--batch-size", "0"), "--batch-size must be at least 1")


def test_debug_shows_the_traceback(tmp_path):
    result = run_script(tmp_path / "data", "annotate", "--debug")
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "prompts.csv: missing" in result.stderr
