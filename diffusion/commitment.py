"""The exact commitment truth of steering the ideal model: from which start step does a tilt of its prior towards a
concept stop changing what the sample ends up being?

Steering the ideal model tilts its prior towards the clips that carry a concept from start step k on (diffusion/
ideal.py, PriorSteering). Without probes, the model itself says what each tilted run made: its FINAL
realised content (data/truth.py: the concept's rule on the labels holding posterior mass >= 0.5 at the last step).
For every k, every trajectory (a run's seed and sample) is sampled untilted, with the concept's tilt and with
random tilts of the same size (as many clips marked at random, the spec's "random:<seed>" baseline), and

- flip share: the share of trajectories whose final content of the concept differs from the untilted run's,
  for the concept tilt and for each random tilt;
- effect: the concept tilt's flip share minus the random tilts' mean, with a percentile interval that resamples
  runs (prompts: the samples of one prompt share it; a single run's trajectories when there is one run), as
  stage 6 --compare treats its pairs; a flip in either
  direction counts, so the effect is positive for a tilt of either sign;
- the COMMITMENT STEP: the last k whose effect lies beyond the random baseline (interval above 0) — interp/
  compare.py's rule, here on the exact content instead of a probe's reading.

Cost: one sampler call per (run, k, direction), ~30 ms each on 2 shared cores; all 50 start steps with 10 random
directions cost ~17 s per run, so pass fewer `from_steps` or runs for a quick look.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from data.truth import realised_concepts
from diffusion.base import Conditioning, TrajectoryObserver
from diffusion.interventions.records import PRIOR, Site, Steering

LEVEL = 0.95


@dataclass(frozen=True)
class Run:
    conditioning: Conditioning   # the prompt (its labels set the prior when the prior has a sharpness)
    seed: int                    # sample r of the run is seeded seed + r, as in stage 2
    samples: int


def observed_final_content(generator, observer: TrajectoryObserver, concepts) -> np.ndarray:
    """bool [samples, concepts]: the concepts in the final realised content of the sampler call `observer` watched
    (data/truth.py's rule on the closed-form content at the last position)."""
    _, _, content, _ = observer.trace[-1]
    masses = np.stack([content[label] for label in generator.content_labels], axis=-1)
    return realised_concepts(masses, generator.content_labels, list(concepts))


def final_content(generator, run: Run, concept: str, steering: Steering | None,
                  seconds: float | None = None) -> np.ndarray:
    """bool [samples]: does the run's final clip carry the concept, with this steering (None: untilted)."""
    observer = TrajectoryObserver([])
    conditioning = Conditioning(run.conditioning.prompt, run.conditioning.labels, steering)
    generator.sample(conditioning, run.seed, run.samples, seconds or generator.default_seconds, observer)
    return observed_final_content(generator, observer, [concept])[:, 0]


def commitment_truth(generator, runs: Sequence[Run], concept: str, strength: float,
                     from_steps: Sequence[int] | None = None, random_directions: int = 10, bootstrap: int = 1000,
                     seed: int = 0, where=PRIOR, direction_file: str | None = None) -> tuple[pd.DataFrame, int | None]:
    """Per start step k: flip shares, effect beyond random with its interval; and the commitment step (module
    docstring). `generator` is an IdealGenerator (its prior is what is tilted), or, with `where` a tuple of
    blocks and a `direction_file` (data/directions.py), any generator that knows what it made and steers its
    blocks (the model organism): the concept's direction from the file, random ones of its norms."""
    steps = list(generator.axis.positions if from_steps is None else from_steps)
    untilted = [final_content(generator, run, concept, None) for run in runs]
    run_of = np.concatenate([np.full(run.samples, number) for number, run in enumerate(runs)])
    # Resample runs (multiplicities [bootstrap, runs], then per trajectory); a single run's own trajectories.
    cluster = run_of if len(runs) > 1 else np.arange(len(run_of))
    n_clusters = int(cluster.max()) + 1
    weights = np.random.default_rng(seed).multinomial(n_clusters, np.full(n_clusters, 1 / n_clusters),
                                                      size=bootstrap)[:, cluster].astype(np.float64)
    rows = []
    for step in steps:
        flips = {}
        for direction in ["concept"] + [f"random:{number}" for number in range(random_directions)]:
            kind, _, number = direction.partition(":")
            if direction_file is not None and kind == "concept":
                kind = "file"
            steering = Steering(id=f"{concept}-{direction}-from{step}", concept=concept, direction=kind,
                                site=Site(where, from_step=int(step)), strength=float(strength), seed=int(number or 0),
                                direction_file=direction_file)
            flips[direction] = np.concatenate([final_content(generator, run, concept, steering) != reference
                                               for run, reference in zip(runs, untilted)]).astype(np.float64)
        random = np.stack([flips[f"random:{number}"] for number in range(random_directions)]) \
            if random_directions else np.zeros((1, len(run_of)))
        paired = flips["concept"] - random.mean(axis=0)
        resampled = (weights @ paired) / weights.sum(axis=1)
        low, high = np.percentile(resampled, [50 * (1 - LEVEL), 100 - 50 * (1 - LEVEL)])
        rows.append({"concept": concept, "strength": float(strength), "from_step": int(step),
                     "n_trajectories": len(run_of), "n_runs": len(runs), "concept_flip": flips["concept"].mean(),
                     "random_flip_mean": random.mean(), "random_flip_max": random.mean(axis=1).max(),
                     "effect": paired.mean(), "effect_low": low, "effect_high": high,
                     "beyond_random": bool(low > 0)})
    table = pd.DataFrame(rows)
    beyond = table.loc[table["beyond_random"], "from_step"]
    return table, (int(beyond.max()) if len(beyond) else None)
