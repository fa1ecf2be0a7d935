"""Known answers for the commitment search's statistics: the bisection, the prompt bootstrap of the effect, and
the bootstrap interval of the commitment step (interp/commitment_statistics.py)."""
import math

import numpy as np
import pytest

from interp.commitment_statistics import (Reading, Resamples, StepEffect, bisect, random_directions_of,
                                          replicate_beyond, step_distribution, step_effect, step_interval,
                                          violations, weighted_effect)


@pytest.mark.parametrize("ticks", [1, 2, 7, 50, 64])
def test_bisection_finds_the_last_step_of_a_monotone_curve_exactly(ticks):
    for planted in range(-1, ticks):
        asked = []

        def is_beyond(step):
            asked.append(step)
            return step <= planted

        found, path = bisect(0, ticks, is_beyond)
        assert found == (None if planted < 0 else planted)
        assert path == asked and len(set(asked)) == len(asked)
        # One step to know that the first is beyond, then halvings of [0, ticks): 7 steps for 50.
        assert len(asked) <= 1 + math.ceil(math.log2(ticks)) if ticks > 1 else len(asked) == 1


def test_every_prompt_has_its_own_random_directions():
    assigned = [random_directions_of(p, 2) for p in range(20)]
    assert all(len(directions) == 2 for directions in assigned)
    assert sorted(np.concatenate(assigned).tolist()) == list(range(40))


def readings(rng, n_prompts=20, samples=4, per_prompt=2, concept_rate=0.5, random_rate=0.1):
    """Changes of a 0/1 reader: the concept direction switches a trajectory with concept_rate; a random direction
    switches it either way with random_rate."""
    prompt = np.repeat(np.arange(n_prompts), samples)
    concept = (rng.random(len(prompt)) < concept_rate).astype(float)
    random = (rng.random((len(prompt), per_prompt)) < random_rate) * rng.choice([-1.0, 1.0], (len(prompt), per_prompt))
    return Reading(concept, random), prompt


def test_the_effect_is_concept_minus_random_and_a_resample_weighs_prompts():
    rng = np.random.default_rng(0)
    reading, prompt = readings(rng)
    effect = step_effect(reading, prompt, 20, Resamples.draw(20, 200, 0), 8.0, 0.95)
    assert effect.effect == pytest.approx(reading.concept.mean() - reading.random.mean())
    # One resample by brute force: every trajectory repeated by its prompt's multiplicity.
    prompts = rng.multinomial(20, np.full(20, 0.05))
    effects = reading.concept - reading.random.mean(axis=1)
    expected = np.average(effects, weights=prompts[prompt])
    assert weighted_effect(*reading.cells(prompt, 20), prompts.astype(float)) == pytest.approx(expected)
    assert effect.low < effect.effect < effect.high and effect.beyond


def test_the_spread_between_random_directions_widens_the_interval():
    """Random directions that differ from one another (half of them move the concept, half do not) widen the
    interval against directions that all move it alike by the same mean amount."""
    rng = np.random.default_rng(1)
    reading, prompt = readings(rng, per_prompt=1)
    resamples = Resamples.draw(20, 1000, 0)
    alike = step_effect(Reading(reading.concept, np.full((80, 1), 0.2)), prompt, 20, resamples, 8.0, 0.95)
    uneven = np.where(prompt % 2 == 0, 0.4, 0.0)[:, None]
    spread = step_effect(Reading(reading.concept, uneven), prompt, 20, resamples, 8.0, 0.95)
    assert alike.effect == pytest.approx(spread.effect)
    assert spread.high - spread.low > 1.2 * (alike.high - alike.low)


def curve(rng, steps, effect_of_step, random_of_step=lambda step: 0.1, **options):
    """Readings at every step: the concept direction switches effect_of_step(k) of the trajectories, a random one
    random_of_step(k) either way."""
    return {step: readings(rng, concept_rate=effect_of_step(step), random_rate=random_of_step(step), **options)
            for step in steps}


