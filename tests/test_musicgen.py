"""MusicGen's layer trajectory and residual capture on a tiny random MusicGen saved in the real hub layout.

Faithfulness, each a known answer: capture changes nothing; regenerating with every layer is normal generation; the
logit lens at the last layer is the model's own logits; captured residuals are the hidden states of a no-cache
forward over the same tokens; a melody changes the codes. Codes are compared, not waveforms (a random EnCodec
decodes to near-constant audio).
"""
import numpy as np
import pytest
import torch
from tiny_musicgen import save_model

from data.stage import InputError
from diffusion.base import Conditioning, TrajectoryObserver
from diffusion.interventions.hooks import hooks_applied
from diffusion.musicgen import MusicgenGenerator, MusicgenRunner
from diffusion.musicgen.generator import residual_summaries
from diffusion.musicgen.hooks import ResidualRecorder
from diffusion.musicgen.options import parse_options

SECONDS = 0.2   # 10 frames at 50 Hz: 13 positions with the 4-codebook delay pattern
PROMPT = "a bright piano melody"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("musicgen") / "tiny-musicgen")


@pytest.fixture(scope="module")
def runner(tiny_dir):
    return MusicgenRunner(tiny_dir, device="cpu")


@pytest.fixture(scope="module")
def sampling(runner):
    return runner.sampling({})


@pytest.fixture(scope="module")
def recorded(runner, sampling):
    return runner.generate(PROMPT, 11, 2, SECONDS, sampling, record_residuals=True)


def test_loads_the_hub_layout_and_reads_sampling_from_the_generation_config(runner, sampling):
    assert runner.num_layers == 4 and runner.num_codebooks == 4 and runner.frame_rate == 50
    assert (sampling.do_sample, sampling.top_k, sampling.guidance_scale, sampling.temperature) == (True, 250, 3.0, 1.0)
    overridden = runner.sampling(parse_options({"top_k": "5", "guidance_scale": "1.5", "do_sample": "false"}))
    assert (overridden.top_k, overridden.guidance_scale, overridden.do_sample) == (5, 1.5, False)


def test_capture_changes_nothing_and_rows_do_not_depend_on_their_batch(runner, sampling, recorded):
    plain = runner.generate(PROMPT, 11, 2, SECONDS, sampling)
    assert recorded.codes.shape == (2, 4, 10)
    assert torch.equal(plain.codes, recorded.codes)
    alone = runner.generate(PROMPT, 12, 1, SECONDS, sampling)       # row 1 of the pair has seed 11 + 1
    assert torch.equal(alone.codes[0], recorded.codes[1])
    other_seed = runner.generate(PROMPT, 13, 1, SECONDS, sampling)
    assert not torch.equal(other_seed.codes[0], recorded.codes[1])
    # Hooks are removed: nothing stays attached to the decoder.
    assert not runner.decoder._forward_pre_hooks
    assert not any(layer._forward_hooks for layer in runner.decoder.layers)


def test_pure_decode_reproduces_generates_own_audio(runner, recorded):
    audio = runner.decode(recorded.codes, SECONDS)
    assert audio.shape == (2, 1, int(SECONDS * 32000))
    np.testing.assert_array_equal(audio, recorded.audio.numpy()[..., :audio.shape[-1]])


def test_regenerate_with_every_layer_is_normal_generation(runner, sampling, recorded):
    full = runner.generate(PROMPT, 11, 2, SECONDS, sampling, layers=runner.num_layers)
    assert torch.equal(full.codes, recorded.codes)
    shallow = runner.generate(PROMPT, 11, 2, SECONDS, sampling, layers=1)
    assert not torch.equal(shallow.codes, recorded.codes)
    assert len(runner.decoder.layers) == runner.num_layers   # the truncation was undone


