"""The Stable Audio Open backend on a tiny random model saved in the real diffusers layout and loaded by path.

Faithfulness: the observed sampler is diffusers' own StableAudioPipeline, so its final audio must equal the
pipeline's for the same seed and settings, and capturing must change nothing.
"""
import json
import shutil

import numpy as np
import pytest
import torch
from hf_cache import put_in_hub_cache
from tiny_stable_audio import save_model

from data.stage import InputError
from diffusion import load_generator
from diffusion.base import Conditioning, TrajectoryObserver

STEPS = 5
SECONDS = 1.0
PROMPT = "a warm piano melody with soft strings"
SEED = 11


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("sao") / "tiny-stable-audio")


@pytest.fixture(scope="module")
def generator(tiny_dir):
    return load_generator("stable-audio-open", model=str(tiny_dir), preset="reference", steps=STEPS, device="cpu",
                          dtype="fp32")


def _observe(generator, seed, num_samples=2, kinds=("x0", "xt")):
    observer = TrajectoryObserver(generator.axis.positions, kinds)
    latents = generator.sample(Conditioning(PROMPT, ("piano",)), seed, num_samples, SECONDS, observer)
    return latents, observer


@pytest.fixture(scope="module")
def observed(generator):
    """One observed run (both kinds at every step) that several tests read."""
    return _observe(generator, SEED)


def test_final_audio_with_capture_equals_the_library_pipeline(tiny_dir, generator, observed):
    from diffusers import CosineDPMSolverMultistepScheduler, StableAudioPipeline

    latents, observer = observed
    ours = generator.decode(latents, SECONDS)

    # The library, untouched: the same directory, the reference preset written out by hand, no callback.
    pipe = StableAudioPipeline.from_pretrained(tiny_dir)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = CosineDPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, sigma_min=0.01, sigma_max=100.0, solver_order=2, sigma_schedule="exponential")
    theirs = pipe(PROMPT, audio_end_in_s=SECONDS, num_inference_steps=STEPS, guidance_scale=6.0,
                  num_waveforms_per_prompt=2,
                  generator=[torch.Generator().manual_seed(SEED + row) for row in range(2)]).audios.numpy()

    assert ours.shape == theirs.shape == (2, 2, int(SECONDS * generator.sample_rate))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert len(observer.captured) == 2 * STEPS


def test_capture_on_equals_capture_off_and_seed_determines_the_run(generator, observed):
    latents, observer = observed
    without = generator.sample(Conditioning(PROMPT, ()), SEED, 2, SECONDS, observer=None)
    assert torch.equal(latents, without)
    again, again_observer = _observe(generator, SEED)
    assert torch.equal(latents, again)
    for a, b in zip(observer.captured, again_observer.captured):
        assert (a.position, a.kind, a.sigma) == (b.position, b.kind, b.sigma) and torch.equal(a.latent, b.latent)
    # A batch holds different samples of one prompt, not copies.
    assert latents.shape[0] == 2 and not torch.allclose(latents[0], latents[1])


def test_row_r_of_a_batch_is_the_sample_seeded_seed_plus_r(generator, observed):
    """--batch-size changes how samples are grouped, never what they are (diffusion/base.py)."""
    latents = observed[0]
    alone = [generator.sample(Conditioning(PROMPT, ()), SEED + row, 1, SECONDS, observer=None)
             for row in range(2)]
    torch.testing.assert_close(torch.cat(alone), latents, rtol=1e-4, atol=1e-5)


def test_captured_x0_is_the_clean_estimate_and_sigmas_follow_the_preset(observed):
    latents, observer = observed
    x0 = {c.position: c for c in observer.captured if c.kind == "x0"}
    xt = {c.position: c for c in observer.captured if c.kind == "xt"}
    assert sorted(x0) == sorted(xt) == list(range(STEPS))
    # With a final sigma of 0 the last update returns the clean estimate itself.
    assert torch.equal(x0[STEPS - 1].latent, latents) and torch.equal(xt[STEPS - 1].latent, latents)
    # Earlier, the noisy latent is not the estimate.
    assert not torch.allclose(x0[1].latent, xt[1].latent)
    sigmas = [x0[step].sigma for step in range(STEPS)]
    assert sigmas[0] == pytest.approx(100.0) and sigmas[-1] == pytest.approx(0.01)
    assert all(a > b for a, b in zip(sigmas, sigmas[1:]))
    assert x0[2].latent.shape == latents.shape and x0[2].latent.device.type == "cpu"


