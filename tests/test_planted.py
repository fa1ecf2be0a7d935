"""The planted geometry of the ideal model and the truth it computes: known answers on a small synthetic bank."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm
from test_ideal import synthetic_bank
from test_stage2 import make_data, stage2

from data import truth as truth_module
from data.contract import generated_dir
from data.stage import InputError
from data.truth import (Truth, commit_steps, content_concepts, first_step_from_which, oracle_aurocs, read_truth,
                        realised_concepts, truth_tables)
from diffusion import planted
from diffusion.bank import normalise, save_bank
from diffusion.base import Conditioning, TrajectoryObserver
from diffusion.commitment import Run, commitment_truth
from diffusion.ideal import IdealGenerator

# Two groups with two instruments each and nothing absent: every clip is one of four cells, each instrument a
# binary choice, so the exact posterior's AUROC is Phi(scale / sigma) (module docstring of diffusion/planted.py).
TOY = {"format": 1, "seed": 3, "leaf_scale": 0.05,
       "groups": [{"name": "early", "labels": ["brass", "string"], "scale": 4.0, "absent": 0.0},
                  {"name": "late", "labels": ["keyboard", "drum"], "scale": 0.2, "absent": 0.0}]}


def planted_study(root, prompts, samples: int, *stage2_extra: str):
    """A study on the planted preset of the synthetic bank with the TOY geometry: the bank and the geometry file
    under `root`, stage 2 run on `prompts`. -> (data, bank_dir, the stage-2 generator options)."""
    bank_dir, geometry = root / "bank", root / "geometry.json"
    save_bank(synthetic_bank(), bank_dir)
    geometry.write_text(json.dumps(TOY))
    data = make_data(root / "data", prompts)
    generator = ("--preset", "planted", "--generator-option", f"geometry={geometry}")
    assert stage2(data, bank_dir, *generator, "--samples", str(samples), *stage2_extra) == 0
    return data, bank_dir, generator


def toy_generator(tmp_path, record=TOY, **options):
    path = tmp_path / "geometry.json"
    path.write_text(json.dumps(record))
    return IdealGenerator(preset="planted", bank=synthetic_bank(), options={"geometry": str(path), **options})


def simulate(generator, n, seed=0) -> Truth:
    """n trajectories in one sampler call; the observer's trace as a Truth (what stage 2 writes, in memory)."""
    observer = TrajectoryObserver([])
    generator.sample(Conditioning("anything", ()), seed, n, generator.default_seconds, observer)
    content = np.stack([np.stack([c[label] for label in generator.content_labels], -1) for _, _, c, _ in observer.trace], 1)
    probability = np.stack([np.stack([t[name] for name in generator.truth_concepts], -1)
                            for _, _, _, t in observer.trace], 1)
    return Truth(pd.DataFrame({"prompt_id": "p", "sample": np.arange(n)}), np.arange(len(observer.trace)),
                 np.array([sigma for _, sigma, _, _ in observer.trace]), generator.content_labels,
                 generator.truth_concepts, content, probability)


def test_planted_clips_are_the_product_cells_made_of_bank_solos_and_decode_exactly(tmp_path):
    generator = toy_generator(tmp_path, {**TOY, "groups": [{**TOY["groups"][0], "absent": 0.5}, TOY["groups"][1]]})
    source, clips = synthetic_bank(), generator.planted_clips
    assert clips.cells == [(early, late) for early in (None, "brass", "string") for late in ("keyboard", "drum")]
    assert [set(labels) for labels in generator.bank.labels[:2]] == [{"keyboard", "electronic"}, {"drum"}]
    assert set(generator.bank.labels[2]) == {"brass", "acoustic", "keyboard", "electronic"}
    # Cell (brass, keyboard) uses the first brass solo and the second keyboard solo (solos are used in turn).
    brass, keyboard = source.clip_ids.index("brass-220"), source.clip_ids.index("keyboard-330")
    assert generator.bank.clip_ids[2] == "brass-220+keyboard-330"
    assert np.allclose(generator.bank.audio[2], normalise(source.audio[brass].astype(np.float64)
                                                          + source.audio[keyboard].astype(np.float64)))
    # Base measure: the product of the groups' probabilities (early absent 0.5, each instrument 1/4; late 1/2).
    assert np.allclose(np.exp(clips.log_base), [0.25, 0.25, 0.125, 0.125, 0.125, 0.125])
    # Designed distances: scale sqrt(2) between instruments of a group, the leaves add 2 leaf^2.
    distance = np.linalg.norm(clips.coordinates[2] - clips.coordinates[4])     # brass vs string, same late
    assert distance == pytest.approx(math.sqrt(2 * 4.0 ** 2 + 2 * 0.05 ** 2))
    space = generator.latent_space(generator.default_seconds)
    decoded = generator.decode(torch.from_numpy(space.coordinates), generator.default_seconds)[:, 0]
    assert np.abs(decoded - generator.bank.audio).max() < 1e-5


