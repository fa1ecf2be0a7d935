"""Steering hooks on a tiny MusicGen decoder: only the asked rows, blocks and generated positions change, the step
is the generated position (read from the KV cache, not a count of hook calls), and removal restores the output."""
import json

import numpy as np
import pytest
import torch

musicgen = pytest.importorskip("diffusion.musicgen", reason="the MusicGen backend is not in this checkout")

from tiny_musicgen import save_model  # noqa: E402

from data.directions import Direction  # noqa: E402
from diffusion.interventions.hooks import Hooks, hooks_applied  # noqa: E402
from diffusion.interventions.spec import load_spec  # noqa: E402
from diffusion.interventions.steering import steering_hooks  # noqa: E402
from diffusion.musicgen.hooks import ComponentMeans, GenerationPosition, every_site, interchange_hooks  # noqa: E402

PROMPT, SECONDS, START, BLOCK = "bright brass", 0.2, 4, 1


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    return musicgen.MusicgenGenerator(save_model(tmp_path_factory.mktemp("musicgen") / "tiny"), device="cpu")


@pytest.fixture(scope="module")
def runner(generator):
    return generator.runner


@pytest.fixture(scope="module")
def direction(runner, tmp_path_factory):
    dim = runner.decoder.layers[0].self_attn.out_proj.out_features
    blocks = list(range(runner.num_layers))
    vectors = np.random.default_rng(0).standard_normal((len(blocks), dim))
    return Direction(vectors, blocks, "is_brass", "probe").save(tmp_path_factory.mktemp("dirs") / "is_brass")


def steering_for(tmp_path, direction, **entry):
    payload = {"format": 2, "interventions": [{"concept": "is_brass", "direction": str(direction), "where": [BLOCK],
                                                "strength": 3.0, "from_step": START, **entry}]}
    (tmp_path / "spec.json").write_text(json.dumps(payload))
    return load_spec(tmp_path / "spec.json").interventions[0]


def generate(generator, steering, samples=2):
    """Codes, and the input of every decoder block per generated position (= the previous block's output after
    any steering), keyed by (block, position)."""
    runner = generator.runner
    seen, position = {}, GenerationPosition()
    handles = [runner.decoder.register_forward_pre_hook(position.before_decoder, with_kwargs=True)]
    for block, layer in enumerate(runner.decoder.layers):
        def before(module, args, kwargs, block=block):
            hidden = args[0] if args else kwargs["hidden_states"]
            for generated, column in position.ticks(hidden.shape[1]):
                seen[(block, generated)] = hidden[:, column].clone()
        handles.append(layer.register_forward_pre_hook(before, with_kwargs=True))
    try:
        with hooks_applied(generator.hook_points(), steering_hooks(generator, steering, samples)):
            codes = runner.generate(PROMPT, 5, samples, SECONDS, runner.sampling({})).codes
    finally:
        for handle in handles:
            handle.remove()
    return codes, seen


def test_steering_changes_only_the_conditional_rows_of_the_asked_block_from_the_asked_position(generator,
                                                                                                direction, tmp_path):
    runner = generator.runner
    reference_codes, reference = generate(generator, None)
    codes, steered = generate(generator, steering_for(tmp_path, direction))
    vector = torch.as_tensor(np.load(direction)[BLOCK], dtype=torch.float32)
    # Block BLOCK's output is block BLOCK + 1's input. Before START nothing moves; at START the blocks up to the
    # steered one do not either (later positions follow from changed tokens).
    after = BLOCK + 1
    for (block, position), hidden in reference.items():
        if position < START or (position == START and block <= BLOCK):
            assert torch.equal(steered[(block, position)], hidden), (block, position)
    conditional, unconditional = slice(0, 2), slice(2, 4)   # MusicGen's CFG batch: [cond x B, uncond x B]
    at = steered[(after, START)]
    assert torch.equal(at[unconditional], reference[(after, START)][unconditional])
    torch.testing.assert_close(at[conditional] - reference[(after, START)][conditional],
                               (3.0 * vector).expand(2, -1), rtol=0, atol=1e-5)
    assert not torch.equal(codes, reference_codes)
    # generate() prefills twice; the step is the position, so steering starts at START and not one call early.
    assert torch.equal(steered[(after, START - 1)], reference[(after, START - 1)])
    again_codes, _ = generate(generator, None)
    assert torch.equal(again_codes, reference_codes)
    assert not runner.decoder._forward_pre_hooks and not runner.decoder.layers[BLOCK]._forward_hooks


