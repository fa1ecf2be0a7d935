"""The commitment step on the model organism, searched to one sampler step and read two ways: by what the organism
made (its realised content, the truth) and by a probe that reads its output. interp/organism_analysis.py drives it.

The search is the study's (interp/commitment_statistics.py: bisection over the start step k, effect beyond random
directions, a bootstrap distribution of the commitment step); only the runs differ. Instead of files, each start
step is sampled in memory:

- Design. `groups` x `per_group` unconditional trajectories (the organism ignores its prompt with condition=none);
  trajectory t is seeded seed + t. A group plays the part of a prompt in the statistics: it has its own random
  direction (seed = its number), and the intervals resample groups, so both the spread between trajectories and
  the spread between random directions enter them. The unsteered reference and every random run are sampled one
  group per sampler call, so a random run and its reference share the batch and pair exactly; the concept
  direction runs once over all trajectories.
- Readers. "truth": the concept in the final realised content (data/truth.py's rule on the closed-form content at
  the last step). "probe": P(concept) of a logistic-regression probe on the final latent (what the decoder turns
  into audio), fitted on the analysis's own unsteered trajectories; so the probe reads the output, never the
  block activations the steering writes into.
- Steering. On the organism, a direction file (difference of means, or the activation probe's weights) added to
  every block from k on, against random directions of the file's norms (diffusion/interventions/). On the ideal
  planted model, its prior tilted towards the concept, against random tilts: read by the truth only.
- The natural commitment of the unsteered trajectories (`content_commitment`): among trajectories that end with
  the concept, the step from which their realised content carries it for good (data/truth.py commit_steps), the
  median with a bootstrap interval over trajectories. It says when the organism settles on a concept when left
  alone; the steering commitment step says until when a push of a given size can still change that.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from data.truth import commit_steps
from diffusion.base import Conditioning, TrajectoryObserver
from diffusion.commitment import observed_final_content
from diffusion.interventions.records import PRIOR
from interp.commitment_runs import SteeringSetting
from interp.commitment_statistics import ConceptSearch, Reading, search_readers

PROMPT = "organism analysis (condition=none: the prompt is not shown)"


@dataclass(frozen=True)
class Design:
    seed: int          # trajectory t is seeded seed + t
    groups: int        # units of the bootstrap, each with its own random direction
    per_group: int     # trajectories per group

    @property
    def trajectories(self) -> int:
        return self.groups * self.per_group

    @property
    def group_of(self) -> np.ndarray:
        return np.repeat(np.arange(self.groups), self.per_group)


def final_state(generator, steering, seed: int, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """One sampler call: the final realised content bool [samples, truth concepts] and the final latent
    float [samples, dim]."""
    observer = TrajectoryObserver([])
    latent = generator.sample(Conditioning(PROMPT, (), steering), seed, samples, generator.default_seconds, observer)
    realised = observed_final_content(generator, observer, generator.truth_concepts)
    return realised, latent.double().numpy().reshape(samples, -1)


def grouped_state(generator, steering, design: Design, group_seeds=None) -> tuple[np.ndarray, np.ndarray]:
    """final_state of every group, one sampler call each (`group_seeds`: a steering per group, or one for all)."""
    parts = [final_state(generator, steering if group_seeds is None else group_seeds(group),
                         design.seed + group * design.per_group, design.per_group) for group in range(design.groups)]
    return np.concatenate([part[0] for part in parts]), np.concatenate([part[1] for part in parts])


def output_probe(latents: np.ndarray, final: np.ndarray, seed: int):
    """A logistic-regression probe per concept column of `final` on the final latents: column -> fitted model
    (None where one class is missing)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probes = {}
    for column in range(final.shape[1]):
        if final[:, column].all() or not final[:, column].any():
            probes[column] = None
            continue
        probes[column] = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed)) \
            .fit(latents, final[:, column])
    return probes


