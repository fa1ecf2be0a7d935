"""The embedded spectral embedder: fixed shape, determinism, batch independence, window policy, and whether
its descriptors carry the timbre and envelope differences that the concept probes rely on."""
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from data.contract import EMBEDDER_IDENTITY
from embeddings import load_embedder
from embeddings.spectral import BLOCKS, DIM, SAMPLE_RATE, WINDOW_SAMPLES, SpectralEmbedder

RNG_SEED = 7


def note(frequency, seconds=4.0, decay=1.0, wave="sine", attack=0.005, level=0.5, rng=None):
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    phase = t * frequency
    if wave == "sine":
        signal = np.sin(2 * np.pi * phase)
    elif wave == "saw":
        signal = 2 * (phase % 1.0) - 1
    else:
        signal = rng.standard_normal(len(t))
    envelope = np.minimum(t / attack, 1.0) * np.exp(-t / decay)
    return (level * signal * envelope).astype(np.float32)


@pytest.fixture(scope="module")
def embedder():
    return SpectralEmbedder()


def test_shape_dtype_and_provenance(embedder):
    vectors = embedder.embed([note(220), note(440, seconds=9.5), note(330, seconds=1.2)])
    assert vectors.shape == (3, DIM) and vectors.dtype == np.float32 and np.isfinite(vectors).all()
    assert DIM == sum(size for _, size in BLOCKS) == embedder.dim
    provenance = embedder.provenance()
    assert set(EMBEDDER_IDENTITY) <= set(provenance)
    assert provenance["embedder"] == "spectral" and len(provenance["checkpoint_sha256"]) == 64
    assert isinstance(load_embedder("spectral"), SpectralEmbedder)


def test_deterministic_and_batch_independent(embedder):
    rng = np.random.default_rng(RNG_SEED)
    clips = [note(rng.uniform(80, 900), decay=rng.uniform(0.1, 3), wave=rng.choice(["sine", "saw"]),
                  seconds=rng.uniform(1, 8)) for _ in range(9)]
    batched = embedder.embed(clips)
    np.testing.assert_array_equal(batched, SpectralEmbedder().embed(clips))
    one_by_one = np.stack([embedder.embed([clip])[0] for clip in clips])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-4, atol=1e-4)
    # A quiet clip next to a loud one must not be described relative to its neighbour.
    quiet = note(300, level=0.01)
    np.testing.assert_allclose(embedder.embed([note(300, level=0.9), quiet])[1], embedder.embed([quiet])[0],
                               rtol=1e-4, atol=1e-4)


def test_window_crops_long_clips_and_pads_short_ones(embedder):
    base = note(261.6, seconds=4.0)
    longer = np.concatenate([base, note(1000, seconds=3.0, wave="saw")])
    shorter = base[: SAMPLE_RATE * 2]
    padded = np.concatenate([shorter, np.zeros(WINDOW_SAMPLES - len(shorter), np.float32)])
    vectors = embedder.embed([base, longer, shorter, padded])
    np.testing.assert_allclose(vectors[1], vectors[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vectors[2], vectors[3], rtol=1e-5, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[2], atol=1e-3)


def _probe_accuracy(features, labels) -> float:
    train_x, test_x, train_y, test_y = train_test_split(features, labels, test_size=0.4, random_state=0,
                                                        stratify=labels)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(train_x, train_y)
    return probe.score(test_x, test_y)


def test_linear_probe_separates_timbres_and_envelopes(embedder):
    """Across pitches, loudness and decays, a linear probe must tell a sine from a sawtooth (brightness) and a
    fast decay from a slow one (envelope): the properties stage 6's family and quality probes need."""
    rng = np.random.default_rng(RNG_SEED)
    n = 40
    pitches = rng.uniform(60, 1000, size=n)
    levels = rng.uniform(0.05, 0.8, size=n)
    decays = rng.uniform(0.2, 3.0, size=n)
    wave_labels = np.arange(n) % 2
    waves = embedder.embed([note(f, decay=d, wave="saw" if y else "sine", level=a)
                            for f, d, y, a in zip(pitches, decays, wave_labels, levels)])
    assert _probe_accuracy(waves, wave_labels) >= 0.9

    decay_labels = np.arange(n) % 2
    envelopes = embedder.embed([note(f, decay=0.08 if y else 2.5, wave=rng.choice(["sine", "saw"]), level=a)
                                for f, y, a in zip(pitches, decay_labels, levels)])
    assert _probe_accuracy(envelopes, decay_labels) >= 0.9

    # Same sounds with noise onsets: a percussive attack must be visible to the onset/envelope features.
    attack_labels = np.arange(n) % 2
    clicks = []
    for f, y, a in zip(pitches, attack_labels, levels):
        clip = note(f, decay=1.5, attack=0.002 if y else 0.4, level=a)
        if y:
            clip[:400] += note(0, seconds=400 / SAMPLE_RATE, wave="noise", decay=0.01, level=a, rng=rng)
        clicks.append(clip)
    assert _probe_accuracy(embedder.embed(clicks), attack_labels) >= 0.9
