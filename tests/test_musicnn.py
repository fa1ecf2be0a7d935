"""The musicnn port against the original TensorFlow graphs, and the two embedders built on it.

tests/fixtures/musicnn_reference.npz holds what the original graphs output on the clips of
tests/musicnn_clips.py (made by tests/fixtures/make_musicnn_reference.py in a scratch TensorFlow environment).
"""
import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from musicnn_clips import reference_clips

from data.audio import write_wav
from data.stage import InputError
from embeddings import embedding_stem, load_embedder
from embeddings import musicnn as musicnn_embedders
from embeddings.musicnn import MusicnnEmbedder, MusicnnTagger, load_network
from embeddings.musicnn_model import MODELS, MTT_LABELS, PATCH_FRAMES, log_mel, log_mel_patches, patches
from embeddings.run import embed_files

FIXTURE = Path(__file__).parent / "fixtures" / "musicnn_reference.npz"
TOLERANCE = 1e-4
# Per-layer outputs compared with the original graph; pooled front-end maps reach ~50, so their bound is
# relative to the layer's largest value.
ABSOLUTE = ("taggram", "logits", "penultimate", "pool5")
RELATIVE = ("mean_pool", "max_pool")


@functools.cache
def reference() -> dict:
    with np.load(FIXTURE) as stored:
        return {key: stored[key] for key in stored.files}


@functools.cache
def clips() -> dict:
    return reference_clips()


@functools.cache
def network(model: str):
    return load_network(model, torch.device("cpu"))


@functools.cache
def tagger() -> MusicnnTagger:
    return MusicnnTagger()


def saturated_patches(name: str) -> np.ndarray:
    """The original's input with overflowing bins set to the port's saturation value (what the graph was run on)."""
    info = json.loads(str(reference()["info"]))
    stored = reference()[f"{name}/patches"].astype(np.float32)
    return np.where(np.isinf(stored), np.float32(info["saturated_value"]), stored)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_port_matches_the_original_graph_on_its_input(model):
    worst = {}
    for name in clips():
        x = torch.from_numpy(saturated_patches(name))
        with torch.inference_mode():
            out = network(model)(x)
        for layer in ABSOLUTE + RELATIVE:
            key = f"{model}/{name}/{layer}"
            if key not in reference():
                continue
            expected = reference()[key]
            got = out[layer].reshape(len(x), -1).numpy()
            scale = max(1.0, float(np.abs(expected).max())) if layer in RELATIVE else 1.0
            worst[layer] = max(worst.get(layer, 0.0), float(np.abs(got - expected).max()) / scale)
    assert worst and max(worst.values()) <= TOLERANCE, worst


def test_the_clips_are_the_ones_the_reference_was_made_from():
    stored = json.loads(str(reference()["info"]))["clips_sha256"]
    made = {name: hashlib.sha256(audio.tobytes()).hexdigest() for name, audio in clips().items()}
    assert made == stored, "tests/musicnn_clips.py renders other samples: rerun tests/fixtures/make_musicnn_reference.py"


def test_input_is_the_originals_bit_for_bit_except_saturated_overflow():
    saturated_bins = 0
    for name, audio in clips().items():
        original = reference()[f"{name}/patches"].astype(np.float32)
        mine = log_mel_patches(audio)
        assert mine.shape == original.shape, name
        finite = np.isfinite(original)
        assert np.array_equal(mine[finite], original[finite]), name
        assert np.all(mine[~finite] == np.float32(np.log10(np.float16(65504) + np.float16(1)))), name
        saturated_bins += int((~finite).sum())
    assert saturated_bins > 0          # the loud mix exercises the saturation


def test_overflow_makes_the_original_return_one_taggram_for_different_clips():
    """Why the port saturates: with inf in its input the original graph loses the clip (fixture evidence)."""
    unsaturated = [reference()[f"MTT_musicnn/{name}/taggram_unsaturated"]
                   for name in ("guitar_violin_mix", "drums_bass_10s")]
    rows = np.concatenate(unsaturated)
    assert np.allclose(rows, rows[0], atol=1e-6)
    saturated = reference()["MTT_musicnn/guitar_violin_mix/taggram"][0]
    assert np.abs(saturated - rows[0]).max() > 0.2


