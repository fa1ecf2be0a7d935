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
                                         "from_step", "to_step", "rows"}
    # A periodic steering records its period; an interchange record from before `rows` was made on both CFG rows.
    periodic = Steering("p", "is_brass", "file", Site((1,), 5, None, 25), 0.5, "norm_relative")
    assert periodic.record()["every"] == 25 and from_record(periodic.record()) == periodic
    legacy = {key: value for key, value in interchange.record().items() if key != "rows"}
    assert from_record(legacy).rows == "both"


def test_a_steering_group_is_everything_but_direction_and_start_step():
    """The random directions of a group are its concept direction's baseline (interp/compare.py reads this)."""
    base = Steering("c5", "is_brass", "file", Site((1,), 5), 2.0, direction_file="/d/brass.npy")
    same = [Steering("r25", "is_brass", "random", Site((1,), 25), 2.0, seed=3, direction_file="/d/brass.npy")]
    other = [Steering("x", "is_brass", "file", Site((1,), 5), 4.0, direction_file="/d/brass.npy"),
             Steering("y", "is_brass", "file", Site((2,), 5), 2.0, direction_file="/d/brass.npy"),
             Steering("z", "is_brass", "file", Site((1,), 5), 2.0, direction_file="/d/other.npy"),
             Steering("w", "is_brass", "file", Site((1,), 5, 30), 2.0, direction_file="/d/brass.npy"),
             Steering("v", "is_brass", "file", Site((1,), 5, None, 25), 2.0, direction_file="/d/brass.npy")]
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


def test_family_kl_defaults_to_the_published_direction_and_offers_the_other():
    """The published code computes torch's kl_div(log p_ref, log p_int, log_target=True), summed over classes:
    KL(int || ref). scipy's entropy(p, q) is KL(p || q), an independent computation of both directions."""
    from scipy.stats import entropy
    rng = np.random.default_rng(3)
    reference, intervened = rng.dirichlet(np.ones(5), size=4), rng.dirichlet(np.ones(5), size=4)
    published = torch.nn.functional.kl_div(torch.log(torch.tensor(reference)), torch.log(torch.tensor(intervened)),
                                           reduction="none", log_target=True).sum(dim=1).numpy()
    np.testing.assert_allclose(compare.family_kl(reference, intervened), published, rtol=1e-9)
    np.testing.assert_allclose(compare.family_kl(reference, intervened), entropy(intervened, reference, axis=1),
                               rtol=1e-9)
    np.testing.assert_allclose(compare.family_kl(reference, intervened, "reference_intervened"),
                               entropy(reference, intervened, axis=1), rtol=1e-9)
    assert not np.allclose(published, entropy(reference, intervened, axis=1))   # the directions do differ here
    scores = synthetic_scores({"c5": 0.4})
    summary = compare.compare(scores, {"c5": record("c5", "concept", 5)}, CONCEPTS, CONCEPTS,
                              n_resamples=50)["interventions"].iloc[0]
    assert summary["family_kl"] > 0 and summary["family_kl_reverse"] > 0
    assert summary["family_kl"] != pytest.approx(summary["family_kl_reverse"])


