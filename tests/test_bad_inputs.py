"""The bad-input catalogue: every stage, given one broken input, says one line and changes nothing.

A small real run of stages 1-5 (embedded prompts, the ideal generator, rendered soundfont notes, the spectral
embedder) is made once per session; each case copies it, breaks one thing, runs one stage and asserts:
exit code 2, exactly one line on stderr and it starts with "error: ", the expected words in that line, and
every file under --data byte-identical afterwards (no file changed, none added, none removed).

Most cases run the stage in this process through its real entry point (data.stage.run_stage); the ones marked
`subprocess` run the script as a user would, so the one-line promise is checked on the real stderr.
The kill tests at the end SIGKILL stages 2, 3 and 5 and the note renderer mid-run, rerun them, and check that
no temp file survives and the outputs equal an uninterrupted run's.
"""
import contextlib
import errno
import hashlib
import importlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import REPO_ROOT

from data.stage import run_stage

STAGES = {
    1: "data.prompts.stage1_prompts",
    2: "diffusion.stage2_generate",
    3: "embeddings.stage3_embed_generated",
    4: "interp.stage4_concept_sets",
    5: "interp.stage5_embed_nsynth",
    6: "interp.stage6_probe",
    "render": "data.nsynth.render_soundfont",
    "commitment": "interp.commitment_search",
    "judge": "embeddings.judge_generated",
    "directions": "interp.directions",
    "organism-evaluate": "diffusion.organism.evaluate",
    "organism-analysis": "interp.organism_analysis",
}
NSYNTH = "nsynth/nsynth-soundfont"
# The settings of the session's run: a case that repeats them reaches validation, not a provenance refusal.
ARGS = {
    1: ["annotate"],
    2: ["--generator", "ideal", "--limit-prompts", "3", "--samples", "1", "--steps", "10", "--capture-steps", "4,9",
        "--no-progress"],
    3: ["--embedder", "spectral", "--workers", "0"],
    4: ["--nsynth-dir", "{data}/" + NSYNTH],
    5: ["--embedder", "spectral", "--workers", "0"],
    6: ["--embedder", "spectral", "--bootstrap", "20", "--random-baselines", "2", "--resplits", "1", "--no-report"],
    "render": ["--pitch-step", "24", "--velocities", "100", "--dyad-velocity", "0"],
    "commitment": ["--embedder", "spectral", "--workers", "0", "--steps", "10", "--concept", "is_brass", "--prompts", "2",
                   "--samples", "1", "--random-directions-per-prompt", "5", "--no-progress"],
    "judge": ["--positions", "final", "--workers", "0", "--no-progress"],
}


def script(stage) -> str:
    return STAGES[stage].replace(".", "/") + ".py"


def run_in_process(stage, argv: list[str]) -> tuple[int, str]:
    module = importlib.import_module(STAGES[stage])
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = run_stage(module.main, module.build_parser(), argv)
        except SystemExit as exit_:  # argparse
            code = exit_.code
    return code, err.getvalue()


