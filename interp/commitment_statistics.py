"""The statistics of the commitment search: effects beyond random directions, the bisection over start steps, and
the bootstrap distribution of the commitment step. Nothing here knows about files or models
(interp/commitment_search.py runs the search; interp/commitment_report.py draws it).

The COMMITMENT STEP of a steering setting (concept, strength, place) is the last start step k (a tick of the
generator's intervention clock) from which steering still moves the target concept beyond the random-direction
baseline (interp/compare.py's definition), found here to one tick.

- Design. Trajectory t (prompt p, sample s, the reference run's seed) is run unsteered (its reference), steered
  along the concept's direction from k on, and steered along each of its prompt's own m random directions of the
  same norm (prompt number p gets the random directions seeded p*m .. p*m + m - 1, so P prompts bring P*m distinct
  directions). A READER turns a run's final clip into a number: the stage-6 probe's P(concept), or, for a
  generator that knows what it made, the realised concept (1 or 0: the perfect probe). A run's CHANGE is its reader
  value minus the reference's, so trajectories pair by seed and the noise they share cancels.
- Effect at k: the mean over trajectories of [change under the concept direction - mean change under its prompt's
  random directions] (interp/compare.py's effect, with directions drawn per prompt).
- Interval: a percentile bootstrap over prompts (a prompt's samples share its text; its random directions are its
  own), so the spread between trajectories and the spread between random directions both enter it, each counted
  once. Random directions shared by every prompt (compare.py's design) would be a second, crossed factor that a
  prompt bootstrap leaves out and a two-way bootstrap counts twice where the design is incomplete; directions
  nested in prompts need neither. Measured on the planted demo, one direction per prompt gives intervals 1.4-2x as
  wide as ten shared directions on every prompt, at a sixth of the runs. BEYOND the baseline: the interval
  excludes 0 on the side the strength pushes (interp/compare.py's rule). The same resamples serve every k and
  every reader (common random numbers), so curves and steps compare resample by resample.
- Bisection: steering from the first tick moves the concept or no k does; steering from `ticks` (after the last
  tick) is no intervention, whose effect is 0 by construction, so it is never beyond and is not run. Between them
  the search halves [lo, hi) with lo beyond and hi not until hi = lo + 1: 1 + ceil(log2(ticks - first)) evaluated
  steps (7 for 50). It assumes beyond(k) is true up to k* and false after (the effect falls with k); `violations`
  checks that at every evaluated step, both for the beyond pattern and for the effect itself.
- Bootstrap of the commitment step: a resample of the prompts gives an effect at every evaluated k; whether it lies
  beyond needs that resample's own interval, so each is resampled again (INNER_RESAMPLES draws from its prompts).
  Its commitment step is the last evaluated k beyond the baseline (the bisection's answer when the pattern is
  monotone); the interval is the percentile interval of those steps, so it can only take evaluated steps — dense
  next to k*, where the bisection looked, and coarser further away.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from interp import statistics
from interp.compare import beyond

INNER_RESAMPLES = 200
# Random directions in all (prompts x per prompt): fewer give the baseline's spread too few draws to enter the interval.
MIN_RANDOM_DIRECTIONS = 10


def random_directions_of(prompt_number: int, per_prompt: int) -> list[int]:
    """The seeds of prompt number p's own random directions (0-based, in sorted prompt order)."""
    return [prompt_number * per_prompt + j for j in range(per_prompt)]


@dataclass(frozen=True)
class Reading:
    """One reader's changes at one start step, per trajectory: under the concept direction, and under each of the
    trajectory's prompt's own random directions."""
    concept: np.ndarray   # float [trajectories]
    random: np.ndarray    # float [trajectories, random directions per prompt]

    def cells(self, prompt: np.ndarray, n_prompts: int) -> tuple[np.ndarray, np.ndarray]:
        """(sums, counts) [prompts] of the trajectories' effects, concept change - mean random change."""
        effects = self.concept - self.random.mean(axis=1)
        return (np.bincount(prompt, weights=effects, minlength=n_prompts),
                np.bincount(prompt, minlength=n_prompts).astype(np.float64))


