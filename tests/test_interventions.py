"""Interventions: the spec format, the records, the ideal model's prior steering, and the --compare statistics."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from stage_runs import assert_outside_the_clock_is_refused
from test_ideal import synthetic_bank

from data.stage import InputError
from diffusion.base import Conditioning, TrajectoryObserver
from diffusion.ideal import IdealGenerator, prior_direction
from diffusion.interventions.records import Interchange, Site, Steering, from_record, group_key
from diffusion.interventions.spec import check_spec, load_spec
from diffusion.interventions.steering import steer
from interp import compare

PROMPT_IDS = ["p1", "p2", "p3"]


def write_spec(tmp_path, payload, name="spec.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"format": 2, **payload}) if name.endswith(".json") else payload)
    return path


def prior_steering(identifier, concept, direction, strength, from_step=0, seed=0):
    return Steering(identifier, concept, direction, Site("prior", from_step), strength, seed=seed)


def steer_entry(**changes):
    entry = {"concept": "is_brass", "direction": ["concept", "random:0"], "where": "prior", "strength": 8.0,
             "from_step": [5, 45]}
    entry.update(changes)
    return entry


@pytest.fixture(scope="module")
def tiny():
    return IdealGenerator(bank=synthetic_bank())


def test_a_grid_entry_expands_into_named_interventions(tmp_path):
    spec = load_spec(write_spec(tmp_path, {"samples": 1, "capture_steps": [49],
                                           "interventions": [steer_entry()]}))
    assert [i.id for i in spec.interventions] == [
        "is_brass_concept_prior_s8_k5", "is_brass_concept_prior_s8_k45",
        "is_brass_random0_prior_s8_k5", "is_brass_random0_prior_s8_k45"]
    assert [i.is_baseline for i in spec.interventions] == [False, False, True, True]
    assert spec.samples == 1 and spec.capture_steps == (49,)
    assert len(spec.sha256) == 64


def test_yaml_and_json_specs_give_the_same_interventions(tmp_path):
    yaml_text = ("format: 2\ninterventions:\n  - concept: is_brass\n    direction: [concept, 'random:0']\n"
                 "    where: prior\n    strength: 8.0\n    from_step: [5, 45]\n")
    from_yaml = load_spec(write_spec(tmp_path, yaml_text, "spec.yaml"))
    from_json = load_spec(write_spec(tmp_path, {"interventions": [steer_entry()]}))
    assert from_yaml.interventions == from_json.interventions


@pytest.mark.parametrize("payload, message", [
    ({"interventions": []}, "non-empty list"),
    ({"interventions": [steer_entry(concept="is_tuba")]}, "'is_tuba' is not a concept"),
    ({"interventions": [steer_entry(mode="norm_relative")]}, "prior is tilted additively"),
    ({"interventions": [steer_entry(where="blocks")]}, "must be 'prior' or a list"),
    ({"interventions": [steer_entry(where=[1, 2], direction="concept")]}, "name a direction file"),
    ({"interventions": [steer_entry(from_step=-1)]}, "non-negative step"),
    ({"interventions": [steer_entry(rows="cfg")]}, "not one of conditional"),
    ({"interventions": [steer_entry(direction="random:x")]}, "seed after 'random:'"),
    ({"interventions": [steer_entry(id="one")]}, "explicit id names one intervention"),
    ({"interventions": [steer_entry(), steer_entry()]}, "is given twice"),
    ({"interventions": [steer_entry(strenght=2)]}, "unknown key"),
    ({"format": 3, "interventions": [steer_entry()]}, "not a known spec format"),
    ({"format": 1, "interventions": [steer_entry()]}, "MusicGen decoder layers 1-based .* subtract 1"),
    ({"interventions": [{"kind": "interchange", "concept_a": "is_brass", "concept_b": "is_keyboard", "op": "replace",
                         "layers": [1]}]}, "unknown key of an interchange .format 2 names 0-based 'blocks'"),
])
def test_bad_specs_are_refused_in_one_line(tmp_path, payload, message):
    with pytest.raises(InputError, match=message) as error:
        load_spec(write_spec(tmp_path, payload))
    assert "\n" not in str(error.value) and "spec.json" in str(error.value)


def test_the_spec_is_checked_against_the_generator_and_run(tmp_path, tiny):
    spec = load_spec(write_spec(tmp_path, {"prompts": ["p1"], "interventions": [steer_entry(from_step=50)]}))
    with pytest.raises(InputError, match="from_step 50 is past the last denoising step 49"):
        check_spec(spec, tiny, 0.5, 1, PROMPT_IDS)
    spec = load_spec(write_spec(tmp_path, {"prompts": ["p9"], "interventions": [steer_entry()]}))
    with pytest.raises(InputError, match="prompt 'p9' is not among"):
        check_spec(spec, tiny, 0.5, 1, PROMPT_IDS)
    spec = load_spec(write_spec(tmp_path, {"samples": 3, "interventions": [steer_entry()]}))
    with pytest.raises(InputError, match="samples 3 is more than the run's 2"):
        check_spec(spec, tiny, 0.5, 2, PROMPT_IDS)
    spec = load_spec(write_spec(tmp_path, {"interventions": [steer_entry(rows="both")]}))
    with pytest.raises(InputError, match="runs no unconditional"):
        check_spec(spec, tiny, 0.5, 1, PROMPT_IDS)


def test_steps_and_captures_outside_the_ideal_models_clock_are_refused(tmp_path, tiny):
    assert_outside_the_clock_is_refused(tmp_path, tiny, 0.5, {"concept": "is_brass", "direction": "concept",
                                                              "where": "prior", "strength": 8.0})


@pytest.mark.parametrize("identifier, message", [
    ("..", "intervention id '..'"), (".", "intervention id '.'"), ("x\n", r"intervention id 'x\\n'"),
    ("a/b", "intervention id 'a/b'"), ("", "empty intervention id"), ("component-means", "reserved"),
    ("x" * 151, "at most 150 characters")])
def test_an_id_that_is_not_a_safe_folder_name_is_refused(tmp_path, identifier, message):
    with pytest.raises(InputError, match=message):
        load_spec(write_spec(tmp_path, {"interventions": [steer_entry(direction="concept", from_step=5,
                                                                      id=identifier)]}))
    interchange = {"kind": "interchange", "concept_a": "is_brass", "concept_b": "is_keyboard", "op": "replace",
                   "blocks": [0], "id": identifier}
    with pytest.raises(InputError, match="intervention id"):
        load_spec(write_spec(tmp_path, {"interventions": [interchange]}))


def test_a_key_twice_in_a_spec_is_refused_in_json_and_yaml(tmp_path):
    text = json.dumps({"format": 2, "interventions": [steer_entry()]})
    with pytest.raises(InputError, match="'format' appears twice"):
        load_spec(write_spec(tmp_path, '{"format": 2, ' + text[1:], "spec.txt"))
    yaml_text = ("format: 2\ninterventions:\n  - concept: is_brass\n    direction: concept\n    where: prior\n"
                 "    strength: 8.0\n    strength: -8.0\n    from_step: 5\n")
    with pytest.raises(InputError, match="'strength' appears twice in one mapping"):
        load_spec(write_spec(tmp_path, yaml_text, "spec.yaml"))


def test_the_random_prior_direction_has_the_concepts_norm_and_no_meaning(tiny):
    labels = tiny.bank.labels
    concept = prior_direction(prior_steering("a", "is_brass", "concept", 8.0), labels)
    assert concept.tolist() == [float("brass" in clip) for clip in labels]
    randoms = [prior_direction(prior_steering("b", "is_brass", "random", 8.0, seed=s), labels) for s in range(5)]
    assert all(r.sum() == concept.sum() for r in randoms)
    assert len({tuple(r) for r in randoms}) > 1
    with pytest.raises(InputError, match="marks no clip"):
        prior_direction(prior_steering("c", "warm", "concept", 8.0), labels)


def final_clips(generator, steering, seed=3, samples=4):
    weights = {}
    latents = generator.sample(Conditioning("soft keys", ("keyboard",), steering), seed, samples, 0.5, None,
                               weights_callback=lambda step, sigma, w: weights.__setitem__(step, w))
    return latents, weights[max(weights)].argmax(axis=1)


def test_steering_the_ideal_prior_early_changes_the_clip_and_after_commitment_does_not(tiny):
    """The known answer: the ideal model commits to one bank clip by about step 35."""
    brass = [i for i, labels in enumerate(tiny.bank.labels) if "brass" in labels]
    reference, reference_clips = final_clips(tiny, None)
    assert not set(reference_clips) & set(brass)
    # The keyboard prompt favours keyboard clips by e^8 over brass ones; a tilt of 16 nats overturns that.
    _, early = final_clips(tiny, prior_steering("e", "is_brass", "concept", 16.0, from_step=5))
    assert set(early) <= set(brass)
    late, late_clips = final_clips(tiny, prior_steering("l", "is_brass", "concept", 16.0, from_step=45))
    assert late_clips.tolist() == reference_clips.tolist()
    torch.testing.assert_close(late, reference, rtol=0, atol=1e-9)


def test_zero_strength_is_no_intervention_byte_for_byte(tiny):
    observed = []
    for steering in (None, prior_steering("z", "is_brass", "concept", 0.0, from_step=0)):
        observer = TrajectoryObserver([10, 49], ["x0", "xt"])
        final = tiny.sample(Conditioning("soft keys", ("keyboard",), steering), 7, 2, 0.5, observer)
        observed.append([final.numpy().tobytes()] + [c.latent.numpy().tobytes() for c in observer.captured])
    assert observed[0] == observed[1]


def test_records_round_trip_and_hold_only_their_own_fields():
    steering = Steering("s", "is_brass", "file", Site((0, 2), 5, 9), 2.0, "norm_relative", "both", 0, "/d/x.npy")
    interchange = Interchange("i", "is_keyboard", "is_brass", "adjust", "mlp", Site((3,)))
    assert from_record(steering.record()) == steering and from_record(interchange.record()) == interchange
    # intervention.json of a steering keeps the keys (and order) runs were made with.
    assert list(steering.record()) == ["id", "concept", "direction", "where", "strength", "mode", "from_step",
                                       "to_step", "rows", "seed", "kind", "direction_file"]
    assert set(interchange.record()) == {"id", "kind", "concept", "concept_a", "op", "component", "where",
                                         "from_step", "to_step"}


def test_a_steering_group_is_everything_but_direction_and_start_step():
    """The random directions of a group are its concept direction's baseline (interp/compare.py reads this)."""
    base = Steering("c5", "is_brass", "file", Site((1,), 5), 2.0, direction_file="/d/brass.npy")
    same = [Steering("r25", "is_brass", "random", Site((1,), 25), 2.0, seed=3, direction_file="/d/brass.npy")]
    other = [Steering("x", "is_brass", "file", Site((1,), 5), 4.0, direction_file="/d/brass.npy"),
             Steering("y", "is_brass", "file", Site((2,), 5), 2.0, direction_file="/d/brass.npy"),
             Steering("z", "is_brass", "file", Site((1,), 5), 2.0, direction_file="/d/other.npy"),
             Steering("w", "is_brass", "file", Site((1,), 5, 30), 2.0, direction_file="/d/brass.npy")]
    assert all(group_key(s.record()) == base.group_key() for s in same)
    assert len({base.group_key(), *(s.group_key() for s in other)}) == 1 + len(other)


