"""Stage 6 end to end on synthetic artifacts with known answers (tests/test_stage6_data.py)."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import embeddings
from data.files import read_json, write_json, write_npy
from data.stage import run_stage
from interp import stage6_probe
from interp.concepts import CONCEPTS
from test_stage6_data import EMBEDDER, IDENTITY, analysed_data, term_directions, write_synthetic_data

REPO_ROOT = stage6_probe.Path(stage6_probe.__file__).resolve().parent.parent
# Concepts whose prompt labels are drawn independently of the injected brass label: for them the clips
# carry no signal, so their probes are random concepts as far as the prompts are concerned.
UNRELATED = ("long", "is_acoustic", "is_electronic", "is_synthetic")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = analysed_data(tmp_path_factory)
    out = stage6_probe.results_dir(root, EMBEDDER, "logreg", "x0")
    return root, out, {name: pd.read_csv(out / name) for name in stage6_probe.OUTPUT_FILES}


def _run(argv):
    return run_stage(stage6_probe.main, stage6_probe.build_parser(), [str(arg) for arg in argv])


def test_injected_concept_emerges_at_its_step(results):
    _, _, tables = results
    steps = tables["emergence_steps.csv"].set_index(["concept", "metric"])
    assert steps.loc[("is_brass", "auroc"), "emergence_step"] == 40
    brass = tables["emergence.csv"].query("concept == 'is_brass'").set_index("step")
    assert (brass.loc[[0, 20], "auroc_low"] < brass.loc[[0, 20], "auroc_baseline_p95"]).all()
    assert (brass.loc[40:, "auroc"] > 0.9).all()


def test_unrelated_concepts_are_not_significant(results):
    _, _, tables = results
    table = tables["emergence.csv"]
    unrelated = table[table["concept"].isin(UNRELATED)]
    assert len(unrelated) == len(UNRELATED) * 6 and unrelated["auroc"].notna().all()
    assert not unrelated["auroc_significant"].any()
    assert not unrelated["balanced_accuracy_significant"].any()


def test_bonferroni_over_concepts_and_steps(results):
    _, _, tables = results
    table = tables["emergence.csv"]
    for metric in ("auroc", "balanced_accuracy", "tpr"):
        tested = table[f"{metric}_p"].notna()
        assert tested.sum() > 100
        expected = np.minimum(table[f"{metric}_p"] * tested.sum(), 1.0)
        np.testing.assert_allclose(table[f"{metric}_p_bonferroni"], expected)
        np.testing.assert_array_equal(table[f"{metric}_significant"], table[f"{metric}_p_bonferroni"] < 0.05)


def test_outputs_align_with_the_clips(results):
    root, out, tables = results
    probabilities = tables["probabilities.csv"]
    assert len(probabilities) == 40 * 2 * 6
    assert list(probabilities.columns[5:]) == [concept.name for concept in CONCEPTS]
    assert probabilities[[c.name for c in CONCEPTS]].apply(lambda column: column.between(0, 1)).all().all()
    assert len(tables["emergence.csv"]) == len(CONCEPTS) * 6
    drift = tables["drift.csv"]
    final = drift[drift["step"] == 100]
    assert np.allclose(final[["cosine_distance", "l2_distance"]], 0.0)
    summary = tables["drift_summary.csv"]
    # The synthetic trajectories shrink their noise towards the end: drift falls with the step.
    assert summary["l2_distance"].is_monotonic_decreasing
    quality = tables["probe_quality.csv"].set_index("concept")
    assert quality.loc["is_brass", "test_auroc"] > 0.8
    assert quality.loc["is_brass", "test_auroc_low"] <= quality.loc["is_brass", "test_auroc"] <= \
        quality.loc["is_brass", "test_auroc_high"]
    sidecar = read_json(out / "stage6.json")
    assert sidecar["settings"]["bootstrap"] == 300 and (out / "plots" / "heatmap_auroc.png").is_file()


def test_concept_nobody_asks_for_is_nan_with_a_note(results):
    _, _, tables = results
    distorted = tables["emergence.csv"].query("concept == 'distorted'")
    assert distorted["n_positive_prompts"].eq(0).all()
    assert distorted["auroc"].isna().all() and distorted["tpr"].isna().all()
    assert distorted["note"].str.contains("no prompt asks for this concept").all()
    steps = tables["emergence_steps.csv"].query("concept == 'distorted'")
    assert steps["emergence_step"].isna().all()


def test_up_to_date_runs_are_skipped_and_force_redoes(tmp_path, capsys):
    root = write_synthetic_data(tmp_path, n_prompts=8, samples=1, steps=(0, 10), dim=16, write_audio=False,
                                n_instruments=24, notes_per_instrument=4)
    argv = ["--data", root, "--embedder", EMBEDDER, "--bootstrap", "20", "--random-baselines", "3", "--no-report"]
    assert _run(argv) == 0
    emergence = stage6_probe.results_dir(root, EMBEDDER, "logreg", "x0") / "emergence.csv"
    first = emergence.stat().st_mtime_ns
    assert _run(argv) == 0
    assert "up to date" in capsys.readouterr().out and emergence.stat().st_mtime_ns == first
    assert _run(argv + ["--force"]) == 0
    assert emergence.stat().st_mtime_ns != first
    # Other settings over existing results are refused, and nothing is overwritten.
    assert _run([*argv[:4], "--bootstrap", "30", "--random-baselines", "3", "--no-report"]) == 2
    assert "bootstrap differs" in capsys.readouterr().err


@pytest.fixture
def small_data(tmp_path):
    return write_synthetic_data(tmp_path, n_prompts=6, samples=1, steps=(0, 10), dim=8, write_audio=False,
                                n_instruments=24, notes_per_instrument=3)


def _error(capsys, argv) -> str:
    assert _run(argv) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_bad_inputs_give_one_line_errors(small_data, capsys):
    base = ["--data", small_data, "--no-report"]
    message = _error(capsys, base + ["--embedder", "clap", "--model", "laion/clap-larger"])
    assert "clap-clap-larger.npy: missing" in message and f"available embedders: {EMBEDDER}" in message
    message = _error(capsys, base + ["--embedder", "clap-larger"])
    assert "--embedder 'clap-larger' is not an embedder — choose from clap, spectral" in message
    message = _error(capsys, base + ["--embedder", EMBEDDER, "--kind", "xt"])
    assert "no clips of kind 'xt'" in message and "found x0" in message
    notes_sidecar = small_data / "concepts" / "embeddings" / f"{EMBEDDER}.json"
    sidecar = read_json(notes_sidecar)
    write_json(notes_sidecar, dict(sidecar, model="another-model"))
    message = _error(capsys, base + ["--embedder", EMBEDDER])
    assert "model is 'another-model'" in message and "same embedder" in message
    write_json(notes_sidecar, sidecar)
    matrix = np.load(small_data / "generated" / "embeddings" / f"{EMBEDDER}.npy")
    write_npy(small_data / "generated" / "embeddings" / f"{EMBEDDER}.npy", matrix[:-1])
    message = _error(capsys, base + ["--embedder", EMBEDDER])
    assert f"{len(matrix) - 1} rows but its table has {len(matrix)}" in message
    write_npy(small_data / "generated" / "embeddings" / f"{EMBEDDER}.npy", matrix)
    (small_data / "prompts" / "annotated.csv").unlink()
    assert "annotated.csv: missing" in _error(capsys, base + ["--embedder", EMBEDDER])
    assert not (small_data / "results").exists()


def test_unknown_probe_exits_2_with_one_line(small_data):
    completed = subprocess.run([sys.executable, str(REPO_ROOT / "interp" / "stage6_probe.py"), "--data",
                                str(small_data), "--embedder", EMBEDDER, "--probe", "mlp"],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2
    assert completed.stderr.strip() == "error: --probe 'mlp' is unknown — choose from logreg, svm, cav, text"


class FakeTextEmbedder:
    """Stands in for CLAP's text tower: a concept description maps to the directions of the prompt labels
    that ask for the concept, in the synthetic data's embedding space."""

    def __init__(self, model=None):
        self.model = model
        self.directions = term_directions(dim=32, seed=0)

    def provenance(self):
        return {"checkpoint_sha256": "0" * 64}

    def embed_text(self, texts):
        by_description = {concept.description: concept for concept in CONCEPTS}
        return np.stack([sum(self.directions[term] for term in sorted(by_description[text].prompt_any))
                         for text in texts]).astype(np.float32)


