"""Interchange interventions end to end on a tiny MusicGen: spec -> stage 2 (one batched generation per
prompt for every (component, layer) site) -> stage 3 -> stage 6 --compare (interchange.csv).

Known answer: "adjust" with A == B shifts every component by mean_A - mean_A = 0, so each site's clips are the
reference run's clips byte for byte (which also checks that batching the sites changes no row)."""
import json

import pandas as pd
import pytest

pytest.importorskip("diffusion.musicgen", reason="the MusicGen backend is not in this checkout")

from stage_runs import run_notebook, run_stages_3_to_6  # noqa: E402
from test_musicgen_stage2 import PROMPTS, RUN, write_annotated  # noqa: E402
from tiny_musicgen import save_model  # noqa: E402

from data.stage import run_stage  # noqa: E402
from diffusion import musicgen  # noqa: E402
from diffusion import stage2_generate as stage2  # noqa: E402
from interp import artifacts  # noqa: E402
from interp import stage6_probe as stage6  # noqa: E402

BLOCKS = [0, 1, 2, 3]
BRASS_PROMPTS = [pid for pid, _, labels in PROMPTS if "brass" in labels.split(";")]


def write_spec(folder, **entry):
    payload = {"format": 2, "interventions": [{"kind": "interchange", "concept_a": "is_brass",
                                                "concept_b": "is_keyboard", "op": "replace", "blocks": BLOCKS,
                                                **entry}]}
    path = folder / "spec.json"
    path.write_text(json.dumps(payload))
    return path


def stage2_run(data, model, spec, *extra) -> int:
    return run_stage(stage2.main, stage2.build_parser(),
                     ["--data", str(data), "--model", str(model), *RUN, "--intervene", str(spec), *extra])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("interchange") / "tiny-musicgen")


def test_adjust_with_a_equal_to_b_changes_nothing_and_sites_share_one_generation(tiny_model, tmp_path, monkeypatch,
                                                                                 capsys):
    data = tmp_path / "data"
    write_annotated(data, PROMPTS[:4])      # 3 brass prompts, 1 keyboard prompt
    spec = write_spec(tmp_path, concept_b="is_brass", op="adjust", id="same")
    calls = []
    original = musicgen.MusicgenRunner.generate

    def counted(self, prompt, seed, num_samples, *args, **kwargs):
        calls.append(num_samples)
        return original(self, prompt, seed, num_samples, *args, **kwargs)

    monkeypatch.setattr(musicgen.MusicgenRunner, "generate", counted)
    assert stage2_run(data, tiny_model, spec, "--capture-steps", "2,4") == 0
    sites = 3 * len(BLOCKS)
    # Reference: one per prompt; means of A (cached, and B is A): one per brass prompt; interchange: ONE batched
    # generation of 12 sites x 2 samples per brass prompt.
    assert calls == [2] * 4 + [2] * len(BRASS_PROMPTS) + [sites * 2] * len(BRASS_PROMPTS)
    generated = data / "generated"
    runs = sorted(p.name for p in (generated / "interventions").iterdir() if (p / "index").is_dir())
    assert len(runs) == sites and "same-adjust-cross_attn-B2" in runs
    for run in runs:
        index = pd.read_csv(generated / "interventions" / run / "index" / "p_brass2.csv")
        assert set(index["prompt_id"]) == {"p_brass2"} and len(index) == 2 * 2
        assert not (generated / "interventions" / run / "index" / "p_keys1.csv").exists()   # A's prompts only
        for path in index["path"]:
            assert (generated / "interventions" / run / path).read_bytes() == (generated / path).read_bytes()
    means = list((generated / "interventions" / "component-means").glob("is_brass-*.npy"))
    assert len(means) == 1 and means[0].with_suffix(".json").is_file()
    # A rerun makes nothing: every site is done, and the means are read back, not recomputed.
    calls.clear()
    capsys.readouterr()
    assert stage2_run(data, tiny_model, spec, "--capture-steps", "2,4") == 0
    assert calls == [] and f"{sites * len(BRASS_PROMPTS)} prompt runs already done, 0 generated" in \
        capsys.readouterr().err


@pytest.fixture(scope="module")
def interchange_study(tiny_model, tmp_path_factory):
    """A small MusicGen study as a user would run one: interchange runs and the conditional rows' residual stream
    in stage 2, stages 3-6 with --compare, and stage 6 --space activations."""
    root = tmp_path_factory.mktemp("interchange-study")
    data = root / "data"
    write_annotated(data)
    spec = write_spec(root)
    assert stage2_run(data, tiny_model, spec, "--capture-steps", "4", "--generator-option", "residuals=cond") == 0
    run_stages_3_to_6(data, "--random-baselines", "0", "--compare")
    assert run_stage(stage6.main, stage6.build_parser(), ["--data", str(data), "--space", "activations",
                                                          "--bootstrap", "20", "--random-baselines", "2"]) == 0
    return data


