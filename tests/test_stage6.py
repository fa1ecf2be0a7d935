"""Stage 6 end to end on synthetic artifacts with known answers (tests/test_stage6_data.py)."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from stage_runs import stamp_parts
from test_stage6_data import EMBEDDER, analysed_data, term_directions, write_synthetic_data

import embeddings
from data.concepts import CONCEPTS
from data.contract import read_generated_index
from data.files import read_json, write_json, write_npy
from data.stage import run_stage
from interp import statistics, stage6_probe
from interp.fitting import random_training_sets
from interp.records import ConceptNotes, ConceptSplit

REPO_ROOT = stage6_probe.Path(stage6_probe.__file__).resolve().parent.parent
# Concepts whose prompt labels are drawn independently of the injected brass label: for them the clips
# carry no signal, so their probes are random concepts as far as the prompts are concerned.
UNRELATED = ("atmospheric", "is_acoustic", "is_electronic", "is_synthetic")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = analysed_data(tmp_path_factory)
    out = stage6_probe.results_dir(root, EMBEDDER, "logreg", "x0")
    return root, out, {name: pd.read_csv(out / name) for name in stage6_probe.OUTPUT_FILES if name.endswith(".csv")}


def _run(argv):
    return run_stage(stage6_probe.main, stage6_probe.build_parser(), [str(arg) for arg in argv])


def test_injected_concept_emerges_at_its_step(results):
    _, _, tables = results
    steps = tables["emergence_steps.csv"].set_index(["yardstick", "concept"])
    assert set(tables["emergence_steps.csv"]["metric"]) == {"auroc"}   # one primary metric
    for yardstick in ("prompt", "content"):
        brass = steps.loc[(yardstick, "is_brass")]
        assert brass["status"] == "emerged" and brass["emergence_step"] == 40
        assert brass["emergence_low"] == 40 and brass["emergence_high"] == 40
        assert brass["significant_from"] == 40 and brass["first_above"] == 40 and brass["last_above"] == 100
        assert brass["distinct_above"] == 4 and brass["n_distinct"] == 6
        assert brass["final_significant"] and brass["final_direction"] == "above"
    brass = tables["emergence.csv"].query("concept == 'is_brass' and yardstick == 'prompt'").set_index("step")
    assert not brass.loc[[0, 20], "auroc_significant"].any()
    assert (brass.loc[40:, "auroc"] > 0.9).all() and brass.loc[40:, "auroc_significant"].all()
    assert (brass.loc[40:, "auroc_direction"] == "above").all()
    assert (brass["trajectory_axis"] == "denoising_step").all()
    # The secondary check: the brass probe beats the random probes once brass is in the clips.
    assert brass.loc[40:, "auroc_specific"].all()


def test_unrelated_concepts_are_not_significant(results):
    _, _, tables = results
    table = tables["emergence.csv"].query("yardstick == 'prompt'")
    unrelated = table[table["concept"].isin(UNRELATED)]
    assert len(unrelated) == len(UNRELATED) * 6 and unrelated["auroc"].notna().all()
    assert not unrelated["auroc_significant"].any()


def test_holm_over_every_auroc_test(results):
    """One family: AUROC x concept x step x yardstick; the secondary metrics carry no test."""
    _, out, tables = results
    table = tables["emergence.csv"]
    n_tests = int(table["auroc_p"].notna().sum())
    assert n_tests > 2 * 100 and read_json(out / "stage6.json")["n_tests"] == n_tests
    assert f"Holm over all {n_tests} AUROC tests" in (out / "report.html").read_text(encoding="utf-8")
    np.testing.assert_allclose(table["auroc_p_holm"], statistics.holm(table["auroc_p"].to_numpy(float)))
    np.testing.assert_array_equal(table["auroc_significant"], table["auroc_p_holm"] < 0.05)
    np.testing.assert_allclose(table["auroc_p"], statistics.two_sided_p(table["auroc"], table["auroc_null_mean"],
                                                                        table["auroc_null_sd"]))
    tested = table["auroc_p"].notna()
    assert (table.loc[tested & (table["auroc"] > table["auroc_null_mean"]), "auroc_direction"] == "above").all()
    assert (table.loc[tested & (table["auroc"] < table["auroc_null_mean"]), "auroc_direction"] == "below").all()
    assert not any(column.endswith("_p") for column in table.columns if not column.startswith("auroc"))


def test_statuses_do_not_move_with_the_seed(tmp_path):
    """The status, the emergence step and every AUROC p-value come from point values and exact permutation
    moments: no random draw enters them. Only intervals and the random probes move with --seed."""
    root = write_synthetic_data(tmp_path, n_prompts=16, samples=2, steps=(0, 20, 40, 60), dim=16, write_audio=False,
                                n_instruments=24, notes_per_instrument=4, inject={"brass": 20})
    out = stage6_probe.results_dir(root, EMBEDDER, "logreg", "x0")
    runs = []
    for seed in (0, 1):
        assert _run(["--data", root, "--embedder", EMBEDDER, "--bootstrap", "50", "--random-baselines", "4",
                     "--resplits", "1", "--seed", seed, "--no-report", "--force"]) == 0
        runs.append((pd.read_csv(out / "emergence_steps.csv"), pd.read_csv(out / "emergence.csv")))
    (steps_0, table_0), (steps_1, table_1) = runs
    for column in ("status", "emergence_step", "significant_from", "final_value", "final_p_holm"):
        pd.testing.assert_series_equal(steps_0[column], steps_1[column])
    pd.testing.assert_series_equal(table_0["auroc_p"], table_1["auroc_p"])
    assert not table_0["auroc_low"].equals(table_1["auroc_low"])


def test_outputs_align_with_the_clips(results):
    root, out, tables = results
    probabilities = tables["probabilities.csv"]
    assert len(probabilities) == 40 * 2 * 6
    assert list(probabilities.columns[5:]) == [concept.name for concept in CONCEPTS]
    assert probabilities[[c.name for c in CONCEPTS]].apply(lambda column: column.between(0, 1)).all().all()
    assert len(tables["emergence.csv"]) == len(CONCEPTS) * 6 * 2  # two yardsticks
    drift = tables["drift.csv"]
    final = drift[drift["step"] == 100]
    assert np.allclose(final[["cosine_distance", "l2_distance"]], 0.0)
    summary = tables["drift_summary.csv"]
    # The synthetic trajectories shrink their noise towards the end: drift falls with the step.
    assert summary["l2_distance"].is_monotonic_decreasing
    assert (summary["distinct_position"] == summary["step"]).all()  # noise at every step: all distinct
    quality = tables["probe_quality.csv"].set_index("concept")
    # The synthetic notes put one brass instrument in the test split: no instrument CI, and the note says so.
    assert quality.loc["is_brass", "test_auroc"] > 0.8 and quality.loc["is_brass", "n_test_positive_instruments"] == 1
    assert np.isnan(quality.loc["is_brass", "test_auroc_low"]) and "one instrument" in quality.loc["is_brass", "note"]
    assert quality.loc["is_acoustic", "n_test_positive_instruments"] >= 2
    assert quality.loc["is_acoustic", "test_auroc_low"] <= quality.loc["is_acoustic", "test_auroc"] <= \
        quality.loc["is_acoustic", "test_auroc_high"]
    sidecar = read_json(out / "stage6.json")
    assert sidecar["settings"]["bootstrap"] == 300 and sidecar["settings"]["baseline"] == "instruments"
    assert sidecar["trajectory_axis"]["unit"] == "step" and sidecar["yardsticks"] == ["prompt", "content"]
    assert sidecar["settings"]["primary_metric"] == "auroc" and sidecar["settings"]["multiple_testing"] == "holm"
    assert (out / "plots" / "heatmap_auroc.png").is_file() and (out / "plots" / "heatmap_auroc_content.png").is_file()


def test_concept_nobody_asks_for_is_nan_with_a_note(results):
    _, _, tables = results
    distorted = tables["emergence.csv"].query("concept == 'distorted' and yardstick == 'prompt'")
    assert distorted["n_positive_prompts"].eq(0).all()
    assert distorted["auroc"].isna().all() and distorted["tpr"].isna().all()
    assert distorted["note"].str.contains("no prompt asks for this concept").all()
    steps = tables["emergence_steps.csv"].query("concept == 'distorted' and yardstick == 'prompt'")
    assert steps["emergence_step"].isna().all() and (steps["status"] == "undefined").all()


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
    assert "made with settings.bootstrap=20, this run has 30" in capsys.readouterr().err


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
    message = _error(capsys, base + ["--embedder", "clap"])
    assert "clap-larger_clap_general.npy: missing" in message and f"available embedders: {EMBEDDER}" in message
    message = _error(capsys, base + ["--embedder", "clap", "--model", "laion/clap-larger"])
    assert "clap-clap-larger.npy: missing" in message
    message = _error(capsys, base + ["--embedder", "clap-larger"])
    assert "--embedder 'clap-larger' is not an embedder — choose from clap, musicnn, musicnn-tags, spectral" in message
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
    monkeypatch.setitem(embeddings.EMBEDDERS, EMBEDDER, "test_stage6:FakeTextEmbedder")
    root = write_synthetic_data(tmp_path, n_prompts=30, samples=2, steps=(0, 40, 80), dim=32, write_audio=False,
                                inject={"brass": 40})
    argv = ["--data", root, "--embedder", EMBEDDER, "--probe", "text", "--bootstrap", "200", "--resplits", "2",
            "--no-report"]
    assert _run(argv) == 0
    out = stage6_probe.results_dir(root, EMBEDDER, "text", "x0")
    steps = pd.read_csv(out / "emergence_steps.csv").set_index(["yardstick", "concept", "metric"])
    assert steps.loc[("prompt", "is_brass", "auroc"), "emergence_step"] == 40
    assert pd.read_csv(out / "probe_quality.csv").set_index("concept").loc["is_brass", "test_auroc"] > 0.8
    # Zero-shot needs no NSynth: scores (cosines) and AUROC, but no thresholds, so no decision metrics.
    for name in ("notes.csv", "sets.csv"):
        (root / "concepts" / name).unlink()
    assert _run(argv + ["--force"]) == 0
    table = pd.read_csv(out / "emergence.csv")
    assert table["balanced_accuracy"].isna().all() and table["auroc_p"].notna().any()
    assert pd.read_csv(out / "emergence_steps.csv").set_index(["yardstick", "concept", "metric"]).loc[
        ("prompt", "is_brass", "auroc"), "emergence_step"] == 40


def test_text_probe_refuses_an_embedder_without_text(small_data, capsys):
    message = _error(capsys, ["--data", small_data, "--embedder", EMBEDDER, "--probe", "text", "--no-report"])
    assert "embedder 'spectral' has no text tower" in message


def test_realised_content_separates_an_unread_concept_from_an_unmade_one(tmp_path):
    """40% of the prompts do not realise brass: the clips carry no brass, and their content says so. Against
    the realised content the probe is right about brass; against the prompts it is penalised for the model's
    failure. Both yardsticks agree on when brass emerges."""
    root = write_synthetic_data(tmp_path, n_prompts=30, samples=2, steps=(0, 40, 80), dim=32, write_audio=False,
                                inject={"brass": 40}, unrealised=0.4)
    assert _run(["--data", root, "--embedder", EMBEDDER, "--bootstrap", "200", "--random-baselines", "6",
                 "--resplits", "1", "--no-report"]) == 0
    out = stage6_probe.results_dir(root, EMBEDDER, "logreg", "x0")
    table = pd.read_csv(out / "emergence.csv").set_index(["yardstick", "concept", "step"])
    assert table.loc[("content", "is_brass", 80), "auroc"] > 0.95
    assert table.loc[("prompt", "is_brass", 80), "auroc"] < table.loc[("content", "is_brass", 80), "auroc"] - 0.1
    # Prompts that asked for brass but did not get it are content negatives.
    assert table.loc[("content", "is_brass", 80), "n_positive_clips"] < table.loc[("prompt", "is_brass", 80),
                                                                                  "n_positive_clips"]
    steps = pd.read_csv(out / "emergence_steps.csv").set_index(["yardstick", "concept", "metric"])
    assert steps.loc[("content", "is_brass", "auroc"), "emergence_step"] == 40
    # Realised labels cover families, drum and sources only: a reverb concept has no content positives.
    assert steps.loc[("content", "long", "auroc"), "status"] == "undefined"
    # Transfer: the probe against the final content at the last step, beside its NSynth quality.
    quality = pd.read_csv(out / "probe_quality.csv").set_index("concept")
    assert quality.loc["is_brass", "transfer_auroc"] == table.loc[("content", "is_brass", 80), "auroc"]
    assert quality.loc["is_brass", "transfer_yardstick"] == "content" and quality.loc["is_brass", "transfer_step"] == 80
    assert np.isnan(quality.loc["long", "transfer_auroc"]) and quality.loc["is_brass", "resplits"] == 1


def test_a_generator_without_content_and_a_layer_axis(tmp_path):
    """No content artifact: the prompt yardstick alone, no special case. A layer trajectory: the axis named
    in generation.json reaches the CSVs, the sidecar, the summary and the report's words."""
    root = write_synthetic_data(tmp_path, n_prompts=12, samples=1, steps=(1, 2, 3, 4), dim=16, write_audio=True,
                                n_instruments=24, notes_per_instrument=4, inject={"brass": 3}, content=False,
                                axis=("layer", "layer"))
    assert _run(["--data", root, "--embedder", EMBEDDER, "--bootstrap", "50", "--random-baselines", "3",
                 "--resplits", "1"]) == 0
    out = stage6_probe.results_dir(root, EMBEDDER, "logreg", "x0")
    table = pd.read_csv(out / "emergence.csv")
    assert set(table["yardstick"]) == {"prompt"} and len(table) == len(CONCEPTS) * 4
    # No content, no truth: the transfer columns and the known-answer tables are empty.
    assert pd.read_csv(out / "probe_quality.csv")["transfer_auroc"].isna().all()
    assert pd.read_csv(out / "known_answers.csv").empty
    assert set(table["trajectory_axis"]) == {"layer"}
    assert set(pd.read_csv(out / "emergence_steps.csv")["trajectory_axis"]) == {"layer"}
    assert read_json(out / "stage6.json")["trajectory_axis"] == {"name": "layer", "unit": "layer",
                                                                  "positions": [0, 1, 2, 3, 4]}
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "AUROC per concept and layer" in page and "<th>layer</th>" in page and "per step" not in page
    assert "Known answers" not in page
    snippet = (out / "summary.md").read_text(encoding="utf-8")
    assert "4 layers (1–4, axis `layer`)" in snippet and "step" not in snippet


