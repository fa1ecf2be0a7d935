"""The known answer end to end: stage 2 --intervene on the ideal model, stage 3, stage 6 --compare.

The ideal model commits to one bank clip by about step 35, so tilting its prior towards a concept from step 5
on must raise the concept's probe score beyond random directions of the same norm, and from step 45 on must not.
"""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from conftest import REPO_ROOT

# The first 20 prompts of the embedded set (all among its first 30) that do not ask for a guitar (brass, flute, keyboard, mallet, organ).
# Fewer pairs leave the spectral guitar probe's effect inside the noise of the random directions.
PROMPTS = ["pf12c20e744", "p8dd39f7fe3", "p44a96b0edd", "pbad4f79216", "p426949660f", "pb75c802d2d",
           "pb23d310c35", "pb040924531", "p3abd06f7b0", "pfc23f8dd6b", "p47c2747317", "pa3c979e68e",
           "pde5b8edbf4", "p2b25833d16", "pd59a2bbeeb", "p3b0d903852", "p2bc9939760", "pf49506b69b",
           "p399693ef89", "p79f2f2954e"]
SPEC = {"format": 2, "prompts": PROMPTS, "samples": 1, "capture_steps": [49],
        "interventions": [{"concept": "is_guitar", "direction": ["concept", "random:0", "random:1"], "where": "prior",
                           "strength": 8.0, "from_step": [5, 45]}]}


def run(data, script, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, script, "--data", str(data), *args], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, f"{script} failed:\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    data = tmp_path_factory.mktemp("steer")
    spec = data / "spec.json"
    spec.write_text(json.dumps(SPEC))
    run(data, "data/prompts/stage1_prompts.py")
    stage2 = ["diffusion/stage2_generate.py", "--limit-prompts", "30", "--samples", "1", "--capture-steps", "49",
              "--no-progress", "--intervene", str(spec)]
    run(data, *stage2)
    run(data, "embeddings/stage3_embed_generated.py", "--embedder", "spectral")
    # The default rendering: with fewer notes (--pitch-step 12) the spectral guitar probe is too weak to tell.
    run(data, "data/nsynth/render_soundfont.py")
    run(data, "interp/stage4_concept_sets.py", "--nsynth-dir", f"{data}/nsynth/nsynth-soundfont")
    run(data, "interp/stage5_embed_nsynth.py", "--embedder", "spectral")
    # 1,000 prompt resamples, as the demo: the early effect's lower bound sits near 0 (about +0.01 with the
    # probes of notes and mixes), where the 2.5th percentile of 200 resamples flips with Monte Carlo noise.
    run(data, "interp/stage6_probe.py", "--embedder", "spectral", "--bootstrap", "1000", "--random-baselines", "4",
        "--compare")
    return data, stage2


def test_steering_early_moves_the_concept_beyond_random_directions_and_late_does_not(compared):
    data, _ = compared
    folder = data / "results" / "spectral" / "logreg" / "x0" / "compare"
    summary = pd.read_csv(folder / "interventions.csv").set_index("intervention")
    early, late = summary.loc["is_guitar_concept_prior_s8_k5"], summary.loc["is_guitar_concept_prior_s8_k45"]
    assert early["n_pairs"] == len(PROMPTS) and early["n_baseline_directions"] == 2
    assert early["beyond_baseline"] and early["effect_low"] > 0
    assert not late["beyond_baseline"]
    assert abs(late["target_delta"]) < 0.05
    commitment = pd.read_csv(folder / "commitment.csv")
    assert commitment.loc[0, "commitment_step"] == 5 and commitment.loc[0, "steps_tested"] == "5;45"
    report = (data / "results" / "spectral" / "logreg" / "x0" / "report.html").read_text()
    assert "Interventions: when is a concept committed?" in report and "interventions/is_guitar_concept" in report
    # The overview table puts the commitment step beside the emergence status.
    assert "commitment (steering)" in report and "<td class='text'>5 (prior, tested 5;45)" in report


def test_a_rerun_skips_every_intervention_and_a_changed_one_is_refused(compared):
    data, stage2 = compared
    again = run(data, *stage2)
    assert f"{6 * len(PROMPTS)} prompt runs already done, 0 generated" in again.stderr
    spec = json.loads((data / "spec.json").read_text())
    spec["interventions"] = [{**spec["interventions"][0], "direction": "concept", "from_step": 5, "mode": "add",
                              "id": "is_guitar_concept_prior_s8_k5", "strength": 12.0}]
    changed = data / "changed.json"
    changed.write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, *stage2[:-1], str(changed), "--data", str(data)], cwd=REPO_ROOT,
                            env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "strength" in result.stderr and "--force" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_compare_has_a_provenance_of_its_own(compared):
    """compare/ is decided apart from the analysis: without compare.json it is redone alone (stage6.json and the
    analysis untouched, the same tables again); a compare.json made with other settings is refused in one line and
    leaves stage6.json as it was."""
    data, _ = compared
    out = data / "results" / "spectral" / "logreg" / "x0"
    stage6 = ["interp/stage6_probe.py", "--embedder", "spectral", "--bootstrap", "1000", "--random-baselines", "4",
              "--compare"]
    analysis, effects = (out / "stage6.json").read_bytes(), (out / "compare" / "effects.csv").read_bytes()
    sidecar = out / "compare" / "compare.json"
    record = json.loads(sidecar.read_text())
    sidecar.unlink()
    result = run(data, *stage6)
    assert "the analysis was up to date; compare/ redone" in result.stdout
    assert (out / "stage6.json").read_bytes() == analysis
    assert (out / "compare" / "effects.csv").read_bytes() == effects and sidecar.is_file()
    sidecar.write_text(json.dumps(dict(record, settings=dict(record["settings"], loudness_limit_db=3.0))))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    refused = subprocess.run([sys.executable, stage6[0], "--data", str(data), *stage6[1:]], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "loudness_limit_db=3.0" in refused.stderr and "--compare --force" in refused.stderr
    assert (out / "stage6.json").read_bytes() == analysis
    sidecar.write_text(json.dumps(record))
    assert "up to date" in run(data, *stage6).stdout
