"""Activation-level known answers on the model organism: where and when a concept becomes linearly readable inside
the trained network, against when the output reveals it, and from which step steering its blocks stops working.

    python interp/organism_analysis.py --data data [--checkpoint DIR] [--samples 256] [--steer is_brass ...]

The organism (diffusion/organism/, `--generator organism`) is sampled unconditionally (`condition=none`, as the
planted preset: the sampler's noise decides every concept) for --samples trajectories; every block's output
(`blocks.{b}.hook_resid_post`, mean over tokens, interp/directions.py's recorder), the clean estimate x0 and the
closed-form content and truth are kept at every step. The known answer is the FINAL REALISED CONTENT of each
trajectory (data/truth.py's rule on the closed-form content at the last step: what the organism made).

- probes.csv: per concept, site (block b, or `x0`: the network's clean estimate, a linear image of the decoded
  audio) and step, the out-of-fold AUROC of a linear probe (standardised ridge regression, 5 folds over
  trajectories, one fit for every concept at once) against the final content, with a percentile bootstrap
  interval over trajectories; `truth` rows are the oracle curve (the exact posterior's AUROC, data/truth.py).
- readable.csv: per concept, the step from which each reader stays at or above EMERGENCE_AUROC (data/truth.py's
  planted-emergence level): the earliest block, the output (x0), the oracle on the organism's own trajectories and
  the oracle of the ideal planted model on the same seeds (its planted emergence step); `recovered` says whether the
  activation probe's step lies within TOLERANCE steps of the organism's oracle step.
- directions/<concept>.npy: difference of means of the block outputs between trajectories that end with and
  without the concept, per (step, block) (data/directions.py, method mean_difference).
- commitment.csv / commitment_curve.csv, for each --steer concept: steering all blocks along that direction from
  start step k (strength --strength, mode add) against random directions of the same norms, read by the realised
  content (diffusion/commitment.py: flip share beyond random, bootstrap over runs); the commitment step is the last
  k beyond random. Beside it, the ideal model's exact commitment step (its prior tilted by --prior-strength nats).
- organism_analysis.json: provenance (written last); reruns with the same inputs skip, --force redoes.
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
from data.directions import Direction
from data.files import write_csv
from data.provenance import Provenance, begin, commit, decide
from data.stage import InputError, main_exit, stage_parser
from data.truth import EMERGENCE_AUROC, first_step_from_which, oracle_aurocs, realised_concepts
from diffusion import load_generator
from diffusion.base import Conditioning, TrajectoryObserver
from diffusion.commitment import Run, commitment_truth
from diffusion.interventions.hooks import hooks_applied
from interp.directions import block_recorder, mean_difference

OUTPUT_FILES = ("probes.csv", "readable.csv", "commitment.csv", "commitment_curve.csv")
SIDECAR = "organism_analysis.json"
TOLERANCE = 2            # steps between a probe's readable step and the oracle's that still count as recovered
FOLDS = 5
MIN_CLASS = 10           # trajectories of each final class a concept needs to be probed
PROMPT = "organism analysis (condition=none: the prompt is not shown)"
DEFAULT_STEER = ("is_brass", "is_string", "is_guitar")   # one concept of each planted group, early to late


def build_parser():
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="organism checkpoint (unset: the committed one)")
    parser.add_argument("--samples", type=int, default=256, help="trajectories for the probes and directions")
    parser.add_argument("--seed", type=int, default=0, help="seed of trajectory 0 (trajectory r: seed + r); folds")
    parser.add_argument("--bootstrap", type=int, default=200, help="resamples for every interval")
    parser.add_argument("--steer", action="append", default=None,
                        help=f"concept whose commitment step is searched (repeat; default {', '.join(DEFAULT_STEER)})")
    parser.add_argument("--strength", type=float, default=1.0,
                        help="block steering strength (multiples of the difference of means)")
    parser.add_argument("--prior-strength", type=float, default=8.0, help="the ideal model's prior tilt, nats")
    parser.add_argument("--from-steps", default="0,5,10,15,20,25,30,35,40,45",
                        help="start steps k of the steering sweep")
    parser.add_argument("--runs", type=int, default=1,
                        help="steering runs (sampler calls of --run-samples trajectories); with one run the "
                             "intervals resample its trajectories, which share no prompt (condition=none)")
    parser.add_argument("--run-samples", type=int, default=64, help="trajectories per steering run")
    parser.add_argument("--random-directions", type=int, default=4, help="random directions per start step")
    parser.add_argument("--no-progress", action="store_true", help="no progress output")
    return parser


def record(generator, samples: int, seed: int) -> dict:
    """One unconditional sampler call: block outputs [steps, blocks, samples, dim], x0 [steps, samples, dim],
    content [samples, steps, labels] and truth [samples, steps, concepts]."""
    recorder = block_recorder(generator, samples)
    observer = TrajectoryObserver(generator.axis.positions, ["x0"])
    with hooks_applied(generator.hook_points(), recorder.hooks):
        generator.sample(Conditioning(PROMPT), seed, samples, 1.0, observer)
    steps, blocks = recorder.means()
    return {"steps": np.array(steps), "blocks": blocks, "block_ids": recorder.blocks,
            "x0": np.stack([c.latent.double().numpy() for c in observer.captured]),
            **trace_arrays(observer, generator)}


def trace_arrays(observer, generator) -> dict:
    content = np.stack([[entry[2][label] for label in generator.content_labels] for entry in observer.trace])
    truth = np.stack([[entry[3][name] for name in generator.truth_concepts] for entry in observer.trace])
    return {"content": content.transpose(2, 0, 1), "truth": truth.transpose(2, 0, 1)}


def probe_curves(features: np.ndarray, final: np.ndarray, seed: int, bootstrap: int) -> np.ndarray:
    """features [steps, samples, dim], final bool [samples, concepts] -> AUROC, low, high [3, steps, concepts]:
    out-of-fold ridge scores per step (every concept in one fit), AUROC with a bootstrap interval."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = list(KFold(FOLDS, shuffle=True, random_state=seed).split(final))
    scores = np.zeros((features.shape[0],) + final.shape)
    target = final.astype(np.float64)
    for step, vectors in enumerate(features):
        for train, test in folds:
            probe = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(vectors[train], target[train])
            scores[step, test] = probe.predict(vectors[test])
    curve = oracle_aurocs(scores.transpose(1, 0, 2), final)
    rng = np.random.default_rng([seed, 5])
    resampled = []
    for _ in range(bootstrap):
        rows = rng.integers(0, len(final), len(final))
        resampled.append(oracle_aurocs(scores[:, rows].transpose(1, 0, 2), final[rows]))
    low, high = np.nanpercentile(np.stack(resampled), [2.5, 97.5], axis=0)
    return np.stack([curve, low, high])