def test_an_axis_given_by_name_only_is_refused(tmp_path, capsys):
    """generation.json's axis is a {name, unit, positions} object (data/generation.py reads it for every stage)."""
    root = write_synthetic_data(tmp_path, n_prompts=8, samples=1, steps=(0, 10), dim=16, write_audio=False,
                                n_instruments=24, notes_per_instrument=4)
    generation = root / "generated" / "generation.json"
    write_json(generation, dict(read_json(generation), trajectory_axis="denoising_step"))
    stamp_parts(root / "generated")  # the parts made under the edited record: only the axis is wrong
    assert _run(["--data", root, "--embedder", EMBEDDER, "--no-report"]) == 2
    assert "trajectory_axis 'denoising_step' is not a {name, unit, positions} object" in capsys.readouterr().err


def test_the_note_baseline(tmp_path):
    """--baseline notes keeps the per-note draw, and differs from the instrument draw."""
    root = write_synthetic_data(tmp_path, n_prompts=8, samples=1, steps=(0, 10), dim=16, write_audio=False,
                                n_instruments=24, notes_per_instrument=4)
    argv = ["--data", root, "--embedder", EMBEDDER, "--bootstrap", "20", "--random-baselines", "3", "--resplits", "0",
            "--no-report"]
    assert _run(argv + ["--baseline", "notes"]) == 0
    out = stage6_probe.results_dir(root, EMBEDDER, "logreg", "x0")
    record = read_json(out / "stage6.json")
    assert record["trajectory_axis"]["unit"] == "step" and record["settings"]["baseline"] == "notes"
    by_notes = pd.read_csv(out / "emergence.csv")["auroc_random_mean"]
    assert _run(argv + ["--force"]) == 0
    by_instruments = pd.read_csv(out / "emergence.csv")["auroc_random_mean"]
    assert not np.allclose(by_notes.dropna(), by_instruments.dropna())