def test_zero_strength_and_unconditional_rows(generator, direction, tmp_path):
    after = BLOCK + 1
    reference_codes, reference = generate(generator, None)
    zero_codes, _ = generate(generator, steering_for(tmp_path, direction, strength=0.0))
    assert torch.equal(zero_codes, reference_codes)
    _, steered = generate(generator, steering_for(tmp_path, direction, rows="unconditional"))
    assert torch.equal(steered[(after, START)][0:2], reference[(after, START)][0:2])
    assert not torch.equal(steered[(after, START)][2:4], reference[(after, START)][2:4])


def output_recorder(position, store):
    """A forward hook keeping a module's output per generated position: (position) -> [rows, dim]."""
    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        for generated, column in position.ticks(hidden.shape[1]):
            store[generated] = hidden[:, column].detach().clone()
    return hook


def test_periodic_steering_moves_every_nth_position_by_the_direction_and_no_other(generator, direction, tmp_path):
    """Within one run, block BLOCK's output before the steering hook and after it: they differ by strength x v on
    the conditional rows at START, START + 3, ... and nowhere else (an independent recording around the hook)."""
    runner, every = generator.runner, 3
    steering = steering_for(tmp_path, direction, every=every)
    vector = torch.as_tensor(np.load(direction)[BLOCK], dtype=torch.float32)
    position, before, after = GenerationPosition(), {}, {}
    layer = runner.decoder.layers[BLOCK]
    handles = [runner.decoder.register_forward_pre_hook(position.before_decoder, with_kwargs=True),
               layer.register_forward_hook(output_recorder(position, before))]   # runs before the steering hook
    try:
        with hooks_applied(generator.hook_points(), steering_hooks(generator, steering, 2)):
            handles.append(layer.register_forward_hook(output_recorder(position, after)))   # and this one after it
            runner.generate(PROMPT, 5, 2, SECONDS, runner.sampling({}))
    finally:
        for handle in handles:
            handle.remove()
    steered = [p for p in sorted(before) if p >= START and (p - START) % every == 0]
    assert len(steered) >= 3 and steered[:2] == [START, START + every]
    for p in sorted(before):
        delta = after[p] - before[p]
        if p in steered:
            torch.testing.assert_close(delta[:2], (3.0 * vector).expand(2, -1), rtol=0, atol=1e-5)
            assert torch.equal(delta[2:], torch.zeros_like(delta[2:]))   # the unconditional rows
        else:
            assert torch.equal(delta, torch.zeros_like(delta)), p


# -- interchange interventions --------------------------------------------------------------------------------------

def record_means(runner, prompt, seed, samples):
    recorder = ComponentMeans(runner.num_layers, samples)
    with hooks_applied(runner.hook_points, recorder.hooks):
        runner.generate(prompt, seed, samples, SECONDS, runner.sampling({}))
    return recorder.means()


def interchange(runner, prompt, seed, assignments, means_a, means_b, op):
    with hooks_applied(runner.hook_points, interchange_hooks(runner.num_layers, means_a, means_b, assignments, op)):
        return runner.generate(prompt, seed, len(assignments), SECONDS, runner.sampling({})).codes


def test_interchange_with_a_equal_to_b_changes_nothing(runner):
    means = record_means(runner, PROMPT, 5, 1)
    assert means.shape[:2] == (3, runner.num_layers) and means.shape[3] == 2
    sites = every_site(runner.num_layers)                 # 3 x L rows: one batched generation
    reference = runner.generate(PROMPT, 5, len(sites), SECONDS, runner.sampling({})).codes
    assert torch.equal(interchange(runner, PROMPT, 5, sites, means, means, "adjust"), reference)
    # Replacing a row's component by the mean of a run that is that very row (same prompt, seed, one sample).
    assert torch.equal(interchange(runner, PROMPT, 5, [("mlp", 1)], means, means, "replace"), reference[:1])


