"""Interchange on the model organism's DiT blocks: which (component, block, steps) sites flip what it makes.

    python interp/organism_interchange.py --data data [--pair is_reed:is_brass --pair is_keyboard:is_guitar]

The MusicGen interchange (Vélez Vásquez et al.: a component's output replaced by concept B's mean activation, on
prompts of concept A) generalised to the organism's DiT blocks, with the realised content as the answer. For each
pair A:B of one planted group (exclusive labels), --samples unconditional trajectories are run once with every
component's output recorded (`blocks.{b}.attn.hook_out`, `.cross_attn.hook_out`, `.mlp.hook_out`, per step and
token), and B's mean (over the trajectories that end with B) is kept. Then the first --per-site trajectories that end
with A and without B are rerun — every site in ONE batched sampler call, each site's rows with those trajectories'
own seeds — with the site's component output replaced by B's mean at every step of its window [k, k + --window)
(diffusers' hook points; the scheduler's step is the clock). A site's FLIP SHARE is the share of those trajectories
whose final realised content now carries B, with a percentile bootstrap interval over trajectories; unintervened, it
is 0 by selection. The planted group's decision time bounds where a swap can act: before it the content is open.

Output: <data>/results/organism/interchange.csv (pair, component, block, from_step, to_step, n, flip share and
interval, share that lost A) and interchange.json (provenance, written last).
"""
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from data.concepts import BY_NAME
from data.files import write_csv
from data.provenance import Provenance, begin, commit, decide
from data.stage import InputError, main_exit, stage_parser
from diffusion import load_generator
from diffusion.base import TrajectoryObserver
from diffusion.commitment import observed_final_content
from diffusion.interventions.hooks import COMPONENTS, Hooks, component_out, hooks_applied

SIDECAR = "interchange.json"
DEFAULT_PAIRS = ("is_reed:is_brass", "is_keyboard:is_guitar")   # the early and the late planted group


def build_parser():
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="organism checkpoint (unset: the committed one)")
    parser.add_argument("--pair", action="append", default=None,
                        help=f"A:B concept pair (repeat; default {', '.join(DEFAULT_PAIRS)})")
    parser.add_argument("--samples", type=int, default=256, help="trajectories whose B mean is swapped in")
    parser.add_argument("--per-site", type=int, default=8, help="trajectories of A rerun at every site")
    parser.add_argument("--from-steps", default="0,10,20,30,40", help="first step of each site's window")
    parser.add_argument("--window", type=int, default=10, help="steps a site swaps, from its first step")
    parser.add_argument("--seed", type=int, default=0, help="seed of trajectory 0 (trajectory r: seed + r)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples of every interval")
    parser.add_argument("--no-progress", action="store_true", help="no progress output")
    return parser


class ComponentSums:
    """Per (step, component, block): the sum over the chosen rows of the component's output [tokens, dim]."""

    def __init__(self, generator, rows: np.ndarray):
        self.rows = np.asarray(rows, bool)
        self.sums: dict[tuple[int, int, int], np.ndarray] = {}
        blocks = len(generator.model.transformer.transformer_blocks)
        scheduler = generator.scheduler

        def recorder(component: int, block: int):
            def hook(module, inputs, output):
                key = (int(scheduler.step_index or 0), component, block)
                self.sums[key] = output[self.rows].sum(dim=0).double().numpy()
            return hook

        self.hooks = Hooks([(component_out(block, name), recorder(c, block))
                            for c, name in enumerate(COMPONENTS) for block in range(blocks)])


def swap_hooks(generator, means: dict, sites: list[tuple[int, int, int, int]], per_site: int) -> Hooks:
    """Site i = (component, block, from, to) replaces that output on rows i*per_site .. (i+1)*per_site - 1 by the
    recorded mean at the current step, while from <= step < to."""
    import torch

    scheduler = generator.scheduler
    by_point: dict[tuple[int, int], list[tuple[int, int, slice]]] = {}
    for i, (component, block, start, stop) in enumerate(sites):
        by_point.setdefault((component, block), []).append((start, stop, slice(i * per_site, (i + 1) * per_site)))

    def hook_for(component: int, block: int, windows):
        def hook(module, inputs, output):
            step = int(scheduler.step_index or 0)
            active = [rows for start, stop, rows in windows if start <= step < stop]
            if not active:
                return None
            changed = output.clone()
            value = torch.as_tensor(means[(step, component, block)], dtype=output.dtype)
            for rows in active:
                changed[rows] = value
            return changed
        return hook

    return Hooks([(component_out(block, COMPONENTS[component]), hook_for(component, block, windows))
                  for (component, block), windows in by_point.items()])