class Searcher:
    """Runs the commitment searches of one generator on one design (reference made once, shared by concepts)."""

    def __init__(self, generator, design: Design, probes: dict | None, bootstrap: int, alpha: float, seed: int,
                 progress: bool):
        self.generator, self.design, self.probes = generator, design, probes
        self.bootstrap, self.alpha, self.seed, self.progress = bootstrap, alpha, seed, progress
        self.concepts = list(generator.truth_concepts)
        self.reference = grouped_state(generator, None, design)
        self._random = {}

    def values(self, state, concept: str) -> dict:
        realised, latents = state
        column = self.concepts.index(concept)
        values = {"truth": realised[:, column].astype(np.float64)}
        if self.probes is not None and self.probes.get(concept) is not None:
            values["probe"] = self.probes[concept].predict_proba(latents)[:, 1]
        return values

    def random_runs(self, baseline: SteeringSetting, step: int):
        """Every group's run along its own random direction from `step` on (made once per baseline and step)."""
        key = (baseline, step)
        if key not in self._random:
            self._random[key] = grouped_state(self.generator, None, self.design,
                                              lambda group: baseline.steering("random", step, group))
        return self._random[key]

    def search(self, setting: SteeringSetting, baseline: SteeringSetting | None = None) -> ConceptSearch:
        """The commitment search of one steering setting. `baseline`: the setting whose random directions are
        the baseline (unset: the setting's own); two settings whose directions have the same norms share it."""
        design, concept = self.design, setting.concept
        base = self.values(self.reference, concept)
        readers = tuple(reader for reader in ("probe", "truth") if reader in base)
        per_group = 1

        def evaluate(step: int) -> dict:
            steered = self.values(final_state(self.generator, setting.steering("concept", step), design.seed,
                                              design.trajectories), concept)
            random = self.values(self.random_runs(baseline or setting, step), concept)
            return {reader: Reading(steered[reader] - base[reader], (random[reader] - base[reader])[:, None])
                    for reader in readers}

        result = ConceptSearch(setting, [f"group {g}" for g in range(design.groups)], design.per_group, per_group,
                               readers, reader_text={"probe": "a logistic probe's P(concept) on the final latent"})
        ticks = self.generator.clock_ticks(self.generator.default_seconds)
        return search_readers(result, evaluate, design.group_of, ticks, self.bootstrap, self.alpha, self.seed,
                              self.progress)


def prior_setting(concept: str, strength: float) -> SteeringSetting:
    return SteeringSetting(concept, float(strength), PRIOR)


def block_setting(concept: str, strength: float, blocks, direction_file) -> SteeringSetting:
    return SteeringSetting(concept, float(strength), tuple(int(b) for b in blocks),
                           direction_file=str(direction_file))


def content_commitment(realised: np.ndarray, steps: np.ndarray, concepts: list[str], bootstrap: int, seed: int,
                       level: float) -> pd.DataFrame:
    """realised bool [trajectories, steps, concepts] of unsteered runs -> per concept, over the trajectories that
    end with it: the median step from which they carry it for good, with a bootstrap interval over them."""
    committed = commit_steps(realised, steps)                   # [trajectories, concepts]
    rng = np.random.default_rng([seed, 23])
    rows = []
    for k, name in enumerate(concepts):
        ends_with = realised[:, -1, k]
        chosen = committed[ends_with, k].astype(np.float64)
        row = {"concept": name, "n_ending_with": int(ends_with.sum()), "content_commit_step": np.nan,
               "content_commit_low": np.nan, "content_commit_high": np.nan}
        if len(chosen):
            draws = np.median(chosen[rng.integers(0, len(chosen), (bootstrap, len(chosen)))], axis=1)
            tail = (1.0 - level) / 2.0 * 100.0
            low, high = np.percentile(draws, [tail, 100.0 - tail], method="inverted_cdf")   # values a median takes
            row.update(content_commit_step=float(np.median(chosen)), content_commit_low=low, content_commit_high=high)
        rows.append(row)
    return pd.DataFrame(rows)