@pytest.mark.parametrize("content", [True, False])
def test_identical_positions_count_once_end_to_end(tmp_path, content):
    """From step 10 on the generator has committed: its realised content (when recorded) and the clips'
    embeddings stop changing. drift_summary and emergence_steps see two distinct positions, not three; the
    rule reads the content when there is one, the embeddings otherwise."""
    root = write_synthetic_data(tmp_path, n_prompts=20, samples=1, steps=(0, 10, 20), dim=16, write_audio=False,
                                inject={"brass": 10}, strength=6.0, n_instruments=24, notes_per_instrument=4,
                                content=content, committed_from=10)
    npy = root / "generated" / "embeddings" / f"{EMBEDDER}.npy"
    matrix = np.load(npy)
    steps = read_generated_index(root)["step"].to_numpy()
    matrix[steps == 20] = matrix[steps == 10]
    write_npy(npy, matrix)
    argv = ["--data", root, "--embedder", EMBEDDER, "--bootstrap", "100", "--random-baselines", "4", "--resplits", "0",
            "--no-report"]
    assert _run(argv) == 0
    out = stage6_probe.results_dir(root, EMBEDDER, "logreg", "x0")
    assert read_json(out / "stage6.json")["distinct_by"] == ("content" if content else "embeddings")
    assert pd.read_csv(out / "drift_summary.csv")["distinct_position"].tolist() == [0, 10, 10]
    steps_table = pd.read_csv(out / "emergence_steps.csv").set_index(["yardstick", "concept", "metric"])
    brass = steps_table.loc[("prompt", "is_brass", "auroc")]
    assert brass["status"] == "emerged" and brass["emergence_step"] == 10 and brass["significant_from"] == 10
    assert brass["distinct_above"] == 1 and brass["n_distinct"] == 2
    assert (steps_table["n_distinct"] <= 2).all()
    if content:
        # Clips that still change while the content stays: the content decides.
        matrix[steps == 20] += 0.5
        write_npy(npy, matrix)
        assert _run(argv + ["--force"]) == 0
        assert pd.read_csv(out / "drift_summary.csv")["distinct_position"].tolist() == [0, 10, 10]