def test_each_group_is_decided_at_the_sigma_its_scale_implies(tmp_path):
    generator = toy_generator(tmp_path)
    truth = simulate(generator, 400)
    tables = truth_tables(truth, range(5, 50, 5))
    steps = tables["emergence_truth"].set_index("concept")["emergence_step"]
    sigma_at = dict(zip(truth.steps, truth.sigmas))
    for concept, scale in (("is_brass", 4.0), ("is_string", 4.0), ("is_keyboard", 0.2), ("percussion", 0.2)):
        # AUROC Phi(scale / sigma) reaches 0.75 at sigma = scale / 0.674; the sampler's own path lands within 2x.
        expected = scale / norm.ppf(0.75)
        assert expected / 2 < sigma_at[steps[concept]] < expected * 2, (concept, steps[concept])
    assert steps["is_keyboard"] - steps["is_brass"] >= 15
    # The late group is not readable before its time: nothing about it leaks from the early group.
    curves = tables["oracle_curves"].set_index(["concept", "step"])["auroc"]
    assert abs(curves["is_keyboard", steps["is_brass"]] - 0.5) < 0.1
    assert set(realised_concepts(truth.content[:, -1], truth.labels, ["is_brass"])[:, 0]) == {True, False}


def test_prompt_has_no_effect_without_sharpness_and_a_seed_gives_the_same_truth(tmp_path):
    generator = toy_generator(tmp_path)
    runs = []
    for prompt, labels in (("brass fanfare", ("brass",)), ("drums", ("drum",)), ("brass fanfare", ("brass",))):
        observer = TrajectoryObserver([49])
        generator.sample(Conditioning(prompt, labels), 5, 3, generator.default_seconds, observer)
        runs.append(observer.trace)
    for first, second in zip(runs[0], runs[1]):
        assert all(np.array_equal(first[3][name], second[3][name]) for name in generator.truth_concepts)
    sharp = toy_generator(tmp_path, prior_sharpness="4")
    assert sharp.log_prior(("brass",))[0] > sharp.log_prior(("drum",))[0]   # cell (brass, keyboard)


def test_truth_statistics_on_hand_built_posteriors():
    realised = np.array([[False, True, False, True, True],      # settles at step 3
                         [False, False, False, False, False],   # never changes
                         [True, True, True, True, False]])[:, :, None]
    assert commit_steps(realised, np.arange(5))[:, 0].tolist() == [3, 0, 4]
    final = np.array([[True], [False], [True], [False]])
    probability = np.array([[0.5, 0.9], [0.5, 0.2], [0.5, 0.4], [0.5, 0.6]])[:, :, None]
    assert oracle_aurocs(probability, final)[:, 0].tolist() == [0.5, 0.75]
    assert first_step_from_which([0.2, 0.8, 0.5, 0.8, 0.9], [0, 1, 2, 3, 4], 0.75) == 3
    assert first_step_from_which([0.8, 0.9, 0.7], [0, 1, 2], 0.75) is None
    labels = ("guitar", "string", "brass", "acoustic", "synthetic")
    masses = np.array([[0.6, 0.1, 0.2, 0.7, 0.0], [0.0, 0.5, 0.5, 0.5, 0.0], [0.0, 0.5, 0.5, 0.4, 0.6]])
    assert realised_concepts(masses, labels, ["plucked", "is_guitar", "orchestral"]).tolist() == [
        [True, True, False], [False, False, True], [False, False, False]]
    concepts = content_concepts()
    assert len(concepts) == 20 and not {"long", "warm", "hit", "atmospheric"} & set(concepts)