def test_steer_is_the_published_norm_relative_form():
    hidden = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    vector = torch.tensor([0.0, 10.0])
    np.testing.assert_allclose(steer(hidden, vector, 0.5, "add"), hidden + 0.5 * vector)
    expected = (hidden + 0.5 * torch.tensor([[5.0], [2.0]]) * torch.tensor([0.0, 1.0])) / 1.5
    np.testing.assert_allclose(steer(hidden, vector, 0.5, "norm_relative"), expected)


# -- compare: known answers -------------------------------------------------------------------------------------

CONCEPTS = ["is_brass", "is_keyboard", "is_string"]


def record(identifier, direction, from_step, seed=0):
    return prior_steering(identifier, "is_brass", direction, 8.0, from_step=from_step, seed=seed).record()


def synthetic_scores(effects: dict, prompts=8, samples=2, seed=0):
    """Reference clips and intervened clips whose P(brass) moves by effects[id] (+ small noise)."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(prompts):
        for s in range(samples):
            base = rng.uniform(0.1, 0.3, len(CONCEPTS))
            rows.append({"prompt_id": f"p{p}", "sample": s, "step": 49, "intervention": "", "path": f"r{p}{s}.wav",
                         **dict(zip(CONCEPTS, base))})
            for identifier, effect in effects.items():
                moved = base.copy()
                moved[0] = np.clip(moved[0] + effect + rng.normal(0, 0.01), 0, 1)
                rows.append({"prompt_id": f"p{p}", "sample": s, "step": 49, "intervention": identifier,
                             "path": f"{identifier}{p}{s}.wav", **dict(zip(CONCEPTS, moved))})
    frame = pd.DataFrame(rows)
    return frame.assign(row=np.arange(len(frame)))


def test_compare_finds_the_known_effect_the_baseline_and_the_commitment_step():
    effects = {"c5": 0.5, "c25": 0.3, "c45": 0.0, "r5": 0.0, "r25": 0.0, "r45": 0.0, "q5": 0.02, "q25": 0.0, "q45": 0.0}
    records = {}
    for step in (5, 25, 45):
        records[f"c{step}"] = record(f"c{step}", "concept", step)
        records[f"r{step}"] = record(f"r{step}", "random", step, seed=0)
        records[f"q{step}"] = record(f"q{step}", "random", step, seed=1)
    scores = synthetic_scores(effects)
    embeddings = np.random.default_rng(1).standard_normal((len(scores), 4))
    emergence = pd.DataFrame({"concept": ["is_brass"], "metric": ["auroc"], "emergence_step": [30]})
    tables = compare.compare(scores, records, CONCEPTS, ["is_brass", "is_keyboard", "is_string"], embeddings,
                             loudness=pd.Series(-20.0, index=scores.index), emergence_steps=emergence,
                             n_resamples=200, seed=0)
    summary = tables["interventions"].set_index("intervention")
    assert summary.loc["c5", "target_delta"] == pytest.approx(0.5, abs=0.02)
    assert summary.loc["c5", "effect"] == pytest.approx(0.49, abs=0.02)
    assert bool(summary.loc["c5", "beyond_baseline"]) and bool(summary.loc["c25", "beyond_baseline"])
    assert not bool(summary.loc["c45", "beyond_baseline"])
    assert summary.loc["c5", "log_odds_shift"] > 1 and summary.loc["c45", "family_kl"] < 0.01
    assert summary.loc["c5", "off_target_mean_abs_delta"] == pytest.approx(0.0, abs=1e-12)
    assert (summary["audio_guard"] == "ok").all()
    commitment = tables["commitment"].iloc[0]
    assert commitment["commitment_step"] == 25 and commitment["emergence_step"] == 30 and commitment["monotone"]
    effects_table = tables["effects"]
    off = effects_table[(effects_table["intervention"] == "c5") & ~effects_table["is_target"]]
    assert np.allclose(off["delta"], 0.0)


def test_a_random_direction_is_not_beyond_its_own_baseline():
    effects = {"c5": 0.0, "r5": 0.0, "q5": 0.0}
    records = {"c5": record("c5", "random", 5, seed=7), "r5": record("r5", "random", 5), "q5": record("q5", "random", 5, 1)}
    records["c5"]["direction"] = "concept"   # a "concept" direction that does what random ones do
    tables = compare.compare(synthetic_scores(effects), records, CONCEPTS, CONCEPTS, n_resamples=200)
    assert not bool(tables["interventions"].set_index("intervention").loc["c5", "beyond_baseline"])
    assert tables["commitment"]["commitment_step"].isna().all()


def test_the_audio_guard_flags_silence_and_loudness():
    scores = synthetic_scores({"c5": 0.2})
    loudness = pd.Series(np.where(scores["intervention"] == "c5", -80.0, -20.0), index=scores.index)
    tables = compare.compare(scores, {"c5": record("c5", "concept", 5)}, CONCEPTS, CONCEPTS, loudness=loudness,
                             n_resamples=50)
    guard = tables["interventions"].iloc[0]["audio_guard"]
    assert "silent" in guard and "loudness moved -60.0 dB" in guard


def test_family_kl_and_logit_known_values():
    assert compare.family_kl(np.array([[0.5, 0.5]]), np.array([[0.5, 0.5]]))[0] == pytest.approx(0.0)
    assert compare.family_kl(np.array([[0.9, 0.1]]), np.array([[0.1, 0.9]]))[0] == pytest.approx(
        0.9 * np.log(9) + 0.1 * np.log(1 / 9))
    assert compare.logit(np.array([0.5]))[0] == pytest.approx(0.0)