@dataclass(frozen=True)
class Resamples:
    """Prompt multiplicities: `prompts` [B, P] for the resamples, `inner` [I, B, P] drawn from each of them."""
    prompts: np.ndarray
    inner: np.ndarray

    @classmethod
    def draw(cls, n_prompts: int, n_resamples: int, seed: int, inner: int = INNER_RESAMPLES) -> Resamples:
        rng = np.random.default_rng([seed, 17])
        prompts = statistics.cluster_weights(n_prompts, n_resamples, rng)
        # A resample of a resample: n draws from the outer resample's multiset, i.e. multinomial on its shares.
        return cls(prompts, rng.multinomial(n_prompts, prompts / n_prompts, size=(inner, n_resamples)).astype(float))


def weighted_effect(sums: np.ndarray, counts: np.ndarray, prompts: np.ndarray) -> np.ndarray:
    """The effect under prompt multiplicities [..., P] (every resample draws P prompts, so none is empty)."""
    return (prompts @ sums) / (prompts @ counts)


@dataclass(frozen=True)
class StepEffect:
    """A reader's effect beyond random at one start step, its interval and the means it is made of."""
    effect: float
    low: float
    high: float
    beyond: bool
    concept_change: float      # mean change under the concept direction
    random_change: float       # mean change under the random directions
    replicates: np.ndarray     # [B] the effect in each prompt resample


def step_effect(reading: Reading, prompt: np.ndarray, n_prompts: int, resamples: Resamples, strength: float,
                level: float) -> StepEffect:
    sums, counts = reading.cells(prompt, n_prompts)
    effect = float(sums.sum() / counts.sum())
    replicates = weighted_effect(sums, counts, resamples.prompts)
    low, high = statistics.percentile_interval(replicates, level)
    return StepEffect(effect, low, high, beyond(low, high, strength), float(np.mean(reading.concept)),
                      float(np.mean(reading.random)), replicates)


def replicate_beyond(reading: Reading, prompt: np.ndarray, n_prompts: int, resamples: Resamples, strength: float,
                     level: float) -> np.ndarray:
    """bool [B]: is the effect beyond the baseline in each resample, judged by that resample's own percentile
    interval over its inner resamples."""
    sums, counts = reading.cells(prompt, n_prompts)
    inner = weighted_effect(sums, counts, resamples.inner)   # [I, B]
    low, high = statistics.percentile_interval(inner.T, level)
    return np.array([beyond(a, b, strength) for a, b in zip(low, high)], dtype=bool)


def bisect(first: int, ticks: int, is_beyond: Callable[[int], bool]) -> tuple[int | None, list[int]]:
    """The last start step in [first, ticks) that is beyond, assuming beyond up to some k* and not after; None when
    the first step is not beyond. Returns it and the steps asked, in order (module docstring)."""
    asked = [first]
    if not is_beyond(first):
        return None, asked
    low, high = first, ticks
    while high - low > 1:
        middle = (low + high) // 2
        asked.append(middle)
        low, high = (middle, high) if is_beyond(middle) else (low, middle)
    return low, asked


def step_distribution(steps: Sequence[int], beyond_by_step: np.ndarray) -> np.ndarray:
    """Per replicate, the last evaluated step beyond the baseline; -1 where none is. beyond_by_step [steps, B]."""
    steps = np.asarray(steps)
    order = np.argsort(steps)
    ordered = np.asarray(beyond_by_step, bool)[order]
    last = np.where(ordered.any(axis=0), len(steps) - 1 - np.argmax(ordered[::-1], axis=0), -1)
    return np.where(last >= 0, steps[order][np.maximum(last, 0)], -1)


def step_interval(distribution: np.ndarray, level: float) -> tuple[int | None, int | None, float]:
    """Percentile interval of the replicates' commitment steps (observed values only), and the share of replicates
    in which no step is beyond (their step counts as before the first, -1; a bound there is None)."""
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(distribution, [tail, 100.0 - tail], method="inverted_cdf")
    bound = [None if value < 0 else int(value) for value in (low, high)]
    return bound[0], bound[1], float(np.mean(distribution < 0))


