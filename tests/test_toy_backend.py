"""A new backend with interventions is one new file (tests/toy_backend.py) plus one registry line: the toy backend
is recorded for a difference-of-means direction (interp/directions.py) and steered through stage 2 --intervene end
to end, with known answers: the steered block moves by exactly s v from the start step on, the blocks before it do
not move, nothing moves before the start step, and every hook comes off afterwards."""
import importlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
from stage_runs import assert_outside_the_clock_is_refused, write_annotated

from data.directions import Direction
from data.interventions import INTERVENTIONS_DIR
from data.stage import InputError, run_stage
from diffusion import GENERATORS
from diffusion import stage2_generate as stage2
from diffusion.base import Conditioning
from diffusion.interventions.hooks import Hooks, hooks_applied, resid_post
from diffusion.interventions.spec import load_spec
from interp import directions

toy = importlib.import_module("tests.toy_backend")
PROMPTS = [("p_brass1", "bright brass fanfare", "brass;bright"), ("p_brass2", "slow brass melody", "brass"),
           ("p_keys1", "soft acoustic piano", "keyboard;acoustic"), ("p_keys2", "fast piano solo", "keyboard")]
STEPS, BLOCK, START, STRENGTH = 8, 1, 4, 2.0


@pytest.fixture
def registered(monkeypatch):
    """The one registry line, and every toy generator stage 2 builds, so its hooks can be checked afterwards."""
    monkeypatch.setitem(GENERATORS, "toy", "tests.toy_backend:ToyGenerator")
    built = []
    original = toy.ToyGenerator.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(toy.ToyGenerator, "__init__", init)
    return built


def write_spec(folder, direction):
    spec = folder / "spec.json"
    spec.write_text(json.dumps({"format": 2, "samples": 1, "capture_steps": [START - 1, STEPS - 1], "interventions": [
        {"concept": "is_brass", "direction": [str(direction), "random:0"], "where": [BLOCK], "strength": STRENGTH,
         "from_step": START}]}))
    return spec


def block_inputs(generator, steering):
    """Every block's input per step of one sampler call (= the previous block's output after any steering), and
    the final latents. Pre-hooks on the blocks' points see their inputs."""
    seen = {}

    def keep(block):
        def hook(module, args, kwargs):
            seen[(block, generator.scheduler.step_index)] = args[0].clone()
        return hook

    recording = Hooks(pre=[(resid_post(block), keep(block)) for block in range(toy.BLOCKS)])
    with hooks_applied(generator.hook_points(), recording):
        final = generator.sample(Conditioning("soft acoustic piano", steering=steering), 11, 2, toy.SECONDS, None)
    return seen, final


def test_a_toy_backend_is_recorded_and_steered_through_stage_2(registered, tmp_path):
    data = tmp_path / "data"
    write_annotated(data, PROMPTS)
    direction_path = tmp_path / "directions" / "is_brass.npy"
    assert run_stage(directions.main, directions.build_parser(),
                     ["--data", str(data), "--generator", "toy", "--concept", "is_brass", "--out",
                      str(direction_path), "--steps", str(STEPS), "--prompts", "2"]) == 0
    direction = Direction.load(direction_path)
    assert direction.blocks == tuple(range(toy.BLOCKS)) and direction.steps == tuple(range(STEPS))
    assert direction.method == "mean_difference" and direction.vectors.shape == (STEPS, toy.BLOCKS, toy.DIM)

    spec = write_spec(tmp_path, direction_path)
    argv = ["--data", str(data), "--generator", "toy", "--steps", str(STEPS), "--samples", "2", "--capture-steps",
            f"{START - 1},{STEPS - 1}", "--intervene", str(spec), "--no-progress"]
    assert run_stage(stage2.main, stage2.build_parser(), argv) == 0
    generated = data / "generated"
    runs = sorted(path.name for path in (generated / INTERVENTIONS_DIR).iterdir())
    assert runs == ["is_brass_is_brass_B1_s2_k4", "is_brass_random0_B1_s2_k4"]
    for run in runs:
        for prompt_id, _, _ in PROMPTS:
            index = pd.read_csv(generated / INTERVENTIONS_DIR / run / "index" / f"{prompt_id}.csv")
            clips = {row.step: (generated / INTERVENTIONS_DIR / run / row.path).read_bytes()
                     for row in index.itertuples()}
            reference = {step: (generated / f"audio/{prompt_id}/s0-x0-{step:03d}.wav").read_bytes()
                         for step in (START - 1, STEPS - 1)}
            assert clips[START - 1] == reference[START - 1]      # before the start step nothing moved
            assert clips[STEPS - 1] != reference[STEPS - 1]      # from it on, the clip did
    # Every generator stage 2 built has no hook left on any module.
    assert registered and all(not module._forward_hooks and not module._forward_pre_hooks
                              for generator in registered for module in generator.model.modules())


