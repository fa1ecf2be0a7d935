"""Known answers for the residual-stream probes of interp/activations.py (stage 6 in activation space), and for
stage 6's one emergence computation on tables shaped like theirs."""
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold, cross_val_predict

from data.concepts import CONCEPTS
from interp import fitting, statistics
from interp.activations import (fold_count, out_of_fold_scores, permutation_scores, probe_direction, probe_quality,
                                score_layers)
from interp.emergence import emergence, emergence_columns, emergence_steps
from interp.probes import make_probe
from interp.records import ProbeScores, Yardstick


def prompts_with_samples(n_prompts=24, samples=3, dim=40, seed=0):
    rng = np.random.default_rng(seed)
    prompt_vectors = rng.normal(size=(n_prompts, dim))
    sample_prompt = np.repeat(np.arange(n_prompts), samples)
    return rng, prompt_vectors, sample_prompt


def test_a_planted_direction_is_read_and_recovered():
    rng, prompt_vectors, sample_prompt = prompts_with_samples()
    labels = np.arange(24) % 2 == 0
    planted = rng.normal(size=40)
    planted /= np.linalg.norm(planted)
    vectors = prompt_vectors[sample_prompt] + 0.1 * rng.normal(size=(len(sample_prompt), 40))
    vectors += 6.0 * np.outer(labels[sample_prompt], planted)
    scores = out_of_fold_scores(vectors, sample_prompt, labels, seed=0)
    assert roc_auc_score(labels[sample_prompt], scores) > 0.95
    direction = probe_direction(vectors, labels[sample_prompt], seed=0)
    assert abs(np.linalg.norm(direction) - 1) < 1e-5 and direction @ planted > 0.6   # sign: towards positives


def test_folds_grouped_by_prompt_do_not_leak_a_prompts_identity():
    """Samples of one prompt are near-copies and labels are random per prompt: nothing generalises to new
    prompts, so a probe that never sees a test prompt scores at chance. Ungrouped folds would score near 1."""
    rng, prompt_vectors, sample_prompt = prompts_with_samples(n_prompts=30, samples=4, dim=60, seed=1)
    labels = rng.permutation(np.arange(30) % 2 == 0)
    vectors = prompt_vectors[sample_prompt] + 0.01 * rng.normal(size=(len(sample_prompt), 60))
    grouped = roc_auc_score(labels[sample_prompt], out_of_fold_scores(vectors, sample_prompt, labels, seed=0))
    assert grouped < 0.75
    leaky = cross_val_predict(make_probe("logreg", 0), vectors, labels[sample_prompt].astype(int),
                              cv=KFold(5, shuffle=True, random_state=0), method="predict_proba")[:, 1]
    assert roc_auc_score(labels[sample_prompt], leaky) > 0.9   # the failure the grouping prevents


def test_permuted_label_baseline_sits_at_chance_and_keeps_the_class_count():
    rng, prompt_vectors, sample_prompt = prompts_with_samples(seed=2)
    labels = np.arange(24) < 8
    vectors = prompt_vectors[sample_prompt] + 2.0 * np.outer(labels[sample_prompt], np.ones(40) / np.sqrt(40))
    null = permutation_scores(vectors, sample_prompt, n_positive=8, n_prompts=24, count=6, seed=0, layer=1)
    aurocs = [roc_auc_score(labels[sample_prompt], row) for row in null]
    assert null.shape == (6, len(sample_prompt)) and abs(np.mean(aurocs) - 0.5) < 0.2


def test_too_few_prompts_of_a_class_means_no_probe():
    assert fold_count(np.array([1, 0, 0, 0], bool)) == 0
    assert fold_count(np.array([1, 1, 0, 0, 0], bool)) == 2
    assert fold_count(np.array([1] * 9 + [0] * 9, bool)) == 5


