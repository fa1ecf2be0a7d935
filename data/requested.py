"""What stage 2 was asked to make, so that a stage reading its output can tell a finished run from an unfinished one
(data/ARTIFACTS.md, stage 2, `requested.json`).

Stage 2 shards split prompts: shard i of n makes the prompts at positions i, i+n, ... of the sorted prompt ids, each
shard writing its own index parts. A stage-3 task may start while a stage-2 shard is still running (or never ran);
the index it finds is then a partial one, and embedding it would give a matrix the later shards' index no longer
matches. So every stage-2 run writes generated/requested.json before its first clip: per run (the reference run and
each intervened run of --intervene) the shard count and, per requested prompt, the shard that owns it. Shards of one
array write the same bytes. A consumer calls `check_complete`: every requested prompt must have a complete index part
(as many rows as generation.json, or the intervention's record, promises), else one InputError naming the missing
prompts and the stage-2 shards that own them.

Runs of stage 2 with --intervene add their interventions to the file; runs without keep the interventions already
listed while their folders exist. Without the file (data made before it existed) every prompt of annotated.csv is
expected and the owning shards are unknown.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from data.contract import generated_dir, read_annotated, read_sidecar
from data.files import read_json, write_json
from data.identifiers import name_problem, path_inside
from data.stage import InputError, Shard, file_lock, lock_path

REQUESTED_JSON = "requested.json"
FORMAT = 1
SHOWN = 5   # prompt ids named in a message


def requested_path(generated: Path) -> Path:
    return Path(generated) / REQUESTED_JSON


def run_request(prompt_ids, shards: int) -> dict:
    """One run's entry: its shard count and each prompt's owner (Shard.select's rule over the sorted ids)."""
    ordered = sorted(prompt_ids)
    return {"shards": int(shards), "prompts": {prompt_id: position % int(shards)
                                               for position, prompt_id in enumerate(ordered)}}


def write_request(generated: Path, prompt_ids, shards: int, interventions: dict | None = None) -> None:
    """Record this stage-2 run's request (`interventions`: id -> prompt ids it generates, owners as the reference
    run's). Call after every input is validated and before the first clip is written."""
    generated = Path(generated)
    reference = run_request(prompt_ids, shards)
    generated.mkdir(parents=True, exist_ok=True)
    # Shards of one array read, merge and write at the same moment: one at a time, each writing the same result.
    with file_lock(lock_path(generated, "requested")):
        previous = _read_or_none(requested_path(generated))
        kept = {}
        if previous is not None:
            from_data = previous.get("interventions") if isinstance(previous.get("interventions"), dict) else {}
            kept = {identifier: entry for identifier, entry in from_data.items()
                    if name_problem(identifier, "intervention id") is None
                    and (generated / "interventions" / identifier).is_dir()}
        for identifier, chosen in (interventions or {}).items():
            kept[identifier] = {"shards": int(shards), "prompts": {p: reference["prompts"][p] for p in sorted(chosen)}}
        payload = {"format": FORMAT, "reference": reference, "interventions": dict(sorted(kept.items()))}
        if payload != previous:
            write_json(requested_path(generated), payload)


def _read_or_none(path: Path) -> dict | None:
    try:
        payload = read_json(path)
    except (OSError, ValueError):   # a key given twice included: the file is written afresh
        return None
    return payload if isinstance(payload, dict) else None


def read_request(data: Path) -> dict | None:
    """requested.json checked for shape; None when absent."""
    path = requested_path(generated_dir(data))
    if not path.exists():
        return None
    fix = "rerun stage 2 with the same options (finished prompts are skipped) to write it again"
    payload = read_sidecar(path, fix, fix)
    interventions = payload.get("interventions", {})
    for entry in [payload.get("reference"), *(interventions.values() if isinstance(interventions, dict) else [None])]:
        if not (isinstance(entry, dict) and isinstance(entry.get("shards"), int) and entry["shards"] >= 1
                and isinstance(entry.get("prompts"), dict)
                and all(isinstance(owner, int) and 0 <= owner < entry["shards"] for owner in entry["prompts"].values())):
            raise InputError(f"{path}: not a stage-2 request (reference and interventions, each with shards and "
                             f"prompts -> shard) — {fix}")
        # Names that become paths: the one rule (data/identifiers.py), before any is joined to a folder.
        problem = next(filter(None, (name_problem(prompt_id, "prompt_id") for prompt_id in entry["prompts"])), None)
        if problem:
            raise InputError(f"{path}: {problem} — {fix}")
    for identifier in interventions:
        problem = name_problem(identifier, "intervention id")
        if problem:
            raise InputError(f"{path}: {problem} — {fix}")
    return payload


def check_complete(data: Path, index: pd.DataFrame, generation: dict, consumer: str) -> None:
    """Every prompt stage 2 was asked for has a complete index part, in the reference run and in every requested
    intervened run; else one InputError naming the missing prompts and their shards. `index`: read_generated_index's
    frame (with its `intervention` column); `consumer`: the stage asking, for the message ("stage 3")."""
    generated = generated_dir(data)
    request = read_request(data)
    if request is None:
        reference = {"shards": None, "prompts": {p: None for p in read_annotated(data)["prompt_id"]}}
        interventions = {}
    else:
        reference, interventions = request["reference"], request["interventions"]
    runs = [("", reference, _rows_per_clip_set(generation))]
    for identifier, entry in interventions.items():
        folder = path_inside(generated / "interventions", identifier, "intervention id", requested_path(generated),
                             "rerun stage 2 with the same options to write it again")
        record = read_sidecar(folder / "intervention.json", f"run stage 2 --intervene to make intervention "
                              f"'{identifier}'", "rerun stage 2 with --intervene and --force")
        runs.append((identifier, entry, _rows_per_clip_set(record, samples_key="samples")))
    rows = index.groupby(["intervention", "prompt_id"]).size()
    for identifier, entry, expected in runs:
        missing = [p for p in sorted(entry["prompts"])
                   if rows.get((identifier, p), 0) == 0 or (expected is not None and rows[(identifier, p)] != expected)]
        if missing:
            raise InputError(_message(generated, identifier, entry, missing, consumer))


def _rows_per_clip_set(record: dict, samples_key: str = "samples_per_prompt") -> int | None:
    """Rows one prompt's part holds: samples x kinds x captured positions (None when the record does not say)."""
    try:
        return int(record[samples_key]) * len(record["kinds"]) * len(record["capture_steps"])
    except (KeyError, TypeError, ValueError):
        return None


def _message(generated: Path, identifier: str, entry: dict, missing: list, consumer: str) -> str:
    where = generated / "index" if not identifier else generated / "interventions" / identifier / "index"
    what = "stage 2" if not identifier else f"stage 2 --intervene (intervention '{identifier}')"
    shown = ", ".join(missing[:SHOWN]) + (", …" if len(missing) > SHOWN else "")
    head = (f"{where}: {what} is unfinished — {len(missing)} of {len(entry['prompts'])} requested prompts have no "
            f"complete index part ({shown})")
    if entry["shards"] is None:
        return (f"{head}; generated/{REQUESTED_JSON} is absent, so every prompt of annotated.csv is expected — run "
                f"stage 2 (it skips finished prompts), then {consumer}")
    owners = sorted({entry["prompts"][p] for p in missing})
    shards = ", ".join(str(Shard(owner, entry["shards"])) for owner in owners)
    if entry["shards"] == 1:
        return f"{head} — wait for stage 2 to finish, or rerun it (it resumes), then run {consumer}"
    return (f"{head}, owned by stage-2 shard{'s' if len(owners) > 1 else ''} {shards} — wait for "
            f"{'those' if len(owners) > 1 else 'that'} array task{'s' if len(owners) > 1 else ''} to finish, or "
            f"rerun {'them' if len(owners) > 1 else 'it'} (--shard {shards.split(', ')[0]}, it resumes), then run "
            f"{consumer}")
