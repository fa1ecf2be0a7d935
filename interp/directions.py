"""Concept directions for steering by difference of means, written as the one direction artifact (data/directions.py).

    python interp/directions.py --data data --model <stable audio dir or hub id> --concept is_brass \\
        --out directions/is_brass.npy

The mean output of every block of the generator (hook points `blocks.{b}.hook_resid_post`, b 0-based) over the
tokens of the conditional rows, per sampler step, for the concept's positive prompts minus that of its negative
prompts (its prompt rule picks the sides, the first --prompts of annotated.csv each): a Direction [steps, blocks,
dim] with method mean_difference. Recording is one more (name, fn) hook list (`ActivationRecorder`), applied
through the generator's own hook points, so any backend that steers blocks on a denoising clock can be recorded.
Other direction sources: stage 6 --space activations writes probe directions (MusicGen); the ideal model steers
its prior with direction "concept"; random baselines are drawn when steering (Direction.random_like).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):
    # Run as a script: make the repository root importable without an installed package.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from tqdm import tqdm

from data.concepts import BY_NAME
from data.contract import annotated_csv, read_annotated
from data.directions import Direction
from data.files import sha256_file
from data.stage import InputError, add_progress_argument, main_exit, stage_parser
from diffusion import GENERATORS, generator_class, load_generator
from diffusion.base import Conditioning
from diffusion.interventions.hooks import Hooks, blocks_of, hooks_applied, resid_post
from diffusion.interventions.steering import cfg_rows
from diffusion.trajectory import prompt_seed


def mean_difference(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """Mean over prompts of positives minus mean of negatives: arrays [prompts, ..., dim] -> [..., dim]."""
    positive, negative = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if len(positive) == 0 or len(negative) == 0:
        raise ValueError("a difference of means needs at least one positive and one negative prompt")
    return (positive.mean(axis=0) - negative.mean(axis=0)).astype(np.float32)


class ActivationRecorder:
    """Keeps, per (clock tick, block), the mean over tokens of the block's output on the chosen rows while its
    `hooks` are applied. `clock`: the generator's hook clock (the tick of each token column); `rows_of(batch)`:
    the rows to keep (e.g. the conditional half of a CFG batch). `means()` gives the ticks seen, in order, and
    float32 [ticks, blocks, rows, dim]."""

    def __init__(self, blocks, clock, rows_of: Callable[[int], slice]):
        self.blocks = sorted(blocks)
        self.records: dict[tuple[int, int], np.ndarray] = {}
        self.hooks = clock.hooks + Hooks([(resid_post(block), self._hook(block, clock, rows_of))
                                          for block in self.blocks])

    def _hook(self, block: int, clock, rows_of):
        import torch

        def hook(module, inputs, output):
            hidden = output if isinstance(output, torch.Tensor) else output[0]
            rows = rows_of(hidden.shape[0])
            for tick, column in clock.ticks(hidden.shape[1]):
                value = hidden[rows, column].float()
                if value.ndim == 3:   # the tokens that share this tick
                    value = value.mean(dim=1)
                self.records[(int(tick), block)] = value.detach().cpu().numpy()
        return hook

    def means(self) -> tuple[list[int], np.ndarray]:
        ticks = sorted({tick for tick, _ in self.records})
        return ticks, np.stack([[self.records[(tick, block)] for block in self.blocks] for tick in ticks])


def block_recorder(generator, samples: int) -> ActivationRecorder:
    """Every block's output on the conditional rows of a sampler call of `samples` samples, per clock tick."""
    return ActivationRecorder(blocks_of(generator.hook_points()), generator.hook_clock(),
                              lambda batch: cfg_rows(batch, samples, "conditional", generator.cfg_layout))