@pytest.mark.parametrize("planted", [12, 30])
def test_the_bootstrap_interval_covers_a_planted_commitment_step(planted):
    """A concept direction that switches half the trajectories up to the planted step and none after it: the
    search finds the step, and the interval of the commitment step covers it."""
    rng = np.random.default_rng(planted)
    data = curve(rng, range(50), lambda step: 0.5 if step <= planted else 0.0)
    prompt = data[0][1]
    resamples = Resamples.draw(20, 300, 0, inner=100)
    effects = {}

    def is_beyond(step):
        effects[step] = step_effect(data[step][0], prompt, 20, resamples, 8.0, 0.95)
        return effects[step].beyond

    found, asked = bisect(0, 50, is_beyond)
    assert found == planted and asked[-1] in (planted, planted + 1)
    steps = sorted(effects)
    beyond = np.stack([replicate_beyond(data[step][0], prompt, 20, resamples, 8.0, 0.95) for step in steps])
    low, high, none = step_interval(step_distribution(steps, beyond), 0.95)
    assert low <= planted <= high and none == 0.0
    assert violations(steps, [effects[step] for step in steps], found, 8.0) == []


def test_a_weak_last_step_widens_the_interval_below_it():
    """The concept direction barely moves the concept at the planted step: some resamples do not find it beyond,
    so the interval reaches the steps before it (and only steps that were evaluated)."""
    rng = np.random.default_rng(3)
    # After the planted step nothing moves any more, random directions included (as on the ideal model).
    data = curve(rng, range(40), lambda step: 0.5 if step < 20 else (0.12 if step == 20 else 0.0),
                 lambda step: 0.2 if step <= 20 else 0.0)
    prompt = data[0][1]
    resamples = Resamples.draw(20, 400, 0, inner=100)
    steps = [0, 10, 17, 18, 19, 20, 21, 30]
    beyond = np.stack([replicate_beyond(data[step][0], prompt, 20, resamples, 8.0, 0.95) for step in steps])
    distribution = step_distribution(steps, beyond)
    assert set(distribution) <= set(steps)
    low, high, _ = step_interval(distribution, 0.95)
    assert low < 20 and high == 20
    # Here the point estimate misses the weak step (the search would answer 19); the interval still covers 20.
    assert not step_effect(data[20][0], prompt, 20, resamples, 8.0, 0.95).beyond


def test_step_distribution_takes_the_last_evaluated_step_beyond():
    steps = [0, 25, 37, 31]
    beyond = np.array([[True, True, False], [True, False, False], [False, False, False], [True, False, False]])
    assert step_distribution(steps, beyond).tolist() == [31, 0, -1]
    assert step_interval(np.array([-1, 3, 3, 4]), 0.5) == (None, 3, 0.25)
    assert step_interval(np.array([2, 3, 3, 4]), 0.5) == (2, 3, 0.0)


def test_violations_name_the_steps_that_break_monotonicity():
    def effect(value, low, high, is_beyond):
        return StepEffect(value, low, high, is_beyond, value, 0.0, np.zeros(1))

    steps = [0, 10, 20, 30]
    effects = [effect(0.5, 0.4, 0.6, True), effect(0.05, -0.1, 0.2, False), effect(0.9, 0.8, 1.0, True),
               effect(0.0, 0.0, 0.0, False)]
    found = violations(steps, effects, 20, 8.0)
    assert "k=10 not beyond before the commitment step" in found
    assert "effect rises from k=10 to k=20, the intervals apart" in found
    assert violations(steps, effects, 0, 8.0)[0] == "k=20 beyond after the commitment step"


@pytest.mark.parametrize("effect, low, high, flagged", [(-0.2, -0.3, -0.1, True), (0.05, -0.02, 0.12, False)])
def test_a_search_without_a_step_says_when_the_direction_moves_the_concept_the_other_way(effect, low, high, flagged):
    """No step beyond the baseline on the strength's side: the note says so when the first step's interval lies
    wholly on the other side (the direction pushes the concept away), and not when it straddles 0."""
    from interp.commitment_report import note
    from interp.commitment_runs import SteeringSetting
    from interp.commitment_statistics import ConceptSearch

    first = StepEffect(effect, low, high, False, effect, 0.0, np.array([effect]))
    search = ConceptSearch(SteeringSetting("is_guitar", 1.0, (0, 1)), ["g0", "g1"], 3, 1, ("truth",),
                           asked={"truth": [0]}, commitment={"truth": None}, effects={"truth": {0: first}},
                           interval={"truth": (None, None, 1.0)}, violations={"truth": []})
    text = note(search, "truth", "sampler step")
    assert (f"on the other side ({effect:+.3f} [{low:+.3f}, {high:+.3f}])" in text) == flagged
