"""The concept-direction artifact: one owner of the file that steering reads (after captum's `CAV`).

A direction is a vector per model block — float32 [blocks, dim] — or, for a diffusion model whose activations
change along the trajectory, a vector per (sampler step, block) — [steps, blocks, dim], where sampler step s uses
the row of the last recorded step <= s. Blocks are hook-point indices, 0-based, as in the hook names
`blocks.{b}.hook_resid_post` (data/ARTIFACTS.md, "Directions"). Who writes one: `interp/directions.py` (difference
of means of block activations), stage 6 `--space activations` (an activation probe's unit weight vector per
block). Who reads one: the steering hooks of every backend (diffusion/interventions/).

On disk: `<name>.npy` plus `<name>.json` beside it, the sidecar written last, so a killed write never leaves a
direction that looks whole. The sidecar holds the schema fields below and where the direction came from.
The random baseline of an intervention is not a file: `random_like` draws it with the same norm per row.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.contract import first_line, read_npy
from data.files import read_json, write_json, write_npy
from data.stage import InputError

DIRECTION_FORMAT = 1
METHODS = ("mean_difference", "probe")
REWRITE = "rewrite it with interp/directions.py (or stage 6 --space activations)"


@dataclass(frozen=True)
class Direction:
    vectors: np.ndarray                  # float32 [blocks, dim] or [steps, blocks, dim]
    blocks: tuple[int, ...]              # 0-based block index of each row of the blocks axis
    concept: str
    method: str                          # one of METHODS
    steps: tuple[int, ...] | None = None  # sampler step of each row of the steps axis (per-step directions only)
    provenance: dict = field(default_factory=dict)   # model, hashes, prompts: where it came from

    def __post_init__(self):
        vectors = np.asarray(self.vectors, np.float32)
        object.__setattr__(self, "vectors", vectors)
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        if self.steps is not None:
            object.__setattr__(self, "steps", tuple(int(s) for s in self.steps))
        if vectors.ndim not in (2, 3) or vectors.shape[-2] != len(self.blocks):
            raise ValueError(f"direction shape {list(vectors.shape)} does not match {len(self.blocks)} blocks")
        if (vectors.ndim == 3) != (self.steps is not None) or (self.steps is not None
                                                              and len(self.steps) != vectors.shape[0]):
            raise ValueError("a [steps, blocks, dim] direction needs one step number per row, a 2-D one none")
        if len(set(self.blocks)) != len(self.blocks) or any(b < 0 for b in self.blocks):
            raise ValueError(f"blocks {list(self.blocks)} must be distinct non-negative indices")
        if self.steps is not None and list(self.steps) != sorted(set(self.steps)):
            raise ValueError(f"steps {list(self.steps)} must be increasing")
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is not one of {METHODS}")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[-1])

    def at(self, block: int, step: int | None = None) -> np.ndarray:
        """The vector [dim] for `block` at sampler step `step` (the last recorded step <= step)."""
        row = self.vectors[..., self.blocks.index(int(block)), :]
        if self.steps is None:
            return row
        index = max(0, int(np.searchsorted(self.steps, int(step or 0), side="right")) - 1)
        return row[index]

    def random_like(self, seed: int) -> "Direction":
        """A Gaussian direction with this one's norm in every (step,) block: the matched-norm baseline. Seeded by
        (seed, concept), so random:0 of one concept is the same vector in every run."""
        rng = np.random.default_rng([int(seed), zlib.crc32(self.concept.encode())])
        random = rng.standard_normal(self.vectors.shape)
        norms = np.linalg.norm(self.vectors, axis=-1, keepdims=True)
        random *= norms / np.maximum(np.linalg.norm(random, axis=-1, keepdims=True), 1e-30)
        return Direction(random.astype(np.float32), self.blocks, self.concept, self.method, self.steps,
                         {**self.provenance, "random_seed": int(seed)})

    def sidecar(self) -> dict:
        return {"direction_format": DIRECTION_FORMAT, "concept": self.concept, "method": self.method,
                "blocks": list(self.blocks), "steps": None if self.steps is None else list(self.steps),
                "dim": self.dim, **self.provenance}

    def save(self, path) -> Path:
        """Write <path>.npy, then its .json sidecar (last)."""
        path = Path(path).with_suffix(".npy")
        write_npy(path, self.vectors)
        write_json(path.with_suffix(".json"), self.sidecar())
        return path

    @classmethod
    def load(cls, path) -> "Direction":
        """Read a direction file and its sidecar; anything off is one InputError line naming the file."""
        path = Path(path)
        sidecar_path = path.with_suffix(".json")
        if not path.is_file() or not sidecar_path.is_file():
            raise InputError(f"{path}: missing (or its .json sidecar is) — {REWRITE}")
        vectors = read_npy(path, REWRITE)
        try:
            sidecar = read_json(sidecar_path)
        except (ValueError, OSError) as error:
            raise InputError(f"{sidecar_path}: unreadable ({first_line(error)}) — {REWRITE}") from None
        if not isinstance(sidecar, dict) or sidecar.get("direction_format") != DIRECTION_FORMAT:
            raise InputError(f"{sidecar_path}: not a direction sidecar of format {DIRECTION_FORMAT} — {REWRITE}")
        if vectors.dtype.kind != "f" or not np.isfinite(vectors).all():
            raise InputError(f"{path}: holds non-float, NaN or infinite values — recompute the direction")
        known = {"direction_format", "concept", "method", "blocks", "steps", "dim"}
        try:
            return cls(vectors, tuple(sidecar["blocks"]), str(sidecar["concept"]), str(sidecar["method"]),
                       None if sidecar.get("steps") is None else tuple(sidecar["steps"]),
                       {key: value for key, value in sidecar.items() if key not in known})
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"{path}: does not match its sidecar ({error}) — {REWRITE}") from None