def test_interchange_swaps_the_conditional_row_with_the_conditional_mean_unless_asked_for_both(runner):
    """The published code swaps the conditional row only, with the conditional mean; rows="both" also swaps the
    unconditional row with the unconditional mean. Checked on the component's output as a second hook sees it."""
    means_a = record_means(runner, PROMPT, 5, 1)
    # Far from the rows' own activations (the tiny random model's tokens move only for a large change).
    means_b = means_a + 10 * np.random.default_rng(0).standard_normal(means_a.shape).astype(np.float32)
    mlp, block = 2, 1                  # ComponentMeans' component order: self_attn, cross_attn, mlp
    outputs, codes = {}, {}
    for rows in (None, "conditional", "both"):
        position, store = GenerationPosition(), {}
        swap = Hooks() if rows is None else interchange_hooks(runner.num_layers, means_a, means_b, [("mlp", block)],
                                                              "replace", rows)
        watch = position.hooks + Hooks([(f"blocks.{block}.mlp.hook_out", output_recorder(position, store))])
        with hooks_applied(runner.hook_points, swap + watch):
            codes[rows] = runner.generate(PROMPT, 5, 1, SECONDS, runner.sampling({})).codes
        outputs[rows] = store
    positions = range(means_b.shape[2])
    for p in positions:
        expected_cond = torch.as_tensor(means_b[mlp, block, p, 0])
        torch.testing.assert_close(outputs["conditional"][p][0], expected_cond, rtol=0, atol=1e-6)
        torch.testing.assert_close(outputs["both"][p][0], expected_cond, rtol=0, atol=1e-6)
        torch.testing.assert_close(outputs["both"][p][1], torch.as_tensor(means_b[mlp, block, p, 1]), rtol=0,
                                   atol=1e-6)
    # At the first position nothing upstream has changed: the unconditional row is the unintervened one.
    assert torch.equal(outputs["conditional"][0][1], outputs[None][0][1])
    assert not torch.equal(codes["conditional"], codes["both"])


def test_interchange_touches_only_its_rows_and_comes_off(runner):
    means_a, means_b = record_means(runner, PROMPT, 5, 2), record_means(runner, "dark strings", 9, 2)
    reference = runner.generate(PROMPT, 5, 3, SECONDS, runner.sampling({})).codes
    changed = interchange(runner, PROMPT, 5, [("self_attn", 0), None, None], means_a, means_b, "replace")
    assert not torch.equal(changed[0], reference[0])
    assert torch.equal(changed[1:], reference[1:])
    assert torch.equal(runner.generate(PROMPT, 5, 3, SECONDS, runner.sampling({})).codes, reference)
    assert not any(layer.fc2._forward_hooks or layer.self_attn.out_proj._forward_hooks
                   for layer in runner.decoder.layers)


def test_the_clock_ticks_are_the_generated_positions_and_later_steps_are_refused(generator, direction, tmp_path):
    from data.stage import InputError
    from diffusion.interventions.hooks import Hooks
    from diffusion.interventions.spec import check_spec

    runner, position, seen = generator.runner, GenerationPosition(), set()
    watch = position.hooks + Hooks([("blocks.0.hook_resid_post",
                                     lambda module, args, output: seen.update(t for t, _ in position.ticks(
                                         output.shape[1])))])
    with hooks_applied(generator.hook_points(), watch):
        runner.generate(PROMPT, 5, 1, SECONDS, runner.sampling({}))
    assert seen == set(range(generator.clock_ticks(SECONDS)))
    last = generator.clock_ticks(SECONDS) - 1
    steering_for(tmp_path, direction, from_step=last)
    check_spec(load_spec(tmp_path / "spec.json"), generator, SECONDS, 2, ["p1"])
    steering_for(tmp_path, direction, from_step=last + 1)
    with pytest.raises(InputError, match=f"from_step {last + 1} is past the last generated position {last} of a "
                                         f"{SECONDS:g} s clip"):
        check_spec(load_spec(tmp_path / "spec.json"), generator, SECONDS, 2, ["p1"])
