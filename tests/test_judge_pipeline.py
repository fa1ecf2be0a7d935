"""The judge end to end on the ideal model's planted preset (a small synthetic bank): the judge tags the final
clips, stage 6 validates it against the exact content, keeps only the concepts it judges better than chance in the
judged-content yardstick, reads the table under its provenance, and warns when the probes share the judge's
network."""
import shutil

import numpy as np
import pandas as pd
import pytest
from stage_runs import run_judge, run_stages_3_to_6
from test_planted import planted_study
from test_stage2 import PROMPTS

from data.concepts import CONCEPT_NAMES
from data.contract import read_generated_index
from data.files import read_json
from data.judge import judge_dir
from interp import judge, stage6_probe
from interp.records import load_generated

STEPS = 20
STEM = "musicnn-tags-MTT_musicnn"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    data, _, _ = planted_study(tmp_path_factory.mktemp("judge"), PROMPTS, 2, "--steps", str(STEPS))
    run_stages_3_to_6(data, "--random-baselines", "2", judge=True)
    return data, stage6_probe.results_dir(data, "spectral", "logreg", "x0")


def test_the_judge_tags_only_each_trajectorys_final_clip(study):
    data, _ = study
    table = pd.read_csv(judge_dir(data, STEM) / "judge.csv", dtype={"prompt_id": str})
    index = read_generated_index(data)
    finals = index.groupby(["prompt_id", "sample", "kind"])["step"].max()
    assert len(table) == len(finals)
    assert (table.set_index(["prompt_id", "sample", "kind"])["step"] == finals.loc[
        list(zip(table["prompt_id"], table["sample"], table["kind"]))].to_numpy()).all()
    scores = table[[f"score_{name}" for name in CONCEPT_NAMES]].to_numpy()
    verdicts = table[[f"judged_{name}" for name in CONCEPT_NAMES]].to_numpy(bool)
    assert np.array_equal(verdicts, np.nan_to_num(scores, nan=-1) >= 0.5)


def test_stage6_validates_the_judge_and_uses_only_what_passes(study):
    data, out = study
    validation = pd.read_csv(out / "judge_validation.csv")
    assert list(validation["concept"]) == list(CONCEPT_NAMES)
    measured = validation["auroc"].notna()
    assert measured.any()
    # Used exactly when the CI's lower end is above chance; a concept without evidence tags is never used.
    assert (validation.loc[measured, "used"] == (validation.loc[measured, "auroc_low"] > 0.5)).all()
    assert not validation.loc[validation["evidence_tags"].isna(), "used"].any()
    emergence = pd.read_csv(out / "emergence.csv")
    judged = emergence[emergence["yardstick"] == "judged"]
    positives = judged.groupby("concept")["n_positive_clips"].max()
    unused = validation.loc[~validation["used"], "concept"]
    assert (positives.loc[unused] == 0).all()
    record = read_json(out / "stage6.json")
    assert "judged" in record["yardsticks"] and record["judge"]["stem"] == STEM
    assert record["judge"]["shared_with_probes"] is False and record["judge"]["warning"] == ""
    assert "The judge" in (out / "report.html").read_text(encoding="utf-8")


def test_the_validation_is_the_auroc_of_the_final_scores_against_the_exact_content(study):
    data, out = study
    generated = load_generated(data, "spectral", "x0")
    judged = judge.load_judge(data, STEM, generated.clips, generated.sidecar)
    # A perfect judge and an inverted one, through the same validation: 1.0 used, 0.0 unjudgeable.
    exact = np.zeros_like(judged.present)
    rows = judge.trajectory_rows(generated.clips)
    k = CONCEPT_NAMES.index("is_guitar")
    exact[rows[::2], k] = True
    for sign, used in ((1.0, True), (-1.0, False)):
        scores = judged.scores.copy()
        scores[:, k] = sign * exact[:, k]
        table = judge.judge_validation(judge.JudgedClips(STEM, scores, judged.present, judged.sidecar, "",
                                                         False), generated.clips, exact)
        row = table.set_index("concept").loc["is_guitar"]
        assert row["auroc"] == (1.0 if used else 0.0) and bool(row["used"]) is used


def test_a_probe_on_the_judges_network_is_flagged(study):
    data, _ = study
    generated = load_generated(data, "spectral", "x0")
    sidecar = read_json(judge_dir(data, STEM) / "judge.json")
    shared = judge.load_judge(data, STEM, generated.clips, {"checkpoint_sha256": sidecar["checkpoint_sha256"]})
    assert shared.shared_with_probes and "same network" in judge.shared_warning(shared)
    assert not judge.load_judge(data, STEM, generated.clips, generated.sidecar).shared_with_probes


def test_a_rerun_is_up_to_date_and_all_positions_reuse_the_final_clips(study, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(study[0], data)
    capsys.readouterr()
    run_judge(data)
    assert "up to date" in capsys.readouterr().out
    before = pd.read_csv(judge_dir(data, STEM) / "judge.csv", dtype={"prompt_id": str})
    run_judge(data, "--positions", "all")
    printed = capsys.readouterr().out
    assert f"{len(before)} rows reused" in printed
    after = pd.read_csv(judge_dir(data, STEM) / "judge.csv", dtype={"prompt_id": str})
    assert len(after) == len(read_generated_index(data))
    merged = before.merge(after, on=["prompt_id", "sample", "kind", "step"], suffixes=("", "_all"))
    assert len(merged) == len(before)
    assert np.allclose(merged["tag_guitar"], merged["tag_guitar_all"])


def test_stage6_with_probes_on_the_judges_network_warns(study, tmp_path, capsys):
    """Probes on musicnn-tags (stages 3 and 5) beside the musicnn-tags judge: stage 6 says so, records it, and the
    report and summary warn."""
    from data.stage import run_stage
    from embeddings import stage3_embed_generated as stage3
    from interp import stage5_embed_nsynth as stage5

    data = tmp_path / "data"
    shutil.copytree(study[0], data)
    for stage in (stage3, stage5):
        assert run_stage(stage.main, stage.build_parser(), ["--data", str(data), "--embedder", "musicnn-tags",
                                                            "--workers", "1", "--no-progress"]) == 0
    capsys.readouterr()
    assert run_stage(stage6_probe.main, stage6_probe.build_parser(),
                     ["--data", str(data), "--embedder", "musicnn-tags", "--bootstrap", "20", "--random-baselines", "2",
                      "--resplits", "0", "--no-progress"]) == 0
    assert "warning: the probes' embedder and the judge" in capsys.readouterr().out
    out = stage6_probe.results_dir(data, STEM, "logreg", "x0")
    record = read_json(out / "stage6.json")
    assert record["judge"]["shared_with_probes"] is True and "same network" in record["judge"]["warning"]
    assert "are the same network on the same checkpoint" in (out / "report.html").read_text(encoding="utf-8")
    assert "share one network" in (out / "summary.md").read_text(encoding="utf-8")
