"""interp/probes.py: every probe family shares one interface and finds a planted concept direction."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from interp import probes


def _planted(seed=0, n=240, dim=16, direction=None):
    rng = np.random.default_rng(seed)
    if direction is None:
        direction = rng.standard_normal(dim)
        direction /= np.linalg.norm(direction)
    y = (rng.random(n) < 0.3).astype(int)
    X = rng.standard_normal((n, dim)) + 2.5 * y[:, None] * direction + 1.0  # offset: probes must not assume centred data
    return X, y, direction


def _fitted(name, X, y, direction):
    if name == "text":
        return probes.make_text_probe(direction).fit(X, y)
    return probes.make_probe(name, random_state=0).fit(X, y)


@pytest.mark.parametrize("name", probes.PROBES)
def test_every_probe_shares_the_interface(name):
    X, y, direction = _planted()
    X_test, y_test, _ = _planted(seed=1, n=200, direction=direction)
    probe = _fitted(name, X, y, direction)
    probability = probe.predict_proba(X_test)
    decision = probe.decision_function(X_test)
    assert probability.shape == (200, 2)
    np.testing.assert_allclose(probability.sum(axis=1), 1.0)
    assert np.all((probability >= 0) & (probability <= 1))
    # One decision rule everywhere: decision >= 0  <=>  P >= 0.5  <=>  predict == 1.
    np.testing.assert_array_equal(probe.predict(X_test) == 1, decision >= 0)
    np.testing.assert_array_equal(probability[:, 1] >= 0.5, decision >= 0)
    assert roc_auc_score(y_test, probability[:, 1]) > 0.9
    scores, decisions = probes.probe_outputs(probe, X_test)
    np.testing.assert_allclose(scores, probability[:, 1])
    np.testing.assert_array_equal(decisions, decision >= 0)


def test_registry_and_errors():
    assert set(probes.PROBES) == {"logreg", "svm", "cav", "text"}
    with pytest.raises(KeyError, match="unknown probe 'mlp'"):
        probes.make_probe("mlp")
    with pytest.raises(ValueError, match="make_text_probe"):
        probes.make_probe("text")
    with pytest.raises(ValueError, match="both positive"):
        probes.make_probe("cav").fit(np.zeros((4, 2)), np.ones(4))


def test_cav_is_the_unit_concept_direction_with_a_midpoint_threshold():
    X, y, direction = _planted(n=600, dim=8)
    cav = probes.make_probe("cav", random_state=0).fit(X, y)
    assert np.linalg.norm(cav.direction_) == pytest.approx(1.0)
    assert cav.direction_ @ direction > 0.9
    # The classes were balanced by subsampling, so the midpoint lies between the two full class means.
    projection = X @ cav.direction_
    assert projection[y == 0].mean() < cav.threshold_ < projection[y == 1].mean()
    np.testing.assert_allclose(cav.decision_function(X), projection - cav.threshold_)


def test_svm_probabilities_are_monotone_in_the_margin():
    X, y, direction = _planted()
    svm = probes.make_probe("svm", random_state=0).fit(X, y)
    margin = svm.svm_.decision_function(X)
    probability = svm.predict_proba(X)[:, 1]
    order = np.argsort(margin)
    assert np.all(np.diff(probability[order]) >= -1e-12)
    assert svm.platt_.coef_[0, 0] > 0


def test_text_probe_scores_cosine_and_needs_fit_only_for_decisions():
    text = np.array([1.0, 0.0, 0.0])
    X = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [-1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    probe = probes.make_text_probe(text)
    scores, decisions = probes.probe_outputs(probe, X)
    np.testing.assert_allclose(scores, [1.0, 0.0, -np.sqrt(0.5), np.sqrt(0.5)])
    assert decisions is None and not probe.has_threshold
    probe.fit(X, np.array([1, 0, 0, 1]))
    assert probe.threshold_ == pytest.approx((1.0 + np.sqrt(0.5) + 0.0 - np.sqrt(0.5)) / 4)
    _, decisions = probes.probe_outputs(probe, X)
    np.testing.assert_array_equal(decisions, [True, False, False, True])


def test_probes_are_deterministic_under_a_seed():
    X, y, direction = _planted()
    for name in probes.TRAINED_PROBES:
        first = probes.make_probe(name, random_state=3).fit(X, y).predict_proba(X)
        second = probes.make_probe(name, random_state=3).fit(X, y).predict_proba(X)
        np.testing.assert_array_equal(first, second)


def test_calibration_folds_never_split_an_instrument():
    instruments = np.repeat(np.arange(10), 6)
    y = (instruments < 4).astype(int)           # instruments 0-3 positive, 4-9 negative
    folds = probes.calibration_folds(y, instruments, 3, random_state=0)
    assert len(folds) == 3
    for train, held_out in folds:
        assert not set(instruments[train]) & set(instruments[held_out])
        assert set(y[train]) == {0, 1} and set(y[held_out]) == {0, 1}
    assert sorted(np.concatenate([held for _, held in folds])) == list(range(60))
    # Fewer positive instruments than folds: as many folds as there are; one instrument: no held-out margins.
    assert len(probes.calibration_folds((instruments < 2).astype(int), instruments, 3, 0)) == 2
    assert probes.calibration_folds((instruments < 1).astype(int), instruments, 3, 0) is None
    # Without instruments the folds are plain stratified ones over notes (as many as the rarer class allows).
    assert len(probes.calibration_folds(y, None, 3, 0)) == 3


def test_svm_family_calibrates_on_instrument_grouped_folds(monkeypatch):
    _, _, direction = _planted()
    instruments = np.arange(240) // 8
    y = (instruments % 3 == 0).astype(int)
    X = np.random.default_rng(5).standard_normal((240, len(direction))) + 2.5 * y[:, None] * direction
    seen = []
    original = probes.calibration_folds
    monkeypatch.setattr(probes, "calibration_folds", lambda *a, **k: seen.append(a[1]) or original(*a, **k))
    family = probes.FAMILIES["svm"](seed=0)
    fitted = family.concept_probe(0, probes.TrainingSet(X, y, instruments))
    np.testing.assert_array_equal(seen[0], instruments)
    scores, decisions = family.outputs(fitted.model, X)
    assert roc_auc_score(y, scores) > 0.9 and decisions.dtype == bool


@pytest.mark.parametrize("name", probes.PROBES)
def test_every_family_makes_concept_and_random_probes_through_one_interface(name):
    X, y, direction = _planted()
    instruments = np.arange(len(y)) // 6
    family = probes.FAMILIES[name](seed=1, text_vectors=np.stack([direction, -direction]))
    training = probes.TrainingSet(X, y, instruments)
    fitted = family.concept_probe(0, training)
    assert fitted.model is not None and fitted.note == ""
    scores, decisions = family.outputs(fitted.model, X)
    assert roc_auc_score(y, scores) > 0.9 and decisions.shape == (len(y),)
    random_probe = family.random_probe(0, 3, training, X.shape[1])
    assert family.outputs(random_probe, X)[0].shape == (len(y),)
    # A training set with one class: trained families give no probe and say why; the text probe keeps its
    # cosine scores without a threshold.
    one_class = probes.TrainingSet(X, np.ones_like(y), instruments)
    lonely = family.concept_probe(1, one_class)
    assert ("only positive" in lonely.note) if family.needs_notes else ("threshold not placed" in lonely.note)
    assert (lonely.model is None) == family.needs_notes
    assert (family.random_probe(1, 0, None, X.shape[1]) is None) == family.needs_notes
