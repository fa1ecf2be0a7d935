"""Concept probes: scikit-learn estimators behind one interface, and the probe families stage 6 uses them through.

A ProbeFamily (FAMILIES, chosen by --probe) makes a concept's probe from its NSynth training notes, makes a
random-concept probe from a random training set, and turns a fitted probe into (score, decision) per clip;
stage 6 calls only these three methods, whatever the family.

Every probe has `fit(X, y)`, `decision_function(X)` (>= 0 means "concept present"), `predict(X)` (that
decision) and `predict_proba(X)` (column 1 = P(concept), >= 0.5 exactly where the decision is positive), so
stage 6 treats all families alike:

- logreg (default): standardise, then logistic regression with balanced class weights.
- svm: standardise, then a linear SVM with balanced class weights; its margin is mapped to a probability by
  Platt scaling (a logistic fit on out-of-fold margins, so the calibration does not see its own training fit;
  the folds are grouped by instrument when the instruments are given, so no instrument's notes sit on both
  sides of a fold — the probes are tested on other instruments, and so must the calibration be).
- cav: TCAV's concept activation vector. A logistic regression on the raw embeddings of class-balanced notes
  (the larger class subsampled to the smaller); the unit normal of its boundary is the concept direction and
  a clip's score is its projection on it. The threshold is the midpoint of the two class means of the
  projection on the training notes; probabilities are the logistic of (projection - threshold) divided by
  the pooled within-class standard deviation of the training projections.
- text: zero-shot, for embedders with a text tower (CLAP). The score is the cosine similarity between a clip
  and the concept description's text embedding; no notes are needed. `fit` only places the decision
  threshold (midpoint of the class means of the cosine on training notes, as for the CAV); an unfitted text
  probe has scores but no decisions (`has_threshold` is False).
"""
from dataclasses import dataclass

import numpy as np
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.validation import check_is_fitted

# Probes trained on NSynth notes; "text" is built from a text embedding instead (see make_text_probe).
TRAINED_PROBES = ("logreg", "svm", "cav")
PROBES = TRAINED_PROBES + ("text",)


class _ThresholdedProbe(ClassifierMixin, BaseEstimator):
    """Shared tail: decision = score - threshold, probability = logistic(decision / scale)."""

    def _score(self, X):
        raise NotImplementedError

    def decision_function(self, X):
        check_is_fitted(self, "threshold_")
        return self._score(X) - self.threshold_

    def predict_proba(self, X):
        positive = expit(self.decision_function(X) / self.scale_)
        return np.column_stack([1.0 - positive, positive])

    def predict(self, X):
        return self.classes_[(self.decision_function(X) >= 0).astype(int)]

    def _place_threshold(self, scores, y):
        positive, negative = scores[y == 1], scores[y == 0]
        self.threshold_ = float((positive.mean() + negative.mean()) / 2.0)
        pooled = np.sqrt((positive.var() * len(positive) + negative.var() * len(negative)) / len(scores))
        self.scale_ = float(pooled) if pooled > 0 else 1.0


def _check_binary(y):
    y = np.asarray(y).astype(int)
    if set(np.unique(y)) != {0, 1}:
        raise ValueError("a probe needs both positive (1) and negative (0) training examples")
    return y


class ConceptActivationVector(_ThresholdedProbe):
    def __init__(self, C: float = 1.0, random_state=None):
        self.C = C
        self.random_state = random_state

    def fit(self, X, y):
        X = np.asarray(X, np.float64)
        y = _check_binary(y)
        # TCAV trains on equal numbers of concept and non-concept examples; subsample the larger class.
        rng = np.random.default_rng(self.random_state)
        positive, negative = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
        size = min(len(positive), len(negative))
        keep = np.concatenate([rng.choice(positive, size, replace=False), rng.choice(negative, size, replace=False)])
        classifier = LogisticRegression(C=self.C, max_iter=2000).fit(X[keep], y[keep])
        weight = classifier.coef_[0]
        norm = np.linalg.norm(weight)
        self.direction_ = weight / norm if norm > 0 else weight
        self.classes_ = np.array([0, 1])
        self._place_threshold(X[keep] @ self.direction_, y[keep])
        return self

    def _score(self, X):
        return np.asarray(X, np.float64) @ self.direction_


