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
from data.generation import GENERATION_JSON
from data.stage import InputError

INTERVENTIONS_DIR = "interventions"
INTERVENTION_JSON = "intervention.json"
MEANS_DIR = "component-means"


def intervention_dir(generated: Path, intervention_id: str) -> Path:
    """generated/interventions/<id>/: index/ and audio/ exactly as the reference run's."""
    return Path(generated) / INTERVENTIONS_DIR / intervention_id


def means_dir(generated: Path) -> Path:
    return Path(generated) / INTERVENTIONS_DIR / MEANS_DIR


def read_intervention_records(generated: Path) -> dict[str, dict]:
    """id -> the intervention's record (diffusion/interventions/records.py `record()`) of every intervened run
    under generated/interventions/, each checked to be made beside the current reference run."""
    root = Path(generated) / INTERVENTIONS_DIR
    generation = read_sidecar(Path(generated) / GENERATION_JSON, "run stage 2 first", "rerun stage 2 with --force")
    records = {}
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
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