def test_stage2_writes_the_truth_of_every_step_and_its_tables(tmp_path, monkeypatch):
    geometry = tmp_path / "geometry.json"
    geometry.write_text(json.dumps(TOY))
    bank_dir = tmp_path / "bank"
    save_bank(synthetic_bank(), bank_dir)
    outputs = []
    for name in ("a", "b"):
        data = make_data(tmp_path / name, [("p-one", "a brass fanfare", "brass"), ("p-two", "drums", "drum")])
        assert stage2(data, bank_dir, "--preset", "planted", "--generator-option", f"geometry={geometry}",
                      "--samples", "3") == 0
        generated = generated_dir(data)
        truth = read_truth(generated, ["p-one", "p-two"])
        assert truth.content.shape[:2] == (6, 50) and list(truth.steps) == list(range(50))
        # The captured content rows are the truth's rows at those steps; the final step is one clip's labels.
        content = pd.read_csv(generated / "content" / "p-one.csv")
        last = content[content.step == 49].sort_values("sample")
        assert np.allclose(last["content_brass"], truth.content[:3, -1, truth.labels.index("brass")], atol=1e-9)
        assert set(np.round(truth.probability[:, -1].ravel(), 6)) <= {0.0, 1.0}
        emergence = pd.read_csv(generated / "truth_tables" / "emergence_truth.csv").set_index("concept")
        assert emergence.loc["is_brass", "n_trajectories"] == 6
        outputs.append({path.relative_to(generated).as_posix(): path.read_bytes()
                        for folder in ("truth", "truth_tables") for path in sorted((generated / folder).iterdir())
                        if path.suffix == ".csv"})
    assert outputs[0] == outputs[1]   # the same seed gives the same truth, byte for byte
    assert truth_module.read_truth_tables(generated)["commit_steps"]["concept"].nunique() == 20
    part = generated / "truth" / "p-two.csv"
    part.write_text(part.read_text().replace("p-two,0,0,", "p-two,0,0,1", 1))
    with pytest.raises(InputError, match="made from another p-two.csv"):
        truth_module.read_truth_tables(generated)
    part.unlink()
    # Stage 2 remakes the prompt, byte for byte: the tables, a function of the parts, are then left as they are.
    monkeypatch.setattr(truth_module, "truth_tables", lambda *a, **k: pytest.fail("tables recomputed"))
    assert stage2(data, bank_dir, "--preset", "planted", "--generator-option", f"geometry={geometry}",
                  "--samples", "3") == 0


def test_commitment_truth_finds_the_late_group_committing_later(tmp_path):
    generator = toy_generator(tmp_path)
    runs = [Run(Conditioning("anything", ()), seed=0, samples=40)]
    early, early_step = commitment_truth(generator, runs, "is_brass", 8.0, [0, 10, 20, 30, 40, 49],
                                         random_directions=2, bootstrap=200)
    late, late_step = commitment_truth(generator, runs, "is_keyboard", 8.0, [0, 10, 20, 30, 40, 49],
                                       random_directions=2, bootstrap=200)
    assert early.loc[early.from_step == 0, "concept_flip"].item() > 0.3
    assert early.loc[early.from_step == 49, "concept_flip"].item() == 0.0
    assert early_step is not None and late_step is not None and early_step < late_step


@pytest.mark.parametrize("options, message", [
    ({"nonsense": "1"}, "unknown for ideal"),
    ({"prior_sharpness": "-1"}, "must be a number >= 0"),
    ({"scales": "1,x"}, "not comma-separated numbers"),
    ({"scales": "1,2,3"}, "one scale per group"),
])
def test_bad_options_are_one_line_input_errors(tmp_path, options, message):
    with pytest.raises(InputError, match=message):
        toy_generator(tmp_path, **options)
    with pytest.raises(InputError, match="add --preset planted"):
        IdealGenerator(bank=synthetic_bank(), options={"geometry": "x.json"})


@pytest.mark.parametrize("change, message", [
    ({"groups": [{"name": "a", "labels": ["brass"], "scale": 1.0, "absent": 0.0},
                 {"name": "b", "labels": ["brass"], "scale": 0.1, "absent": 0.0}]}, "is in two groups"),
    ({"groups": [{"name": "a", "labels": ["brass"], "scale": 1.0, "absent": 1.0}]}, "0 <= absent < 1"),
    ({"groups": [{"name": "a", "labels": ["bright"], "scale": 1.0, "absent": 0.0}]}, "families or 'drum'"),
    ({"leaf_scale": 0}, "leaf_scale > 0"),
    ({"format": 2}, "not a planted geometry"),
])
def test_bad_geometries_are_refused(change, message):
    with pytest.raises(InputError, match=message):
        planted.parse_geometry({**TOY, **change}, "geometry.json")


def test_a_label_without_solo_clips_is_refused(tmp_path):
    geometry = {**TOY, "groups": [{"name": "a", "labels": ["vocal"], "scale": 1.0, "absent": 0.0}]}
    with pytest.raises(InputError, match="no solo clip of 'vocal'"):
        toy_generator(tmp_path, geometry).bank
