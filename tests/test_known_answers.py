"""Known answers on hand-made truth: when a planted step counts as recovered, the order statistics, the commitment
table, the oracle's scores, and the final-content yardstick every position is scored against."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from data.concepts import CONCEPTS
from data.generation import TrajectoryAxis
from data.truth import Truth
from interp import known_answers
from interp.records import GeneratedClips, RealisedContent
from interp.yardsticks import YARDSTICKS, build_yardsticks, kind_of

CAPTURED = np.array([5, 10, 15, 20, 25])


@pytest.mark.parametrize("planted, step, low, high, expected", [
    (13, 15, 15, 15, (10, True, True, True)),     # between the captures: inside the widened interval
    (15, 15, 15, 15, (10, True, True, True)),
    (10, 15, 15, 15, (10, False, True, True)),    # at the capture before: not inside, but one capture away
    (22, 15, 10, 15, (5, False, False, False)),   # after the interval and more than a capture away
    (24, 15, 10, None, (5, True, False, True)),   # no upper bound: inside
    (3, 5, 5, 10, (0, True, True, True)),         # before the first capture: the axis start bounds it
])
def test_recovery_rule(planted, step, low, high, expected):
    found = known_answers.recovery(planted, step, low, np.nan if high is None else high, CAPTURED, start=0)
    assert (found["interval_from"], found["inside"], found["near"], found["recovered"]) == expected


def test_recovery_without_an_estimate_or_a_plant():
    assert known_answers.recovery(13, np.nan, np.nan, np.nan, CAPTURED, 0)["recovered"] is False
    assert known_answers.recovery(np.nan, 15, 15, 15, CAPTURED, 0)["recovered"] is None


def _steps(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["yardstick", "concept", "status", "emergence_step", "emergence_low",
                                       "emergence_high", "final_value", "final_low", "final_high", "note"])


def test_known_answers_table_from_hand_made_truth():
    truth = pd.DataFrame({"concept": ["is_brass", "is_bass", "is_organ", "is_flute"], "n_trajectories": 10,
                          "n_positive": [4, 5, 3, 0], "onset_step": [8, 18, 12, None], "emergence_step": [13, 22, 16, None],
                          "completion_step": [16, 24, 20, None], "emergence_captured_step": [15, 25, 20, None]})
    steps = _steps([("content", "is_brass", "emerged", 15, 15, 15, 0.9, 0.8, 0.95, ""),
                    ("content", "is_bass", "emerged", 15, 10, 15, 0.7, 0.6, 0.8, ""),
                    ("content", "is_organ", "never", None, None, None, 0.52, 0.4, 0.6, ""),
                    ("prompt", "is_organ", "emerged", 20, 20, 20, 0.9, 0.8, 0.95, "")])
    oracle = _steps([("content", "is_brass", "emerged", 15, 15, 15, 1.0, 1.0, 1.0, ""),
                     ("content", "is_bass", "emerged", 25, 25, 25, 1.0, 1.0, 1.0, ""),
                     ("content", "is_organ", "emerged", 20, 20, 20, 1.0, 1.0, 1.0, "")])
    table = known_answers.known_answers(steps, oracle, truth, "content", CAPTURED, 0).set_index("concept")
    assert list(table.index) == ["is_brass", "is_bass", "is_organ"]   # flute: the same final content everywhere
    assert table.loc["is_brass", ["inside", "recovered"]].tolist() == [True, True]
    assert table.loc["is_bass", "recovered"] == False   # noqa: E712 (a numpy bool read back)
    # The prompt yardstick's emergence is not the content's: organ is not recovered.
    assert table.loc["is_organ", "status"] == "never" and table.loc["is_organ", "recovered"] == False  # noqa: E712
    assert table["oracle_recovered"].tolist() == [True, True, True]
    assert table.loc["is_bass", "transfer_auroc"] == 0.7 and table.loc["is_brass", "planted_captured_step"] == 15


def test_order_statistics_on_a_hand_made_order():
    """Planted 10 < 20 < 30 < 40 (all at different captured steps); recovered 15, 15, 30, 45: of 6 pairs five are
    ordered as planted and one is tied (half): 5.5 of 6. Spearman is scipy's; its interval comes from the
    resampled steps (here three draws: exact, reversed pair, never-emerging last concept)."""
    planted = np.array([10.0, 20, 30, 40])
    recovered = np.array([15.0, 15, 30, 45])
    resampled = np.array([[15, 20, 15], [15, 15, 20], [30, 30, 30], [45, 45, np.inf]])
    row = known_answers.order_recovery("probes", planted, planted, recovered, resampled, 0.95)
    assert row["pairs"] == 6 and row["pairs_ordered"] == 5.5 and row["pairs_share"] == pytest.approx(5.5 / 6)
    assert row["spearman"] == pytest.approx(stats.spearmanr(planted, recovered).statistic)
    assert row["spearman_low"] <= row["spearman"] <= row["spearman_high"]


def test_commitment_table_from_the_search():
    search = pd.DataFrame({"concept": ["is_guitar"] * 4, "strength": [8, 8, 4, 4],
                           "method": ["truth", "probe", "truth", "probe"], "commitment_step": [30, 27, 20, 12],
                           "commitment_low": [np.nan, 26, np.nan, 10], "commitment_high": [np.nan, 28, np.nan, 14],
                           "steps_evaluated": 8, "n_prompts": 40, "n_samples": 2, "n_random_directions": 10,
                           "note": ""})
    table = known_answers.known_commitment(search).set_index("strength")
    assert table.loc[8, "within_two"] and table.loc[8, "truth_step"] == 30   # 30 <= 28 + 2
    assert not table.loc[4, "within_two"]                                    # 20 > 14 + 2
    assert list(known_answers.known_commitment(None).columns) == known_answers.COMMITMENT_COLUMNS


def _clips(content: np.ndarray, steps, labels) -> GeneratedClips:
    clips = pd.DataFrame({"prompt_id": ["a"] * len(steps) + ["b"] * len(steps), "sample": 0,
                          "step": list(steps) * 2})
    annotated = pd.DataFrame({"prompt_id": ["a", "b"], "labels": [["brass"], ["keyboard"]]})
    return GeneratedClips(annotated, clips, clips, np.zeros((len(clips), 2)), {}, Path("x.npy"), Path("g.json"),
                          TrajectoryAxis("denoising_step", "step", tuple(range(max(steps) + 1))),
                          RealisedContent(tuple(labels), content, "0"), (None, None))


def test_every_position_is_scored_against_the_final_content():
    """Trajectory a ends on brass (held only at its last step); b holds brass early and ends without it. The
    content yardstick gives each of a trajectory's positions its final content; the prompt yardstick its prompt."""
    labels = ["brass", "keyboard"]
    content = np.array([[0.2, 0.8], [0.4, 0.6], [0.9, 0.1],     # a: brass only at the end
                        [0.9, 0.1], [0.6, 0.4], [0.1, 0.9]])    # b: brass early, keyboard at the end
    generated = _clips(content, [10, 20, 30], labels)
    prompt, final = build_yardsticks(generated)
    brass = [concept.name for concept in CONCEPTS].index("is_brass")
    assert final.name == "content" and kind_of("content").exact and not kind_of("prompt").exact
    assert final.clip_labels[:, brass].tolist() == [True] * 3 + [False] * 3
    assert prompt.clip_labels[:, brass].tolist() == [True] * 3 + [False] * 3
    keyboard = [concept.name for concept in CONCEPTS].index("is_keyboard")
    assert final.clip_labels[:, keyboard].tolist() == [False] * 3 + [True] * 3
    # Without realised content the run has the prompt yardstick only; an unknown name reads as a plain entry.
    assert [yardstick.name for yardstick in build_yardsticks(replace(generated, content=None))] == ["prompt"]
    assert kind_of("newer").title == "vs newer" and [kind.name for kind in YARDSTICKS] == ["prompt", "content", "judged"]


def test_oracle_scores_are_the_truth_at_each_clip():
    trajectories = pd.DataFrame({"prompt_id": ["a", "b"], "sample": [0, 0]})
    probability = np.zeros((2, 4, 1))
    probability[0, :, 0] = [0.1, 0.2, 0.3, 1.0]
    probability[1, :, 0] = [0.5, 0.4, 0.2, 0.0]
    truth = Truth(trajectories, np.arange(4), np.ones(4), ("brass",), ("is_brass",), np.zeros((2, 4, 1)), probability)
    clips = pd.DataFrame({"prompt_id": ["b", "a", "a"], "sample": [0, 0, 0], "step": [1, 3, 0]})
    scores = known_answers.oracle_scores(truth, clips, ["is_brass", "is_bass"])
    np.testing.assert_array_equal(scores[:, 0], [0.4, 1.0, 0.1])
    assert np.isnan(scores[:, 1]).all()