def test_the_commitment_step_is_labelled_by_the_clock_the_interventions_count(tmp_path, monkeypatch):
    """MusicGen's start steps are generated positions while its emergence is a decoder layer: the table, the report
    section and the figure say so, and the figure draws no emergence line on the position axis."""
    from interp import compare_report, plots
    records = {f"{kind}{step}": record(f"{kind}{step}", direction, step, seed=seed)
               for step in (5, 25) for kind, direction, seed in (("c", "concept", 0), ("r", "random", 0))}
    emergence = pd.DataFrame({"concept": ["is_brass"], "metric": ["auroc"], "emergence_step": [3]})
    tables = compare.compare(synthetic_scores({"c5": 0.5, "c25": 0.0, "r5": 0.0, "r25": 0.0}), records, CONCEPTS,
                             CONCEPTS, emergence_steps=emergence, axis_name="layer", n_resamples=100,
                             clock="generated_position")
    row = tables["commitment"].iloc[0]
    assert (row["commitment_step"], row["commitment_clock"]) == (5, "generated_position")
    assert (row["emergence_step"], row["trajectory_axis"]) == (3, "layer")
    figures = []
    real_new_figure = plots.new_figure
    monkeypatch.setattr(compare_report, "new_figure", lambda **k: figures.append(real_new_figure(**k)) or figures[-1])
    (tmp_path / "generation.json").write_text(json.dumps({"generator": "musicgen", "model": "tiny-musicgen",
                                                          "lens": "regenerate"}))
    compare_report.write_outputs(tmp_path, tables, tmp_path, tmp_path, axis_unit="layer")
    section = (tmp_path / "section.html").read_text()
    assert "<th>emergence layer</th><th>commitment generated position</th>" in section
    # The section names what made the clips: generator, model and lens.
    assert "Generator <b>musicgen</b>" in section and "tiny-musicgen" in section and "DecoderLens" in section
    axis = figures[0].axes[0]
    assert axis.get_xlabel() == "steering from generated position k on" and "emergence: layer 3" in axis.get_title()
    labels = axis.get_legend_handles_labels()[1]
    assert "commitment (generated position 5)" in labels and not any("emergence" in label for label in labels)
    assert pd.read_csv(tmp_path / "commitment.csv")["commitment_clock"].tolist() == ["generated_position"]
    # A denoising backend: the same clock as its trajectory, so emergence is drawn on it.
    tables = compare.compare(synthetic_scores({"c5": 0.5, "c25": 0.0, "r5": 0.0, "r25": 0.0}), records, CONCEPTS,
                             CONCEPTS, emergence_steps=emergence, axis_name="denoising_step", n_resamples=100)
    figures.clear()
    compare_report.write_outputs(tmp_path, tables, tmp_path, tmp_path, axis_unit="step")
    assert "emergence (step 3)" in figures[0].axes[0].get_legend_handles_labels()[1]
    assert "<th>emergence step</th><th>commitment denoising step</th>" in (tmp_path / "section.html").read_text()


def test_each_generator_declares_the_clock_its_interventions_count(tmp_path):
    for generator, clock in (("musicgen", "generated_position"), ("stable-audio-open", "denoising_step"),
                             ("ideal", "denoising_step")):
        (tmp_path / "generated").mkdir(exist_ok=True)
        (tmp_path / "generated" / "generation.json").write_text(json.dumps(
            {"generator": generator, "trajectory_axis": {"name": "x", "unit": "x", "positions": [1]}}))
        assert compare.intervention_clock(tmp_path) == clock
    (tmp_path / "generated" / "generation.json").write_text(json.dumps(
        {"generator": "elsewhere", "trajectory_axis": {"name": "x", "unit": "x", "positions": [1]}}))
    with pytest.raises(InputError, match="generator 'elsewhere' is not one this checkout knows"):
        compare.intervention_clock(tmp_path)


def test_interchange_rows_default_to_the_conditional_row_and_both_is_another_run(tmp_path):
    spec = tmp_path / "spec.json"
    entry = {"kind": "interchange", "concept_a": "is_brass", "concept_b": "is_keyboard", "op": "replace",
             "blocks": [0], "components": ["mlp"]}
    spec.write_text(json.dumps({"format": 2, "interventions": [entry, {**entry, "rows": "both"}]}))
    conditional, both = load_spec(spec).interventions
    assert (conditional.id, conditional.rows) == ("is_brass-is_keyboard-replace-mlp-B0", "conditional")
    assert (both.id, both.rows) == ("is_brass-is_keyboard-replace-mlp-B0-both", "both")


def test_the_published_steering_preset_and_a_periodic_schedule(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"format": 2, "interventions": [
        {"concept": "is_brass", "direction": "random", "where": "prior", "strength": 4.0, "from_step": 3, "every": 5},
        {"concept": "is_brass", "direction": "concept", "where": "prior", "from_step": 0, "preset": "published",
         "mode": "add", "strength": [0.3, 0.7]}]}))
    periodic, *published = load_spec(spec).interventions
    assert [tick for tick in range(20) if periodic.active(tick)] == [3, 8, 13, 18]
    assert periodic.id.endswith("every5")
    # The preset's keys fill what the entry leaves out; the entry's own win (here mode: the prior is additive).
    assert [(s.mode, s.site.every, s.strength, s.rows) for s in published] == \
        [("add", 25, 0.3, "conditional"), ("add", 25, 0.7, "conditional")]
    spec.write_text(json.dumps({"format": 2, "interventions": [
        {"concept": "is_brass", "direction": "concept", "where": "prior", "strength": 1.0, "from_step": 0,
         "every": 0}]}))
    with pytest.raises(InputError, match="every: 0 must be a positive number of ticks"):
        load_spec(spec)
    spec.write_text(json.dumps({"format": 2, "interventions": [
        {"concept": "is_brass", "direction": "concept", "where": "prior", "from_step": 0, "preset": "paper"}]}))
    with pytest.raises(InputError, match="preset: 'paper' is not one of published"):
        load_spec(spec)