class TextProbe(_ThresholdedProbe):
    """Zero-shot probe: cosine similarity to a text embedding. `fit` (optional) only places the threshold."""

    def __init__(self, text_embedding=None):
        self.text_embedding = text_embedding

    @property
    def has_threshold(self) -> bool:
        return hasattr(self, "threshold_")

    def _score(self, X):
        X = np.asarray(X, np.float64)
        text = np.asarray(self.text_embedding, np.float64)
        norms = np.linalg.norm(X, axis=1) * np.linalg.norm(text)
        return (X @ text) / np.where(norms > 0, norms, 1.0)

    def score_samples(self, X):
        """The cosine similarity itself; defined with or without a threshold."""
        return self._score(X)

    def fit(self, X, y):
        y = _check_binary(y)
        self.classes_ = np.array([0, 1])
        self._place_threshold(self._score(X), y)
        return self


def calibration_folds(y, groups, folds: int, random_state=None) -> list | None:
    """Train/held-out index pairs for out-of-fold calibration, or None when a class is too small to hold out.

    With `groups` (the instrument of every note) the folds are StratifiedGroupKFold's: an instrument is never
    on both sides. The number of folds is capped by the groups (or, without groups, the examples) of the
    rarer class, and a split whose training side lacks a class is unusable, so that also gives None.
    """
    y = np.asarray(y).astype(int)
    if groups is None:
        folds = min(folds, int(np.bincount(y, minlength=2).min()))
        splitter = StratifiedKFold(folds, shuffle=True, random_state=random_state) if folds >= 2 else None
    else:
        groups = np.asarray(groups)
        folds = min(folds, *(len(np.unique(groups[y == label])) for label in (0, 1)))
        splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=random_state) if folds >= 2 else None
    if splitter is None:
        return None
    splits = list(splitter.split(np.zeros(len(y)), y, groups))
    if any(len(np.unique(y[train])) < 2 for train, _ in splits):
        return None
    return splits


class PlattLinearSVC(ClassifierMixin, BaseEstimator):
    def __init__(self, C: float = 1.0, folds: int = 3, random_state=None):
        self.C = C
        self.folds = folds
        self.random_state = random_state

    def fit(self, X, y, groups=None):
        """`groups`: the instrument of every example, so the calibration folds never split an instrument."""
        y = _check_binary(y)
        svm = make_pipeline(StandardScaler(), LinearSVC(C=self.C, class_weight="balanced", max_iter=20000,
                                                        random_state=self.random_state))
        splits = calibration_folds(y, groups, self.folds, self.random_state)
        if splits is not None:
            margins = cross_val_predict(clone(svm), X, y, cv=splits, method="decision_function")
        else:
            # Too few examples (or instruments) of one class for held-out margins: calibrate on training margins.
            margins = clone(svm).fit(X, y).decision_function(X)
        self.svm_ = svm.fit(X, y)
        self.platt_ = LogisticRegression(class_weight="balanced").fit(margins.reshape(-1, 1), y)
        self.classes_ = np.array([0, 1])
        return self

    def decision_function(self, X):
        check_is_fitted(self, "platt_")
        return self.platt_.decision_function(self.svm_.decision_function(X).reshape(-1, 1))

    def predict_proba(self, X):
        positive = expit(self.decision_function(X))
        return np.column_stack([1.0 - positive, positive])

    def predict(self, X):
        return self.classes_[(self.decision_function(X) >= 0).astype(int)]


def make_probe(name: str, random_state=None):
    """A fresh, unfitted probe of a trained family ("logreg", "svm", "cav")."""
    if name == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000,
                                                                  random_state=random_state))
    if name == "svm":
        return PlattLinearSVC(random_state=random_state)
    if name == "cav":
        return ConceptActivationVector(random_state=random_state)
    if name == "text":
        raise ValueError("the text probe is built from a text embedding: use make_text_probe")
    raise KeyError(f"unknown probe {name!r}; choose from {', '.join(PROBES)}")


def make_text_probe(text_embedding) -> TextProbe:
    return TextProbe(text_embedding=np.asarray(text_embedding, np.float64))


