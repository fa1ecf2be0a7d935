"""The CLAP embedder on tiny randomly-initialised checkpoints saved with save_pretrained and loaded by path."""
import json

import numpy as np
import pytest
import torch
from tiny_clap import save_tiny_clap
from transformers import ClapFeatureExtractor, ClapModel

from data.hub import checkpoint_sha256, loaded_files
from data.stage import InputError
from embeddings import load_embedder
from embeddings.clap import ClapEmbedder

RATE = 48_000


@pytest.fixture(autouse=True)
def hash_cache(tmp_path, monkeypatch):
    # The digest cache lives under XDG_CACHE_HOME: keep the tests out of the user's.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def unfused_dir(tmp_path_factory):
    return save_tiny_clap(tmp_path_factory.mktemp("clap") / "tiny-unfused", fused=False)


@pytest.fixture(scope="module")
def fused_dir(tmp_path_factory):
    return save_tiny_clap(tmp_path_factory.mktemp("clap") / "tiny-fused", fused=True)


@pytest.fixture(scope="module")
def unfused(unfused_dir):
    return ClapEmbedder(str(unfused_dir), batch_size=3)


@pytest.fixture(scope="module")
def fused(fused_dir):
    return ClapEmbedder(str(fused_dir), batch_size=3)


def tone(seconds: float, frequency: float, seed: int = 0, rate: int = RATE) -> np.ndarray:
    """A decaying harmonic tone with a little noise: loud and quiet bands, like a note."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    signal = sum(np.sin(2 * np.pi * k * frequency * t + rng.uniform(0, 6)) / k for k in range(1, 6))
    return (0.3 * signal * np.exp(-t / 1.5) + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


def mixed_clips() -> list[np.ndarray]:
    """4 s notes, exact 10 s windows, odd lengths, and clips longer than the window."""
    lengths = (4.0, 10.0, 12.5, 0.7, 23.0)
    return [tone(seconds, 110.0 * (i + 1), seed=i) for i, seconds in enumerate(lengths)]


# ---------------------------------------------------------------------------------------------- features

@pytest.mark.parametrize("which", ["unfused", "fused"])
def test_batched_log_mel_matches_the_feature_extractor(which, request):
    embedder = request.getfixturevalue(which)
    windows = [embedder.window(clip) for clip in (tone(10.0, 220.0), tone(4.0, 97.0, seed=3), tone(12.0, 440.0))]
    ours = embedder.log_mel(torch.from_numpy(np.stack(windows)))
    for k, window in enumerate(windows):
        expected = embedder.feature_extractor(window, sampling_rate=RATE, truncation=embedder.truncation,
                                              return_tensors="pt")["input_features"]
        assert expected.shape[2:] == ours.shape[2:]
        # Channel 0 is the whole window; the fusion path stacks three more copies for a not-longer clip.
        assert torch.equal(expected[0, 0], expected[0, -1])
        np.testing.assert_allclose(ours[k, 0].numpy(), expected[0, 0].numpy(), atol=2e-3)


def test_the_mel_filter_bank_follows_the_model_not_the_extractor_default(tmp_path):
    # transformers' default extractor says "fusion", which feeds 4 channels to an unfused tower and crashes it.
    trap = save_tiny_clap(tmp_path / "unfused-fusion-extractor", fused=False, extractor_truncation="fusion")
    embedder = ClapEmbedder(str(trap))
    assert embedder.truncation == "rand_trunc" and embedder.provenance()["truncation"] == "rand_trunc"
    assert "Slaney" in embedder.window_policy
    clip = tone(4.0, 220.0)
    expected = embedder.feature_extractor(embedder.window(clip), sampling_rate=RATE, truncation="rand_trunc",
                                          return_tensors="pt")["input_features"]
    np.testing.assert_allclose(embedder.log_mel(torch.from_numpy(embedder.window(clip))[None]).numpy(),
                               expected.numpy(), atol=2e-3)
    assert embedder.embed([clip]).shape == (1, embedder.dim)


@pytest.mark.parametrize("which", ["unfused", "fused"])
def test_embed_equals_the_transformers_pipeline_on_one_window(which, request):
    """Same vector as ClapFeatureExtractor + get_audio_features for a clip that fills the window exactly."""
    embedder = request.getfixturevalue(which)
    model = ClapModel.from_pretrained(embedder.checkpoint_dir).eval()
    extractor = ClapFeatureExtractor.from_pretrained(embedder.checkpoint_dir)
    clip = tone(10.0, 330.0, seed=5)
    inputs = extractor(clip, sampling_rate=RATE, truncation=embedder.truncation, return_tensors="pt")
    # The extractor marks a lone not-longer clip as "longer" at random; our policy never does.
    inputs["is_longer"] = torch.zeros_like(inputs["is_longer"])
    with torch.no_grad():
        expected = model.get_audio_features(**inputs).pooler_output.numpy()
    np.testing.assert_allclose(embedder.embed([clip]), expected, atol=1e-4)


# ---------------------------------------------------------------------------------------------- batching

@pytest.mark.parametrize("which", ["unfused", "fused"])
def test_batched_equals_one_by_one_and_rows_stay_aligned(which, request):
    embedder = request.getfixturevalue(which)
    clips = mixed_clips()
    batched = embedder.embed(clips)  # batch_size 3 over 5 clips: a full and a partial batch
    assert batched.dtype == np.float32 and batched.shape == (len(clips), embedder.dim)
    one_by_one = np.concatenate([embedder.embed([clip]) for clip in clips])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    # Row i is clip i: every clip is distinct, and reversing the input reverses the rows.
    np.testing.assert_allclose(embedder.embed(clips[::-1]), batched[::-1], atol=1e-5)
    assert min(np.linalg.norm(batched[i] - batched[j]) for i in range(len(clips)) for j in range(i)) > 1e-3
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_the_fused_tower_is_deterministic_in_an_all_short_batch(fused):
    """transformers' extractor would mark a random clip of this batch "longer" and change its vector."""
    clips = [tone(4.0, 110.0 * (i + 1), seed=i) for i in range(4)]
    first, second = fused.embed(clips), fused.embed(clips)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first[2], fused.embed([clips[2]])[0], atol=1e-5)


