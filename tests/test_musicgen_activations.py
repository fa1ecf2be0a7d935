"""Known answers for the residual-stream probes of interp/activations.py (stage 6 --space activations)."""
import numpy as np
from sklearn.metrics import roc_auc_score

from interp.activations import fold_count, out_of_fold_scores, permutation_scores, probe_direction


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

    from sklearn.model_selection import KFold, cross_val_predict

    from interp.activations import make_probe
    leaky = cross_val_predict(make_probe(0), vectors, labels[sample_prompt].astype(int),
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