def test_unknown_baseline_is_refused(small_data, capsys):
    message = _error(capsys, ["--data", small_data, "--embedder", EMBEDDER, "--baseline", "prompts", "--no-report"])
    assert message == "error: --baseline 'prompts' is unknown — choose from instruments, notes"


def test_summary_rederives_the_headline_numbers(results):
    from interp import summary
    _, out, tables = results
    derived = summary.summarise(out)
    assert derived == read_json(out / summary.SUMMARY_JSON)
    assert derived["run"]["clips"] == 40 * 2 * 6 and derived["run"]["unit"] == "step"
    prompt = derived["emergence"]["prompt"]
    assert prompt["emergence_step"]["is_brass"] == [40, 40, 40] and "is_brass" in prompt["emerged"]
    assert "distorted" in prompt["undefined"]
    steps = tables["emergence_steps.csv"].query("yardstick == 'prompt'")
    for status in ("emerged", "transient", "never", "undefined"):
        assert sorted(steps[steps["status"] == status]["concept"]) == prompt[status]
    significant = tables["emergence.csv"]["auroc_significant"]
    assert derived["significance"]["above"] + derived["significance"]["below"] == significant.sum()
    assert derived["significance"]["tests"] == read_json(out / "stage6.json")["n_tests"]
    assert derived["transfer"]["concepts"] == tables["probe_quality.csv"]["transfer_auroc"].notna().sum()
    assert derived["known_answers"]["concepts"] == len(tables["known_answers.csv"])
    snippet = (out / summary.SUMMARY_MD).read_text(encoding="utf-8")
    assert snippet == summary.markdown(derived) and "is_brass (40 [40, 40])" in snippet
    assert f"Holm over {derived['significance']['tests']:,} AUROC tests" in snippet