def main(args) -> None:
    pairs = [tuple(pair.split(":")) for pair in (args.pair or DEFAULT_PAIRS)]
    for pair in pairs:
        if len(pair) != 2 or any(name not in BY_NAME for name in pair):
            raise InputError(f"--pair {':'.join(pair)}: expected A:B with concepts of data/concepts.py")
    try:
        starts = sorted({int(part) for part in args.from_steps.split(",")})
    except ValueError:
        raise InputError(f"--from-steps {args.from_steps!r}: comma-separated steps, e.g. 0,10,20") from None
    if args.samples < 2 or args.per_site < 1 or args.window < 1 or args.bootstrap < 1:
        raise InputError("--samples must be at least 2, --per-site, --window and --bootstrap at least 1")
    progress = (lambda message: None) if args.no_progress else (lambda message: print(message, file=sys.stderr))
    generator = load_generator("organism", model=args.checkpoint, preset=None, steps=None, device=None, dtype=None,
                               decode_dtype=None)
    steps = len(generator.axis.positions)
    if any(not 0 <= start < steps for start in starts):
        raise InputError(f"--from-steps {args.from_steps}: steps lie in [0, {steps})")
    out = Path(args.data) / "results" / "organism"
    settings = {key: value for key, value in vars(args).items() if key not in ("data", "force", "no_progress")}
    provenance = Provenance(out / SIDECAR, {"organism": generator.provenance(),
                                            "settings": {**settings, "pair": [":".join(p) for p in pairs]}},
                            [out / "interchange.csv"])
    if decide(provenance, args.force, "pass --force to redo it"):
        print(f"{out}: interchange up to date with its inputs; pass --force to redo")
        return
    started = time.perf_counter()
    concepts = sorted({name for pair in pairs for name in pair})
    seeds = [args.seed + row for row in range(args.samples)]
    blocks = len(generator.model.transformer.transformer_blocks)
    rows = []
    with threadpool_limits(limits=1):
        progress(f"{args.samples} trajectories: their final content")
        observer = TrajectoryObserver([], ["x0"])
        generator.sample_rows((), seeds, observer)
        final = observed_final_content(generator, observer, concepts)
        for a, b in pairs:
            has_a, has_b = final[:, concepts.index(a)], final[:, concepts.index(b)]
            chosen = np.flatnonzero(has_a & ~has_b)[:args.per_site]
            if not has_b.any() or len(chosen) == 0:
                raise InputError(f"--pair {a}:{b}: no trajectory ends with {b}, or none with {a} and without {b} — "
                                 "pass more --samples or another pair")
            progress(f"{a}:{b}: B's mean component outputs over {int(has_b.sum())} trajectories")
            sums = ComponentSums(generator, has_b)
            with hooks_applied(generator.hook_points(), sums.hooks):
                generator.sample_rows((), seeds, None)
            means = {key: value / has_b.sum() for key, value in sums.sums.items()}
            sites = [(component, block, start, min(start + args.window, steps))
                     for component in range(len(COMPONENTS)) for block in range(blocks) for start in starts]
            progress(f"{a}:{b}: {len(sites)} sites x {len(chosen)} trajectories in one batch")
            swapped = TrajectoryObserver([], ["x0"])
            with hooks_applied(generator.hook_points(), swap_hooks(generator, means, sites, len(chosen))):
                generator.sample_rows((), [seeds[i] for _ in sites for i in chosen], swapped)
            result = observed_final_content(generator, swapped, concepts).reshape(len(sites), len(chosen), len(concepts))
            rng = np.random.default_rng([args.seed, 23])
            resample = rng.integers(0, len(chosen), (args.bootstrap, len(chosen)))
            for (component, block, start, stop), outcome in zip(sites, result):
                flips = outcome[:, concepts.index(b)].astype(float)
                low, high = np.percentile(flips[resample].mean(axis=1), [2.5, 97.5])
                rows.append({"concept_a": a, "concept_b": b, "component": COMPONENTS[component], "block": block,
                             "from_step": start, "to_step": stop, "n": len(chosen), "flip_share": flips.mean(),
                             "flip_low": low, "flip_high": high,
                             "lost_a_share": float(np.mean(~outcome[:, concepts.index(a)]))})
    begin(provenance)
    table = pd.DataFrame(rows)
    write_csv(out / "interchange.csv", table)
    commit(provenance, {"seconds": round(time.perf_counter() - started, 1)})
    for (a, b), group in table.groupby(["concept_a", "concept_b"], sort=False):
        best = group.sort_values("flip_share", ascending=False).iloc[0]
        print(f"{a} -> {b}: {int((group['flip_low'] > 0).sum())} of {len(group)} sites flip the content beyond 0; "
              f"most: {best['component']} block {best['block']} steps {best['from_step']}-{best['to_step'] - 1} "
              f"({best['flip_share']:.2f} [{best['flip_low']:.2f}, {best['flip_high']:.2f}])")


if __name__ == "__main__":
    main_exit(main, build_parser())
