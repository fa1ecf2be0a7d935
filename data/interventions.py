"""Where intervened runs live (data/ARTIFACTS.md, "Interventions"): written by stage 2 --intervene
(diffusion/intervened_runs.py), read by stage 6 --compare (interp/compare.py).

generated/interventions/<id>/ holds one intervention's run: intervention.json (its record and provenance, written
before any clip) and index/ and audio/ exactly as the reference run's. generated/interventions/component-means/
caches the mean activations an interchange swaps in.
"""
from __future__ import annotations

from pathlib import Path

from data.contract import read_sidecar
from data.files import sha256_json
from data.identifiers import path_inside
from data.parts import GENERATION_JSON, INTERVENTION_JSON, check_run_folders
from data.stage import InputError

INTERVENTIONS_DIR = "interventions"
MEANS_DIR = "component-means"


def intervention_dir(generated: Path, intervention_id: str) -> Path:
    """generated/interventions/<id>/: index/ and audio/ exactly as the reference run's. The id is a safe name
    (data/identifiers.py), the folder no link out of generated/interventions/, and none of the folders a run writes
    inside it (index/, audio/, ...: data/parts.py check_run_folders) a link out of it."""
    root = Path(generated) / INTERVENTIONS_DIR
    return check_run_folders(path_inside(root, intervention_id, "intervention id", root,
                                         "give the intervention another id"))


def intervention_folders(generated: Path) -> list[Path]:
    """The intervened runs on disk (folders of generated/interventions/ with an index/), each name checked."""
    root = Path(generated) / INTERVENTIONS_DIR
    folders = sorted(path.parent for path in root.glob("*/index")) if root.is_dir() else []
    return [intervention_dir(generated, folder.name) for folder in folders]


def means_dir(generated: Path) -> Path:
    return Path(generated) / INTERVENTIONS_DIR / MEANS_DIR


def read_intervention_records(generated: Path) -> dict[str, dict]:
    """id -> the intervention's record (diffusion/interventions/records.py `record()`) of every intervened run
    under generated/interventions/, each checked to be made beside the current reference run."""
    generation = read_sidecar(Path(generated) / GENERATION_JSON, "run stage 2 first", "rerun stage 2 with --force")
    records = {}
    for folder in intervention_folders(generated):
        if (folder / "index").is_dir():
            sidecar = read_sidecar(folder / INTERVENTION_JSON, "rerun stage 2 with --intervene",
                                   "rerun stage 2 with --intervene --force")
            # Pairs are only pairs if both runs came from the same generator settings and seeds.
            if sidecar.get("generation_sha256") != sha256_json(generation):
                raise InputError(f"{folder / INTERVENTION_JSON}: made beside another reference run (generation.json "
                                 "changed since) — rerun stage 2 with --intervene <spec> --force, or delete "
                                 f"{folder}")
            records[folder.name] = sidecar["intervention"]
    return records