def main(args) -> None:
    """Difference of means of a concept's positive and negative prompts' block activations, per step."""
    out = Path(args.out).with_suffix(".npy")
    if out.is_file() and out.with_suffix(".json").is_file() and not args.force:
        print(f"{out}: exists; pass --force to recompute it")
        return
    if args.concept not in BY_NAME:
        raise InputError(f"--concept {args.concept!r} is not a concept of data/concepts.py")
    for flag, value, least in (("--samples", args.samples, 1), ("--prompts", args.prompts, 1),
                               ("--seed", args.seed, 0)):
        if value < least:
            raise InputError(f"{flag} {value} must be at least {least}")
    if args.generator not in GENERATORS:
        raise InputError(f"--generator {args.generator!r} is not one of {', '.join(GENERATORS)}")
    backend = generator_class(args.generator)
    if backend.intervention_site != "blocks" or backend.intervention_clock != "denoising_step":
        raise InputError(f"--generator {args.generator}: difference-of-means directions are recorded on the blocks "
                         "of a denoising backend (stable-audio-open); MusicGen directions come from stage 6 --space "
                         "activations (probe directions), the ideal model steers its prior with direction 'concept'")
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
    if not 0 < seconds <= generator.max_seconds + 1e-9:
        raise InputError(f"--seconds {seconds:g} is outside (0, {generator.max_seconds:g}] — the longest clip the "
                         f"{generator.name} generator makes is {generator.max_seconds:g} s")
    means = {}
    bar = tqdm(total=sum(len(chosen) for chosen in sides.values()), unit="prompt", desc=f"record {args.concept}",
               disable=args.no_progress)
    for side, chosen in sides.items():
        per_prompt = []
        for row in chosen.itertuples(index=False):
            recorder = block_recorder(generator, args.samples)
            with hooks_applied(generator.hook_points(), recorder.hooks):
                generator.sample(Conditioning(row.prompt, tuple(row.labels)), prompt_seed(args.seed, row.prompt_id),
                                 args.samples, seconds, None)
            steps, recorded = recorder.means()          # [steps, blocks, samples, dim]
            per_prompt.append(recorded.mean(axis=2))
            bar.update(1)
        means[side] = np.stack(per_prompt)
    bar.close()
    provenance = generator.provenance()
    direction = Direction(mean_difference(means["positive"], means["negative"]), recorder.blocks, args.concept,
                          "mean_difference", steps=steps,
                          provenance={"generator": generator.name, "model": provenance["model"],
                                      "checkpoint_sha256": provenance["checkpoint_sha256"],
                                      "annotated_sha256": sha256_file(annotated_csv(args.data)),
                                      "positive_prompts": list(sides["positive"]["prompt_id"]),
                                      "negative_prompts": list(sides["negative"]["prompt_id"]),
                                      "samples": args.samples, "seconds": seconds, "seed": args.seed,
                                      "rows": "conditional", "pool": "mean over tokens"})
    path = direction.save(out)
    print(f"{path}: {args.concept} difference of means over {len(sides['positive'])} positive and "
          f"{len(sides['negative'])} negative prompts, {len(steps)} steps x {len(direction.blocks)} blocks")


def build_parser():
    parser = stage_parser(__doc__)
    parser.add_argument("--concept", required=True, help="concept of data/concepts.py (prompt rule picks the sides)")
    parser.add_argument("--out", required=True, help="direction file to write (.npy; its .json beside it)")
    parser.add_argument("--generator", default="stable-audio-open",
                        help="a generator that steers blocks on a denoising clock")
    parser.add_argument("--model", default=None,
                        help="the generator's checkpoint: hub id or save_pretrained directory (unset: its default)")
    parser.add_argument("--steps", type=int, default=None,
                        help="sampler steps, as the steered runs will use (unset: the generator's preset)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="clip length in seconds, as the steered runs will use (unset: the generator's default)")
    parser.add_argument("--samples", type=int, default=1, help="samples per prompt")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per side (the first of annotated.csv)")
    parser.add_argument("--device", default=None, help="cpu or cuda (unset: the generator's choice)")
    parser.add_argument("--seed", type=int, default=0,
                        help="base seed; each prompt's seed derives from it and its id, as in stage 2")
    add_progress_argument(parser)
    return parser


if __name__ == "__main__":
    main_exit(main, build_parser())
