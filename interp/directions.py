"""Concept directions for steering (issue 11), saved as .npy + JSON provenance for diffusion/interventions.py.

A direction file holds float32 [positions, dim] (one vector per layer / block) or [steps, positions, dim] (a
diffusion model's per-step vectors; the sampler's step s uses the vector of the last recorded step <= s). Its
sidecar `.json` names `positions` (the model's layer / block numbers), `steps` (per-step files only), `concept`,
`method` and whatever identifies where it came from (model, hashes, prompts).

Methods:
- mean_difference: the mean activation of the concept's positive prompts minus that of its negative prompts
  (per position, and per step for a diffusion model), from `ActivationRecorder` runs of the generator;
- probe: an activation probe's unit weight vector per layer (stage 6 --space activations, issue 10);
- random baselines are not files: diffusion/interventions.py draws them with the norm of the concept's file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from data.files import write_json, write_npy


def save_direction(path, array: np.ndarray, positions: Sequence[int], concept: str, method: str,
                   steps: Sequence[int] | None = None, provenance: dict | None = None) -> Path:
    """Write <path>.npy and its sidecar (the sidecar last, so a killed write leaves no file that looks whole)."""
    array = np.asarray(array, np.float32)
    path = Path(path).with_suffix(".npy")
    if array.ndim not in (2, 3) or array.shape[-2] != len(positions):
        raise ValueError(f"direction shape {list(array.shape)} does not match {len(positions)} positions")
    if (array.ndim == 3) != (steps is not None) or (steps is not None and len(steps) != array.shape[0]):
        raise ValueError("a [steps, positions, dim] direction needs one step number per row, a 2-D one none")
    write_npy(path, array)
    write_json(path.with_suffix(".json"), {"concept": concept, "method": method, "positions": [int(p) for p in positions],
                                           "steps": None if steps is None else [int(s) for s in steps],
                                           "dim": int(array.shape[-1]), **(provenance or {})})
    return path


def mean_difference(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """Mean over prompts of positives minus mean of negatives: arrays [prompts, ..., dim] -> [..., dim]."""
    positive, negative = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if len(positive) == 0 or len(negative) == 0:
        raise ValueError("a difference of means needs at least one positive and one negative prompt")
    return (positive.mean(axis=0) - negative.mean(axis=0)).astype(np.float32)


class ActivationRecorder:
    """Forward hooks that keep, per (step, position), the mean over tokens of a module's output on the chosen rows.

    `modules`: position -> module; `step_of()`: the sampler's step counter; `rows_of(batch)`: the rows to keep
    (e.g. the conditional half of a CFG batch). Use inside `with` (hooks come off on exit). `means()` gives
    float32 [steps, positions, rows, dim] for the steps seen, in order.
    """

    def __init__(self, modules: dict, step_of: Callable[[], int], rows_of: Callable[[int], slice]):
        from diffusion.interventions import HookSet

        self.hooks = HookSet()
        self.records: dict[tuple[int, int], np.ndarray] = {}
        self.positions = sorted(modules)
        for position, module in modules.items():
            self.hooks.add(f"{position}.record", module, self._hook(position, step_of, rows_of))

    def _hook(self, position, step_of, rows_of):
        import torch

        def hook(module, inputs, output):
            hidden = output if isinstance(output, torch.Tensor) else output[0]
            rows = rows_of(hidden.shape[0])
            self.records[(int(step_of()), position)] = hidden[rows].float().mean(dim=1).detach().cpu().numpy()
        return hook

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.hooks.remove()
        return False

    def means(self) -> tuple[list[int], np.ndarray]:
        steps = sorted({step for step, _ in self.records})
        return steps, np.stack([[self.records[(step, p)] for p in self.positions] for step in steps])