def test_patches_cut_from_the_start_without_overlap_and_short_clips_repeat():
    frames = np.arange(700 * 96, dtype=np.float32).reshape(700, 96)
    cut = patches(frames)
    assert cut.shape == (3, PATCH_FRAMES, 96) and np.array_equal(cut[1], frames[187:374])
    short = patches(frames[:80])
    assert short.shape == (1, PATCH_FRAMES, 96)
    assert np.array_equal(short[0, 80:160], frames[:80]) and np.array_equal(short[0, 160:], frames[:27])
    assert log_mel(np.zeros(16_000, np.float32)).shape == (63, 96)


def test_the_tagger_reproduces_the_original_taggram_from_audio_and_hears_the_instruments():
    names = list(clips())
    taggrams = tagger().embed([clips()[name] for name in names])
    assert taggrams.shape == (len(names), 50) and tagger().tags == MTT_LABELS
    for row, name in zip(taggrams, names):
        assert np.abs(row - reference()[f"MTT_musicnn/{name}/taggram"].mean(axis=0)).max() <= TOLERANCE, name
    tag = {name: dict(zip(MTT_LABELS, row)) for name, row in zip(names, taggrams)}
    assert max(tag["piano_note"], key=tag["piano_note"].get) == "piano"
    assert tag["piano_note"]["piano"] > 10 * tag["piano_note"]["drums"]
    assert tag["drums_bass_10s"]["drums"] > tag["drums_bass_10s"]["piano"]
    assert tag["guitar_violin_mix"]["violin"] > tag["guitar_violin_mix"]["piano"]


def test_a_clips_vector_does_not_depend_on_its_batch():
    embedder = MusicnnEmbedder()
    piano, mix, drums = clips()["piano_note"], clips()["guitar_violin_mix"], clips()["drums_bass_10s"]
    alone = embedder.embed([mix])
    together = embedder.embed([piano, mix, drums])
    assert together.dtype == np.float32 and together.shape == (3, 753) and embedder.layer == "mean_pool"
    assert np.array_equal(alone[0], together[1])
    expected = reference()["MTT_musicnn/drums_bass_10s/mean_pool"].mean(axis=0)
    assert np.abs(together[2] - expected).max() <= TOLERANCE * max(1.0, float(np.abs(expected).max()))


def test_names_models_and_provenance():
    assert embedding_stem("musicnn") == "musicnn-MTT_musicnn"
    assert embedding_stem("musicnn", "MSD_vgg") == "musicnn-MSD_vgg"
    assert embedding_stem("musicnn-tags") == "musicnn-tags-MTT_musicnn"
    vgg = load_embedder("musicnn", model="MSD_vgg")
    assert vgg.dim == 256 and vgg.layer == "pool5"
    provenance = tagger().provenance()
    assert provenance["layer"] == "taggram" and provenance["tags"] == list(MTT_LABELS)
    assert provenance["checkpoint_sha256"] != vgg.provenance()["checkpoint_sha256"]
    assert len(provenance["checkpoint_sha256"]) == 64
    with pytest.raises(InputError, match="not a musicnn checkpoint"):
        MusicnnEmbedder(model="MTT_resnet")


def test_a_missing_wheel_is_one_line_naming_the_install(monkeypatch):
    def not_installed(name):
        raise musicnn_embedders.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(musicnn_embedders.importlib.metadata, "distribution", not_installed)
    with pytest.raises(InputError, match=r"pip install --no-deps musicnn==0\.1\.0"):
        MusicnnEmbedder()


def test_the_runner_embeds_wav_files_with_musicnn(tmp_path):
    paths = []
    for name in ("piano_note", "white_noise"):
        paths.append(tmp_path / f"{name}.wav")
        write_wav(paths[-1], clips()[name], 16_000, subtype="FLOAT")
    out = tmp_path / "embeddings" / "musicnn-tags-MTT_musicnn.npy"
    stats = embed_files(paths, tagger(), out, rows_key="rows_sha256", rows_sha256="two-clips", workers=0,
                        progress=False)
    assert stats.rows_embedded == 2
    matrix = np.load(out)
    assert np.abs(matrix[0] - reference()["MTT_musicnn/piano_note/taggram"][0]).max() <= TOLERANCE

