"""Steering hooks on a tiny Stable Audio DiT: only the asked rows, blocks and steps change; removal restores."""
import json

import numpy as np
import pytest
import torch
from tiny_stable_audio import save_model

from data.directions import Direction
from data.stage import InputError
from diffusion import load_generator
from diffusion.base import Conditioning, TrajectoryObserver
from diffusion.interventions.hooks import hooks_applied
from diffusion.interventions.spec import load_spec
from interp.directions import block_recorder, mean_difference

STEPS, SECONDS, START = 5, 1.0, 3


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    model = save_model(tmp_path_factory.mktemp("sao") / "tiny-stable-audio")
    return load_generator("stable-audio-open", model=str(model), preset="reference", steps=STEPS, device="cpu")


@pytest.fixture(scope="module")
def direction(generator, tmp_path_factory):
    """A difference of means between two prompts' block activations, recorded per step on the cond rows."""
    transformer = generator.pipeline.transformer
    recorded = []
    for prompt in ("bright brass", "dark strings"):
        recorder = block_recorder(generator, 1)
        with hooks_applied(generator.hook_points(), recorder.hooks):
            generator.sample(Conditioning(prompt), 0, 1, SECONDS, None)
        steps, means = recorder.means()
        recorded.append(means[:, :, 0])                    # [steps, blocks, dim]
    assert steps == list(range(STEPS)) and recorder.blocks == list(range(len(transformer.transformer_blocks)))
    assert not any(block._forward_hooks for block in transformer.transformer_blocks)
    vectors = mean_difference(recorded[0][None], recorded[1][None])
    return Direction(vectors, recorder.blocks, "is_brass", "mean_difference", steps=steps,
                     provenance={"model": "tiny"}).save(tmp_path_factory.mktemp("dirs") / "is_brass")


def spec_for(tmp_path, direction, **entry):
    payload = {"format": 2, "interventions": [{"concept": "is_brass", "direction": str(direction), "where": [0],
                                                "strength": 2.0, "from_step": START, **entry}]}
    (tmp_path / "spec.json").write_text(json.dumps(payload))
    return load_spec(tmp_path / "spec.json").interventions[0]


def run(generator, steering, seed=4):
    """Block 1's input (= block 0's possibly steered output) and output, per step, plus the final latents."""
    transformer, scheduler = generator.pipeline.transformer, generator.pipeline.scheduler
    seen = {}

    def before(module, args, kwargs):
        seen[("in", scheduler.step_index or 0)] = kwargs["hidden_states"].clone()

    def after(module, args, output):
        seen[("out", scheduler.step_index or 0)] = output.clone()

    handles = [transformer.transformer_blocks[1].register_forward_pre_hook(before, with_kwargs=True),
               transformer.transformer_blocks[1].register_forward_hook(after)]
    try:
        observer = TrajectoryObserver([STEPS - 1], ["x0"])
        final = generator.sample(Conditioning("soft keys", (), steering), seed, 2, SECONDS, observer)
    finally:
        for handle in handles:
            handle.remove()
    return seen, final


def test_steering_changes_only_the_conditional_rows_of_the_asked_block_from_the_asked_step(generator, direction,
                                                                                             tmp_path):
    intervention = spec_for(tmp_path, direction)
    reference, reference_final = run(generator, None)
    steered, steered_final = run(generator, intervention)
    vector = torch.as_tensor(np.load(direction)[START, 0])
    for step in range(START):
        assert torch.equal(steered[("in", step)], reference[("in", step)])
    # At the first steered step: unconditional rows (first half of the CFG batch) untouched, conditional rows
    # moved by exactly s v, and block 1 (not asked for) changes only where its input did.
    unconditional, conditional = slice(0, 2), slice(2, 4)
    assert torch.equal(steered[("in", START)][unconditional], reference[("in", START)][unconditional])
    torch.testing.assert_close(steered[("in", START)][conditional] - reference[("in", START)][conditional],
                               (2.0 * vector).expand_as(reference[("in", START)][conditional]), rtol=0, atol=1e-5)
    assert torch.equal(steered[("out", START)][unconditional], reference[("out", START)][unconditional])
    assert not torch.equal(steered_final, reference_final)
    # Every hook came off: the same call without an intervention gives the reference again, bit for bit.
    again, again_final = run(generator, None)
    assert torch.equal(again_final, reference_final)
    assert not generator.pipeline.transformer.transformer_blocks[0]._forward_hooks


def test_unconditional_rows_and_zero_strength(generator, direction, tmp_path):
    reference, reference_final = run(generator, None)
    steered, _ = run(generator, spec_for(tmp_path, direction, rows="unconditional"))
    assert torch.equal(steered[("in", START)][2:4], reference[("in", START)][2:4])
    assert not torch.equal(steered[("in", START)][0:2], reference[("in", START)][0:2])
    _, zero_final = run(generator, spec_for(tmp_path, direction, strength=0.0))
    assert torch.equal(zero_final, reference_final)


def test_a_direction_for_another_width_is_refused(generator, tmp_path):
    wrong = Direction(np.ones((2, 3)), [0, 1], "is_brass", "mean_difference").save(tmp_path / "wrong")
    with pytest.raises(InputError, match="direction dim 3"):
        generator.sample(Conditioning("soft keys", (), spec_for(tmp_path, wrong)), 0, 1, SECONDS, None)


def test_the_directions_command_writes_a_per_step_difference_of_means(generator, tmp_path):
    from data.stage import run_stage
    from interp import directions

    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "annotated.csv").write_text(
        "prompt_id,prompt,labels,bpm,annotator\np1,bright brass,brass;acoustic,,offline\n"
        "p2,dark strings,string;acoustic,,offline\n")
    model = generator.model
    out = tmp_path / "dirs" / "is_brass.npy"
    argv = ["--data", str(tmp_path), "--model", model, "--concept", "is_brass", "--out", str(out), "--steps", "3",
            "--seconds", str(SECONDS), "--prompts", "1"]
    assert run_stage(directions.main, directions.build_parser(), argv) == 0
    array = np.load(out)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert array.shape[:2] == (3, 2) and sidecar["steps"] == [0, 1, 2] and sidecar["blocks"] == [0, 1]
    assert Direction.load(out).method == "mean_difference" and len(sidecar["checkpoint_sha256"]) == 64
    assert sidecar["positive_prompts"] == ["p1"] and sidecar["negative_prompts"] == ["p2"]
    assert np.abs(array).sum() > 0
    assert run_stage(directions.main, directions.build_parser(), argv[:-2] + ["--prompts", "1", "--concept",
                                                                                "is_tuba"]) == 0  # exists: skipped
    assert run_stage(directions.main, directions.build_parser(), argv + ["--force", "--concept", "is_tuba"]) == 2


def test_steps_captures_blocks_and_widths_outside_the_model_are_refused(generator, direction, tmp_path):
    from stage_runs import assert_outside_the_clock_is_refused

    from diffusion.interventions.spec import check_spec

    assert_outside_the_clock_is_refused(tmp_path, generator, SECONDS, {
        "concept": "is_brass", "direction": str(direction), "where": [0], "strength": 2.0})
    wide = Direction(np.ones((1, generator.block_width() + 1)), [0], "is_brass", "probe").save(tmp_path / "wide")
    spec_for(tmp_path, wide)
    with pytest.raises(InputError, match=f"direction dim {generator.block_width() + 1} but the stable-audio-open "
                                         f"generator's blocks are {generator.block_width()} wide"):
        check_spec(load_spec(tmp_path / "spec.json"), generator, SECONDS, 1, ["p1"])
