"""`--generator organism` on the committed checkpoint: stages 2-6, steering on its blocks, the reference decoder and
closed form, and the committed checkpoint's loss log re-made from its recipe."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from stage_runs import run_stages_3_to_6, write_annotated

from data.directions import Direction
from data.files import read_json
from data.stage import run_stage
from diffusion import load_generator
from diffusion import stage2_generate as stage2
from diffusion.base import Conditioning, TrajectoryObserver
from diffusion.interventions.hooks import hooks_applied
from diffusion.interventions.spec import load_spec
from diffusion.organism.banks import load_bank
from diffusion.organism.checkpoint import LOSS_CSV
from diffusion.organism.generator import DEFAULT_CHECKPOINT
from diffusion.organism.train import Recipe, train
from interp.directions import block_recorder, mean_difference

PROMPTS = [("p_brass", "bright brass fanfare", "brass;bright"), ("p_keys", "soft acoustic piano", "keyboard;acoustic"),
           ("p_guitar", "electric guitar riff", "guitar;electronic"), ("p_strings", "string quartet", "string")]
RUN = ["--generator", "organism", "--steps", "12", "--capture-steps", "6,11", "--samples", "3", "--seconds", "1",
       "--seed", "3", "--no-progress"]


@pytest.fixture(scope="module")
def generator():
    return load_generator("organism", model=None, preset=None, steps=50, device=None, dtype=None, decode_dtype=None)


def test_committed_checkpoint_loss_log_is_remade_from_its_recipe():
    """The first 50 steps of `make organism`'s training, from the recipe the checkpoint records, give the loss
    log it carries (one thread, deterministic algorithms)."""
    record = read_json(DEFAULT_CHECKPOINT / "organism.json")
    recipe = record["recipe"]
    network = recipe.pop("network")
    recipe = Recipe(**{**recipe, "steps": 50}).with_changes(**network)
    bank = load_bank(recipe.bank, recipe.bank_seed)
    assert bank.sha256 == record["bank"]["sha256"]
    # Only the learning-rate schedule depends on the total steps; before the end of the warm-up it does not.
    assert recipe.warmup >= 50
    log = train(recipe, bank, progress=False).log
    committed = pd.read_csv(DEFAULT_CHECKPOINT / LOSS_CSV)
    np.testing.assert_allclose([row["loss"] for row in log], committed["loss"].to_numpy()[:len(log)], rtol=2e-4)


def test_the_organism_samples_bank_clips_and_decodes_with_the_reference_decoder(generator):
    """50 steps: the final latent sits on one planted clip (its closed-form content is one clip's labels), and the
    audio is the reference model's decoding of it."""
    observer = TrajectoryObserver([49], ["x0"])
    final = generator.sample(Conditioning("anything"), 11, 8, 1.0, observer)
    _, _, content, truth = observer.trace[-1]
    masses = np.stack(list(content.values()))
    assert np.mean(np.all((masses < 0.05) | (masses > 0.95), axis=0)) >= 0.75
    nearest = np.linalg.norm(final.double().numpy()[:, None] - generator.bank.latents[None], axis=2).min(axis=1)
    # The committed organism lands ~0.16 from a planted clip (its evaluation.json): well inside the middle group's
    # separation (0.8 * sqrt 2), not inside the late group's (0.08 * sqrt 2) — README, "The model organism".
    assert np.median(nearest) < 0.5
    np.testing.assert_array_equal(generator.decode(final, 1.0), generator.reference.decode(final, 1.0))
    assert set(truth) == set(generator.truth_concepts)


def test_steering_a_block_changes_the_trajectory_only_from_the_start_step(generator, tmp_path):
    recorded = []
    for seed in (0, 100):
        recorder = block_recorder(generator, 2)
        with hooks_applied(generator.hook_points(), recorder.hooks):
            generator.sample(Conditioning("x"), seed, 2, 1.0, None)
        steps, means = recorder.means()
        recorded.append(means.mean(axis=2))             # [steps, blocks, dim]
    assert steps == list(range(50))
    direction = Direction(mean_difference(recorded[0][None], recorded[1][None]), recorder.blocks, "is_brass",
                          "mean_difference", steps=steps).save(tmp_path / "is_brass")
    (tmp_path / "spec.json").write_text(json.dumps({"format": 2, "interventions": [
        {"concept": "is_brass", "direction": str(direction), "where": [1], "strength": 4.0, "from_step": 30}]}))
    steering = load_spec(tmp_path / "spec.json").interventions[0]

    def run(steering):
        observer = TrajectoryObserver(range(50), ["xt"])
        final = generator.sample(Conditioning("x", (), steering), 5, 2, 1.0, observer)
        return [c.latent for c in observer.captured], final

    plain, plain_final = run(None)
    steered, steered_final = run(steering)
    assert all(torch.equal(a, b) for a, b in zip(plain[:30], steered[:30]))
    assert not torch.equal(plain[30], steered[30]) and not torch.equal(plain_final, steered_final)
    again, again_final = run(None)
    assert torch.equal(again_final, plain_final)
    assert not any(block._forward_hooks for block in generator.model.transformer.transformer_blocks)


def test_stages_2_to_6_on_the_organism(generator, tmp_path, capsys):
    """Stage 2 with a block-steering spec (a difference of means, its random twin, two start steps), stages 3-5,
    and stage 6 with --compare: the organism's interventions reach the comparison like any backend's."""
    recorder = block_recorder(generator, 8)
    with hooks_applied(generator.hook_points(), recorder.hooks):
        generator.sample(Conditioning("x"), 0, 8, 1.0, None)
    _, means = recorder.means()                          # [steps, blocks, samples, dim]
    last = means[-1]
    direction = Direction(mean_difference(last[:, :4].transpose(1, 0, 2), last[:, 4:].transpose(1, 0, 2)),
                          recorder.blocks, "is_brass", "mean_difference").save(tmp_path / "brass")
    (tmp_path / "spec.json").write_text(json.dumps({"format": 2, "interventions": [
        {"concept": "is_brass", "direction": [str(direction), "random:0"], "where": [0, 1, 2, 3], "strength": 1.0,
         "from_step": [0, 8]}]}))
    data = tmp_path / "data"
    write_annotated(data, PROMPTS)
    assert run_stage(stage2.main, stage2.build_parser(),
                     ["--data", str(data), *RUN, "--intervene", str(tmp_path / "spec.json")]) == 0
    generated = data / "generated"
    record = read_json(generated / "generation.json")
    assert record["generator"] == "organism" and record["checkpoint_sha256"] == read_json(
        DEFAULT_CHECKPOINT / "organism.json")["weights_sha256"]
    truth = pd.read_csv(generated / "truth" / "p_brass.csv")
    assert sorted(truth["step"].unique()) == list(range(12)) and len(truth) == 12 * 3
    assert (generated / "truth_tables" / "commit_steps.csv").is_file()
    # A rerun with everything done loads nothing and changes nothing.
    made = {p: p.stat().st_mtime_ns for p in generated.rglob("*") if p.is_file()}
    assert run_stage(stage2.main, stage2.build_parser(), ["--data", str(data), *RUN]) == 0
    assert made == {p: p.stat().st_mtime_ns for p in generated.rglob("*") if p.is_file()}
    run_stages_3_to_6(data, "--random-baselines", "2", "--no-report", "--compare")
    out = data / "results" / "spectral" / "logreg" / "x0"
    emergence = pd.read_csv(out / "emergence.csv")
    assert len(emergence) > 0 and set(emergence["step"]) <= {6, 11}
    compared = pd.read_csv(out / "compare" / "interventions.csv")
    assert len(compared) == 4 and (compared["n_pairs"] == 3 * len(PROMPTS)).all()   # concept, random; k = 0, 8
    concept = compared[compared["direction"] == "file"]
    assert len(concept) == 2 and concept["effect"].notna().all()
    commitment = pd.read_csv(out / "compare" / "commitment.csv")
    assert commitment.loc[0, "steps_tested"] == "0;8" and commitment.loc[0, "commitment_clock"] == "denoising_step"


@pytest.mark.parametrize("extra, message", [
    (["--preset", "reference"], "unknown preset 'reference' for the organism"),
    (["--generator-option", "condition=text"], "condition=text: choose one of none, labels"),
    (["--model", "/nonexistent/organism"], "not an organism checkpoint"),
])
def test_bad_organism_input_is_one_line_and_nothing_written(tmp_path, capsys, extra, message):
    data = tmp_path / "data"
    write_annotated(data, PROMPTS)
    assert run_stage(stage2.main, stage2.build_parser(), ["--data", str(data), *RUN, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and not (data / "generated").exists()


def test_the_readme_quotes_the_committed_evaluation():
    """The README's organism figures are `evaluate.summary_lines` of the committed evaluation.json."""
    from data.stage import REPO_ROOT
    from diffusion.organism.evaluate import summary_lines

    readme = (REPO_ROOT / "README.md").read_text()
    evaluation = read_json(DEFAULT_CHECKPOINT / "evaluation.json")["evaluation"]
    missing = [line for line in summary_lines(evaluation) if line not in readme]
    assert not missing, missing[0]


COMMITTED_ANALYSIS = DEFAULT_CHECKPOINT / "analysis"


def committed(name: str) -> pd.DataFrame:
    return pd.read_csv(COMMITTED_ANALYSIS / name)


def test_organism_analysis_remakes_the_committed_one_for_brass(tmp_path):
    """`make organism-demo`'s analysis (committed in diffusion/organism/planted/analysis/) re-made from the committed
    checkpoint with its default settings, searching one concept: the probes, readable steps, recovery shares and
    natural commitment steps are the committed ones, and so are brass's commitment searches (each search depends
    only on its concept and the seeds). Tolerances cover another CPU's float rounding: AUROC 0.01, steps 1."""
    from interp import organism_analysis

    argv = ["--data", str(tmp_path), "--steer", "is_brass", "--directions", "mean_difference,reversed_mean_difference",
            "--no-progress"]
    assert run_stage(organism_analysis.main, organism_analysis.build_parser(), argv) == 0
    out = tmp_path / "results" / "organism"
    probes, reference = pd.read_csv(out / "probes.csv"), committed("probes.csv")
    assert list(probes[["concept", "site", "step"]].itertuples(index=False)) == \
        list(reference[["concept", "site", "step"]].itertuples(index=False))
    np.testing.assert_allclose(probes["auroc"], reference["auroc"], atol=0.01)
    steps = ["activation_step", "output_step", "oracle_step", "planted_step"]
    readable, reference = pd.read_csv(out / "readable.csv"), committed("readable.csv")
    assert list(readable["concept"]) == list(reference["concept"])
    np.testing.assert_allclose(readable[steps].fillna(-1), reference[steps].fillna(-1), atol=1)
    recovery, reference = pd.read_csv(out / "recovery.csv"), committed("recovery.csv")
    assert (abs(recovery["recovered"] - reference["recovered"]) <= 1).all()
    natural, reference = pd.read_csv(out / "content_commitment.csv"), committed("content_commitment.csv")
    np.testing.assert_allclose(natural["content_commit_step"], reference["content_commit_step"], atol=1)
    search = pd.read_csv(out / "commitment.csv")
    reference = committed("commitment.csv")
    reference = reference[(reference["concept"] == "is_brass") & reference["direction"].isin(["mean_difference", "prior"])]
    reversed_brass = search[search["direction"] == "reversed_mean_difference"].iloc[0]
    search = search[search["direction"] != "reversed_mean_difference"].reset_index(drop=True)
    assert list(search["direction"]) == list(reference["direction"]) == ["mean_difference", "prior"]
    for column in ("truth_step", "probe_step"):
        np.testing.assert_allclose(search[column].fillna(-1), reference[column].fillna(-1), atol=1)
    # Brass's difference of means makes brass; its negation does not, from any start step.
    assert pd.isna(reversed_brass["truth_step"])
    # The known answers, on this run: the early group is readable in the blocks ~25 steps before the late group;
    # steering brass's difference of means moves it from step 0 but not from the last steps, and the probe on the
    # output finds the step the realised content gives within two steps.
    readable = readable.set_index("concept")
    assert readable.loc["is_guitar", "activation_step"] >= readable.loc["is_brass", "activation_step"] + 15
    brass = search.set_index("direction").loc["mean_difference"]
    assert 10 <= brass["truth_step"] <= 45 and brass["within_two"]
    assert Direction.load(out / "directions" / "mean_difference" / "is_brass.npy").blocks == (0, 1, 2, 3)
    assert (out / "report.html").is_file()
    assert run_stage(organism_analysis.main, organism_analysis.build_parser(), argv) == 0   # up to date: skipped


def test_the_readme_quotes_the_committed_organism_analysis():
    """The README's organism-analysis tables and shares are interp/organism_report.summary_lines of the committed
    analysis; its provenance names the committed checkpoint and the default settings."""
    from data.stage import REPO_ROOT
    from interp import organism_analysis
    from interp.organism_report import summary_lines

    readme = (REPO_ROOT / "README.md").read_text()
    missing = [line for line in summary_lines(COMMITTED_ANALYSIS) if line not in readme]
    assert not missing, missing[0]
    record = read_json(COMMITTED_ANALYSIS / organism_analysis.SIDECAR)
    defaults = vars(organism_analysis.build_parser().parse_args(["--data", "x"]))
    settings = record["settings"]
    assert settings["samples"] == defaults["samples"] and settings["steer"] is None


@pytest.mark.parametrize("extra, message", [
    (["--steer", "is_nothing"], "--steer is_nothing: not a concept"),
    (["--directions", "mean_difference,sideways"], "--directions 'mean_difference,sideways'"),
    (["--groups", "4"], "--groups 4 must be at least 10"),
])
def test_bad_organism_analysis_input_is_one_line(tmp_path, capsys, extra, message):
    from interp import organism_analysis

    argv = ["--data", str(tmp_path), "--no-progress", *extra]
    assert run_stage(organism_analysis.main, organism_analysis.build_parser(), argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and not (tmp_path / "results").exists()


def test_interchange_on_the_organisms_blocks_runs_every_site_in_one_batch(tmp_path):
    """Swapping in B's mean component outputs: one row per (site, trajectory), read by the realised content, every
    site of every component and block; a bad pair is one line, exit 2."""
    from interp import organism_interchange

    argv = ["--data", str(tmp_path), "--pair", "is_keyboard:is_guitar", "--samples", "48", "--per-site", "3",
            "--from-steps", "0,36", "--window", "10", "--bootstrap", "20", "--no-progress"]
    assert run_stage(organism_interchange.main, organism_interchange.build_parser(), argv) == 0
    table = pd.read_csv(tmp_path / "results" / "organism" / "interchange.csv")
    assert len(table) == 3 * 4 * 2 and set(table["from_step"]) == {0, 36} and (table["n"] == 3).all()
    assert table["flip_share"].between(0, 1).all() and (table["flip_low"] <= table["flip_share"]).all()
    assert run_stage(organism_interchange.main, organism_interchange.build_parser(), argv + ["--pair", "x:y"]) == 2


def test_stage2_intervene_steers_the_organism_to_brass_from_step_0_not_from_40(generator, tmp_path):
    """Known answer through the CLI: the difference of means of the block outputs between trajectories that end with
    and without brass (64 recorded), added on every block, makes brass from step 0 (brass is decided around step
    14-18) and changes nothing from step 40; its random twin changes nothing."""
    from data.truth import realised_concepts

    recorder = block_recorder(generator, 64)
    observer = TrajectoryObserver([], ["x0"])
    with hooks_applied(generator.hook_points(), recorder.hooks):
        generator.sample(Conditioning("x"), 1000, 64, 1.0, observer)
    steps, means = recorder.means()                     # [steps, blocks, rows, dim]
    content = np.stack([observer.trace[-1][2][label] for label in generator.content_labels], axis=-1)
    brass = realised_concepts(content, generator.content_labels, ["is_brass"])[:, 0]
    assert 3 <= brass.sum() <= 61
    vectors = mean_difference(means[:, :, brass].transpose(2, 0, 1, 3), means[:, :, ~brass].transpose(2, 0, 1, 3))
    path = Direction(vectors, recorder.blocks, "is_brass", "mean_difference", steps=steps).save(tmp_path / "brass")
    data = tmp_path / "data"
    write_annotated(data, PROMPTS[1:3])
    (tmp_path / "spec.json").write_text(json.dumps({"format": 2, "interventions": [
        {"concept": "is_brass", "direction": [str(path), "random:0"], "where": [0, 1, 2, 3], "strength": 1.0,
         "from_step": [0, 40]}]}))
    argv = ["--data", str(data), "--generator", "organism", "--samples", "4", "--seconds", "1", "--no-progress",
            "--intervene", str(tmp_path / "spec.json")]
    assert run_stage(stage2.main, stage2.build_parser(), argv) == 0

    def final_brass(folder):
        truth = pd.concat(pd.read_csv(part) for part in sorted((folder / "truth").glob("*.csv")))
        return truth[truth["step"] == 49]["content_brass"].to_numpy()

    generated = data / "generated"
    plain = final_brass(generated)
    runs = {folder.name: final_brass(folder) for folder in (generated / "interventions").iterdir()}
    steered = [name for name in runs if "random" not in name and name.endswith("_k0")]
    assert len(runs) == 4 and len(steered) == 1
    assert runs[steered[0]].mean() >= 0.75 > 0.5 > plain.mean()      # measured: 7 of 8 end on brass
    for name, values in runs.items():
        if name != steered[0]:
            np.testing.assert_array_equal(values, plain)