def test_the_steered_block_moves_by_s_v_and_the_blocks_before_it_do_not(registered, tmp_path):
    generator = toy.ToyGenerator(steps=STEPS)
    vectors = np.random.default_rng(0).standard_normal((toy.BLOCKS, toy.DIM))
    direction_path = Direction(vectors, range(toy.BLOCKS), "is_brass", "probe").save(tmp_path / "is_brass")
    steering = load_spec(write_spec(tmp_path, direction_path)).interventions[0]
    reference, reference_final = block_inputs(generator, None)
    steered, steered_final = block_inputs(generator, steering)
    after = BLOCK + 1   # block BLOCK's output is block BLOCK + 1's input
    for (block, step), hidden in reference.items():
        if step < START or (step == START and block <= BLOCK):
            assert torch.equal(steered[(block, step)], hidden), (block, step)
    moved = steered[(after, START)] - reference[(after, START)]
    torch.testing.assert_close(moved, (STRENGTH * torch.as_tensor(vectors[BLOCK], dtype=torch.float32))
                               .expand_as(moved), rtol=0, atol=1e-4)
    assert not torch.equal(steered_final, reference_final)
    # The hooks came off: the same call without a steering is the reference again, bit for bit.
    assert torch.equal(block_inputs(generator, None)[1], reference_final)
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in generator.model.modules())


def test_hooks_come_off_when_the_run_fails(tmp_path):
    """A direction of another width fails inside the steered block's hook: one line, and no hook stays behind."""
    generator = toy.ToyGenerator(steps=STEPS)
    wrong = Direction(np.ones((toy.BLOCKS, toy.DIM + 1)), range(toy.BLOCKS), "is_brass", "probe").save(tmp_path / "w")
    steering = load_spec(write_spec(tmp_path, wrong)).interventions[0]
    with pytest.raises(InputError, match=f"direction dim {toy.DIM + 1} but block {BLOCK}'s width is {toy.DIM}"):
        generator.sample(Conditioning("soft acoustic piano", steering=steering), 11, 2, toy.SECONDS, None)
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in generator.model.modules())


def test_steps_captures_and_blocks_outside_the_toy_model_are_refused(tmp_path):
    generator = toy.ToyGenerator(steps=STEPS)
    direction = Direction(np.ones((toy.BLOCKS, toy.DIM)), range(toy.BLOCKS), "is_brass", "probe").save(tmp_path / "d")
    assert_outside_the_clock_is_refused(tmp_path, generator, toy.SECONDS, {
        "concept": "is_brass", "direction": str(direction), "where": [BLOCK], "strength": STRENGTH})


@pytest.mark.parametrize("damage, message", [
    ("wider", f"direction dim {toy.DIM + 1} but the toy generator's blocks are {toy.DIM} wide"),   # checked first
    ("wider, width unknown", f"direction dim {toy.DIM + 1} but block {BLOCK}'s width is {toy.DIM}"),  # in the hook
    ("empty", "empty file (0 bytes)"),
])
def test_a_refused_intervened_run_changes_nothing(registered, tmp_path, capsys, monkeypatch, damage, message):
    """A refusal before generation (one line), or inside the first steered sampler call (its last line), leaves
    --data as it was: no intervention.json, no empty run folder."""
    data = tmp_path / "data"
    write_annotated(data, PROMPTS)
    argv = ["--data", str(data), "--generator", "toy", "--steps", str(STEPS), "--samples", "1", "--no-progress"]
    assert run_stage(stage2.main, stage2.build_parser(), argv) == 0
    dim = toy.DIM + damage.startswith("wider")
    direction = Direction(np.ones((toy.BLOCKS, dim)), range(toy.BLOCKS), "is_brass", "probe").save(tmp_path / "d")
    if damage == "empty":
        direction.write_bytes(b"")
    if damage == "wider, width unknown":
        monkeypatch.setattr(toy.ToyGenerator, "block_width", lambda self: None)
    before = {path: path.read_bytes() for path in sorted(data.rglob("*")) if path.is_file()}
    capsys.readouterr()
    spec = write_spec(tmp_path, direction)
    assert run_stage(stage2.main, stage2.build_parser(), [*argv, "--intervene", str(spec)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert message in error[-1] and error[-1].startswith("error: ") and (len(error) == 1) == (damage != "wider, "
                                                                                              "width unknown"), error
    assert {path: path.read_bytes() for path in sorted(data.rglob("*")) if path.is_file()} == before
    assert not (data / "generated" / INTERVENTIONS_DIR).exists()