# ---------------------------------------------------------------------------------------------- window policy

def test_short_clips_are_repeat_padded_to_the_window(unfused):
    clip = tone(4.0, 220.0)
    window = unfused.window(clip)
    assert window.shape == (10 * RATE,)
    # Two whole copies fit in 10 s, then 2 s of silence — CLAP's own "repeatpad".
    np.testing.assert_array_equal(window[:4 * RATE], clip)
    np.testing.assert_array_equal(window[4 * RATE:8 * RATE], clip)
    assert not window[8 * RATE:].any()
    np.testing.assert_allclose(unfused.embed([clip]), unfused.embed([window]), atol=1e-6)
    # A clip longer than half the window is not repeated at all.
    long_note = tone(6.0, 220.0)
    assert not unfused.window(long_note)[6 * RATE:].any()


@pytest.mark.parametrize("padding, expected", [
    ("pad", lambda clip: np.concatenate([clip, np.zeros(10 * RATE - clip.size, np.float32)])),
    ("repeat", lambda clip: np.tile(clip, 3)[:10 * RATE]),
])
def test_the_checkpoint_padding_mode_is_honoured_and_recorded(tmp_path, padding, expected):
    embedder = ClapEmbedder(str(save_tiny_clap(tmp_path / padding, padding=padding)))
    clip = tone(4.0, 220.0)
    np.testing.assert_array_equal(embedder.window(clip), expected(clip))
    assert embedder.provenance()["padding"] == padding


def test_long_clips_keep_their_centred_window(unfused):
    clip = tone(23.0, 180.0, seed=2)
    start = (clip.size - 10 * RATE) // 2
    np.testing.assert_array_equal(unfused.window(clip), clip[start:start + 10 * RATE])
    centre = unfused.embed([clip[start:start + 10 * RATE]])
    np.testing.assert_allclose(unfused.embed([clip]), centre, atol=1e-6)
    # The edges do not matter, the centre does.
    edited_edges = clip.copy()
    edited_edges[:start] = 0.0
    np.testing.assert_allclose(unfused.embed([edited_edges]), centre, atol=1e-6)
    edited_centre = clip.copy()
    edited_centre[start + RATE:start + 3 * RATE] = 0.0
    assert np.abs(unfused.embed([edited_centre]) - centre).max() > 1e-3


