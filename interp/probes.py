"""Concept probes: scikit-learn estimators behind one interface, chosen by name.

Every probe has `fit(X, y)`, `decision_function(X)` (>= 0 means "concept present"), `predict(X)` (that
decision) and `predict_proba(X)` (column 1 = P(concept), >= 0.5 exactly where the decision is positive), so
stage 6 treats all families alike:

- logreg (default): standardise, then logistic regression with balanced class weights.
- svm: standardise, then a linear SVM with balanced class weights; its margin is mapped to a probability by
  Platt scaling (a logistic fit on out-of-fold margins, so the calibration does not see its own training fit).
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
import numpy as np
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
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


class PlattLinearSVC(ClassifierMixin, BaseEstimator):
    def __init__(self, C: float = 1.0, folds: int = 3, random_state=None):
        self.C = C
        self.folds = folds
        self.random_state = random_state

    def fit(self, X, y):
        y = _check_binary(y)
        svm = make_pipeline(StandardScaler(), LinearSVC(C=self.C, class_weight="balanced", max_iter=20000,
                                                        random_state=self.random_state))
        folds = min(self.folds, int(np.bincount(y).min()))
        if folds >= 2:
            cv = StratifiedKFold(folds, shuffle=True, random_state=self.random_state)
            margins = cross_val_predict(clone(svm), X, y, cv=cv, method="decision_function")
        else:
            # Too few examples of one class for held-out margins: calibrate on the training margins.
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