def probe_table(run: dict, final: np.ndarray, concepts: list[str], seed: int, bootstrap: int, progress) -> pd.DataFrame:
    sites = {f"block {b}": run["blocks"][:, k] for k, b in enumerate(run["block_ids"])}
    sites["x0"] = run["x0"]
    frames = []
    for site, features in sites.items():
        progress(f"probes on {site}")
        curves = probe_curves(features, final, seed, bootstrap)
        frames.append(curve_frame(site, run["steps"], concepts, curves))
    oracle = oracle_aurocs(run["truth"], final)
    frames.append(curve_frame("truth", run["steps"], concepts, np.stack([oracle, oracle, oracle])))
    return pd.concat(frames, ignore_index=True)


def curve_frame(site: str, steps: np.ndarray, concepts: list[str], curves: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame([{"concept": name, "site": site, "step": int(step), "auroc": curves[0, i, k],
                          "auroc_low": curves[1, i, k], "auroc_high": curves[2, i, k]}
                         for k, name in enumerate(concepts) for i, step in enumerate(steps)])


def readable_table(probes: pd.DataFrame, ideal_oracle: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for concept, table in probes.groupby("concept", sort=False):
        def step_of(site):
            curve = table[table["site"] == site].sort_values("step")
            return first_step_from_which(curve["auroc"].to_numpy(), curve["step"].to_numpy(), EMERGENCE_AUROC)

        blocks = sorted(site for site in table["site"].unique() if site.startswith("block"))
        by_block = {site: step_of(site) for site in blocks}
        found = {site: step for site, step in by_block.items() if step is not None}
        first_block = min(found, key=lambda site: (found[site], site)) if found else None
        oracle = step_of("truth")
        ideal = ideal_oracle[ideal_oracle["concept"] == concept]
        ideal_step = first_step_from_which(ideal["auroc"].to_numpy(), ideal["step"].to_numpy(), EMERGENCE_AUROC) \
            if len(ideal) else None
        activation = None if first_block is None else found[first_block]
        rows.append({"concept": concept, "activation_step": activation, "activation_site": first_block,
                     **{f"step_{site.replace(' ', '_')}": step for site, step in by_block.items()},
                     "output_step": step_of("x0"), "oracle_step": oracle, "ideal_oracle_step": ideal_step,
                     "recovered": bool(activation is not None and oracle is not None
                                       and abs(activation - oracle) <= TOLERANCE)})
    return pd.DataFrame(rows)


def ideal_oracle(ideal, samples: int, seed: int, concepts: list[str]) -> pd.DataFrame:
    """The ideal planted model on the same seeds: its own oracle curve against its own final content."""
    observer = TrajectoryObserver([], ["x0"])
    ideal.sample(Conditioning(PROMPT), seed, samples, 1.0, observer)
    arrays = trace_arrays(observer, ideal)
    final = realised_concepts(arrays["content"][:, -1], ideal.content_labels, ideal.truth_concepts)
    curves = oracle_aurocs(arrays["truth"], final)
    return pd.DataFrame([{"concept": name, "step": step, "auroc": curves[step, ideal.truth_concepts.index(name)]}
                         for name in concepts for step in range(curves.shape[0])])


def main(args) -> None:
    steer = list(args.steer or DEFAULT_STEER)
    unknown = [name for name in steer if name not in BY_NAME]
    if unknown:
        raise InputError(f"--steer {unknown[0]}: not a concept of data/concepts.py")
    if args.samples < 2 * FOLDS or args.runs < 1 or args.run_samples < 1 or args.bootstrap < 1:
        raise InputError(f"--samples must be at least {2 * FOLDS}, --runs, --run-samples and --bootstrap at least 1")
    try:
        from_steps = sorted({int(part) for part in args.from_steps.split(",")})
    except ValueError:
        raise InputError(f"--from-steps {args.from_steps!r}: comma-separated steps, e.g. 0,10,20") from None
    progress = (lambda message: None) if args.no_progress else (lambda message: print(message, file=sys.stderr))
    generator = load_generator("organism", model=args.checkpoint, preset=None, steps=None, device=None, dtype=None,
                               decode_dtype=None)
    out = Path(args.data) / "results" / "organism"
    settings = {key: value for key, value in vars(args).items() if key not in ("data", "force", "no_progress")}
    provenance = Provenance(out / SIDECAR, {"organism": generator.provenance(), "settings": {**settings,
                                                                                          "steer": steer}},
                            [out / name for name in OUTPUT_FILES])
    if decide(provenance, args.force, "pass --force to redo it"):
        print(f"{out}: up to date with its inputs; pass --force to redo")
        return
    if any(step < 0 or step >= len(generator.axis.positions) for step in from_steps):
        raise InputError(f"--from-steps {args.from_steps}: steps lie in [0, {len(generator.axis.positions)})")
    started = time.perf_counter()
    with threadpool_limits(limits=1):
        progress(f"sampling {args.samples} trajectories with block captures")
        run = record(generator, args.samples, args.seed)
        labels, concepts_all = generator.content_labels, list(generator.truth_concepts)
        final_all = realised_concepts(run["content"][:, -1], labels, concepts_all)
        keep = [k for k in range(len(concepts_all))
                if MIN_CLASS <= final_all[:, k].sum() <= len(final_all) - MIN_CLASS]
        concepts = [concepts_all[k] for k in keep]
        final = final_all[:, keep]
        run["truth"] = run["truth"][:, :, keep]
        probes = probe_table(run, final, concepts, args.seed, args.bootstrap, progress)
        ideal = load_generator("ideal", model=generator.reference._model, preset="planted", steps=None, device=None,
                               dtype=None, decode_dtype=None)
        readable = readable_table(probes, ideal_oracle(ideal, args.samples, args.seed, concepts))
        begin(provenance)
        write_csv(out / "probes.csv", probes)
        write_csv(out / "readable.csv", readable)
        directions = {}
        for k, name in enumerate(concepts_all):
            positive, negative = final_all[:, k], ~final_all[:, k]
            if positive.any() and negative.any():
                vectors = mean_difference(run["blocks"][:, :, positive].transpose(2, 0, 1, 3),
                                          run["blocks"][:, :, negative].transpose(2, 0, 1, 3))
                directions[name] = Direction(vectors, run["block_ids"], name, "mean_difference",
                                             steps=list(run["steps"]),
                                             provenance={"model": "organism", "split": "final realised content",
                                                         "trajectories": int(len(final_all)),
                                                         "positives": int(positive.sum())}
                                             ).save(out / "directions" / name)
        curves, summary = [], []
        runs = [Run(Conditioning(PROMPT), args.seed + 10_000 + r * args.run_samples, args.run_samples)
                for r in range(args.runs)]
        for name in steer:
            if name not in directions:
                raise InputError(f"--steer {name}: no trajectory of the organism's sample ends with (or without) it")
            progress(f"steering {name} from {from_steps}")
            table, step = commitment_truth(generator, runs, name, args.strength, from_steps, args.random_directions,
                                           args.bootstrap, args.seed, where=tuple(run["block_ids"]),
                                           direction_file=str(directions[name]))
            ideal_table, ideal_step = commitment_truth(ideal, runs, name, args.prior_strength, from_steps,
                                                       args.random_directions, args.bootstrap, args.seed)
            curves += [table.assign(generator="organism", site="blocks"),
                       ideal_table.assign(generator="ideal", site="prior")]
            row = readable[readable["concept"] == name]
            summary.append({"concept": name, "organism_commitment_step": step, "ideal_commitment_step": ideal_step,
                            "oracle_step": None if row.empty else row["oracle_step"].iloc[0],
                            "strength": args.strength, "prior_strength": args.prior_strength,
                            "from_steps": ",".join(map(str, from_steps))})
    for file, frame in (("commitment.csv", pd.DataFrame(summary)),
                        ("commitment_curve.csv", pd.concat(curves, ignore_index=True))):
        write_csv(out / file, frame)
    commit(provenance, {"seconds": round(time.perf_counter() - started, 1), "concepts": concepts})
    recovered = int(readable["recovered"].sum())
    print(f"{out}: activation probes recover the oracle's readable step (within {TOLERANCE}) for {recovered} of "
          f"{len(readable)} concepts; commitment steps (organism blocks / ideal prior): "
          + ", ".join(f"{row['concept']} {row['organism_commitment_step']}/{row['ideal_commitment_step']}"
                      for row in summary))


if __name__ == "__main__":
    main_exit(main, build_parser())