def probe_outputs(probe, X) -> tuple[np.ndarray, np.ndarray | None]:
    """(score, decision) per row: P(concept) and P >= 0.5, which is every probe's own decision (see above).

    An unthresholded text probe gives its cosine similarity and no decisions (None).
    """
    if isinstance(probe, TextProbe) and not probe.has_threshold:
        return probe.score_samples(X), None
    probability = probe.predict_proba(X)[:, 1]
    return probability, probability >= 0.5


# ------------------------------------------------------------------------------------------ probe families

@dataclass(frozen=True)
class TrainingSet:
    """Notes a probe is fitted on: embeddings X, labels y (1 = concept), and the instrument of every note."""
    X: np.ndarray
    y: np.ndarray
    instruments: np.ndarray

    @property
    def has_both_classes(self) -> bool:
        return len(self.y) > 0 and self.y.min() == 0 and self.y.max() == 1


@dataclass(frozen=True)
class FittedProbe:
    """A concept's probe (None when none could be fitted) and why a value is missing ('' when nothing is)."""
    model: object
    note: str = ""


def _random_state(seed: int, *keys: int) -> int:
    return int(np.random.default_rng([seed, *keys]).integers(2**31 - 1))


class ProbeFamily:
    """How one family of probes is made, for a concept and for its random baselines (see the module doc).

    needs_notes: the family cannot work without NSynth training notes; needs_text: it is built from the
    concept descriptions' text embeddings (stage 6 then passes them as `text_vectors`, one row per concept).
    """
    name = ""
    needs_notes = True
    needs_text = False

    def __init__(self, seed: int = 0, text_vectors: np.ndarray | None = None):
        self.seed = seed
        self.text_vectors = text_vectors

    def fit(self, training: TrainingSet, random_state: int):
        raise NotImplementedError

    def concept_probe(self, k: int, training: TrainingSet | None) -> FittedProbe:
        """The probe of concept number k, trained on its NSynth train notes."""
        if training is None:
            return FittedProbe(None, "no NSynth set for this concept (stage 4 wrote none)")
        if not training.has_both_classes:
            side = "positive" if training.y.min() == 1 else "negative"
            return FittedProbe(None, f"NSynth train split has only {side} notes")
        return FittedProbe(self.fit(training, _random_state(self.seed, k)))

    def random_probe(self, k: int, r: int, training: TrainingSet | None, dim: int):
        """Random-concept probe r of concept k, trained on a random training set of the concept's size
        (None when the concept has no probe to compare with)."""
        if training is None or not training.has_both_classes:
            return None
        return self.fit(training, _random_state(self.seed, k, r))

    def outputs(self, probe, X) -> tuple[np.ndarray, np.ndarray | None]:
        return probe_outputs(probe, X)


class LogisticFamily(ProbeFamily):
    name = "logreg"

    def fit(self, training, random_state):
        return make_probe("logreg", random_state).fit(training.X, training.y)


class SVMFamily(ProbeFamily):
    name = "svm"

    def fit(self, training, random_state):
        return make_probe("svm", random_state).fit(training.X, training.y, groups=training.instruments)


class CAVFamily(ProbeFamily):
    name = "cav"

    def fit(self, training, random_state):
        return make_probe("cav", random_state).fit(training.X, training.y)


class TextFamily(ProbeFamily):
    """Zero-shot: the probe is the concept description's text embedding; notes, when present, only place the
    threshold. A random concept is a random unit direction (isotropic Gaussian) in the embedding space, its
    threshold placed on the random training set when there is one."""
    name = "text"
    needs_notes = False
    needs_text = True

    def concept_probe(self, k, training):
        model = make_text_probe(self.text_vectors[k])
        if training is None:
            return FittedProbe(model, "no NSynth set: cosine scores only, no threshold and no test quality")
        if not training.has_both_classes:
            return FittedProbe(model, "threshold not placed: one class in NSynth train")
        return FittedProbe(model.fit(training.X, training.y))

    def random_probe(self, k, r, training, dim):
        direction = np.random.default_rng([self.seed, k, r, 2]).standard_normal(dim)
        model = make_text_probe(direction / np.linalg.norm(direction))
        if training is not None and training.has_both_classes:
            model.fit(training.X, training.y)
        return model


FAMILIES = {family.name: family for family in (LogisticFamily, SVMFamily, CAVFamily, TextFamily)}
assert tuple(FAMILIES) == PROBES