def test_logit_lens_at_the_last_layer_is_the_models_own_logits(runner, sampling):
    raw_scores = []
    handle = runner.model.decoder.register_forward_hook(
        lambda module, args, output: raw_scores.append(output.logits[:, -1].float().clone()))
    try:
        generation = runner.generate(PROMPT, 5, 2, SECONDS, sampling, record_residuals=True)
    finally:
        handle.remove()
    # generate() prefills twice; the second prefill's logits are the ones it samples from.
    model_logits = torch.stack(raw_scores[1:])                                   # [positions, 2B*K, V]
    last = generation.residuals.stacked(runner.num_layers - 1)                   # [positions, 2B, D]
    lens_logits = runner.layer_logits(last).float().reshape(model_logits.shape)
    torch.testing.assert_close(lens_logits, model_logits, rtol=0, atol=1e-5)
    # Recomputing the last layer through the lens picks exactly the model's tokens (same draws).
    runner.num_layers, layers = runner.num_layers + 1, runner.num_layers
    try:
        recomputed = runner.logit_lens(generation, sampling, [layers]).codes[layers]
    finally:
        runner.num_layers = layers
    assert torch.equal(recomputed, generation.codes)
    lens = runner.logit_lens(generation, sampling, [1, 2, 3, 4]).codes
    assert all(codes.shape == generation.codes.shape for codes in lens.values())
    assert not torch.equal(lens[1], generation.codes)


def test_captured_residuals_are_the_hidden_states_of_a_no_cache_forward(runner, sampling, recorded):
    model, batch, codebooks = runner.model, 2, runner.num_codebooks
    positions = recorded.tokens.shape[0]
    # The decoder's inputs: start token, then every sampled token but the last, with the delay pattern applied.
    start = model.generation_config.decoder_start_token_id
    sequence = torch.cat([torch.full((batch * codebooks, 1), start), recorded.tokens.T[:, :-1]], dim=1)
    # generate() builds the pattern for its max_length = 1 + new tokens = positions + 1.
    _, pattern = model.decoder.build_delay_pattern_mask(sequence[:, :1], pad_token_id=start,
                                                        max_length=positions + 1)
    decoder_ids = model.decoder.apply_delay_pattern_mask(sequence, pattern[:, :positions]).repeat(2, 1)  # CFG
    inputs = runner.inputs(PROMPT, batch)
    with torch.inference_mode():
        text = model.text_encoder(**inputs).last_hidden_state
        mask = torch.cat([inputs["attention_mask"], torch.zeros_like(inputs["attention_mask"])])
        encoder = model.enc_to_dec_proj(torch.cat([text, torch.zeros_like(text)])) * mask[..., None]
        hidden = model.decoder(input_ids=decoder_ids, encoder_hidden_states=encoder, encoder_attention_mask=mask,
                               use_cache=False, output_hidden_states=True).hidden_states
    for index in range(runner.num_layers):
        captured = recorded.residuals.stacked(index)                   # [positions, 2B, D]
        expected = hidden[index + 1].transpose(0, 1)                   # hidden_states[i + 1] = block i's output ...
        if index == runner.num_layers - 1:                             # ... but the last one is after the final norm
            with torch.inference_mode():
                captured = runner.decoder.layer_norm(captured)
        torch.testing.assert_close(captured, expected, rtol=1e-4, atol=1e-4)
    rows, vectors = residual_summaries(recorded.residuals, batch, unconditional=True)
    lookup = {(r["sample"], r["branch"], r["layer"], r["pool"]): v for r, v in zip(rows, vectors)}
    assert len(rows) == batch * 2 * runner.num_layers * 2
    np.testing.assert_allclose(lookup[(1, "cond", 2, "mean")], hidden[2][1].mean(0).numpy(), atol=1e-4)
    np.testing.assert_allclose(lookup[(0, "uncond", 3, "last")], hidden[3][batch + 0][-1].numpy(), atol=1e-4)


def test_generator_observer_sees_every_layer_and_reports_activations(tiny_dir):
    generator = MusicgenGenerator(model=tiny_dir, device="cpu", options={"residuals": "cond"})
    observer = TrajectoryObserver([1, 3, 4])
    final = generator.sample(Conditioning(PROMPT), 3, 2, SECONDS, observer)
    assert [c.position for c in observer.captured] == [1, 3, 4] and observer.captured[-1].sigma is None
    assert torch.equal(observer.captured[-1].latent, final)
    (rows, vectors), = observer.activations
    assert vectors.shape == (2 * 4 * 2, 64) and {r["branch"] for r in rows} == {"cond"}
    regenerate = MusicgenGenerator(model=tiny_dir, device="cpu", options={"lens": "regenerate"})
    observer_regen = TrajectoryObserver([4])
    assert torch.equal(regenerate.sample(Conditioning(PROMPT), 3, 2, SECONDS, observer_regen), final)
    assert generator.axis.record() == {"name": "layer", "unit": "layer", "positions": [1, 2, 3, 4]}
    with pytest.raises(InputError, match="no noisy latent"):
        generator.sample(Conditioning(PROMPT), 3, 1, SECONDS, TrajectoryObserver([4], kinds=("x0", "xt")))


