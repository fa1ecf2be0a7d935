"""Concept directions for steering (issue 11), saved as .npy + JSON provenance for diffusion/interventions.py.

A direction file holds float32 [positions, dim] (one vector per layer / block) or [steps, positions, dim] (a
diffusion model's per-step vectors; the sampler's step s uses the vector of the last recorded step <= s). Its
sidecar `.json` names `positions` (the model's layer / block numbers), `steps` (per-step files only), `concept`,
`method` and whatever identifies where it came from (model, hashes, prompts).

Command line (Stable Audio): `python interp/directions.py --data data --model M --concept is_brass --out d/is_brass.npy`.

Methods:
- mean_difference: the mean activation of the concept's positive prompts minus that of its negative prompts
  (per position, and per step for a diffusion model), from `ActivationRecorder` runs of the generator;
- probe: an activation probe's unit weight vector per layer (stage 6 --space activations, issue 10);
- random baselines are not files: diffusion/interventions.py draws them with the norm of the concept's file.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Sequence

if __package__ in (None, ""):
    # Run as a script: make the repository root importable without an installed package.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def stable_audio_recorder(generator) -> ActivationRecorder:
    """Every DiT block's output on the conditional rows, per sampler step (the scheduler's own step_index)."""
    transformer, scheduler = generator.pipeline.transformer, generator.pipeline.scheduler
    guided = getattr(generator, "has_unconditional_rows", False)
    return ActivationRecorder(dict(enumerate(transformer.transformer_blocks)),
                              lambda: 0 if scheduler.step_index is None else int(scheduler.step_index),
                              lambda batch: slice(batch // 2, batch) if guided else slice(0, batch))


def main(args) -> None:
    """Difference of means of a concept's positive and negative prompts' DiT block activations, per step.

        python interp/directions.py --data data --model <stable audio dir or hub id> --concept is_brass \\
            --out directions/is_brass.npy
    """
    from data.concepts import BY_NAME
    from data.contract import annotated_csv, read_annotated
    from data.files import sha256_file
    from data.stage import InputError
    from diffusion import load_generator
    from diffusion.base import Conditioning
    from diffusion.trajectory import prompt_seed

    out = Path(args.out).with_suffix(".npy")
    if out.is_file() and out.with_suffix(".json").is_file() and not args.force:
        print(f"{out}: exists; pass --force to recompute it")
        return
    if args.concept not in BY_NAME:
        raise InputError(f"--concept {args.concept!r} is not a concept of data/concepts.py")
    if args.generator != "stable-audio-open":
        raise InputError(f"--generator {args.generator}: difference-of-means directions are recorded on Stable Audio "
                         "DiT blocks here; MusicGen directions come from stage 6 --space activations (probe "
                         "directions), the ideal model steers its prior with direction 'concept'")
    annotated = read_annotated(args.data)
    concept = BY_NAME[args.concept]
    asks = annotated["labels"].map(concept.prompt_has)
    sides = {"positive": annotated[asks].head(args.prompts), "negative": annotated[~asks].head(args.prompts)}
    for side, chosen in sides.items():
        if chosen.empty:
            raise InputError(f"{annotated_csv(args.data)}: no {side} prompt for {args.concept} — pick another concept")
    generator = load_generator(args.generator, model=args.model, preset=None, steps=args.steps, device=args.device,
                               dtype=None, decode_dtype=None)
    seconds = generator.default_seconds if args.seconds is None else args.seconds
    means = {}
    for side, chosen in sides.items():
        per_prompt = []
        for row in chosen.itertuples(index=False):
            with stable_audio_recorder(generator) as recorder:
                generator.sample(Conditioning(row.prompt, tuple(row.labels)), prompt_seed(args.seed, row.prompt_id),
                                 args.samples, seconds, None)
            steps, recorded = recorder.means()          # [steps, blocks, samples, dim]
            per_prompt.append(recorded.mean(axis=2))
        means[side] = np.stack(per_prompt)
    path = save_direction(args.out, mean_difference(means["positive"], means["negative"]), recorder.positions,
                          args.concept, "mean_difference", steps=steps,
                          provenance={"generator": generator.name, "model": generator.provenance()["model"],
                                      "model_sha256": generator.provenance()["model_sha256"],
                                      "annotated_sha256": sha256_file(annotated_csv(args.data)),
                                      "positive_prompts": list(sides["positive"]["prompt_id"]),
                                      "negative_prompts": list(sides["negative"]["prompt_id"]),
                                      "samples": args.samples, "seconds": seconds, "seed": args.seed,
                                      "rows": "conditional", "pool": "mean over tokens"})
    print(f"{path}: {args.concept} difference of means over {len(sides['positive'])} positive and "
          f"{len(sides['negative'])} negative prompts, {len(steps)} steps x {len(recorder.positions)} blocks")


def build_parser():
    from data.stage import stage_parser

    parser = stage_parser("Concept directions for steering: difference of means of block activations per step")
    parser.add_argument("--concept", required=True, help="concept of data/concepts.py (prompt rule picks the sides)")
    parser.add_argument("--out", required=True, help="direction file to write (.npy; its .json beside it)")
    parser.add_argument("--generator", default="stable-audio-open")
    parser.add_argument("--model", default=None, help="hub id or save_pretrained directory")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--samples", type=int, default=1, help="samples per prompt")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per side (the first of annotated.csv)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--seed", type=int, default=0)
    return parser


if __name__ == "__main__":
    from data.stage import main_exit

    main_exit(main, build_parser())