def violations(steps: Sequence[int], effects: Sequence[StepEffect], commitment: int | None,
               strength: float) -> list[str]:
    """Where the evaluated steps contradict the bisection's premise: a step before the commitment step that is not
    beyond, one after it that is, and an effect that grows with k (a later step's interval wholly above the earlier
    step's, for a positive strength)."""
    found = []
    pairs = sorted(zip(steps, effects), key=lambda pair: pair[0])
    for step, effect in pairs:
        if commitment is None and effect.beyond:
            found.append(f"k={step} beyond though the first step is not")
        elif commitment is not None and step < commitment and not effect.beyond:
            found.append(f"k={step} not beyond before the commitment step")
        elif commitment is not None and step > commitment and effect.beyond:
            found.append(f"k={step} beyond after the commitment step")
    sign = 1.0 if strength >= 0 else -1.0
    for (early, first), (late, second) in zip(pairs, pairs[1:]):
        if min(sign * second.low, sign * second.high) > max(sign * first.low, sign * first.high):
            found.append(f"effect rises from k={early} to k={late}, the intervals apart")
    return found


@dataclass
class ConceptSearch:
    """One concept's search: the steps evaluated, and per reader (e.g. "probe", "truth") what it concluded.
    `setting` says what was steered (interp/commitment_runs.py's SteeringSetting: concept, strength, where)."""
    setting: object
    prompt_ids: list[str]
    samples: int
    random_per_prompt: int
    readers: tuple[str, ...]
    asked: dict = field(default_factory=dict)        # reader -> the steps its bisection asked for, in order
    commitment: dict = field(default_factory=dict)   # reader -> the commitment step (None: no step is beyond)
    effects: dict = field(default_factory=dict)      # reader -> {step: StepEffect} at every evaluated step
    interval: dict = field(default_factory=dict)     # reader -> (low, high, share of resamples without a step)
    violations: dict = field(default_factory=dict)   # reader -> where the evaluated steps are not monotone
    switched: dict = field(default_factory=dict)     # step -> (runs whose realised concept changed, probe sign errors)
    reader_text: dict = field(default_factory=dict)  # reader -> what it reads, where not the study's (reports)

    @property
    def random_directions(self) -> int:
        """Distinct random directions: every prompt has its own."""
        return len(self.prompt_ids) * self.random_per_prompt

    @property
    def steps(self) -> list[int]:
        return sorted(set().union(*(set(effects) for effects in self.effects.values())))


def search_readers(result: ConceptSearch, evaluate: Callable[[int], dict], prompt: np.ndarray, ticks: int,
                   bootstrap: int, alpha: float, seed: int, progress: bool = True) -> ConceptSearch:
    """Bisect the start step in [0, ticks) for each reader in turn (a later reader reuses every step an earlier
    one evaluated), then the bootstrap distribution of each reader's commitment step over all evaluated steps.
    `evaluate(k)` runs start step k once: {reader: Reading} over the trajectories, whose prompt numbers are
    `prompt` [trajectories] (0 .. len(result.prompt_ids) - 1)."""
    n_prompts, strength, level = len(result.prompt_ids), result.setting.strength, 1.0 - alpha
    resamples = Resamples.draw(n_prompts, bootstrap, seed)
    readings = {}
    bar = tqdm(total=len(result.readers) * (1 + math.ceil(math.log2(ticks))), unit="step", dynamic_ncols=True,
               desc=f"commitment search {result.setting.concept}", disable=not progress)

    def effect(reader: str, step: int) -> StepEffect:
        if step not in readings:
            readings[step] = evaluate(step)
        if step not in result.effects[reader]:
            result.effects[reader][step] = step_effect(readings[step][reader], prompt, n_prompts, resamples,
                                                       strength, level)
        return result.effects[reader][step]

    for reader in result.readers:
        result.effects[reader] = {}

        def is_beyond(step: int, reader=reader) -> bool:
            bar.set_postfix_str(f"{reader} k={step}")
            bar.update(1)
            return effect(reader, step).beyond

        result.commitment[reader], result.asked[reader] = bisect(0, ticks, is_beyond)
    bar.close()
    steps = sorted(readings)
    for reader in result.readers:
        for step in steps:
            effect(reader, step)
        beyond = np.stack([replicate_beyond(readings[step][reader], prompt, n_prompts, resamples, strength, level)
                           for step in steps])
        result.interval[reader] = step_interval(step_distribution(steps, beyond), level)
        result.violations[reader] = violations(steps, [result.effects[reader][step] for step in steps],
                                               result.commitment[reader], strength)
    if set(result.readers) >= {"probe", "truth"}:
        for step in steps:
            truth, read = readings[step]["truth"].concept, readings[step]["probe"].concept
            changed = truth != 0
            result.switched[step] = (int(changed.sum()), int((np.sign(read[changed]) == -np.sign(truth[changed])).sum()))
    return result