def test_known_answers_end_to_end(results):
    """The synthetic truth plants brass from step 20 (the exact posterior's AUROC reaches 0.75 at ~25); the probe
    reads brass from the captured step 40 on, so the planted step lies in its interval (20, 40]. The oracle
    (the truth's own probabilities through the same rule) recovers every planted concept."""
    root, out, tables = results
    known = tables["known_answers.csv"].set_index("concept")
    planted = pd.read_csv(root / "generated" / "truth_tables" / "emergence_truth.csv").set_index("concept")
    brass = known.loc["is_brass"]
    assert brass["planted_step"] == planted.loc["is_brass", "emergence_step"] and 20 < brass["planted_step"] <= 40
    assert brass["emergence_step"] == 40 and brass["interval_from"] == 20
    assert brass["inside"] and brass["near"] and brass["recovered"]
    assert known["oracle_recovered"].all()
    # Concepts whose final content is the same for every trajectory have no planted step and no row.
    assert set(known.index) == set(planted[(planted["n_positive"] > 0) &
                                           (planted["n_positive"] < planted["n_trajectories"])].index)
    order = tables["known_order.csv"].set_index("probe")
    assert order.loc["oracle", "pairs_share"] == 1.0
    assert "Known answers" in (out / "report.html").read_text(encoding="utf-8")


