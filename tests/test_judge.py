"""The judge's mapping table (data/judge_tags.csv) and the rule that turns tag probabilities into verdicts."""
import numpy as np
import pandas as pd
import pytest

from data import judge
from data.concepts import CONCEPT_NAMES
from data.stage import InputError
from embeddings.musicnn_model import MODELS, MSD_LABELS, MTT_LABELS

TAGS = {"MTT": MTT_LABELS, "MSD": MSD_LABELS}


def test_every_tag_set_covers_every_concept_once_with_real_tags():
    mappings = judge.read_judge_table()
    assert set(mappings) == {"MTT", "MSD"}
    for tag_set, mapping in mappings.items():
        assert set(mapping.evidence) | set(mapping.unjudgeable) == set(CONCEPT_NAMES)
        assert not set(mapping.evidence) & set(mapping.unjudgeable)
        for concept, tags in mapping.evidence.items():
            assert tags and set(tags) <= set(TAGS[tag_set]), (tag_set, concept)
        assert all(reason.strip() for reason in mapping.unjudgeable.values())


@pytest.mark.parametrize("model", sorted(MODELS))
def test_each_checkpoint_finds_its_tag_sets_mapping(model):
    tags = MODELS[model][1]
    mapping = judge.mapping_for(model, tags)
    assert mapping.tag_set == model.split("_")[0]


def test_the_table_is_written_from_tag_meanings_that_name_the_concept():
    """Spot checks of the mapping's plain meaning: instrument tags go to their family, and concepts that are note
    qualities (envelopes, timbre) have no tag in either set."""
    mtt = judge.read_judge_table()["MTT"]
    assert "guitar" in mtt.evidence["is_guitar"] and "piano" in mtt.evidence["is_keyboard"]
    assert {"violin", "cello"} <= set(mtt.evidence["is_string"])
    for concept in ("long", "staccato", "hit", "harmonic", "is_brass", "is_reed", "is_electronic"):
        assert concept in mtt.unjudgeable


def write_table(tmp_path, rows):
    path = tmp_path / "judge_tags.csv"
    frame = pd.read_csv(judge.JUDGE_TABLE, dtype=str, keep_default_na=False)
    frame = pd.concat([frame[frame["tag_set"] == "MTT"], pd.DataFrame(rows, columns=frame.columns)])
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("rows, message", [
    ([["MTT", "is_kazoo", "vocal", ""]], "concept 'is_kazoo' is not one of"),
    ([["MTT", "is_guitar", "guitar", ""]], "appears twice"),
])
def test_bad_rows_are_refused_in_one_line(tmp_path, rows, message):
    with pytest.raises(InputError, match=message):
        judge.read_judge_table(write_table(tmp_path, rows))


def test_a_row_with_tags_and_a_reason_or_neither_is_refused(tmp_path):
    frame = pd.read_csv(judge.JUDGE_TABLE, dtype=str, keep_default_na=False)
    both = frame.copy()
    both.loc[(both["tag_set"] == "MTT") & (both["concept"] == "is_guitar"), "unjudgeable_because"] = "because"
    both.to_csv(tmp_path / "both.csv", index=False)
    with pytest.raises(InputError, match="not both"):
        judge.read_judge_table(tmp_path / "both.csv")
    neither = frame.copy()
    neither.loc[(neither["tag_set"] == "MTT") & (neither["concept"] == "is_bass"), "unjudgeable_because"] = ""
    neither.to_csv(tmp_path / "neither.csv", index=False)
    with pytest.raises(InputError, match="not neither"):
        judge.read_judge_table(tmp_path / "neither.csv")
    missing = frame[~((frame["tag_set"] == "MSD") & (frame["concept"] == "techno"))]
    missing.to_csv(tmp_path / "missing.csv", index=False)
    with pytest.raises(InputError, match="no row for concept 'techno'"):
        judge.read_judge_table(tmp_path / "missing.csv")


def test_a_tag_the_model_does_not_have_is_refused(tmp_path):
    frame = pd.read_csv(judge.JUDGE_TABLE, dtype=str, keep_default_na=False)
    frame.loc[(frame["tag_set"] == "MTT") & (frame["concept"] == "is_guitar"), "tags"] = "guitar;banjo"
    frame.to_csv(tmp_path / "tags.csv", index=False)
    with pytest.raises(InputError, match="tag 'banjo'"):
        judge.mapping_for("MTT_musicnn", MTT_LABELS, tmp_path / "tags.csv")


def test_scores_are_the_best_evidence_tag_and_present_at_one_half():
    mapping = judge.JudgeMapping("T", {"is_string": ("violin", "cello"), "is_guitar": ("guitar",)},
                                 {name: "no tag" for name in CONCEPT_NAMES if name not in ("is_string", "is_guitar")})
    tags = ("guitar", "violin", "cello", "drums")
    probabilities = np.array([[0.1, 0.2, 0.7, 0.9], [0.5, 0.49, 0.0, 0.0]])
    scores = judge.concept_scores(probabilities, tags, mapping)
    string, guitar = CONCEPT_NAMES.index("is_string"), CONCEPT_NAMES.index("is_guitar")
    np.testing.assert_allclose(scores[:, string], [0.7, 0.49])
    np.testing.assert_allclose(scores[:, guitar], [0.1, 0.5])
    assert np.isnan(np.delete(scores, [string, guitar], axis=1)).all()   # "drums" is evidence for nothing here
    present = judge.judged_present(scores)
    assert present[:, string].tolist() == [True, False] and present[:, guitar].tolist() == [False, True]
    assert not np.delete(present, [string, guitar], axis=1).any()