def test_a_fresh_load_gives_the_same_vectors(unfused_dir, unfused):
    clips = mixed_clips()[:3]
    np.testing.assert_array_equal(ClapEmbedder(str(unfused_dir), batch_size=3).embed(clips), unfused.embed(clips))


# ---------------------------------------------------------------------------------------------- provenance

def test_provenance_names_checkpoint_hash_window_and_normalisation(unfused_dir, unfused, fused):
    provenance = unfused.provenance()
    assert provenance["embedder"] == "clap" and unfused.name == "clap-tiny-unfused"
    assert provenance["model"] == str(unfused_dir.resolve())
    assert provenance["checkpoint_sha256"] == checkpoint_sha256(unfused_dir, loaded_files(unfused_dir))
    assert provenance["window_policy"] == unfused.window_policy and "centred 10 s" in unfused.window_policy
    assert provenance["dim"] == unfused.dim == 24
    assert provenance["l2_normalised"] is True and provenance["sample_rate"] == RATE
    json.dumps(provenance)
    # Two checkpoints never share an identity.
    assert fused.provenance()["checkpoint_sha256"] != provenance["checkpoint_sha256"]
    assert fused.window_policy != unfused.window_policy


def test_the_checkpoint_digest_is_cached_by_path_size_and_mtime(unfused_dir, monkeypatch):
    files = loaded_files(unfused_dir)
    digest = checkpoint_sha256(unfused_dir, files)
    monkeypatch.setattr("data.hub.sha256_file", lambda path: pytest.fail("hashed again"))
    assert checkpoint_sha256(unfused_dir, files) == digest


def test_load_embedder_builds_clap_by_name(unfused_dir):
    embedder = load_embedder("clap", model=str(unfused_dir), device="cpu", dtype="float32")
    assert isinstance(embedder, ClapEmbedder) and embedder.sample_rate == RATE


# ---------------------------------------------------------------------------------------------- text

def test_text_path_loads_the_tokenizer_beside_the_model(unfused):
    texts = ["the sound of a brass instrument", "a plucked guitar note", "the sound of a brass instrument"]
    vectors = unfused.embed_text(texts)
    assert vectors.dtype == np.float32 and vectors.shape == (3, unfused.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-3
    # Batched texts of different token lengths equal texts one at a time (padding is masked).
    np.testing.assert_allclose(vectors[1], unfused.embed_text([texts[1]])[0], atol=1e-5)


def test_text_path_without_a_tokenizer_is_a_one_line_error(tmp_path):
    embedder = ClapEmbedder(str(save_tiny_clap(tmp_path / "no-tokenizer", with_tokenizer=False)))
    assert embedder.embed([tone(4.0, 220.0)]).shape == (1, embedder.dim)  # audio needs no tokenizer
    with pytest.raises(InputError, match="no usable tokenizer") as error:
        embedder.embed_text(["the sound of a flute"])
    assert "\n" not in str(error.value)


def test_empty_text_is_refused(unfused):
    with pytest.raises(InputError, match="text 1"):
        unfused.embed_text(["a flute", "  "])


# ---------------------------------------------------------------------------------------------- bad input

def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_directory_that_is_not_clap_is_refused(tmp_path):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(InputError) as error:
        ClapEmbedder(str(bert))
    assert "model_type is 'bert', not 'clap'" in one_line(error) and str(bert) in one_line(error)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no config.json"):
        ClapEmbedder(str(empty))


def test_missing_weights_or_extractor_are_refused(tmp_path, unfused_dir):
    import shutil
    copy = shutil.copytree(unfused_dir, tmp_path / "copy")
    (copy / "processor_config.json").unlink()
    with pytest.raises(InputError, match="preprocessor_config.json or processor_config.json"):
        ClapEmbedder(str(copy))
    copy = shutil.copytree(unfused_dir, tmp_path / "copy2")
    (copy / "model.safetensors").unlink()
    with pytest.raises(InputError, match="no weights"):
        ClapEmbedder(str(copy))
    copy = shutil.copytree(unfused_dir, tmp_path / "copy3")
    (copy / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="cannot load the CLAP checkpoint") as error:
        ClapEmbedder(str(copy))
    one_line(error)


def test_mismatched_mel_bins_are_refused(tmp_path, unfused_dir):
    import shutil
    copy = shutil.copytree(unfused_dir, tmp_path / "copy")
    config_path = copy / "processor_config.json"
    config = json.loads(config_path.read_text())
    config["feature_extractor"]["feature_size"] = 80
    config_path.write_text(json.dumps(config))
    with pytest.raises(InputError, match="80 mel bins but the audio tower expects 64"):
        ClapEmbedder(str(copy))


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path, unfused_dir):
    import shutil
    copy = shutil.copytree(unfused_dir, tmp_path / "copy")
    config_path = copy / "config.json"
    config = json.loads(config_path.read_text())
    config["projection_dim"] = 32
    config["audio_config"]["projection_dim"] = config["text_config"]["projection_dim"] = 32
    config_path.write_text(json.dumps(config))
    with pytest.raises(InputError) as error:
        ClapEmbedder(str(copy))
    assert str(copy) in one_line(error)