def test_random_instrument_concepts_count_instruments_by_their_majority():
    """Instruments a and d have mostly positive train notes, b, c and e mostly (or only) negative ones: every
    random concept of the pool has 2 positive and 3 negative instruments, whole, drawn from the train split only."""
    instruments = [name for name in "abcdef" for _ in range(3)]
    notes = pd.DataFrame({"instrument_str": instruments, "split": ["train"] * 15 + ["test"] * 3})
    nsynth = ConceptNotes(notes, pd.DataFrame(), np.zeros((18, 2)), REPO_ROOT)
    labels = np.array([1, 1, 0, 1, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0])
    split = ConceptSplit(np.arange(15), labels, np.arange(15, 18), np.zeros(3, int))
    draws = random_training_sets(nsynth, {"a": split, "none": None}, "instruments", 30, seed=0)
    seen = set()
    for draw in draws:
        positive, negative = set(draw.instruments[draw.y == 1]), set(draw.instruments[draw.y == 0])
        assert len(positive) == 2 and len(negative) == 3 and not positive & negative
        assert len(draw.y) == 15 and set(np.bincount(draw.instruments)) == {3}
        seen.add(frozenset(positive))
    assert len(seen) > 3
    by_notes = random_training_sets(nsynth, {"a": split}, "notes", 5, seed=0)
    assert all(draw.y.sum() == 6 and len(draw.y) == 15 for draw in by_notes)
