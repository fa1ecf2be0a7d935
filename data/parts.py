"""What made each prompt's part of a stage 2 run (data/ARTIFACTS.md, stage 2, "index/<prompt_id>.json").

A run folder (generated/ for the reference run, generated/interventions/<id>/ for an intervened one) has ONE record
file that describes every clip in it: generation.json, or intervention.json (which holds generation.json's hash in
turn). A part is written per prompt, and a --force with new settings rewrites the record first and the parts one by
one, so a killed --force would leave parts of the old settings under the new record if "done" meant only "the
part's rows exist". So each prompt's part carries a small sidecar, index/<prompt_id>.json, naming the record it was
made under (`record`: the file name; `record_sha256`: sha256 of its JSON content, data.files.sha256_json). It is
written after the prompt's clips, realised content, truth and activations and before its index part (the index
part stays the "done" marker), and removed first when the prompt is redone. So:

- a part counts as done only when its sidecar names the current record (a resume redoes exactly the others);
- readers (data/contract.py `read_generated_index`, data/truth.py) refuse a run whose parts disagree with its
  record, naming them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from data.files import read_json, sha256_json, write_json
from data.identifiers import path_inside
from data.stage import InputError

GENERATION_JSON = "generation.json"
INTERVENTION_JSON = "intervention.json"
INDEX_DIR = "index"
FINISH = "rerun stage 2 with the same settings: it redoes exactly those prompts"
# The folders stage 2 writes (and --force clears) inside a run folder; truth/ and truth_tables/ as data/truth.py
# names them, interventions/ as data/interventions.py does.
RUN_FOLDERS = (INDEX_DIR, "audio", "content", "truth", "truth_tables", "activations", "interventions")


def record_file_of(run: Path) -> str:
    """The record file of a run folder: an intervened run's intervention.json, else generation.json."""
    return INTERVENTION_JSON if (Path(run) / INTERVENTION_JSON).is_file() else GENERATION_JSON


def record_sha256(record: dict) -> str:
    """The hash a part's sidecar holds for its run's record (the record as its JSON file holds it)."""
    return sha256_json(record)


@dataclass(frozen=True)
class RunRecord:
    """What every part of one run folder is made under: its record file's name and the hash of its content."""
    file: str
    sha256: str

    @classmethod
    def of(cls, file: str, record: dict) -> "RunRecord":
        return cls(file, record_sha256(record))


def check_run_folders(run: Path) -> Path:
    """`run`, refused (InputError) when a folder stage 2 writes inside it (RUN_FOLDERS) is a symbolic link out of
    it: its clips and parts would be written, and with --force deleted, through the link. The rule of the run
    folder itself (data/identifiers.py path_inside), one level down."""
    for name in RUN_FOLDERS:
        path_inside(run, name, "run folder", run, "remove the link")
    return Path(run)


def part_path(run: Path, prompt_id: str) -> Path:
    """index/<prompt_id>.csv of a run folder."""
    return path_inside(Path(run) / INDEX_DIR, f"{prompt_id}.csv", "index part", Path(run) / INDEX_DIR,
                       "fix the prompt id")


def part_sidecar_path(run: Path, prompt_id: str) -> Path:
    return part_path(run, prompt_id).with_suffix(".json")


def write_part_sidecar(run: Path, prompt_id: str, made_under: RunRecord) -> None:
    write_json(part_sidecar_path(run, prompt_id), {"record": made_under.file, "record_sha256": made_under.sha256})


def part_made_with(run: Path, prompt_id: str) -> str | None:
    """The record hash a prompt's part was made under; None when its sidecar is missing or unreadable."""
    try:
        payload = read_json(part_sidecar_path(run, prompt_id))
    except (OSError, ValueError, InputError):
        return None
    return payload.get("record_sha256") if isinstance(payload, dict) else None


def part_is_current(run: Path, prompt_id: str, made_under: RunRecord) -> bool:
    """The prompt's index part exists and was made under this record."""
    return part_path(run, prompt_id).is_file() and part_made_with(run, prompt_id) == made_under.sha256


def parts_on_disk(run: Path) -> list[str]:
    """Prompt ids with an index part in a run folder."""
    folder = Path(run) / INDEX_DIR
    return sorted(path.stem for path in folder.glob("*.csv")) if folder.is_dir() else []


def check_parts_current(run: Path, record_file: str, record: dict, prompt_ids: Iterable[str] | None = None,
                        fix: str = FINISH) -> None:
    """InputError naming the parts of `run` (default: every part on disk) not made under `record` (the content of
    run/record_file): a --force with new settings that was killed before it remade them, or parts from before
    parts recorded what made them."""
    sha256 = record_sha256(record)
    prompt_ids = parts_on_disk(run) if prompt_ids is None else list(prompt_ids)
    stale = [prompt_id for prompt_id in prompt_ids if part_made_with(run, prompt_id) != sha256]
    if stale:
        shown = ", ".join(stale[:3]) + (f" and {len(stale) - 3} more" if len(stale) > 3 else "")
        raise InputError(f"{Path(run) / INDEX_DIR}: {len(stale)} of {len(prompt_ids)} parts were not made under the "
                         f"current {record_file} (other settings, an interrupted --force, or a stage 2 too old to "
                         f"record it): {shown} — {fix}")