def test_the_emergence_computation_finds_the_layer_a_concept_becomes_readable_from():
    """Scores carry the label from layer 3 on and are noise before: the emergence layer is 3, the permuted-label
    baselines (the secondary check) sit near chance, and a concept no prompt asks for has empty metrics with a
    note. Holm runs over every AUROC p-value of the table, as in embedding space."""
    rng = np.random.default_rng(4)
    n_prompts, samples, layers = 20, 2, [1, 2, 3, 4]
    prompt_labels = np.stack([np.arange(n_prompts) % 2 == 0, np.zeros(n_prompts, bool)], axis=1)
    sample_prompt = np.repeat(np.arange(n_prompts), samples)
    clip_prompt, clip_layer = np.tile(sample_prompt, len(layers)), np.repeat(layers, len(sample_prompt))
    truth = prompt_labels[clip_prompt, 0]
    scores = np.full((len(clip_prompt), 2), np.nan)
    scores[:, 0] = np.where(clip_layer >= 3, 0.2 + 0.6 * truth + 0.05 * rng.random(len(truth)), rng.random(len(truth)))
    baseline_scores = np.full((2, 8, len(clip_prompt)), np.nan)
    baseline_scores[0] = rng.random((8, len(clip_prompt)))
    with np.errstate(invalid="ignore"):
        probe_scores = ProbeScores(scores, scores >= 0.5, baseline_scores, baseline_scores >= 0.5)
    yardstick = Yardstick("prompt", prompt_labels[clip_prompt], "asks for", "prompt")
    table, n_tests, resampled = emergence(probe_scores, [yardstick], clip_prompt, clip_layer, ["planted", "absent"],
                                          "layer", n_resamples=200, alpha=0.05, seed=0, progress=False)
    assert list(table.columns) == emergence_columns() and set(table["trajectory_axis"]) == {"layer"}
    assert n_tests == int(table["auroc_p"].notna().sum()) == 4
    np.testing.assert_allclose(table["auroc_p_holm"], statistics.holm(table["auroc_p"].to_numpy(float)))
    planted = table[table["concept"] == "planted"].set_index("step")
    assert planted.loc[4, "auroc"] == 1.0 and planted.loc[4, "auroc_significant"]
    assert planted.loc[4, "auroc_direction"] == "above"
    assert abs(planted.loc[3, "auroc_random_mean"] - 0.5) < 0.15
    assert table[table["concept"] == "absent"]["auroc"].isna().all()
    assert (table[table["concept"] == "absent"]["note"] != "").all()
    steps = emergence_steps(table, None, resampled, 0.95).set_index(["concept", "metric"])
    assert steps.loc[("planted", "auroc"), "emergence_step"] == 3 and steps.loc[("planted", "auroc"), "status"] == \
        "emerged"
    assert pd.isna(steps.loc[("absent", "auroc"), "emergence_step"])
    assert steps.loc[("absent", "auroc"), "status"] == "undefined"


def test_layer_scores_and_quality_rows_line_up_with_the_shared_tables():
    """score_layers puts sample i of the p-th layer at row p * n_samples + i, shares one permuted-label null per
    count of positive prompts, and gives a unit direction only where a concept has a probe; probe_quality has
    the embedding-space columns, counting samples."""
    rng, prompt_vectors, sample_prompt = prompts_with_samples(n_prompts=12, samples=2, dim=16, seed=5)
    concepts = len(CONCEPTS)
    prompt_labels = np.zeros((12, concepts), bool)
    prompt_labels[:6, 0] = prompt_labels[:6, 1] = True        # same count: one shared null
    prompt_labels[0, 2] = True                                 # one positive prompt: no probe
    by_layer = {1: prompt_vectors[sample_prompt], 2: prompt_vectors[sample_prompt] + 1.0}
    probe_scores, directions = score_layers(by_layer, sample_prompt, prompt_labels, count=3, seed=0, progress=False)
    assert probe_scores.scores.shape == (2 * 24, concepts) and probe_scores.baseline_scores.shape == (concepts, 3, 48)
    np.testing.assert_array_equal(probe_scores.baseline_scores[0], probe_scores.baseline_scores[1])
    assert np.isnan(probe_scores.scores[:, 2]).all() and np.isnan(directions[2]).all()
    np.testing.assert_allclose(np.linalg.norm(directions[0], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probe_scores.decisions[:, 0], probe_scores.scores[:, 0] >= 0.5)
    quality = probe_quality(prompt_labels, sample_prompt)
    assert list(quality.columns) == fitting.QUALITY_COLUMNS
    assert quality.loc[0, "n_train_positive"] == 12 and quality.loc[0, "n_test_negative"] == 12
    assert quality["test_auroc"].isna().all() and "grouped cross-validation" in quality.loc[2, "note"]