def test_an_uncached_hub_id_offline_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads HF_HUB_CACHE once, at import.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as error:
        ClapEmbedder("laion/larger_clap_general")
    assert "laion/larger_clap_general: not in the Hugging Face cache" in one_line(error)
    with pytest.raises(InputError, match="no such checkpoint directory"):
        ClapEmbedder(str(tmp_path / "nowhere" / "ckpt"))


@pytest.mark.parametrize("bad, message", [
    (np.zeros(0, np.float32), "empty"),
    (np.array([0.1, np.nan, 0.2] * 1000, np.float32), "NaN"),
])
def test_bad_waveforms_are_refused_before_any_forward(unfused, bad, message):
    with pytest.raises(InputError, match=f"waveform 1 of the batch .*{message}"):
        unfused.embed([tone(1.0, 220.0), bad])


def test_half_precision_on_cpu_is_refused(unfused_dir):
    for dtype in ("fp16", "bf16"):
        with pytest.raises(InputError, match="runs only on a CUDA device"):
            ClapEmbedder(str(unfused_dir), dtype=dtype)
    with pytest.raises(InputError, match="not one of fp32, fp16, bf16"):
        ClapEmbedder(str(unfused_dir), dtype="int8")


def test_a_hub_id_loads_offline_from_the_hugging_face_cache(tmp_path, monkeypatch, unfused_dir):
    """The cache layout `hf download` leaves behind: models--owner--name/{refs/main, snapshots/<commit>/}."""
    from hf_cache import put_in_hub_cache
    put_in_hub_cache(unfused_dir, tmp_path / "hub", "laion/larger_clap_general")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads HF_HUB_CACHE once, at import.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    embedder = ClapEmbedder("laion/larger_clap_general")
    assert embedder.name == "clap-larger_clap_general"
    assert embedder.provenance()["model"] == "laion/larger_clap_general"
    assert embedder.provenance()["checkpoint_sha256"] == checkpoint_sha256(unfused_dir, loaded_files(unfused_dir))
    clip = tone(4.0, 220.0)
    np.testing.assert_array_equal(embedder.embed([clip]), ClapEmbedder(str(unfused_dir)).embed([clip]))


def test_the_first_window_keeps_the_first_ten_seconds_and_says_so(unfused_dir, unfused):
    first = ClapEmbedder(str(unfused_dir), window="first")
    clip = tone(23.0, 180.0, seed=2)
    np.testing.assert_array_equal(first.window(clip), clip[:10 * RATE])
    np.testing.assert_allclose(first.embed([clip]), first.embed([clip[:10 * RATE]]), atol=1e-6)
    assert not np.allclose(first.embed([clip]), unfused.embed([clip]), atol=1e-4)
    assert first.provenance()["long_clips"] == "first" and unfused.provenance()["long_clips"] == "centre"
    # window_policy is part of the embedder identity stage 6 compares between stage 3 and stage 5 outputs.
    assert first.window_policy != unfused.window_policy and "first 10 s" in first.window_policy
    short = tone(4.0, 220.0)
    np.testing.assert_array_equal(first.window(short), unfused.window(short))
    with pytest.raises(InputError, match="--window 'last'"):
        ClapEmbedder(str(unfused_dir), window="last")