def run_script(stage, argv: list[str], env: dict | None = None, timeout: float = 120) -> tuple[int, str]:
    environ = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run([sys.executable, script(stage), *argv], cwd=REPO_ROOT, env=environ,
                            capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stderr


def stage_argv(stage, data: Path, args=None, extra=()) -> list[str]:
    args = ARGS[stage] if args is None else args
    return ["--data", str(data), *(arg.format(data=data) for arg in [*args, *extra])]


def snapshot(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


# ---------------------------------------------------------------------------------------------- the base run

@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("bad-inputs") / "data"
    for stage in (1, 2, 3, "render", 4, 5):
        argv = stage_argv(stage, data, [] if stage == 1 else None)
        code, stderr = run_in_process(stage, argv)
        assert code == 0, f"stage {stage}: {stderr[-2000:]}"
    return data


@pytest.fixture
def data(base, tmp_path) -> Path:
    copy = tmp_path / "data"
    # Stage 4 records the NSynth folder relative to --data, so the copy reads its own. Audio is hard-linked, not
    # copied: 140 cases x 140 MB of WAVs filled CI's disk, and no stage or corruption here edits a file in place
    # (every write replaces the file), so the base stays as it was.
    shutil.copytree(base, copy, copy_function=link_audio_copy_rest)
    return copy


def link_audio_copy_rest(source: str, target: str) -> None:
    if source.endswith(".wav"):
        os.link(source, target)
    else:
        shutil.copy2(source, target)


# ---------------------------------------------------------------------------------------------- corruptions
# Every helper replaces the file it changes (never edits it in place).

def rewrite(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)
    path.write_text(text, encoding="utf-8")


def edit_text(relative: str, old: str, new: str, count: int = 1):
    def corrupt(data: Path):
        path = data / relative
        text = path.read_text(encoding="utf-8")
        assert old in text, (relative, old)
        rewrite(path, text.replace(old, new, count))
    return corrupt


def edit_table(relative: str, change: Callable[[pd.DataFrame], pd.DataFrame]):
    def corrupt(data: Path):
        path = data / relative
        frame = change(pd.read_csv(path, dtype=str, keep_default_na=False))
        path.unlink()
        frame.to_csv(path, index=False)
    return corrupt


def set_cell(relative: str, column: str, value, row: int = 0):
    def change(frame):
        frame.loc[frame.index[row], column] = value
        return frame
    return edit_table(relative, change)


def duplicate_cell(relative: str, column: str):
    """Row 1's value copied into row 2 (file rows 2 and 3)."""
    def change(frame):
        frame.loc[frame.index[1], column] = frame.loc[frame.index[0], column]
        return frame
    return edit_table(relative, change)


def index_raw_line(template: str):
    def corrupt(data: Path):
        part = first_index_part(data)
        rewrite(part, part.read_text() + template.format(prompt_id=part.stem) + "\n")
    return corrupt


def append_line(relative: str, line: str):
    def corrupt(data: Path):
        path = data / relative
        rewrite(path, path.read_text(encoding="utf-8") + line + "\n")
    return corrupt


def write_file(relative: str, content):
    def corrupt(data: Path):
        path = data / relative
        path.unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return corrupt


def delete(relative: str):
    def corrupt(data: Path):
        target = data / relative
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return corrupt


def truncate(relative: str, keep: float = 0.5):
    def corrupt(data: Path):
        path = data / relative
        content = path.read_bytes()
        path.unlink()
        path.write_bytes(content[:int(len(content) * keep)])
    return corrupt


def first_index_part(data: Path) -> Path:
    return sorted((data / "generated" / "index").glob("*.csv"))[0]


def first_clip(data: Path) -> Path:
    return data / "generated" / pd.read_csv(first_index_part(data))["path"].iloc[0]


def first_note(data: Path) -> Path:
    note = pd.read_csv(data / "concepts" / "notes.csv")["note_str"].iloc[0]
    return data / NSYNTH / "audio" / f"{note}.wav"


def replace_wav(locate: Callable[[Path], Path], frames: int | None = None, rate: int | None = None,
                channels: int | None = None, silent: bool = False):
    """Rewrite a wav with noise: its own header values unless given (a short clip: frames=100)."""
    def corrupt(data: Path):
        path = locate(data)
        info = sf.info(str(path))
        n, r, c = frames or info.frames, rate or info.samplerate, channels or info.channels
        noise = (0.0 if silent else 0.1) * np.random.default_rng(0).standard_normal((n, c)).astype(np.float32)
        path.unlink()
        sf.write(str(path), noise, r, subtype="PCM_16", format="WAV")
    return corrupt


def index_part_edit(change: Callable[[pd.DataFrame], pd.DataFrame]):
    def corrupt(data: Path):
        path = first_index_part(data)
        frame = change(pd.read_csv(path, dtype=str, keep_default_na=False))
        path.unlink()
        frame.to_csv(path, index=False)
    return corrupt


def index_cell(column: str, value):
    def change(frame):
        frame.loc[0, column] = value
        return frame
    return index_part_edit(change)


def index_extra_row(**overrides):
    def change(frame):
        row = frame.iloc[[0]].copy()
        for column, value in overrides.items():
            row[column] = value
        return pd.concat([frame, row], ignore_index=True)
    return index_part_edit(change)


def move_index_part_to(prompt_id: str):
    """A whole index part (and its clips) for a prompt annotated.csv does not have."""
    def corrupt(data: Path):
        part = first_index_part(data)
        frame = pd.read_csv(part, dtype=str, keep_default_na=False)
        old = frame["prompt_id"].iloc[0]
        frame["prompt_id"] = prompt_id
        frame["path"] = frame["path"].str.replace(f"audio/{old}/", f"audio/{prompt_id}/", regex=False)
        shutil.copytree(data / "generated" / "audio" / old, data / "generated" / "audio" / prompt_id)
        shutil.copy(part.with_suffix(".json"), part.with_name(f"{prompt_id}.json"))   # made like the others
        frame.to_csv(part.with_name(f"{prompt_id}.csv"), index=False)
    return corrupt


def outside_wav(data: Path) -> str:
    """A valid clip outside --data, to prove an index row cannot make a stage read it."""
    outside = data.parent / "outside.wav"
    shutil.copy(first_clip(data), outside)
    return str(outside)


def index_path_absolute(data: Path):
    index_cell("path", outside_wav(data))(data)


def index_path_escaping(data: Path):
    outside_wav(data)
    index_cell("path", "../../outside.wav")(data)


def notes_path_escaping(data: Path):
    shutil.copy(first_note(data), data.parent / "outside.wav")
    set_cell("concepts/notes.csv", "path", f"../../{data.name}/../outside.wav")(data)


def notes_path_absolute(data: Path):
    shutil.copy(first_note(data), data.parent / "outside.wav")
    set_cell("concepts/notes.csv", "path", str(data.parent / "outside.wav"))(data)


def instrument_on_both_sides(data: Path):
    def change(frame):
        train = frame[frame["split"] == "train"]["instrument_str"].iloc[0]
        test_row = frame.index[frame["split"] == "test"][0]
        frame.loc[test_row, "instrument_str"] = train
        return frame
    edit_table("concepts/notes.csv", change)(data)


def examples_edit(change: Callable[[dict], dict]):
    def corrupt(data: Path):
        path = data / NSYNTH / "examples.json"
        rewrite(path, json.dumps(change(json.loads(path.read_text()))))
    return corrupt


def first_example(change: Callable[[dict], None]):
    def apply(examples):
        change(examples[sorted(examples)[0]])
        return examples
    return examples_edit(apply)


def first_mix(change: Callable[[dict], None]):
    def apply(examples):
        change(examples[min(name for name, example in examples.items() if "parts" in example)])
        return examples
    return examples_edit(apply)


def examples_duplicate_key(data: Path):
    path = data / NSYNTH / "examples.json"
    examples = json.loads(path.read_text())
    key = sorted(examples)[0]
    text = json.dumps(examples)
    # The same note twice, the second copy with another pitch: json.load would keep it silently.
    duplicate = json.dumps({key: {**examples[key], "pitch": 12}})[1:-1]
    rewrite(path, text[:-1] + ", " + duplicate + "}")


def examples_instrument_newline(data: Path):
    """A note whose instrument_str (and so its key and note_str) carries a newline: it would become a file name."""
    def change(examples):
        key = sorted(examples)[0]
        note = examples.pop(key)
        instrument = note["instrument_str"] + "\n"
        new_key = f"{instrument}-{note['pitch']:03d}-{note['velocity']:03d}"
        examples[new_key] = {**note, "instrument_str": instrument, "note_str": new_key}
        return examples
    examples_edit(change)(data)


def examples_instrument_on_both_sides(data: Path):
    """Two instruments of one family given the same instrument_str: notes of one 'instrument' on both sides."""
    notes = pd.read_csv(data / "concepts" / "notes.csv")
    test_instrument = notes[notes["split"] == "test"]["instrument_str"].iloc[0]
    family = test_instrument.rsplit("_", 2)[0]
    train_instrument = notes[(notes["split"] == "train") & notes["instrument_str"].str.startswith(family)][
        "instrument_str"].iloc[0]
    set_cell("concepts/notes.csv", "instrument_str", train_instrument,
             row=int(notes.index[notes["instrument_str"] == test_instrument][0]))(data)


def npy_edit(relative: str, change: Callable[[np.ndarray], np.ndarray]):
    def corrupt(data: Path):
        path = data / relative
        matrix = change(np.load(path).copy())
        path.unlink()
        np.save(path, matrix)
    return corrupt


def set_row(value, row: int = 1):
    def change(matrix):
        matrix[row, 0] = value
        return matrix
    return change


def sidecar_edit(relative: str, change: Callable[[dict], dict]):
    def corrupt(data: Path):
        path = data / relative
        rewrite(path, json.dumps(change(json.loads(path.read_text()))))
    return corrupt


def no_annotated_prompts(data: Path):
    """A generated set, but stage 1's outputs were deleted."""
    delete("prompts/annotated.csv")(data)


def ten_megabyte_prompt(data: Path):
    path = data / "prompts" / "prompts.csv"
    rewrite(path, path.read_text() + "p_huge," + "guitar " * 1_500_000 + ",hand\n")


def stage2_shard_unfinished(data: Path):
    """What a 2-shard stage 2 leaves when shard 1 has not run: its requested.json, shard 0's parts only."""
    path = data / "generated" / "requested.json"
    request = json.loads(path.read_text())
    owners = {prompt: position % 2 for position, prompt in enumerate(sorted(request["reference"]["prompts"]))}
    request["reference"] = {"shards": 2, "prompts": owners}
    rewrite(path, json.dumps(request))
    for prompt, owner in owners.items():
        if owner == 1:
            (data / "generated" / "index" / f"{prompt}.csv").unlink()


def stage5_chunks_unfinished(data: Path):
    """What a 2-shard stage 5 leaves when shard 1 has not run: a chunk folder with shard 0's chunks, no matrix."""
    npy = data / NOTES_NPY
    matrix, sidecar = np.load(npy), json.loads(npy.with_suffix(".json").read_text())
    chunks = npy.with_name("spectral.chunks")
    chunks.mkdir()
    (chunks / "manifest.json").write_text(json.dumps({**sidecar, "chunk_rows": 8, "shards": 2}))
    for k, start in enumerate(range(0, len(matrix), 8)):
        if k % 2 == 0:
            np.save(chunks / f"{k:05d}.npy", matrix[start:start + 8])
    npy.unlink()
    npy.with_suffix(".json").unlink()


def truth_part_changed(data: Path):
    """A truth part rewritten after the truth tables were derived from it (a killed regeneration)."""
    part = sorted((data / "generated" / "truth").glob("*.csv"))[0]
    part.write_text(part.read_text() + "\n")


def write_entry(entry: dict):
    """An intervention spec of one entry beside --data (stage 2 reads it with --intervene {data}/../spec.json)."""
    def corrupt(data: Path):
        (data.parent / "spec.json").write_text(json.dumps({"format": 2, "interventions": [entry]}))
    return corrupt


SPEC = ("--intervene", "{data}/../spec.json")
STEER = {"concept": "is_brass", "direction": "concept", "where": "prior", "strength": 4.0, "from_step": 2}
GENERATED_NPY = "generated/embeddings/spectral.npy"
NOTES_NPY = "concepts/embeddings/spectral.npy"

# Intervention specs live beside --data (the snapshot covers both, SPEC above); the catalogue's run has 10 steps.
INTERVENE_YAML = ("--intervene", "{data}/../spec.yaml")


def spec(entry: dict | None = None, **top) -> dict:
    """A format-2 spec with one prior steering of the ideal model, its entry's keys overridden by `entry`."""
    steering = {"concept": "is_brass", "direction": "concept", "where": "prior", "strength": 8.0, "from_step": 5}
    return {"format": 2, **top, "interventions": [{**steering, **(entry or {})}]}


def write_spec(content, name: str = "spec.json"):
    def corrupt(data: Path):
        path = data.parent / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return corrupt


def chain(*corruptions):
    def corrupt(data: Path):
        for change in corruptions:
            change(data)
    return corrupt


def bank_copy(change: Callable[[Path], None]):
    """The default bank copied beside --data (it is the same bank: same record, same hash) and then damaged; the
    run is a --force over it."""
    def corrupt(data: Path):
        from diffusion.bank import default_bank_dir, default_recipe
        bank = data.parent / "bank"
        shutil.copytree(default_bank_dir(default_recipe()), bank)
        change(bank)
    return corrupt


def bank_clips_emptied(bank: Path):
    (bank / "clips.npy").unlink()
    (bank / "clips.npy").write_bytes(b"")


def bank_clips_object_array(bank: Path):
    """An object array (a pickle inside), with bank.json updated to vouch for it: only the loader can refuse it."""
    (bank / "clips.npy").unlink()
    np.save(bank / "clips.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    sidecar = json.loads((bank / "bank.json").read_text())
    sidecar["clips_npy_sha256"] = hashlib.sha256((bank / "clips.npy").read_bytes()).hexdigest()
    rewrite(bank / "bank.json", json.dumps(sidecar))


BANK_FORCE = ("--model", "{data}/../bank", "--force")


def organism_copy(change: Callable[[Path], None]):
    """The committed organism checkpoint copied beside --data and then damaged; stage 2 samples it with --force
    (so the run reaches the loading of its weights), the evaluation and the analysis read it with --checkpoint."""
    def corrupt(data: Path):
        from diffusion.organism.generator import DEFAULT_CHECKPOINT
        checkpoint = data.parent / "organism"
        shutil.copytree(DEFAULT_CHECKPOINT, checkpoint)
        change(checkpoint)
    return corrupt


def organism_weights_garbled(checkpoint: Path):
    """Garbage under the weights' name, organism.json updated to vouch for it: only the loader can refuse it."""
    write_file("organism.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}" * 40)(checkpoint)
    sha256 = hashlib.sha256((checkpoint / "organism.safetensors").read_bytes()).hexdigest()
    sidecar_edit("organism.json", lambda record: {**record, "weights_sha256": sha256})(checkpoint)


ORGANISM_FORCE = ("--generator", "organism", "--model", "{data}/../organism", "--force")
ORGANISM_CHECKPOINT = ["--checkpoint", "{data}/../organism", "--no-progress"]


def intervention_folder_linked_outside(data: Path):
    """The spec's run folder is a link to a folder outside --data: stage 2 would clear and fill it."""
    outside = data.parent / "elsewhere"
    (outside / "index").mkdir(parents=True)
    (outside / "index" / "keep.csv").write_text("precious\n")
    (data / "generated" / "interventions").mkdir()
    (data / "generated" / "interventions" / "is_brass_concept_prior_s8_k5").symlink_to(outside)


def linked_outside(relative: str, make: bool = False):
    """A folder a run writes inside its run folder, moved out of --data (or, make=True, made there with a file in
    it) and linked back: the run would write, and --force delete, through the link."""
    def corrupt(data: Path):
        folder, outside = data / relative, data.parent / "elsewhere"
        if make:
            outside.mkdir()
            (outside / "keep.csv").write_text("precious\n")
            folder.parent.mkdir(parents=True, exist_ok=True)
        else:
            shutil.move(folder, outside)
        folder.symlink_to(outside)
    return corrupt


INTERVENTION_RUN = "generated/interventions/is_brass_concept_prior_s8_k5"
JUDGE_DIR = "generated/judge/musicnn-tags-MTT_musicnn"


def judged_then(change: Callable[[Path], None]):
    """Run the judge on the copy (its final clips), then break what it wrote."""
    def corrupt(data: Path):
        code, stderr = run_in_process("judge", stage_argv("judge", data))
        assert code == 0, stderr[-2000:]
        change(data)
    return corrupt


def judge_lacks_a_final_clip(data: Path):
    """The judge's table without its last row, its sidecar updated to match: a table made before stage 2 added a
    trajectory."""
    table, sidecar = data / JUDGE_DIR / "judge.csv", data / JUDGE_DIR / "judge.json"
    lines = table.read_text(encoding="utf-8").splitlines(keepends=True)
    rewrite(table, "".join(lines[:-1]))
    rewrite(sidecar, json.dumps({**json.loads(sidecar.read_text()),
                                 "table_sha256": hashlib.sha256(table.read_bytes()).hexdigest()}))


def npz_archive(relative: str):
    """The array saved as an .npz archive under its .npy name (np.load opens a zip whatever the file is called)."""
    def corrupt(data: Path):
        path = data / relative
        matrix = np.load(path)
        path.unlink()
        with path.open("wb") as file:
            np.savez(file, matrix)
    return corrupt


def planted_geometry(change: Callable[[dict], None] | None = None, text: str | None = None):
    """The default planted geometry beside --data, changed (or replaced by `text`)."""
    def corrupt(data: Path):
        from diffusion.planted import DEFAULT_GEOMETRY
        geometry = json.loads(DEFAULT_GEOMETRY.read_text())
        if change is not None:
            change(geometry)
        (data.parent / "geometry.json").write_text(text if text is not None else json.dumps(geometry))
    return corrupt


def soundfont_cut_off(data: Path):
    """The renderer's default soundfont cut in half beside --data (a download that stopped)."""
    from data.soundfont import default_soundfont
    content = default_soundfont().read_bytes()
    (data.parent / "bad.sf2").write_bytes(content[:len(content) // 2])


def results_folder_linked_outside(data: Path):
    """Stage 6's results folder is a link to a folder outside --data: its tables would be written there."""
    (data.parent / "elsewhere").mkdir()
    (data / "results" / "spectral" / "logreg").mkdir(parents=True)
    (data / "results" / "spectral" / "logreg" / "x0").symlink_to(data.parent / "elsewhere")


PLANTED = ("--preset", "planted", "--generator-option", "geometry={data}/../geometry.json")
DEFAULT_GEOMETRY_TEXT = (REPO_ROOT / "diffusion" / "specs" / "planted_geometry.json").read_text()


# ---------------------------------------------------------------------------------------------- the catalogue

@dataclass
class Case:
    id: str
    stage: object
    corrupt: Callable[[Path], None] | None
    expect: tuple[str, ...]              # words the error line must contain
    args: list[str] | None = None        # replaces the stage's ARGS
    extra: tuple[str, ...] = ()          # appended to them
    subprocess: bool = False
    env: dict = field(default_factory=dict)


CASES = [
    # ---- stage 1: prompts.csv (annotate validates it) and the command line
    Case("s1-missing-column", 1, edit_text("prompts/prompts.csv", "prompt_id,prompt,origin", "prompt_id,text,origin"),
         ("prompts.csv", "column 'prompt'")),
    Case("s1-empty-file", 1, write_file("prompts/prompts.csv", ""), ("prompts.csv", "not a readable CSV")),
    Case("s1-header-only", 1, write_file("prompts/prompts.csv", "prompt_id,prompt,origin\n"),
         ("prompts.csv", "no rows")),
    Case("s1-duplicate-id", 1, append_line("prompts/prompts.csv", "p_dup,one,hand\np_dup,two,hand"),
         ("prompts.csv", "duplicate prompt_id 'p_dup'")),
    Case("s1-id-trailing-newline", 1, append_line("prompts/prompts.csv", '"p_nl\n",a song,hand'),
         ("prompts.csv", "prompt_id", "must match"), subprocess=True),
    Case("s1-id-path-escape", 1, append_line("prompts/prompts.csv", "../evil,a song,hand"),
         ("prompts.csv", "'../evil'")),
    Case("s1-id-too-long", 1, append_line("prompts/prompts.csv", "p" + "x" * 300 + ",a song,hand"),
         ("prompts.csv", "at most 100 characters")),
    Case("s1-nul-in-prompt", 1, append_line("prompts/prompts.csv", "p_nul,a \x00 song,hand"),
         ("prompts.csv", "control character")),
    Case("s1-empty-prompt", 1, append_line("prompts/prompts.csv", 'p_empty," ",hand'), ("prompts.csv", "empty prompt")),
    Case("s1-unquoted-comma", 1, append_line("prompts/prompts.csv", "p_comma,a slow, sad song,hand"),
         ("prompts.csv", "fields but the header has 3", "quoted"), subprocess=True),
    Case("s1-row-after-blank-lines", 1, append_line("prompts/prompts.csv", "\n\n\np_x,,hand"),
         ("prompts.csv row {last_line}", "empty prompt")),
    Case("s1-not-utf8", 1, write_file("prompts/prompts.csv", b"prompt_id,prompt,origin\np1,caf\xe9 song,hand\n"),
         ("prompts.csv", "UTF-8")),
    Case("s1-ten-megabyte-prompt", 1, ten_megabyte_prompt, ("prompts.csv", "characters"), subprocess=True),
    Case("s1-bad-flag-value", 1, None, ("--annotator",), args=["annotate", "--annotator", "magic"], subprocess=True),
    Case("s1-unknown-flag", 1, None, ("--colour",), args=["annotate", "--colour"]),
    Case("s1-bad-batch-size", 1, None, ("--batch-size",), args=["annotate", "--batch-size", "0"]),
    Case("s1-llm-without-key", 1, None, ("OPENAI_API_KEY",), args=["annotate", "--annotator", "llm", "--force"],
         subprocess=True, env={"OPENAI_API_KEY": ""}),
    Case("s1-data-is-a-file", 1, None, ("is not a directory",), extra=("--data", "{data}/prompts/prompts.csv")),
    Case("s1-not-a-number", 1, None, ("--concurrency",), args=["annotate", "--concurrency", "many"]),
    Case("s1-blank-row", 1, append_line("prompts/prompts.csv", ",,"), ("prompts.csv row", "the row is empty")),
    Case("s1-prompts-missing", 1, delete("prompts/prompts.csv"), ("prompts.csv: missing", "run stage 1 generate first")),

    # ---- stage 2: annotated.csv and the command line
    Case("s2-label-not-in-vocabulary", 2, set_cell("prompts/annotated.csv", "labels", "accordion"),
         ("annotated.csv row 2", "accordion")),
    Case("s2-bpm-out-of-range", 2, set_cell("prompts/annotated.csv", "bpm", "5000"), ("annotated.csv row 2", "bpm")),
    Case("s2-bpm-not-a-number", 2, set_cell("prompts/annotated.csv", "bpm", "fast", row=2),
         ("annotated.csv row 4", "bpm")),
    Case("s2-duplicate-id", 2, duplicate_cell("prompts/annotated.csv", "prompt_id"),
         ("annotated.csv row 3", "duplicate prompt_id")),
    Case("s2-id-trailing-newline", 2, set_cell("prompts/annotated.csv", "prompt_id", "p1\n"),
         ("annotated.csv row 2", "prompt_id")),
    Case("s2-missing-column", 2, edit_table("prompts/annotated.csv", lambda f: f.drop(columns=["labels"])),
         ("annotated.csv", "column 'labels'")),
    Case("s2-annotated-missing", 2, no_annotated_prompts, ("annotated.csv", "missing"), subprocess=True),
    Case("s2-unquoted-comma", 2, append_line("prompts/annotated.csv", "p_c,a fast, loud song,bass,,offline"),
         ("annotated.csv", "fields")),
    Case("s2-ten-megabyte-prompt", 2, set_cell("prompts/annotated.csv", "prompt", "drums " * 2_000_000),
         ("annotated.csv", "characters")),
    Case("s2-shard-out-of-range", 2, None, ("--shard",), extra=("--shard", "3/2"), subprocess=True),
    Case("s2-shard-garbage", 2, None, ("--shard",), extra=("--shard", "half")),
    Case("s2-shard-from-slurm", 2, None, ("SLURM_ARRAY_TASK_ID",), subprocess=True,
         env={"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "2"}),
    Case("s2-zero-samples", 2, None, ("--samples",), extra=("--samples", "0")),
    Case("s2-negative-seed", 2, None, ("--seed",), extra=("--seed", "-1")),
    Case("s2-unknown-generator", 2, None, ("generator",), extra=("--generator", "wavenet")),
    Case("s2-seconds-too-long", 2, None, ("--seconds",), extra=("--seconds", "1000")),
    Case("s2-capture-step-out-of-range", 2, None, ("99",), extra=("--capture-steps", "4,99")),
    Case("s2-bad-kinds", 2, None, ("kind",), extra=("--kinds", "x1")),
    Case("s2-steps-not-a-number", 2, None, ("--steps",), extra=("--steps", "ten")),
    Case("s2-spec-from-step-past-the-end", 2, write_entry({**STEER, "from_step": 10}),
         ("from_step 10 is past the last denoising step 9",), extra=SPEC),
    Case("s2-spec-every-zero", 2, write_entry({**STEER, "every": 0}), ("every: 0 must be a positive number",),
         extra=SPEC),
    Case("s2-spec-unknown-preset", 2, write_entry({**STEER, "preset": "paper"}), ("'paper' is not one of published",),
         extra=SPEC),
    Case("s2-spec-interchange-rows", 2, write_entry({"kind": "interchange", "concept_a": "is_brass",
                                                    "concept_b": "is_keyboard", "op": "replace", "blocks": [0],
                                                    "rows": "unconditional"}),
         ("'unconditional' is not one of conditional, both",), extra=SPEC),
    Case("s2-blank-row", 2, append_line("prompts/annotated.csv", ",,,,"), ("annotated.csv row", "the row is empty")),
    # A corrupt generator input is refused before --force removes a single clip.
    Case("s2-force-bank-empty", 2, bank_copy(bank_clips_emptied), ("clips.npy", "not the file bank.json describes"),
         extra=BANK_FORCE, subprocess=True),
    Case("s2-force-bank-object-array", 2, bank_copy(bank_clips_object_array), ("clips.npy", "Object arrays"),
         extra=BANK_FORCE),
    # A damaged organism checkpoint, through each command that reads one (stage 2, its evaluation, the analysis).
    Case("s2-organism-weights-cut-off", 2, organism_copy(truncate("organism.safetensors")),
         ("organism.safetensors", "its sha256 is not the one organism.json records", "retrain it"),
         extra=ORGANISM_FORCE, subprocess=True),
    Case("s2-organism-weights-garbled", 2, organism_copy(organism_weights_garbled),
         ("organism.safetensors", "does not load into the network", "retrain it"), extra=ORGANISM_FORCE),
    Case("s2-organism-record-lacks-a-key", 2,
         organism_copy(sidecar_edit("organism.json", lambda record: {
             key: value for key, value in record.items() if key != "weights_sha256"})),
         ("organism.json", "weights_sha256 is missing", "retrain it"), extra=ORGANISM_FORCE),
    Case("organism-evaluate-other-shapes", "organism-evaluate",
         organism_copy(sidecar_edit("organism.json", lambda record: {
             **record, "network": {**record["network"], "channels": 28}})),
         ("organism.safetensors", "does not load into the network", "size mismatch", "retrain it"),
         args=ORGANISM_CHECKPOINT),
    Case("organism-evaluate-unknown-bank", "organism-evaluate",
         organism_copy(sidecar_edit("organism.json", lambda record: {
             **record, "recipe": {**record["recipe"], "bank": "kazoo"}})),
         ("organism.json", "recipe.bank 'kazoo' is not an organism bank"), args=ORGANISM_CHECKPOINT),
    Case("organism-analysis-record-not-json", "organism-analysis", organism_copy(truncate("organism.json")),
         ("organism.json", "not valid JSON", "retrain it"), args=ORGANISM_CHECKPOINT, subprocess=True),
    # ---- stage 2 --intervene: the spec (ids name folders; one JSON/YAML loader; steps on the generator's clock)
    Case("s2-spec-id-dotdot", 2, write_spec(spec({"id": ".."})), ("spec.json", "intervention id '..'"),
         extra=SPEC, subprocess=True),
    Case("s2-spec-id-dot", 2, write_spec(spec({"id": "."})), ("intervention id '.'",), extra=SPEC),
    Case("s2-spec-id-trailing-newline", 2, write_spec(spec({"id": "x\n"})), ("intervention id 'x\\n'",),
         extra=SPEC),
    Case("s2-spec-id-empty", 2, write_spec(spec({"id": ""})), ("empty intervention id",), extra=SPEC),
    Case("s2-spec-id-reserved", 2, write_spec(spec({"id": "component-means"})), ("reserved",), extra=SPEC),
    Case("s2-spec-interchange-id-escapes", 2, write_spec({"format": 2, "interventions": [
        {"kind": "interchange", "concept_a": "is_brass", "concept_b": "is_keyboard", "op": "replace", "blocks": [0],
         "id": "../x"}]}), ("intervention id '../x'",), extra=SPEC),
    Case("s2-spec-duplicate-key", 2, write_spec(json.dumps(spec({"strength": 8.0}))[:-3] + ', "strength": -8.0}]}'),
         ("spec.json", "'strength' appears twice"), extra=SPEC, subprocess=True),
    Case("s2-spec-yaml-duplicate-key", 2, write_spec(
        "format: 2\ninterventions:\n- concept: is_brass\n  direction: concept\n  where: prior\n  strength: 8.0\n"
        "  strength: -8.0\n  from_step: 5\n", "spec.yaml"), ("spec.yaml", "'strength' appears twice"),
         extra=INTERVENE_YAML),
    Case("s2-spec-not-utf8", 2, write_spec(b'{"format": 2, "caf\xe9": 1}'), ("spec.json", "not UTF-8"),
         extra=SPEC, subprocess=True),
    Case("s2-spec-too-deep", 2, write_spec("[" * 200_000), ("spec.json", "nested too deeply"), extra=SPEC,
         subprocess=True),
    Case("s2-spec-yaml-too-deep", 2, write_spec("[" * 200_000, "spec.yaml"), ("spec.yaml", "nested too deeply"),
         extra=INTERVENE_YAML),
    Case("s2-spec-to-step-past-the-end", 2, write_spec(spec({"to_step": 11})), ("to_step 11", "past the end"),
         extra=SPEC),
    Case("s2-spec-capture-step-outside", 2, write_spec(spec(capture_steps=[99])), ("capture_steps 99",),
         extra=SPEC),
    Case("s2-spec-prompt-id-newline", 2, write_spec(spec(prompts=["p1\n"])), ("prompts", "prompt_id"),
         extra=SPEC),
    Case("s2-spec-prompt-twice", 2, write_spec(spec(prompts=["p1", "p2", "p1"])), ("prompts", "'p1' is given twice"),
         extra=SPEC),
    Case("s2-intervention-folder-is-a-link", 2, chain(write_spec(spec()), intervention_folder_linked_outside),
         ("is_brass_concept_prior_s8_k5: is a symbolic link", "outside"), extra=SPEC),
    # ... and so are the folders a run writes inside its own folder, the reference run's too.
    Case("s2-intervention-index-is-a-link", 2, chain(write_spec(spec()),
                                                     linked_outside(INTERVENTION_RUN + "/index", make=True)),
         ("is_brass_concept_prior_s8_k5/index: is a symbolic link", "outside"), extra=SPEC),
    Case("s2-intervention-audio-is-a-link", 2, chain(write_spec(spec()),
                                                     linked_outside(INTERVENTION_RUN + "/audio", make=True)),
         ("is_brass_concept_prior_s8_k5/audio: is a symbolic link", "outside"), extra=(*SPEC, "--force"),
         subprocess=True),
    Case("s2-audio-is-a-link", 2, linked_outside("generated/audio"), ("generated/audio: is a symbolic link",
                                                                       "outside"), extra=("--force",)),
    # Refused while generating (no bank clip carries a quality): the run leaves no intervention.json behind.
    Case("s2-steer-concept-without-clips", 2, write_spec(spec({"concept": "warm"})), ("'warm' marks no clip",),
         extra=SPEC),
    # ---- stage 2 --preset planted: the geometry file and the generator options (checked before the provenance)
    Case("s2-planted-geometry-duplicate-key", 2,
         planted_geometry(text=DEFAULT_GEOMETRY_TEXT.rstrip().removesuffix("}") + ', "seed": 3}'),
         ("geometry.json", "'seed' appears twice"), extra=PLANTED),
    Case("s2-planted-geometry-negative-scale", 2, planted_geometry(lambda g: g["groups"][0].update(scale=-8.0)),
         ("geometry.json", "group 'early' needs scale > 0"), extra=PLANTED),
    Case("s2-planted-geometry-scale-as-text", 2, planted_geometry(lambda g: g["groups"][1].update(scale="0.8")),
         ("geometry.json", "group 'middle' needs scale > 0"), extra=PLANTED),
    Case("s2-planted-geometry-unknown-label", 2, planted_geometry(lambda g: g["groups"][2]["labels"].append("kazoo")),
         ("geometry.json", "group 'late' labels must be a non-empty list of families"), extra=PLANTED),
    Case("s2-planted-geometry-label-twice", 2, planted_geometry(lambda g: g["groups"][2]["labels"].append("brass")),
         ("geometry.json", "label 'brass' is in two groups"), extra=PLANTED),
    Case("s2-planted-geometry-not-an-object", 2, planted_geometry(text="[1, 2]"),
         ("geometry.json", "not a planted geometry of format 1"), extra=PLANTED),
    Case("s2-planted-scales-infinite", 2, None, ("--generator-option scales", "needs scale > 0"),
         extra=("--preset", "planted", "--generator-option", "scales=inf,1,1")),
    Case("s2-generator-option-twice", 2, None, ("--generator-option scales is given twice",),
         extra=("--preset", "planted", "--generator-option", "scales=8,0.8,0.08", "--generator-option",
                "scales=1,1,1")),

    # ---- stage 3: the generated index, its clips and generation.json
    Case("s3-index-path-absolute", 3, index_path_absolute, ("index", "must stay inside"), subprocess=True),
    Case("s3-index-path-escapes", 3, index_path_escaping, ("index", "'../../outside.wav'")),
    Case("s3-index-unknown-prompt", 3, move_index_part_to("p_unknown"), ("p_unknown", "annotated.csv")),
    Case("s3-index-id-trailing-newline", 3, index_cell("prompt_id", "p1\n"), ("index", "prompt_id")),
    # --force: the embeddings are up to date, so without it a clip broken afterwards is never read again.
    Case("s3-short-clip", 3, replace_wav(first_clip, frames=100), ("100 samples", "declares"), extra=("--force",),
         subprocess=True),
    Case("s3-missing-clip", 3, lambda data: first_clip(data).unlink(), ("missing",), extra=("--force",)),
    Case("s3-truncated-clip", 3, lambda data: truncate(str(first_clip(data).relative_to(data)), 0.3)(data),
         ("truncated",), extra=("--force",)),
    Case("s3-silent-clip", 3, replace_wav(first_clip, silent=True), ("silent",), extra=("--force",),
         args=["--embedder", "spectral"], subprocess=True),
    Case("s3-clip-wrong-rate", 3, replace_wav(first_clip, rate=8000), ("8000 Hz",), extra=("--force",)),
    Case("s3-clip-wrong-channels", 3, replace_wav(first_clip, channels=2), ("channel",), extra=("--force",)),
    Case("s3-generation-json-list", 3, write_file("generated/generation.json", "[]"),
         ("generation.json", "expected a JSON object")),
    Case("s3-generation-json-truncated", 3, truncate("generated/generation.json"),
         ("generation.json", "not valid JSON"), subprocess=True),
    Case("s3-generation-json-too-deep", 3, write_file("generated/generation.json", "[" * 200_000),
         ("generation.json", "nested too deeply"), subprocess=True),
    Case("s3-generation-json-duplicate-key", 3, edit_text("generated/generation.json", "{", '{"steps": 1, ', 1),
         ("generation.json", "twice")),
    Case("s3-index-sample-not-integer", 3, index_cell("sample", "zero"), ("index", "sample")),
    Case("s3-index-bad-kind", 3, index_cell("kind", "x9"), ("index", "x9")),
    Case("s3-index-duplicate-clip", 3, index_extra_row(), ("appears twice",)),
    Case("s3-index-bad-rate", 3, index_cell("sample_rate", "-16000"), ("index", "sample_rate")),
    Case("s3-index-unquoted-comma", 3, index_raw_line("{prompt_id},0,1,0.5,x0,1,4.0,16000,audio/a,b.wav"),
         ("fields",)),
    Case("s3-data-is-a-file", 3, None, ("is not a directory",), extra=("--data", "{data}/generated/generation.json"),
         subprocess=True),
    Case("s3-shard-garbage", 3, None, ("--shard",), extra=("--shard", "2/2")),
    Case("s3-index-negative-step", 3, index_cell("step", "-1"), ("index", "step")),
    Case("s3-stage2-shard-unfinished", 3, stage2_shard_unfinished,
         ("stage 2 is unfinished", "1 of 3 requested prompts have no complete index part", "shard 1/2",
          "then run stage 3"), subprocess=True),
    Case("s3-requested-json-garbage", 3, write_file("generated/requested.json", '{"reference": 3}'),
         ("requested.json", "not a stage-2 request", "rerun stage 2")),
    Case("s3-requested-json-duplicate-key", 3, edit_text("generated/requested.json", "{", '{"format": 1, ', 1),
         ("requested.json", "'format' appears twice")),
    Case("s3-requested-prompt-id-escapes", 3, sidecar_edit("generated/requested.json", lambda r: {
        **r, "reference": {"shards": 1, "prompts": {**r["reference"]["prompts"], "../x": 0}}}),
         ("requested.json", "prompt_id '../x' must match")),
    Case("s3-requested-intervention-id-dotdot", 3, sidecar_edit("generated/requested.json", lambda r: {
        **r, "interventions": {"..": {"shards": 1, "prompts": {}}}}), ("requested.json", "intervention id '..'")),
    Case("s3-stage2-never-ran-typo-data", 3, None, ("generation.json: missing", "run stage 2 first",
                                                    "is it the folder you meant"), extra=("--data", "{data}-typo")),
    Case("s3-index-fractional-sample", 3, index_cell("sample", "0.5"), ("index", "sample")),
    Case("s3-index-sigma-garbage", 3, index_cell("sigma", "loud"), ("index", "sigma")),
    Case("s3-generation-channels-garbage", 3, sidecar_edit("generated/generation.json",
                                                           lambda g: {**g, "channels": "two"}),
         ("generation.json", "channels")),
    Case("s3-unknown-embedder", 3, None, ("--embedder",), extra=("--embedder", "wav2vec")),
    Case("s3-zero-batch", 3, None, ("batch",), extra=("--batch-size", "0")),
    Case("s3-model-for-spectral", 3, None, ("--model",), extra=("--model", "x")),
    Case("s3-stage2-not-run", 3, delete("generated"), ("generation.json: missing", "run stage 2 first")),
    # Parts made under another generation.json (a killed --force with new settings) are refused, named.
    Case("s3-parts-of-other-settings", 3, sidecar_edit("generated/generation.json", lambda g: {**g, "seed": 7}),
         ("index", "not made under the current generation.json", "p"), extra=("--force",)),
    Case("s3-part-sidecar-missing", 3, lambda data: first_index_part(data).with_suffix(".json").unlink(),
         ("1 of 3 parts",), extra=("--force",)),
    # A part's record that cannot vouch for it (a key twice, not JSON) counts as missing: named, never trusted.
    Case("s3-part-sidecar-duplicate-key", 3, lambda data: edit_text(
        str(first_index_part(data).with_suffix(".json").relative_to(data)), "{", '{"record": "x", ', 1)(data),
         ("1 of 3 parts", "not made under the current generation.json")),
    Case("s6-part-sidecar-not-json", 6, lambda data: rewrite(first_index_part(data).with_suffix(".json"), "[" * 99999),
         ("1 of 3 parts", "not made under the current generation.json")),

    # ---- stage 4: examples.json of the NSynth folder and the command line
    Case("s4-duplicate-key", 4, examples_duplicate_key, ("examples.json", "twice"), subprocess=True),
    Case("s4-missing-field", 4, first_example(lambda note: note.pop("pitch")), ("examples.json", "'pitch'")),
    Case("s4-pitch-out-of-range", 4, first_example(lambda note: note.update(pitch=200)), ("pitch 200",)),
    Case("s4-pitch-not-integer", 4, first_example(lambda note: note.update(pitch="high")), ("'pitch'",)),
    Case("s4-key-mismatch", 4, first_example(lambda note: note.update(note_str="other")), ("keyed",)),
    Case("s4-instrument-trailing-newline", 4, examples_instrument_newline, ("examples.json", "instrument_str")),
    Case("s4-too-deep", 4, write_file(NSYNTH + "/examples.json", "[" * 200_000), ("examples.json", "nested")),
    Case("s4-list-not-object", 4, examples_edit(lambda examples: list(examples.values())),
         ("examples.json", "expected an object")),
    Case("s4-truncated", 4, truncate(NSYNTH + "/examples.json"), ("examples.json", "not valid JSON")),
    Case("s4-unknown-family", 4, first_example(lambda note: note.update(instrument_family_str="kazoo")),
         ("kazoo",)),
    Case("s4-qualities-wrong-length", 4, first_example(lambda note: note.update(qualities=[0, 1])),
         ("qualities",)),
    Case("s4-wrong-sample-rate", 4, first_example(lambda note: note.update(sample_rate=44100)), ("44100",)),
    Case("s4-program-out-of-range", 4, first_example(lambda note: note.update(program=300)), ("program 300",)),
    Case("s4-parts-not-a-list", 4, first_mix(lambda note: note.update(parts="violin")), ("parts must be a list",)),
    Case("s4-part-unknown-family", 4, first_mix(lambda note: note["parts"][1].update(family="kazoo")),
         ("examples.json", "family/source")),
    Case("s4-mix-first-part-not-its-own", 4, first_mix(lambda note: note["parts"][0].update(pitch=1)),
         ("first part",)),
    Case("s4-mix-note-str-without-parts", 4, first_mix(lambda note: note.pop("parts")), ("note_str does not match",)),
    Case("s4-note-audio-missing", 4, lambda data: first_note(data).unlink(), ("missing",)),
    Case("s4-short-note", 4, replace_wav(first_note, frames=100), ("100 frames",), extra=("--force",)),
    Case("s4-not-utf8", 4, write_file(NSYNTH + "/examples.json", b'{"caf\xe9": 1}'), ("examples.json", "UTF-8")),
    Case("s4-nsynth-dir-is-a-file", 4, None, ("examples.json",), args=["--nsynth-dir", "{data}/prompts/prompts.csv"]),
    Case("s4-test-fraction", 4, None, ("--test-fraction",), extra=("--test-fraction", "1.5")),
    Case("s4-max-per-concept", 4, None, ("--max-per-concept",), extra=("--max-per-concept", "0")),
    Case("s4-nsynth-dir-missing", 4, None, ("examples.json", "missing"), args=["--nsynth-dir", "{data}/nowhere"]),

    # ---- stage 5: notes.csv, concepts.json and the notes' audio
    Case("s5-short-note", 5, replace_wav(first_note, frames=100), ("100 samples", "64000"), extra=("--force",),
         subprocess=True),
    Case("s5-silent-note", 5, replace_wav(first_note, silent=True), ("silent",), extra=("--force",)),
    Case("s5-stereo-note", 5, replace_wav(first_note, channels=2), ("channel",), extra=("--force",)),
    Case("s5-note-missing", 5, lambda data: first_note(data).unlink(), ("missing",), extra=("--force",)),
    Case("s5-notes-unquoted-comma", 5, append_line("concepts/notes.csv", "a,b,c,d,e,f,g,h,i,j"),
         ("notes.csv", "fields"), subprocess=True),
    Case("s5-notes-duplicate", 5, duplicate_cell("concepts/notes.csv", "note_str"), ("notes.csv row 3", "duplicate")),
    Case("s5-notes-path-escapes", 5, notes_path_escaping, ("notes.csv", "must stay inside")),
    Case("s5-notes-path-absolute", 5, notes_path_absolute, ("notes.csv", "must stay inside")),
    Case("s5-instrument-both-sides", 5, examples_instrument_on_both_sides, ("notes.csv", "both sides")),
    Case("s5-bad-split", 5, set_cell("concepts/notes.csv", "split", "valid"), ("notes.csv row 2", "split")),
    Case("s5-concepts-json-list", 5, write_file("concepts/concepts.json", "[1, 2]"),
         ("concepts.json", "expected a JSON object")),
    Case("s5-concepts-json-truncated", 5, truncate("concepts/concepts.json"), ("concepts.json", "not valid JSON")),
    Case("s5-window-for-spectral", 5, None, ("--window",), extra=("--window", "first")),
    Case("s5-notes-unknown-family", 5, set_cell("concepts/notes.csv", "family", "kazoo"), ("notes.csv row 2", "kazoo")),
    Case("s5-notes-bad-pitch", 5, set_cell("concepts/notes.csv", "pitch", "C4"), ("notes.csv row 2", "pitch")),
    Case("s5-notes-unknown-quality", 5, set_cell("concepts/notes.csv", "qualities", "shiny"),
         ("notes.csv row 2", "shiny")),
    Case("s5-nsynth-dir-gone", 5, delete(NSYNTH), ("nsynth_dir",)),
    Case("s5-before-stage4", 5, delete("concepts/notes.csv"), ("notes.csv: missing — run stage 4 first",)),

    # ---- stage 6: embeddings, sidecars and the command line
    # ---- the judge (embeddings/judge_generated.py) and stage 6's reading of its table
    Case("judge-unknown-judge", "judge", None, ("--judge 'wav2vec'", "not an embedder"), extra=("--judge", "wav2vec")),
    Case("judge-not-a-tagger", "judge", None, ("--judge spectral", "no tags"), extra=("--judge", "spectral")),
    Case("judge-unknown-checkpoint", "judge", None, ("MTT_nope", "not a musicnn checkpoint"),
         extra=("--model", "MTT_nope")),
    Case("judge-bad-positions", "judge", None, ("--positions",), extra=("--positions", "middle"), subprocess=True),
    Case("judge-stage2-never-ran", "judge", delete("generated/generation.json"), ("generation.json", "missing")),
    Case("judge-clip-wrong-rate", "judge", replace_wav(first_clip, rate=8000), ("8000 Hz",),
         extra=("--positions", "all")),
    Case("judge-taggram-of-another-checkpoint", "judge",
         judged_then(sidecar_edit(f"{JUDGE_DIR}/taggram.json", lambda record: {**record, "checkpoint_sha256": "0" * 64})),
         ("taggram.json", "checkpoint_sha256", "--force"), extra=("--positions", "all")),
    Case("s6-judge-table-edited", 6, judged_then(append_line(f"{JUDGE_DIR}/judge.csv", ",p1,0,x0,9,x.wav")),
         ("judge.json", "another judge.csv", "rerun")),
    Case("s6-judge-lacks-a-final-clip", 6, judged_then(judge_lacks_a_final_clip),
         ("judge.csv", "no verdict on prompt", "tags only the clips it lacks")),
    Case("s6-judge-unfinished", 6, judged_then(delete(f"{JUDGE_DIR}/judge.json")), ("judge.csv", "no sidecar")),
    Case("s6-nan-row", 6, npy_edit(GENERATED_NPY, set_row(np.nan, row=1)), ("spectral.npy", "row 1", "NaN"),
         subprocess=True),
    Case("s6-inf-note-row", 6, npy_edit(NOTES_NPY, set_row(np.inf, row=3)), ("spectral.npy", "row 3")),
    Case("s6-sidecar-list", 6, write_file("generated/embeddings/spectral.json", "[]"),
         ("spectral.json", "expected a JSON object")),
    Case("s6-sidecar-truncated", 6, truncate("generated/embeddings/spectral.json"),
         ("spectral.json", "not valid JSON")),
    Case("s6-sidecar-duplicate-key", 6, edit_text(NOTES_NPY.replace(".npy", ".json"), "{", '{"dim": 3, ', 1),
         ("spectral.json", "twice")),
    Case("s6-mismatched-embedders", 6, sidecar_edit(NOTES_NPY.replace(".npy", ".json"),
                                                    lambda s: {**s, "window_policy": "another window"}),
         ("window_policy",)),
    Case("s6-float64-matrix", 6, npy_edit(GENERATED_NPY, lambda m: m.astype(np.float64)), ("float32",)),
    Case("s6-row-count", 6, npy_edit(NOTES_NPY, lambda m: m[:-1]), ("rows",)),
    Case("s6-sets-bad-label", 6, set_cell("concepts/sets.csv", "label", "2"), ("sets.csv row 2", "label")),
    Case("s6-sets-bad-split", 6, set_cell("concepts/sets.csv", "split", "valid"), ("sets.csv row 2", "split")),
    Case("s6-sets-unknown-concept", 6, set_cell("concepts/sets.csv", "concept", "is_kazoo"), ("sets.csv row 2", "is_kazoo")),
    Case("s6-sets-duplicate-row", 6, edit_table("concepts/sets.csv", lambda f: pd.concat([f.iloc[[0]], f])),
         ("sets.csv row 3", "twice")),
    Case("s6-kind-without-clips", 6, None, ("xt",), extra=("--kind", "xt")),
    Case("s6-unknown-embedder", 6, None, ("not an embedder",), args=["--embedder", "nosuch"]),
    Case("s6-embeddings-missing", 6, delete(GENERATED_NPY), ("spectral.npy", "missing")),
    Case("s6-embeddings-npz-archive", 6, npz_archive(GENERATED_NPY), ("spectral.npy", "an .npz archive")),
    Case("s6-notes-embeddings-garbage", 6, write_file(NOTES_NPY, b"not an array\n" * 20),
         ("spectral.npy", "unreadable .npy")),
    Case("s6-bad-probe", 6, None, ("--probe",), extra=("--probe", "forest")),
    Case("s6-zero-bootstrap", 6, None, ("--bootstrap",), extra=("--bootstrap", "0")),
    Case("s6-alpha-out-of-range", 6, None, ("--alpha",), extra=("--alpha", "2")),
    Case("s6-missing-embedder-flag", 6, None, ("--embedder",), args=["--bootstrap", "20"], subprocess=True),
    Case("s6-index-unknown-prompt", 6, move_index_part_to("p_unknown"), ()),
    Case("s6-empty-embeddings", 6, write_file(GENERATED_NPY, b""), ("spectral.npy", "empty file (0 bytes)")),
    Case("s6-stage4-not-run", 6, delete("concepts"), ("notes.csv: missing", "run stage 4 first")),
    Case("s6-parts-of-other-settings", 6, sidecar_edit("generated/generation.json", lambda g: {**g, "seed": 7}),
         ("not made under the current generation.json",)),
    Case("s6-stage5-chunks-unfinished", 6, stage5_chunks_unfinished,
         ("spectral.npy: missing — stage 5 is unfinished", "chunks are missing", "owned by shard 1/2")),
    Case("s6-truth-tables-stale", 6, truth_part_changed, ("truth_tables", "made from another", "rerun stage 2")),
    Case("s6-truth-table-emptied", 6, write_file("generated/truth_tables/commit_steps.csv", ""),
         ("truth_tables", "a table is not the file stage 2 wrote", "rerun stage 2")),
    Case("s6-truth-table-edited", 6, append_line("generated/truth_tables/emergence_truth.csv", "is_brass,1,2,3"),
         ("truth_tables", "a table is not the file stage 2 wrote")),
    Case("s6-truth-tables-record-garbage", 6, sidecar_edit("generated/truth_tables/truth_tables.json",
                                                           lambda record: {**record, "inputs": []}),
         ("truth_tables.json", "not a truth-tables record")),
    Case("s6-truth-tables-part-id-escapes", 6, sidecar_edit("generated/truth_tables/truth_tables.json", lambda r: {
        **r, "inputs": {**r["inputs"], "parts_sha256": {"../../x": "0" * 64}}}), ("truth part '../../x.csv'",)),
    Case("s6-negative-resplits", 6, None, ("--resplits",), extra=("--resplits", "-1")),
    Case("s6-negative-seed", 6, None, ("--seed >= 0",), extra=("--seed", "-1")),
    Case("s6-results-linked-outside", 6, results_folder_linked_outside, ("x0: is a symbolic link", "outside")),
    Case("s6-results-root-linked-outside", 6, linked_outside("results", make=True),
         ("results: is a symbolic link", "outside --data", "remove the link")),
    Case("organism-analysis-results-root-linked-outside", "organism-analysis", linked_outside("results", make=True),
         ("results: is a symbolic link", "outside --data"), args=ORGANISM_CHECKPOINT[2:], subprocess=True),
    Case("s6-typo-data", 6, None, ("annotated.csv: missing — run stage 1 first", "is it the folder you meant"),
         extra=("--data", "{data}-typo"), subprocess=True),

    # ---- the commitment search (its inputs: stage 2's generation.json, stage 4's sets, stage 5's embeddings)
    Case("commitment-unknown-concept", "commitment", None, ("is_kazoo",), extra=("--concept", "is_kazoo")),
    Case("commitment-other-generator-settings", "commitment", None, ("generation.json", "stage 2 ran with another"),
         extra=("--steps", "20")),
    Case("commitment-too-many-prompts", "commitment", None, ("annotated.csv", "--prompts"),
         extra=("--prompts", "9999")),
    Case("commitment-zero-samples", "commitment", None, ("--samples",), extra=("--samples", "0")),
    Case("commitment-zero-strength", "commitment", None, ("--strength",), extra=("--strength", "0")),
    Case("commitment-blocks-without-direction", "commitment", None, ("--direction",), extra=("--where", "0,1")),
    Case("commitment-no-stage-2", "commitment", delete("generated/generation.json"), ("generation.json",)),
    Case("commitment-notes-embeddings-missing", "commitment", delete(NOTES_NPY), ("spectral.npy", "missing")),
    Case("commitment-other-embedder", "commitment",
         sidecar_edit(NOTES_NPY.replace(".npy", ".json"), lambda s: {**s, "window_policy": "another window"}),
         ("window_policy",)),
    Case("commitment-missing-embedder-flag", "commitment", None, ("--embedder",),
         args=["--concept", "is_brass", "--no-progress"], subprocess=True),
    Case("commitment-negative-seed", "commitment", None, ("--seed -1 must be at least 0",), extra=("--seed", "-1")),
    Case("commitment-zero-batch", "commitment", None, ("--batch-size 0 must be at least 1",),
         extra=("--batch-size", "0")),
    Case("commitment-concept-twice", "commitment", None, ("--concept is_brass is given twice",),
         extra=("--concept", "is_brass")),
    Case("commitment-generator-option-twice", "commitment", None,
         ("--generator-option prior_sharpness is given twice",),
         extra=("--generator-option", "prior_sharpness=4", "--generator-option", "prior_sharpness=0")),

    # ---- the note renderer (stage 4's input when no NSynth download is at hand)
    Case("render-bad-velocity", "render", None, ("velocit",), extra=("--velocities", "64")),
    Case("render-missing-soundfont", "render", None, ("nowhere.sf2",), extra=("--soundfont", "{data}/nowhere.sf2")),
    Case("render-zero-pitch-step", "render", None, ("--pitch-step",), extra=("--pitch-step", "0")),
    Case("render-bad-program", "render", None, ("program",), extra=("--programs", "999")),
    Case("render-soundfont-empty", "render", lambda data: (data.parent / "bad.sf2").write_bytes(b""),
         ("bad.sf2", "not a SoundFont 2 file"), extra=("--soundfont", "{data}/../bad.sf2")),
    Case("render-soundfont-cut-off", "render", soundfont_cut_off, ("bad.sf2", "no phdr table"),
         extra=("--soundfont", "{data}/../bad.sf2")),
]


def test_the_catalogue_is_wide():
    assert len(CASES) >= 60 and len({case.id for case in CASES}) == len(CASES)
    # The README states the catalogue's size: the one-line cases of this file, all three tables of them.
    one_line = len(CASES) + len(DIRECTION_CASES) + len(SEARCH_CASES)
    text = " ".join((REPO_ROOT / "README.md").read_text(encoding="utf-8").split("## Reliability")[1].split())
    assert f"catalogue: {one_line} one-line cases" in text
    assert f"({len(CASES)} on a small study, {len(DIRECTION_CASES)} bad direction files or recording" in text
    assert f"{len(SEARCH_CASES)} refused searches or stage-6 runs" in text
    assert {case.stage for case in CASES} >= {1, 2, 3, 4, 5, 6}
    assert sum(case.subprocess for case in CASES) >= 10


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gives_one_line_and_changes_nothing(case: Case, data: Path, monkeypatch):
    check_case(case, data, monkeypatch)


def check_case(case: Case, data: Path, monkeypatch) -> None:
    if case.corrupt is not None:
        case.corrupt(data)
    before = snapshot(data.parent)
    argv = stage_argv(case.stage, data, case.args, case.extra)
    if case.subprocess:
        code, stderr = run_script(case.stage, argv, env=case.env)
    else:
        for name, value in case.env.items():
            monkeypatch.setenv(name, value)
        code, stderr = run_in_process(case.stage, argv)
    lines = stderr.splitlines()
    assert code == 2, stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    prompts_file = data / "prompts" / "prompts.csv"
    last_line = len(prompts_file.read_bytes().splitlines()) if prompts_file.is_file() else 0
    for words in case.expect:
        assert words.format(last_line=last_line) in lines[0], lines[0]
    assert snapshot(data.parent) == before, "files under --data changed"


def assert_one_line_and_nothing_changed(code: int, stderr: str, before: dict, root: Path, *words: str) -> str:
    lines = stderr.splitlines()
    assert code == 2, stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    assert all(word in lines[0] for word in words), lines[0]
    assert snapshot(root) == before, "files under --data changed"
    return lines[0]


# ---------------------------------------------------------------------------------------------- a finished search
# The commitment search's results folder is its own: a refusal, --force included, must leave it as it was.

@pytest.fixture(scope="session")
def searched(base, tmp_path_factory) -> Path:
    """The base run with the catalogue's commitment search finished."""
    data = tmp_path_factory.mktemp("searched") / "data"
    shutil.copytree(base, data, copy_function=link_audio_copy_rest)
    code, stderr = run_in_process("commitment", stage_argv("commitment", data))
    assert code == 0, stderr[-2000:]
    return data


def results_linked_outside(data: Path):
    """The search's results folder moved out of --data and linked back: --force would clear and fill the target."""
    results = data / SEARCH_RESULTS
    shutil.move(results, data.parent / "elsewhere")
    results.symlink_to(data.parent / "elsewhere")


SEARCH_RESULTS = "results/spectral/logreg/x0/commitment"
SEARCH_CASES = [
    Case("commitment-other-settings-without-force", "commitment", None,
         ("commitment_search.json", "settings.samples=1, this run has 2", "--force"), extra=("--samples", "2")),
    Case("commitment-sidecar-duplicate-key", "commitment",
         edit_text(SEARCH_RESULTS + "/commitment_search.json", "{", '{"seconds": 1, ', 1),
         ("commitment_search.json", "'seconds' appears twice")),
    # Checked before --force clears the folder: the notes' embeddings are read whole, not only found.
    Case("commitment-force-nan-note-row", "commitment", npy_edit(NOTES_NPY, set_row(np.nan, row=3)),
         ("spectral.npy", "row 3 holds NaN"), extra=("--force",)),
    Case("commitment-force-notes-npz-archive", "commitment", npz_archive(NOTES_NPY),
         ("spectral.npy", "an .npz archive"), extra=("--force",)),
    Case("commitment-force-sets-unknown-note", "commitment", set_cell("concepts/sets.csv", "note_str", "nowhere"),
         ("sets.csv row 2", "'nowhere' is not in notes.csv"), extra=("--force",)),
    Case("commitment-results-linked-outside", "commitment", results_linked_outside,
         ("commitment: is a symbolic link", "outside"), extra=("--force",)),
    Case("commitment-results-root-linked-outside", "commitment", linked_outside("results"),
         ("results: is a symbolic link", "outside --data"), extra=("--force",)),
    Case("commitment-runs-linked-outside", "commitment", linked_outside(SEARCH_RESULTS + "/runs"),
         ("commitment/runs: is a symbolic link", "outside")),
    # An unfinished search resumes its runs: their folders are checked like stage 2's.
    Case("commitment-resumed-runs-audio-linked-outside", "commitment",
         chain(delete(SEARCH_RESULTS + "/commitment_search.json"), linked_outside(SEARCH_RESULTS + "/runs/audio")),
         ("runs/audio: is a symbolic link", "outside")),
    # Stage 6 reads the search's table for its known answers.
    Case("s6-commitment-table-emptied", 6, write_file(SEARCH_RESULTS + "/commitment_search.csv", ""),
         ("commitment_search.csv", "not a readable CSV", "rerun the commitment search")),
    Case("s6-commitment-table-text-step", 6,
         set_cell(SEARCH_RESULTS + "/commitment_search.csv", "commitment_step", "late"),
         ("commitment_search.csv", "'commitment_step' holds text")),
]


@pytest.mark.parametrize("case", SEARCH_CASES, ids=[case.id for case in SEARCH_CASES])
def test_a_refused_search_leaves_its_results_untouched(case: Case, searched: Path, tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(searched, data, copy_function=link_audio_copy_rest, symlinks=True)
    check_case(case, data, monkeypatch)


# ---------------------------------------------------------------------------------------------- direction files
# A steering of blocks reads a direction file (data/directions.py); the ideal model steers its prior and reads
# none, so these run on the toy backend of the tests (tests/toy_backend.py: blocks, hooks, a real sampler).

TOY_PROMPTS = [("p_brass1", "bright brass fanfare", "brass"), ("p_keys1", "soft acoustic piano", "keyboard")]
TOY_ARGS = ["--generator", "toy", "--steps", "8", "--samples", "1", "--no-progress"]
RECORD_ARGS = ["--generator", "toy", "--steps", "8", "--concept", "is_brass", "--out", "{data}/../recorded.npy",
               "--no-progress"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    """A reference run of the toy backend and, beside --data, a direction file of its width and a spec steering
    block 1 along it."""
    from stage_runs import write_annotated
    from toy_backend import BLOCKS, DIM

    from data.directions import Direction
    from diffusion import GENERATORS

    data = tmp_path_factory.mktemp("toy") / "data"
    write_annotated(data, TOY_PROMPTS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(GENERATORS, "toy", "tests.toy_backend:ToyGenerator")
        code, stderr = run_in_process(2, stage_argv(2, data, TOY_ARGS))
    assert code == 0, stderr[-2000:]
    vectors = np.random.default_rng(0).standard_normal((BLOCKS, DIM))
    Direction(vectors, range(BLOCKS), "is_brass", "probe").save(data.parent / "is_brass")
    (data.parent / "spec.json").write_text(json.dumps({"format": 2, "interventions": [
        {"concept": "is_brass", "direction": ["is_brass.npy", "random:0"], "where": [1], "strength": 2.0,
         "from_step": 4}]}))
    return data


def direction_array(change: Callable[[np.ndarray], object]):
    def corrupt(data: Path):
        path = data.parent / "is_brass.npy"
        array = change(np.load(path))
        path.unlink()
        np.save(path, array, allow_pickle=True)
    return corrupt


def direction_sidecar(change: Callable[[dict], dict]):
    def corrupt(data: Path):
        path = data.parent / "is_brass.json"
        rewrite(path, json.dumps(change(json.loads(path.read_text()))))
    return corrupt


def beside(corruption):
    """A corruption of a file beside --data (write_file, truncate and delete take paths relative to --data)."""
    return lambda data: corruption(data.parent)


DIRECTION_CASES = [
    Case("direction-empty", 2, beside(write_file("is_brass.npy", b"")), ("is_brass.npy", "empty file (0 bytes)")),
    Case("direction-garbage", 2, beside(write_file("is_brass.npy", b"not an array\n" * 20)),
         ("is_brass.npy", "unreadable .npy")),
    Case("direction-cut-off", 2, beside(truncate("is_brass.npy", 0.6)), ("is_brass.npy", "unreadable .npy")),
    Case("direction-npz-archive", 2, beside(npz_archive("is_brass.npy")),
         ("is_brass.npy", "an .npz archive")),
    Case("direction-object-array", 2, direction_array(lambda v: np.array([{"a": 1}, None], dtype=object)),
         ("is_brass.npy", "unreadable .npy", "allow_pickle")),
    Case("direction-nan", 2, direction_array(lambda v: np.where(np.arange(v.size).reshape(v.shape) == 3, np.nan, v)),
         ("is_brass.npy", "NaN or infinite")),
    Case("direction-other-width", 2, direction_array(lambda v: np.concatenate([v, v[:, :1]], axis=1)),
         ("is_brass.npy", "direction dim 9 but the toy generator's blocks are 8 wide")),
    Case("direction-one-dimensional", 2, direction_array(lambda v: v[0]), ("is_brass.npy", "does not match")),
    Case("direction-sidecar-missing", 2, beside(delete("is_brass.json")), ("is_brass.npy", "sidecar")),
    Case("direction-sidecar-duplicate-key", 2, beside(edit_text("is_brass.json", "{", '{"concept": "x", ', 1)),
         ("is_brass.json", "'concept' appears twice")),
    Case("direction-block-missing", 2, direction_sidecar(lambda s: {**s, "blocks": [0, 2, 3, 4][:len(s["blocks"])]}),
         ("is_brass.npy", "no direction for block 1")),
    # Recording a direction (interp/directions.py, a denoising backend's blocks): its options, before any sampling.
    Case("record-direction-zero-samples", "directions", None, ("--samples 0 must be at least 1",), args=RECORD_ARGS,
         extra=("--samples", "0")),
    Case("record-direction-negative-seed", "directions", None, ("--seed -1 must be at least 0",), args=RECORD_ARGS,
         extra=("--seed", "-1")),
    Case("record-direction-zero-prompts", "directions", None, ("--prompts 0 must be at least 1",), args=RECORD_ARGS,
         extra=("--prompts", "0")),
    Case("record-direction-seconds-too-long", "directions", None, ("--seconds 60 is outside",), args=RECORD_ARGS,
         extra=("--seconds", "60")),
    Case("direction-is-a-folder", 2, lambda data: ((data.parent / "is_brass.npy").unlink(),
                                                   (data.parent / "is_brass.npy").mkdir()),
         ("is_brass.npy",)),
]


@pytest.mark.parametrize("case", DIRECTION_CASES, ids=[case.id for case in DIRECTION_CASES])
def test_a_bad_direction_file_is_refused_before_anything_is_written(case: Case, toy_run: Path, tmp_path,
                                                                     monkeypatch):
    """A bad direction file for a steered run, or bad options for recording one: one line, and no
    intervention.json, run folder, direction or temp file left behind."""
    from diffusion import GENERATORS

    monkeypatch.setitem(GENERATORS, "toy", "tests.toy_backend:ToyGenerator")
    data = tmp_path / "data"
    shutil.copytree(toy_run.parent, data.parent, dirs_exist_ok=True)
    if case.stage == 2:
        case = Case(case.id, 2, case.corrupt, case.expect, args=TOY_ARGS, extra=SPEC)
    check_case(case, data, monkeypatch)
    assert not (data / "generated" / "interventions").exists()


# ---------------------------------------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def cut_off_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny Stable Audio, MusicGen and CLAP models saved as the hub lays them out, each with its largest
    safetensors file cut in half (a download or copy that stopped)."""
    from tiny_clap import save_tiny_clap
    from tiny_musicgen import save_model as save_musicgen
    from tiny_stable_audio import save_model as save_stable_audio

    root = tmp_path_factory.mktemp("cut-off-checkpoints")
    models = {"stable-audio-open": save_stable_audio(root / "stable-audio"),
              "musicgen": save_musicgen(root / "musicgen"), "clap": save_tiny_clap(root / "clap")}
    for folder in models.values():
        largest = max(Path(folder).rglob("*.safetensors"), key=lambda path: path.stat().st_size)
        content = largest.read_bytes()
        largest.unlink()
        largest.write_bytes(content[:len(content) // 2])
    return models


@pytest.mark.parametrize("backend", ["stable-audio-open", "musicgen", "clap"])
def test_a_cut_off_checkpoint_is_one_line(backend, cut_off_checkpoints, data):
    model = str(cut_off_checkpoints[backend])
    if backend == "clap":
        stage, argv = 3, stage_argv(3, data, ["--embedder", "clap", "--model", model, "--device", "cpu"])
    else:
        stage, argv = 2, stage_argv(2, data, ["--generator", backend, "--model", model, "--device", "cpu",
                                              "--no-progress"])
    before = snapshot(data.parent)
    code, stderr = run_in_process(stage, argv)
    assert_one_line_and_nothing_changed(code, stderr, before, data.parent, model, "re-download or re-save")


# ---------------------------------------------------------------------------------------------- OS faults

def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))   # what write() says on a full disk: no file named


@pytest.mark.parametrize("stage", [2, "render"], ids=["stage-2", "render"])
def test_a_full_disk_names_the_file_and_the_rerun_finishes_the_work(stage, base, data, monkeypatch):
    """The disk fills while a clip or note is written (the write fails at the OS boundary, naming no file): the
    error is one line naming the artifact and saying the disk is full, no temp file is left, and once there is
    space the plain rerun finishes the work byte-identical to an uninterrupted run."""
    compared = "generated" if stage == 2 else NSYNTH
    if stage == 2:
        prompt_id = first_index_part(data).stem   # a prompt not made yet
        shutil.rmtree(data / "generated" / "audio" / prompt_id)
        for folder, suffix in (("index", ".csv"), ("index", ".json"), ("content", ".csv"), ("truth", ".csv")):
            (data / "generated" / folder / f"{prompt_id}{suffix}").unlink()
        # Every artifact of stage 2 is synced before its rename (data.files.atomic_path).
        monkeypatch.setattr(os, "fsync", full_disk)
    else:
        first_note(data).unlink()
        # The renderer writes each encoded note in one call (its syncs are batched at the end).
        monkeypatch.setattr(Path, "write_bytes", full_disk)
    before = snapshot(data.parent)
    code, stderr = run_in_process(stage, stage_argv(stage, data))
    # Mid-run, after the stage's own progress lines: the error is the last line, one line, no traceback.
    line = stderr.splitlines()[-1]
    assert code == 2 and line.startswith("error: ") and "Traceback" not in stderr, stderr[-3000:]
    assert "the disk is full (No space left on device)" in line and "free some space" in line, line
    named = line.removeprefix("error: ").split(": ")[0]
    assert Path(named).suffix == ".wav" and Path(named).is_relative_to(data) and not Path(named).exists(), line
    assert temp_files(data) == []
    if stage == 2:   # nothing was replaced: the failed prompt had nothing yet
        assert snapshot(data.parent) == before, "files under --data changed"
    monkeypatch.undo()
    code, stderr = run_in_process(stage, stage_argv(stage, data))
    assert code == 0, stderr[-2000:]
    assert tree(data / compared) == tree(base / compared)


def test_a_lock_file_that_is_a_link_is_never_followed(data, tmp_path):
    from data.stage import lock_path
    from diffusion.stage2_generate import build_parser, lock_name

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    lock = lock_path(data, lock_name(build_parser().parse_args(["--no-progress"])))
    lock.symlink_to(victim)
    before = snapshot(data.parent)
    code, stderr = run_script(2, stage_argv(2, data))
    assert_one_line_and_nothing_changed(code, stderr, before, data.parent, "lock file is a symbolic link")
    assert victim.read_text() == "precious" and lock.is_symlink()
    lock.unlink()
    os.link(victim, lock)   # a hard link is a plain file with two names: refused too
    code, stderr = run_script(2, stage_argv(2, data))
    assert code == 2 and "not a plain file of its own" in stderr and victim.read_text() == "precious"


# ---------------------------------------------------------------------------------------------- kills

def temp_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*.tmp")]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# stage -> (what the copy loses so the stage has its work to do again, the folder its outputs are compared in)
RESUMABLE = {
    2: ("generated", "generated"),
    3: ("generated/embeddings", "generated/embeddings"),
    5: ("concepts/embeddings", "concepts/embeddings"),
    "render": (NSYNTH, NSYNTH),
}


def tree(root: Path, skip: str | None = None) -> dict[str, str]:
    return {name: digest for name, digest in snapshot(root).items() if skip is None or not name.startswith(skip)}


def kill_when(process: subprocess.Popen, ready: Callable[[], bool]) -> bool:
    """SIGKILL the process as soon as ready() holds; True if it was killed (not finished first)."""
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.001)
    process.wait(timeout=60)
    return process.returncode == -signal.SIGKILL


def any_file(folder: Path) -> Callable[[], bool]:
    return lambda: folder.is_dir() and any(path.is_file() for path in folder.rglob("*"))


def start(stage, argv) -> subprocess.Popen:
    environ = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, script(stage), *argv], cwd=REPO_ROOT, env=environ,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.parametrize("stage", list(RESUMABLE), ids=[f"stage-{stage}" for stage in RESUMABLE])
def test_a_killed_run_leaves_no_temp_file_and_resumes_byte_identical(stage, base, data):
    redo, compared = RESUMABLE[stage]
    shutil.rmtree(data / redo)
    argv = stage_argv(stage, data)
    # SIGKILL at the first sign of writing: a temp file (a chunk manifest, a clip, a note) or a finished file.
    killed = kill_when(start(stage, argv), any_file(data / (compared if stage != 2 else "generated")))
    # Stages 2 and the renderer write many files, so the kill surely lands mid-run; stages 3 and 5 may finish
    # first (the test below kills them between chunks).
    if stage in (2, "render"):
        assert killed
    code, stderr = run_script(stage, argv)
    assert code == 0, stderr[-2000:]
    assert temp_files(data) == []
    skip = "embeddings/" if stage == 2 else None  # stage 3's outputs, gone with the rest of generated/
    assert tree(data / compared, skip) == tree(base / compared, skip)


# Killed once the given chunk is written, with most of the work still ahead (6 clips, 103 notes); `emptied`: the
# chunk is then cut to 0 bytes (a copy that stopped), which the resume makes again.
@pytest.mark.parametrize("stage, chunk_rows, chunk, emptied", [(3, 1, "00000.npy", False), (5, 8, "00002.npy", False),
                                                               (3, 1, "00000.npy", True)],
                         ids=["stage-3", "stage-5", "stage-3-empty-chunk"])
def test_an_embedding_run_killed_between_chunks_resumes_from_them_byte_identical(stage, chunk_rows, chunk, emptied,
                                                                                  data, tmp_path):
    redo, compared = RESUMABLE[stage]
    reference = shutil.copytree(data, tmp_path / "reference")
    for root in (data, reference):
        shutil.rmtree(root / redo)
    extra = ["--chunk-rows", str(chunk_rows)]
    code, stderr = run_script(stage, stage_argv(stage, reference) + extra)
    assert code == 0, stderr[-2000:]
    chunk = data / compared / "spectral.chunks" / chunk
    assert kill_when(start(stage, stage_argv(stage, data) + extra), chunk.is_file)
    if emptied:
        chunk.unlink()
        chunk.write_bytes(b"")
    code, stderr = run_script(stage, stage_argv(stage, data) + extra)
    assert code == 0, stderr[-2000:]
    assert temp_files(data) == [] and not chunk.parent.exists()
    assert tree(data / compared) == tree(reference / compared)


@pytest.mark.parametrize("damage", [npz_archive(GENERATED_NPY), write_file(GENERATED_NPY, b"not an array"),
                                    truncate(GENERATED_NPY, 0.7)], ids=["npz-archive", "garbage", "cut-off"])
def test_a_damaged_embedding_matrix_is_made_again_byte_identical(damage, base, data):
    """A stage's own output that is not a whole .npy (a copy that stopped, a file replaced by hand) counts as not
    made: the plain rerun embeds again, never a traceback."""
    damage(data)
    code, stderr = run_in_process(3, stage_argv(3, data))
    assert code == 0, stderr[-2000:]
    assert tree(data / "generated" / "embeddings") == tree(base / "generated" / "embeddings")


@pytest.mark.parametrize("stage", list(RESUMABLE), ids=[f"stage-{stage}" for stage in RESUMABLE])
def test_temp_files_of_killed_writers_are_removed_and_live_ones_kept(stage, data):
    """Deterministic half of the kill test: a temp file named for a dead writer goes, a live one stays."""
    from data.files import make_temp_file
    folder = data / RESUMABLE[stage][1]
    live = make_temp_file(folder / "some-output.csv")  # this test process is alive
    stale = live.with_name(live.name.replace(f"~{os.getpid()}~", f"~{dead_pid()}~"))
    stale.write_bytes(b"half a file")
    code, stderr = run_in_process(stage, stage_argv(stage, data))
    assert code == 0, stderr[-2000:]
    assert not stale.exists() and live.exists()