def test_interchange_runs_through_stages_3_and_6_compare(interchange_study):
    data = interchange_study
    folder = data / "results" / "spectral" / "logreg" / "x0" / "compare"
    table = pd.read_csv(folder / "interchange.csv")
    assert len(table) == 3 * len(BLOCKS)
    # interchange.csv's `layer` is the decoder layer of the trajectory axis: block b's components are layer b + 1's.
    assert set(zip(table["component"], table["layer"])) == {(c, block + 1) for c in ("self_attn", "cross_attn", "mlp")
                                                            for block in BLOCKS}
    assert (table["concept_a"] == "is_brass").all() and (table["concept_b"] == "is_keyboard").all()
    assert (table["n_pairs"] == 2 * len(BRASS_PROMPTS)).all()
    assert table["log_odds_shift"].notna().all() and (table["log_odds_shift_low"] <= table["log_odds_shift"]).all()
    assert (table["family_kl"] >= 0).all()
    section = (folder / "section.html").read_text()
    assert "Interchange is_brass → is_keyboard (replace)" in section and "background: rgba" in section



def test_batched_sites_equal_one_site_generations_and_change_their_rows(tiny_model):
    """Row block i of the batched generation is what site i alone gives (same seeds); a mean far from the rows'
    own activations changes the clips. (The tiny model's brass and keyboard means differ by ~1e-3, too little to
    flip a sampled token, so the stage-level run above moves no clip; here B's mean is pushed far away.)"""
    import torch

    from diffusion.base import TrajectoryObserver
    from diffusion.interventions.hooks import hooks_applied
    from diffusion.musicgen.hooks import every_site, interchange_hooks

    generator = musicgen.MusicgenGenerator(model=tiny_model, device="cpu")
    last, prompt, seed, samples, seconds = generator.runner.num_layers, "bright brass", 5, 2, 0.2
    means_a = generator.component_means([(prompt, seed)], samples, seconds)
    means_b = means_a + 3.0
    sites = every_site(last)
    observers = [TrajectoryObserver([last]) for _ in sites]
    generator.sample_sites(prompt, seed, samples, seconds, observers, means_a, means_b, sites, "replace")
    reference = generator.runner.generate(prompt, seed, samples, seconds, generator.sampling).codes
    changed = 0
    for site, observer in zip(sites, observers):
        batched = observer.captured[0].latent
        if site in (("self_attn", 0), ("mlp", last - 1)):
            with hooks_applied(generator.hook_points(),
                               interchange_hooks(last, means_a, means_b, [site] * samples, "replace")):
                alone = generator.runner.generate(prompt, seed, samples, seconds, generator.sampling).codes
            assert torch.equal(batched, alone), site
        changed += not torch.equal(batched, reference)
    assert changed >= len(sites) // 2


@pytest.mark.parametrize("entry, extra, message", [
    ({"op": "swap"}, [], "'swap' is not one of replace, adjust"),
    ({"blocks": [0, 9]}, [], "block 9 does not exist"),
    ({"components": ["mlp", "attn"]}, [], "must be a non-empty list of distinct names"),
    ({"concept_b": "is_vocal"}, [], "no prompt of the run carries 'is_vocal'"),
    ({"strength": 2.0}, [], "unknown key of an interchange"),
    ({"rows": "unconditional"}, [], "'unconditional' is not one of conditional, both"),
    ({"prompts": ["p_keys1"]}, [], "none of the spec's prompts carries 'is_brass'"),
    ({}, ["--generator", "ideal"], "the ideal generator supports none"),
])
def test_bad_interchange_specs_are_one_line_exit_2(tiny_model, tmp_path, capsys, entry, extra, message):
    data = tmp_path / "data"
    write_annotated(data)
    spec = write_spec(tmp_path, **{key: value for key, value in entry.items() if key != "prompts"})
    if "prompts" in entry:
        payload = json.loads(spec.read_text())
        spec.write_text(json.dumps({**payload, "prompts": entry["prompts"]}))
    arguments = ["--data", str(data), "--model", str(tiny_model), *RUN, "--intervene", str(spec), *extra]
    if extra:   # the ideal model: its own bank, no --model
        arguments = ["--data", str(data), "--samples", "1", "--steps", "5", "--limit-prompts", "1", "--no-progress",
                     "--intervene", str(spec), *extra]
    assert run_stage(stage2.main, stage2.build_parser(), arguments) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (data / "generated" / "interventions").exists()


def test_the_api_and_the_second_notebook_read_interventions_and_activations(interchange_study, monkeypatch):
    data = interchange_study
    study = artifacts.Results.of(data, embedder="spectral")
    assert study.generation["generator"] == "musicgen" and study.unit == "layer"
    interchange = study.interchange()
    pd.testing.assert_frame_equal(interchange, pd.read_csv(study.folder / "compare" / "interchange.csv",
                                                           keep_default_na=False, na_values=[""]))
    assert len(study.interventions()) == 3 * len(BLOCKS) and study.commitment().empty   # no steering runs
    layers = artifacts.Results.activations(data)
    assert layers.unit == "layer" and set(layers.emergence()["step"]) == {1, 2, 3, 4}
    assert layers.settings["branch"] == "cond" and layers.settings["bootstrap"] == 20
    directions = layers.directions().set_index("concept")
    assert directions.loc["is_brass", "blocks"] == BLOCKS and directions.loc["is_brass", "method"] == "probe"
    assert sorted(artifacts.analyses(data)["space"]) == ["activations", "embeddings"]
    outputs = run_notebook("interventions_and_activations.ipynb", monkeypatch, MUSICOLOGIST_DATA=str(data))
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(figures) == 2   # the interchange heat map and the residual-stream AUROC heat map
    printed = "".join(output.get("text", "") for output in outputs)
    assert "generator musicgen" in printed and "0 steering groups" in printed