def test_batched_decode_equals_one_by_one(generator, observed):
    captured = [c for c in observed[1].captured if c.position in (1, 3)]
    stacked = torch.cat([c.latent for c in captured])
    batched = generator.decode(stacked, SECONDS)
    single = np.concatenate([generator.decode(c.latent[i:i + 1], SECONDS) for c in captured for i in range(2)])
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)
    assert batched.shape == (8, 2, 8000) and batched.dtype == np.float32 and np.isfinite(batched).all()


def test_decoding_only_the_kept_window_equals_decoding_all_of_it(generator, observed):
    latents = observed[0]
    vae = generator.pipeline.vae
    samples = int(SECONDS * generator.sample_rate)
    with torch.no_grad():
        whole = vae.decode(latents).sample[:, :, :samples].numpy()
    needed = -(-samples // vae.hop_length)
    assert needed + generator.decode_context_frames < latents.shape[-1]  # the shortcut is really taken here
    np.testing.assert_allclose(generator.decode(latents, SECONDS), whole, rtol=1e-5, atol=1e-6)
    # Without the receptive radius the end of the clip would change: the margin is needed, not decoration.
    with torch.no_grad():
        clipped = vae.decode(latents[..., :needed]).sample[:, :, :samples].numpy()
    assert not np.allclose(clipped[..., -vae.hop_length:], whole[..., -vae.hop_length:], atol=1e-4)


def test_generator_reports_the_model_and_preset(generator, tiny_dir):
    assert (generator.sample_rate, generator.channels) == (8000, 2)
    assert generator.max_seconds == pytest.approx(2.048)
    assert generator.default_seconds == pytest.approx(2.048)  # the preset's 10 s, capped by this model's window
    assert generator.default_capture == [1, 2, 3, 4]
    provenance = generator.provenance()
    assert provenance["model"] == str(tiny_dir) and len(provenance["checkpoint_sha256"]) == 64
    assert provenance["settings"]["scheduler"] == "CosineDPMSolverMultistepScheduler"
    assert provenance["settings"]["scheduler_config"]["sigma_max"] == 100.0
    assert json.loads(json.dumps(provenance)) == provenance


def test_model_card_preset_configures_its_schedule(tiny_dir):
    card = load_generator("stable-audio-open", model=str(tiny_dir), preset="model-card", device="cpu")
    config = card.pipeline.scheduler.config
    assert card.steps == 100 and card.preset.guidance_scale == 7.0
    assert card.default_capture == [10, 20, 30, 40, 50, 60, 70, 80, 90, 99]
    reference = load_generator("stable-audio-open", model=str(tiny_dir), device="cpu")
    assert reference.steps == 50 and reference.default_capture == [5, 10, 15, 20, 25, 30, 35, 40, 45, 49]
    assert (config.sigma_min, config.sigma_max, config.solver_order) == (0.3, 500.0, 2)
    card.pipeline.scheduler.set_timesteps(card.steps)
    assert float(card.pipeline.scheduler.sigmas[0]) == pytest.approx(500.0)


@pytest.fixture(scope="module")
def fp32_decoder(tiny_dir):
    return load_generator("stable-audio-open", model=str(tiny_dir), steps=3, device="cpu", dtype="fp32")


@pytest.mark.parametrize("dtype,torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precision_sampling_decodes_in_fp32(tiny_dir, fp32_decoder, dtype, torch_dtype):
    """The DiT and text encoder run in half precision, the Oobleck decoder in fp32 unless asked otherwise."""
    half = load_generator("stable-audio-open", model=str(tiny_dir), steps=3, device="cpu", dtype=dtype)
    pipe = half.pipeline
    assert pipe.transformer.dtype == pipe.text_encoder.dtype == torch_dtype and pipe.vae.dtype == torch.float32
    assert (half.provenance()["dtype"], half.provenance()["decode_dtype"]) == (dtype, "fp32")
    observer = TrajectoryObserver([1], ("x0",))
    latents = half.sample(Conditioning(PROMPT, ()), 1, 1, 0.5, observer)
    assert latents.dtype == torch_dtype and observer.captured[0].latent.dtype == torch_dtype
    assert torch.isfinite(latents).all()
    audio = half.decode(latents, 0.5)
    assert audio.shape == (1, 2, 4000) and audio.dtype == np.float32 and np.isfinite(audio).all()
    # Decoding is the fp32 model's own decoding of those latents, bit for bit.
    np.testing.assert_array_equal(audio, fp32_decoder.decode(latents.float(), 0.5))
    # Decoding in the sampler's dtype is offered too; it stays close on this harmless tiny model.
    same = load_generator("stable-audio-open", model=str(tiny_dir), steps=3, device="cpu", dtype=dtype,
                          decode_dtype=dtype)
    assert same.pipeline.vae.dtype == torch_dtype and same.provenance()["decode_dtype"] == dtype
    np.testing.assert_allclose(same.decode(latents, 0.5), audio, atol=0.05 * float(np.abs(audio).max()))


def test_fp16_decoding_breaks_where_snake_needs_its_epsilon_and_fp32_decoding_does_not(tiny_dir, tmp_path):
    """Snake: x + sin²(αx) / (β + 1e-9). A small β (here e^-12 on one channel) makes 1/(β + 1e-9) exceed fp16's
    range (65504): the decoded audio becomes inf/NaN in fp16 while fp32 decodes the same latents finely."""
    from diffusers import AutoencoderOobleck
    from diffusers.models.autoencoders.autoencoder_oobleck import Snake1d

    model = tmp_path / "small-beta"
    shutil.copytree(tiny_dir, model)
    vae = AutoencoderOobleck.from_pretrained(model / "vae")
    snake = next(module for module in vae.decoder.modules() if isinstance(module, Snake1d))
    assert snake.logscale
    with torch.no_grad():
        snake.beta[0, 0, 0] = -12.0
    vae.save_pretrained(model / "vae")
    fp16_sampler = load_generator("stable-audio-open", model=str(model), steps=2, device="cpu", dtype="fp16")
    latents = fp16_sampler.sample(Conditioning(PROMPT, ()), 3, 1, 0.5, None)
    assert np.isfinite(fp16_sampler.decode(latents, 0.5)).all()
    fp16_decoder = load_generator("stable-audio-open", model=str(model), steps=2, device="cpu", dtype="fp16",
                                  decode_dtype="fp16")
    assert not np.isfinite(fp16_decoder.decode(latents, 0.5)).all()


# -- bad input: one line each ---------------------------------------------------------------------------------------

def test_bad_sampling_input(generator):
    observer = TrajectoryObserver([0])
    with pytest.raises(InputError, match=r"seconds_total 3 is outside \(0, 2.048\]"):
        generator.sample(Conditioning(PROMPT, ()), 0, 1, 3.0, observer)
    with pytest.raises(InputError, match="empty prompt"):
        generator.sample(Conditioning("   ", ()), 0, 1, 1.0, observer)


def test_unknown_preset_and_dtype(tiny_dir):
    with pytest.raises(InputError, match="unknown preset 'fast'.*reference, model-card"):
        load_generator("stable-audio-open", model=str(tiny_dir), preset="fast")
    with pytest.raises(InputError, match="--dtype 'fp8' is not a dtype"):
        load_generator("stable-audio-open", model=str(tiny_dir), dtype="fp8")
    with pytest.raises(InputError, match="--decode-dtype 'fp64' is not a dtype"):
        load_generator("stable-audio-open", model=str(tiny_dir), decode_dtype="fp64")


def test_checkpoint_hash_covers_only_what_the_pipeline_loads(tiny_dir, tmp_path):
    """A full hub snapshot holds files the pipeline never reads (the stable-audio-tools checkpoint, card,
    images); its hash must equal that of the pipeline's own download of the same weights."""
    from data.hub import checkpoint_sha256
    from diffusion.stable_audio import pipeline_files

    def model_sha256(model_dir):
        return checkpoint_sha256(model_dir, pipeline_files(model_dir))

    pipeline_download = model_sha256(tiny_dir)
    full = tmp_path / "full-snapshot"
    shutil.copytree(tiny_dir, full)
    (full / "README.md").write_text("model card")
    (full / "model.safetensors").write_bytes(b"the original stable-audio-tools checkpoint")
    (full / "model_config.json").write_text("{}")
    (full / "transformer" / "diffusion_pytorch_model.bin").write_bytes(b"a second format, not loaded")
    (full / "vae" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"a variant, not loaded")
    assert model_sha256(full) == pipeline_download
    assert [path.relative_to(full) for path in pipeline_files(full)] == \
        [path.relative_to(tiny_dir) for path in pipeline_files(tiny_dir)]
    assert {path.parent.name for path in pipeline_files(full)} >= {"transformer", "vae", "text_encoder", "tokenizer"}
    # What the pipeline does load changes it: a config and a weight file.
    config = full / "vae" / "config.json"
    config.write_text(config.read_text().replace("{", '{"edited": 1, ', 1))
    edited_config = model_sha256(full)
    weights = full / "projection_model" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + bytes([weights.read_bytes()[-1] ^ 1]))
    assert len({pipeline_download, edited_config, model_sha256(full)}) == 3


@pytest.mark.parametrize("damage, message", [
    (lambda d: shutil.rmtree(d / "vae"), "vae/ is missing"),
    (lambda d: (d / "model_index.json").unlink(), "model_index.json is missing"),
    (lambda d: [p.unlink() for p in (d / "transformer").glob("*.safetensors")], "transformer: no weights"),
    (lambda d: (d / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"})),
     "not 'StableAudioPipeline'"),
])
def test_incomplete_layout_is_refused_in_one_line(tiny_dir, tmp_path, damage, message):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    damage(broken)
    with pytest.raises(InputError, match=message) as error:
        load_generator("stable-audio-open", model=str(broken))
    assert "\n" not in str(error.value)


def test_missing_directory_and_uncached_hub_id(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="no such directory"):
        load_generator("stable-audio-open", model=str(tmp_path / "nowhere"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(InputError, match="stabilityai/stable-audio-open-1.0: not in the Hugging Face cache.*"
                                         "HF_HUB_OFFLINE is set"):
        load_generator("stable-audio-open", model="stabilityai/stable-audio-open-1.0")


def test_gated_repo_denial_is_one_line(monkeypatch):
    import httpx2
    from diffusers import StableAudioPipeline
    from huggingface_hub.errors import GatedRepoError

    def denied(cls, model, **kwargs):
        response = httpx2.Response(403, request=httpx2.Request("GET", f"https://huggingface.co/{model}"))
        try:
            raise GatedRepoError("403 Client Error: access to model is restricted", response=response)
        except GatedRepoError as gated:
            raise OSError(f"Cannot load model {model}") from gated

    monkeypatch.setattr(StableAudioPipeline, "download", classmethod(denied))
    with pytest.raises(InputError, match="gated repository was denied — accept its licence.*HF_TOKEN"):
        load_generator("stable-audio-open", model="stabilityai/stable-audio-open-1.0")


def test_hub_id_loads_from_the_hf_cache_offline(tiny_dir, tmp_path, monkeypatch):
    """A hub id resolves through the HF cache layout (refs/main -> snapshots/<commit>) with no network."""
    snapshot = put_in_hub_cache(tiny_dir, tmp_path / "hub", "someone/tiny-sao")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    cached = load_generator("stable-audio-open", model="someone/tiny-sao", steps=2)
    assert cached.model_dir.name == snapshot.name and cached.provenance()["model"] == "someone/tiny-sao"


def test_the_loaded_pipeline_is_moved_to_the_requested_device(tiny_dir, monkeypatch):
    # Only a CPU is here: record the device the pipeline is sent to rather than run on another one.
    import torch
    from diffusers import StableAudioPipeline

    from diffusion.stable_audio import load_pipeline

    moved = []
    original = StableAudioPipeline.to

    def to(self, *args, **kwargs):
        moved.append(args[0] if args else kwargs.get("device"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableAudioPipeline, "to", to)
    load_pipeline(tiny_dir, {"default": torch.float32}, torch.device("cpu"))
    assert moved == [torch.device("cpu")]
