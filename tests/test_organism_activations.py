"""Stage 6 --space activations on the model organism: stage 2 captures every block's output at the captured steps
(`--generator-option residuals=blocks`), and stage 6 probes them per (block, step) against the final realised
content, with emergence per block over the steps."""
import pandas as pd
from stage_runs import write_annotated

from data.concepts import CONCEPTS
from data.stage import run_stage
from diffusion import stage2_generate as stage2
from interp import stage6_probe

PROMPTS = [("p_brass", "bright brass fanfare", "brass;bright"), ("p_keys", "soft acoustic piano", "keyboard;acoustic"),
           ("p_guitar", "electric guitar riff", "guitar;electronic"), ("p_strings", "string quartet", "string")]
STEPS = (2, 6, 11)
RUN = ["--generator", "organism", "--generator-option", "residuals=blocks", "--steps", "12", "--capture-steps",
       ",".join(map(str, STEPS)), "--samples", "24", "--seconds", "0.25", "--seed", "5", "--no-progress"]


def test_block_probes_read_the_early_group_at_the_final_step(tmp_path):
    data = tmp_path / "data"
    write_annotated(data, PROMPTS)
    assert run_stage(stage2.main, stage2.build_parser(), ["--data", str(data), *RUN]) == 0
    rows = pd.read_csv(data / "generated" / "activations" / "p_brass.csv")
    assert list(rows.columns) == ["prompt_id", "sample", "seed", "block", "step", "pool", "row"]
    blocks = sorted(rows["block"].unique())
    assert len(rows) == 24 * len(STEPS) * len(blocks) and sorted(rows["step"].unique()) == list(STEPS)
    argv = ["--data", str(data), "--space", "activations", "--random-baselines", "2", "--bootstrap", "200",
            "--no-progress"]
    assert run_stage(stage6_probe.main, stage6_probe.build_parser(), argv) == 0
    out = data / "results" / "activations" / "blocks-mean" / "logreg"
    table = pd.read_csv(out / "emergence.csv")
    assert len(table) == len(blocks) * len(STEPS) * len(CONCEPTS) and set(table["yardstick"]) == {"content"}
    steps = pd.read_csv(out / "emergence_steps.csv")
    assert len(steps) == len(blocks) * len(CONCEPTS)
    # The planted early group (brass) is decided by the exact posterior well before the last step: every block's
    # output at the final step reads what the trajectory ends on, far above chance.
    final = table[(table["concept"] == "is_brass") & (table["step"] == STEPS[-1])]
    assert (final["auroc_low"] > 0.6).all() and final["auroc_significant"].all(), final[["block", "auroc"]]
    assert (out / "report.html").is_file() and (out / "plots" / "heatmap_auroc_content_blocks.png").is_file()
    assert run_stage(stage6_probe.main, stage6_probe.build_parser(), argv) == 0   # up to date: skipped