def test_melody_conditioning_changes_the_codes(tmp_path):
    melody_dir = save_model(tmp_path / "tiny-melody", melody=True)
    runner = MusicgenRunner(melody_dir, device="cpu")
    assert runner.melody_model
    sampling = runner.sampling({})
    plain = runner.generate(PROMPT, 2, 1, SECONDS, sampling, record_residuals=True).codes
    rising = np.eye(12, dtype=np.float32)[np.arange(40) % 12]        # a chroma [frames, 12]: C, C#, D, ...
    melodic = runner.generate(PROMPT, 2, 1, SECONDS, sampling, record_residuals=True, melody=rising).codes
    assert plain.shape == melodic.shape and not torch.equal(plain, melodic)
    np.save(tmp_path / "chroma.npy", rising)
    generator = MusicgenGenerator(model=melody_dir, device="cpu", options={"melody": str(tmp_path / "chroma.npy")})
    assert torch.equal(generator.sample(Conditioning(PROMPT), 2, 1, SECONDS, None), melodic)
    assert generator.provenance()["melody_sha256"]


@pytest.mark.parametrize("options, message", [
    ({"lens": "tuned"}, "choose logit or regenerate"),
    ({"top_k": "many"}, "not a valid value"),
    ({"temperature": "0"}, "must be >"),
    ({"beam": "4"}, "unknown for musicgen"),
])
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(InputError, match=message):
        parse_options(options)


def test_recorder_keys_positions_not_calls(runner):
    """The duplicated prefill lands on position 0 again instead of shifting every later position by one."""
    recorder = ResidualRecorder(blocks=[0])
    inputs = runner.inputs(PROMPT, 1)
    with torch.inference_mode(), hooks_applied(runner.hook_points, recorder.hooks):
        runner.model.generate(**inputs, max_new_tokens=6, do_sample=False, guidance_scale=1.0)
    assert sorted(recorder.residuals[0]) == list(range(6))


def test_a_hub_id_loads_offline_from_the_cache_and_an_uncached_one_is_one_line(tiny_dir, tmp_path, monkeypatch):
    from hf_cache import put_in_hub_cache

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    put_in_hub_cache(tiny_dir, tmp_path / "hub", "facebook/musicgen-small")
    runner = MusicgenRunner("facebook/musicgen-small", device="cpu")
    assert runner.num_layers == 4 and runner.provenance()["model"] == "facebook/musicgen-small"
    with pytest.raises(InputError, match="facebook/musicgen-medium: not in the Hugging Face cache"):
        MusicgenRunner("facebook/musicgen-medium", device="cpu")


def test_a_directory_that_is_not_musicgen_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "clap"}')
    with pytest.raises(InputError, match="not musicgen or musicgen_melody"):
        MusicgenRunner(tmp_path, device="cpu")
    with pytest.raises(InputError, match="no such directory"):
        MusicgenRunner(tmp_path / "nowhere", device="cpu")


def test_half_precision_runs_and_its_lens_ends_at_the_models_codes(tiny_dir):
    runner = MusicgenRunner(tiny_dir, device="cpu", dtype="bf16")
    assert runner.model.dtype == torch.bfloat16
    sampling = runner.sampling({})
    generation = runner.generate(PROMPT, 1, 1, SECONDS, sampling, record_residuals=True)
    lens = runner.logit_lens(generation, sampling, [1, 4]).codes
    assert lens[1].shape == generation.codes.shape and torch.equal(lens[4], generation.codes)
    assert runner.decode(generation.codes, SECONDS).dtype == np.float32
    with pytest.raises(InputError, match="choose one of fp32, fp16, bf16"):
        MusicgenRunner(tiny_dir, device="cpu", dtype="fp8")
