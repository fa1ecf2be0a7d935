"""generation.json, read once: what stage 2 made and along which trajectory axis (data/ARTIFACTS.md, stage 2).

A clip is indexed by (prompt, sample, position); the position lies on the generator's trajectory axis — a denoising
step (0..N-1) of a diffusion sampler, or a decoder layer (1..L) of a layer-wise read-out (MusicGen's DecoderLens).
Stage 2 writes the axis to generation.json as {"name", "unit", "positions"}; the index column stays `step` (= the
position on the axis) for every model. Every later stage reads it through `read_generation`, so "layer" reaches
plots, tables and the report without a special case.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data.contract import generated_dir, read_sidecar, run_first
from data.files import sha256_file
from data.stage import InputError

GENERATION_JSON = "generation.json"
REGENERATE = "rerun stage 2 with --force"


@dataclass(frozen=True)
class TrajectoryAxis:
    name: str                     # "denoising_step" | "layer"
    unit: str                     # "step" | "layer": the word used in plots and report text
    positions: tuple[int, ...]    # valid positions, in trajectory order

    def record(self) -> dict:
        """generation.json's "trajectory_axis"."""
        return {"name": self.name, "unit": self.unit, "positions": [int(p) for p in self.positions]}

    def describe(self) -> str:
        """'50-step trajectory (0–49)': for messages."""
        return f"{len(self.positions)}-{self.unit} trajectory ({self.positions[0]}–{self.positions[-1]})"

    @classmethod
    def from_record(cls, value, path) -> "TrajectoryAxis":
        """generation.json's "trajectory_axis" object, or a one-line InputError naming the file."""
        if (isinstance(value, dict) and isinstance(value.get("name"), str) and value["name"]
                and isinstance(value.get("unit"), str) and value["unit"]
                and isinstance(value.get("positions"), list) and value["positions"]
                and all(isinstance(p, int) and not isinstance(p, bool) for p in value["positions"])):
            return cls(value["name"], value["unit"], tuple(value["positions"]))
        raise InputError(f"{path}: trajectory_axis {value!r} is not a {{name, unit, positions}} object — {REGENERATE}")


def denoising_axis(steps: int) -> TrajectoryAxis:
    """A sampler's steps 0..steps-1."""
    return TrajectoryAxis("denoising_step", "step", tuple(range(int(steps))))


def layer_axis(layers: int) -> TrajectoryAxis:
    """A decoder's layers 1..layers (a read-out after block l)."""
    return TrajectoryAxis("layer", "layer", tuple(range(1, int(layers) + 1)))


@dataclass(frozen=True)
class Generation:
    """generation.json of a --data folder: the stored record, its path and hash, and the trajectory axis."""
    path: Path
    record: dict
    sha256: str
    axis: TrajectoryAxis

    @property
    def content_labels(self) -> tuple[str, ...]:
        return tuple(self.record.get("content_labels") or ())


def read_generation(data, missing_fix: str | None = None) -> Generation:
    """generation.json under <data>/generated/, checked: an object with a trajectory axis and content labels."""
    path = generated_dir(data) / GENERATION_JSON
    record = read_sidecar(path, missing_fix or run_first(data, 2), REGENERATE)
    labels = record.get("content_labels", [])
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise InputError(f"{path}: content_labels must be a list of label names — {REGENERATE}")
    return Generation(path, record, sha256_file(path), TrajectoryAxis.from_record(record.get("trajectory_axis"), path))
