"""How NSynth-format examples are split by instrument: stage 4's split rule (interp/stage4_concept_sets.py, where
the rule is explained), also drawn again by stage 6 to measure probe quality over repeated re-splits.

An example's instruments are every instrument it sounds: its own, or every part's for a mix (a drum kit is an
instrument of family "drum"). An example belongs to the side holding all of its instruments; a mix whose parts
straddle the split belongs to neither.
"""
import numpy as np
import pandas as pd
from scipy import sparse

from interp import nsynth

SPLIT_CANDIDATES = 32


def example_instruments(notes: pd.DataFrame) -> list[list[str]]:
    """Every instrument an example sounds: its own, or each part's for a mix (notes.csv's `parts`, empty or NaN
    for a single note)."""
    all_parts = notes["parts"] if "parts" in notes else [""] * len(notes)
    return [[token.rpartition(":")[0] for token in parts.split(nsynth.PART_SEPARATOR)]
            if isinstance(parts, str) and parts else [own] for own, parts in zip(notes["instrument_str"], all_parts)]


def instrument_family(instrument: str) -> str:
    match = nsynth.INSTRUMENT_STR.match(instrument)
    return match["family"] if match else nsynth.DRUM


def membership_matrix(notes: pd.DataFrame) -> tuple[sparse.csr_matrix, list[str]]:
    """(examples x instruments 0/1 matrix, instrument names in column order) over every part."""
    per_example = example_instruments(notes)
    names = sorted({name for names in per_example for name in names})
    column = {name: index for index, name in enumerate(names)}
    rows = np.repeat(np.arange(len(per_example)), [len(names_) for names_ in per_example])
    columns = np.array([column[name] for names_ in per_example for name in names_], dtype=np.int64)
    membership = sparse.csr_matrix((np.ones(len(columns), dtype=np.int64), (rows, columns)),
                                   shape=(len(per_example), len(names)))
    return membership, names


def padded_memberships(notes: pd.DataFrame) -> np.ndarray:
    """int [n_examples, most parts]: the column (membership_matrix's order) of every instrument an example
    sounds, -1 padded — the clusters of an instrument bootstrap and of random instrument subsets."""
    per_example = example_instruments(notes)
    column = {name: index for index, name in enumerate(sorted({name for names in per_example for name in names}))}
    padded = np.full((len(per_example), max((len(names) for names in per_example), default=1)), -1, np.int64)
    for row, names in enumerate(per_example):
        padded[row, :len(names)] = [column[name] for name in names]
    return padded


def _coverage(labels: np.ndarray, sides: dict) -> tuple[int, int]:
    """How many concepts have a positive and a negative in both splits, and the fewest test positives among
    the concepts that have positives at all."""
    covered = np.ones(labels.shape[1], dtype=bool)
    for side in sides.values():
        covered &= (labels[side] == 1).any(axis=0) & (labels[side] == 0).any(axis=0)
    test_positives = (labels[sides["test"]] == 1).sum(axis=0)
    has_positives = (labels == 1).any(axis=0)
    return int(covered.sum()), int(test_positives[has_positives].min()) if has_positives.any() else 0


def assign_sides(membership, test_instruments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(in train, in test) per example: all of its instruments on that side."""
    parts_in_test = membership @ test_instruments.astype(np.int64)
    parts = np.asarray(membership.sum(axis=1)).ravel()
    return parts_in_test == 0, parts_in_test == parts


def split_instruments(notes: pd.DataFrame, labels: np.ndarray, test_fraction: float, seed: int) -> set:
    """The test instruments (stage 4's rule: per family round(n * test_fraction), clamped to 1..n-1 and at least
    2 when n >= 4; the best of SPLIT_CANDIDATES shuffles for concept coverage). labels: int [n_examples,
    n_concepts], 1 positive, 0 negative, -1 neither."""
    membership, names = membership_matrix(notes)
    # An example's own instrument has the family of its row; one heard only in mixes (a drum kit) its name's.
    own = notes.groupby("instrument_str", sort=True)["family"].first()
    families = pd.Series([own[name] if name in own.index else instrument_family(name) for name in names], index=names)
    by_family = {family: sorted(group.index) for family, group in families.groupby(families, sort=True)}
    best, best_score = None, None
    for candidate in range(SPLIT_CANDIDATES):
        rng = np.random.default_rng([seed, candidate])
        test = set()
        for family, instruments in by_family.items():
            if len(instruments) < 2:
                continue
            fewest = 2 if len(instruments) >= 4 else 1
            count = min(max(int(round(len(instruments) * test_fraction)), fewest), len(instruments) - 1)
            test.update(rng.permutation(instruments)[:count].tolist())
        in_train, in_test = assign_sides(membership, np.isin(names, sorted(test)))
        test_share = in_test.sum() / max(in_test.sum() + in_train.sum(), 1)
        score = (*_coverage(labels, {"train": in_train, "test": in_test}), -abs(test_share - test_fraction))
        if best_score is None or score > best_score:
            best, best_score = test, score
    return best


def split_sides(notes: pd.DataFrame, test_instruments: set) -> tuple[np.ndarray, np.ndarray]:
    """(in train, in test) per example for a set of test instruments."""
    membership, names = membership_matrix(notes)
    return assign_sides(membership, np.isin(names, sorted(test_instruments)))