def test_text_probe_finds_emergence_with_and_without_nsynth(tmp_path, monkeypatch):
    monkeypatch.setitem(embeddings.EMBEDDERS, IDENTITY["embedder"], "test_stage6:FakeTextEmbedder")
    root = write_synthetic_data(tmp_path, n_prompts=30, samples=2, steps=(0, 40, 80), dim=32, write_audio=False,
                                inject={"brass": 40})
    argv = ["--data", root, "--embedder", EMBEDDER, "--probe", "text", "--bootstrap", "200", "--no-report"]
    assert _run(argv) == 0
    out = stage6_probe.results_dir(root, EMBEDDER, "text", "x0")
    steps = pd.read_csv(out / "emergence_steps.csv").set_index(["concept", "metric"])
    assert steps.loc[("is_brass", "auroc"), "emergence_step"] == 40
    assert pd.read_csv(out / "probe_quality.csv").set_index("concept").loc["is_brass", "test_auroc"] > 0.8
    # Zero-shot needs no NSynth: scores (cosines) and AUROC, but no thresholds, so no decision metrics.
    for name in ("notes.csv", "sets.csv"):
        (root / "concepts" / name).unlink()
    assert _run(argv + ["--force"]) == 0
    table = pd.read_csv(out / "emergence.csv")
    assert table["balanced_accuracy"].isna().all()
    assert pd.read_csv(out / "emergence_steps.csv").set_index(["concept", "metric"]).loc[
        ("is_brass", "auroc"), "emergence_step"] == 40


def test_text_probe_refuses_an_embedder_without_text(small_data, capsys):
    message = _error(capsys, ["--data", small_data, "--embedder", EMBEDDER, "--probe", "text", "--no-report"])
    assert "embedder 'synthetic' is unknown" in message
