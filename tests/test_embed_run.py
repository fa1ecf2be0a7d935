"""The shared embedding runner: row alignment, resume, provenance checks, bounded prefetch, bad inputs."""
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from data.audio import resample, to_mono, write_wav
from data.contract import read_embeddings
from data.files import read_json
from data.stage import InputError, Shard
from embeddings import run
from embeddings.run import embed_files
from embeddings.spectral import SpectralEmbedder

RATE = 16_000


def tone(frequency: float, seconds: float = 1.0, rate: int = RATE, decay: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * frequency * t) * np.exp(-t / decay)).astype(np.float32)


def write_clips(folder, count: int, rate: int = RATE, channels: int = 1, seconds: float = 1.0):
    paths = []
    for i in range(count):
        audio = tone(110.0 * (1 + i), seconds, rate)
        audio = np.stack([audio, 0.5 * audio]) if channels == 2 else audio
        path = folder / "clips" / f"c{i:02d}.wav"
        write_wav(path, audio, rate)
        paths.append(path)
    return paths


class Counting(SpectralEmbedder):
    """The real spectral embedder, counting the rows it is asked for and optionally interrupted mid-run."""

    def __init__(self, stop_after_calls: int | None = None, checkpoint: str | None = None):
        super().__init__()
        self.rows = 0
        self.calls = 0
        self.stop_after_calls = stop_after_calls
        self.checkpoint = checkpoint

    def provenance(self):
        provenance = super().provenance()
        if self.checkpoint:
            provenance["checkpoint_sha256"] = self.checkpoint
        return provenance

    def embed(self, waveforms):
        self.calls += 1
        if self.stop_after_calls is not None and self.calls > self.stop_after_calls:
            raise KeyboardInterrupt
        self.rows += len(waveforms)
        return super().embed(waveforms)


def run_embed(paths, embedder, out, rows_sha256="rows-v1", **options):
    options = {"batch_size": 2, "chunk_rows": 4, "workers": 2, "progress": False, **options}
    return embed_files(paths, embedder, out, rows_key="index_sha256", rows_sha256=rows_sha256, **options)


def test_rows_follow_the_file_order_and_match_direct_embedding(tmp_path):
    paths = write_clips(tmp_path, 7, rate=44_100, channels=2)
    out = tmp_path / "emb" / "spectral.npy"
    stats = run_embed(paths, SpectralEmbedder(), out, expect_rate=44_100, expect_channels=2)
    matrix, sidecar = read_embeddings(out, 7, "rows-v1", "index_sha256", fix="rerun")
    direct = SpectralEmbedder().embed([resample(to_mono(sf.read(p, dtype="float32", always_2d=True)[0].T), 44_100, RATE)
                                       for p in paths])
    np.testing.assert_allclose(matrix, direct, rtol=1e-4, atol=1e-4)
    # Distinct clips give distinct rows: a shuffled or repeated row would be caught here.
    distances = np.linalg.norm(matrix[:, None] - matrix[None], axis=2)
    assert np.all(distances[~np.eye(7, dtype=bool)] > 1e-2)
    assert sidecar["n_rows"] == 7 and sidecar["dim"] == SpectralEmbedder.dim
    assert sidecar["embedder"] == "spectral" and sidecar["input"]["downmix"] == "channel mean"
    assert not (tmp_path / "emb" / "spectral.chunks").exists()
    assert stats.rows_embedded == 7 and 0 < stats.embed_fraction <= 1 and stats.embed_seconds > 0


def test_resume_after_kill_is_byte_identical(tmp_path):
    paths = write_clips(tmp_path, 10)
    clean = tmp_path / "clean" / "spectral.npy"
    run_embed(paths, SpectralEmbedder(), clean)

    out = tmp_path / "killed" / "spectral.npy"
    # Chunks of 4 rows in batches of 2: the third call starts the second chunk and is interrupted.
    with pytest.raises(KeyboardInterrupt):
        run_embed(paths, Counting(stop_after_calls=2), out)
    chunks = out.with_name("spectral.chunks")
    assert sorted(p.name for p in chunks.iterdir()) == ["00000.npy", "manifest.json"]
    assert not out.exists() and not out.with_suffix(".json").exists()

    resumed = Counting()
    stats = run_embed(paths, resumed, out)
    assert resumed.rows == 6 and stats.chunks_reused == 1
    assert out.read_bytes() == clean.read_bytes()
    assert read_json(out.with_suffix(".json")) == read_json(clean.with_suffix(".json"))
    assert not chunks.exists()


def test_up_to_date_output_is_skipped_and_force_recomputes(tmp_path):
    paths = write_clips(tmp_path, 3)
    out = tmp_path / "spectral.npy"
    run_embed(paths, SpectralEmbedder(), out)
    again = Counting()
    assert run_embed(paths, again, out).skipped and again.rows == 0
    forced = Counting()
    assert not run_embed(paths, forced, out, force=True).skipped and forced.rows == 3


def test_changed_rows_are_refused_unless_forced(tmp_path):
    """One provenance rule (data.provenance.decide): other rows are other inputs, so --force says so."""
    paths = write_clips(tmp_path, 5)
    out = tmp_path / "spectral.npy"
    run_embed(paths[:3], SpectralEmbedder(), out, rows_sha256="three-rows")
    before = out.read_bytes()
    with pytest.raises(InputError, match=r"spectral\.json: existing outputs were made with "
                                         r"index_sha256='three-rows', this run has 'five-rows' — pass --force"):
        run_embed(paths, SpectralEmbedder(), out, rows_sha256="five-rows")
    assert out.read_bytes() == before
    grown = Counting()
    run_embed(paths, grown, out, rows_sha256="five-rows", force=True)
    assert grown.rows == 5
    read_embeddings(out, 5, "five-rows", "index_sha256", fix="rerun")
    with pytest.raises(InputError, match="made for different rows"):
        read_embeddings(out, 5, "three-rows", "index_sha256", fix="rerun")


def test_chunks_for_other_rows_are_refused_then_discarded_by_force(tmp_path):
    paths = write_clips(tmp_path, 8)
    out = tmp_path / "spectral.npy"
    with pytest.raises(KeyboardInterrupt):
        run_embed(paths, Counting(stop_after_calls=2), out, rows_sha256="old-index")
    with pytest.raises(InputError, match=r"manifest\.json: existing outputs were made with index_sha256='old-index'"):
        run_embed(paths, Counting(), out, rows_sha256="new-index")
    fresh = Counting()
    stats = run_embed(paths, fresh, out, rows_sha256="new-index", force=True)
    assert fresh.rows == 8 and stats.chunks_reused == 0


def test_other_embedder_configuration_is_refused_unless_forced(tmp_path):
    paths = write_clips(tmp_path, 8)
    out = tmp_path / "spectral.npy"
    with pytest.raises(KeyboardInterrupt):
        run_embed(paths, Counting(stop_after_calls=2, checkpoint="other-checkpoint"), out)
    with pytest.raises(InputError, match=r"manifest\.json: existing outputs were made with checkpoint_sha256="
                                         r"'other-checkpoint'.*--force"):
        run_embed(paths, SpectralEmbedder(), out)
    run_embed(paths, SpectralEmbedder(), out, force=True)
    clean = tmp_path / "clean.npy"
    run_embed(paths, SpectralEmbedder(), clean)
    assert out.read_bytes() == clean.read_bytes()

    # A finished output of another configuration is refused too: it may be hours of GPU work.
    with pytest.raises(InputError, match=r"spectral\.json: existing outputs.*--force to replace"):
        run_embed(paths, Counting(checkpoint="other-checkpoint"), out)


def test_workers_and_batch_size_do_not_change_rows(tmp_path):
    paths = write_clips(tmp_path, 6)
    serial, threaded = tmp_path / "a" / "e.npy", tmp_path / "b" / "e.npy"
    run_embed(paths, SpectralEmbedder(), serial, workers=0, batch_size=1)
    run_embed(paths, SpectralEmbedder(), threaded, workers=2, batch_size=4)
    np.testing.assert_allclose(np.load(serial), np.load(threaded), rtol=1e-4, atol=1e-4)


def test_prefetch_stays_a_bounded_number_of_files_ahead():
    started = []
    lock = threading.Lock()

    def load(row):
        with lock:
            started.append(row)
        return row

    consumed = []
    for row in run._prefetch(list(range(50)), load, workers=3, ahead=5):
        time.sleep(0.002)  # a slow model: the loader must wait for it, not race to the end
        with lock:
            assert len(started) - len(consumed) <= 6
        consumed.append(row)
    assert consumed == list(range(50))


def _bad_files(tmp_path):
    """(name, writer) for each kind of bad input; each writer makes the file at the given path."""
    good = tone(220.0)

    def unreadable(path):
        path.write_bytes(b"this is not audio at all" * 10)

    def truncated(path):
        write_wav(path, good, RATE)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    def zero_length(path):
        sf.write(path, np.zeros(0, np.float32), RATE, subtype="PCM_16")

    def nan_audio(path):
        audio = good.copy()
        audio[100] = np.nan
        sf.write(path, audio, RATE, subtype="FLOAT")

    def silent(path):
        write_wav(path, np.zeros(RATE, np.float32), RATE)

    def wrong_rate(path):
        write_wav(path, tone(220.0, rate=22_050), 22_050)

    def stereo(path):
        write_wav(path, np.stack([good, good]), RATE)

    return {"unreadable": (unreadable, "unreadable audio"), "truncated": (truncated, "truncated audio"),
            "zero-length": (zero_length, "truncated or empty"), "nan": (nan_audio, "NaN"),
            "silent": (silent, "silent"), "wrong-rate": (wrong_rate, "sample rate 22050 Hz, expected 16000"),
            "stereo": (stereo, "2 channel"), "missing": (lambda path: None, "missing")}


@pytest.mark.parametrize("kind", ["unreadable", "truncated", "zero-length", "nan", "silent", "wrong-rate", "stereo",
                                  "missing"])
def test_bad_file_is_named_in_one_line_and_nothing_is_written(tmp_path, kind):
    paths = write_clips(tmp_path, 3)
    bad = tmp_path / "clips" / "bad.wav"
    writer, message = _bad_files(tmp_path)[kind]
    writer(bad)
    out = tmp_path / "emb" / "spectral.npy"
    with pytest.raises(InputError) as error:
        run_embed([paths[0], bad, paths[1]], SpectralEmbedder(), out, expect_rate=RATE, expect_channels=1)
    text = str(error.value)
    assert str(bad) in text and message in text and "\n" not in text
    assert not (tmp_path / "emb").exists() or not any((tmp_path / "emb").iterdir())


def test_bad_file_in_a_later_chunk_keeps_the_finished_chunks(tmp_path):
    paths = write_clips(tmp_path, 6)
    write_wav(paths[5], np.zeros(RATE, np.float32), RATE)
    out = tmp_path / "spectral.npy"
    with pytest.raises(InputError, match="c05.wav: audio is silent"):
        run_embed(paths, SpectralEmbedder(), out)
    assert not out.exists()
    write_wav(paths[5], tone(300.0), RATE)
    resumed = Counting()
    assert run_embed(paths, resumed, out).chunks_reused == 1 and resumed.rows == 2


def test_non_finite_embedding_names_the_clip(tmp_path):
    class Broken(SpectralEmbedder):
        def embed(self, waveforms):
            vectors = super().embed(waveforms)
            vectors[-1, 0] = np.nan
            return vectors

    paths = write_clips(tmp_path, 2)
    with pytest.raises(InputError, match=r"c01\.wav: the spectral embedder returned NaN"):
        run_embed(paths, Broken(), tmp_path / "spectral.npy")
    assert not (tmp_path / "spectral.npy").exists()


def test_wav_truncation_check_accepts_whole_files(tmp_path):
    path = tmp_path / "whole.wav"
    write_wav(path, tone(220.0), RATE)
    run.check_wav_complete(path)
    data = path.read_bytes()
    path.write_bytes(data[:-2])
    with pytest.raises(InputError, match="truncated audio"):
        run.check_wav_complete(path)


def test_shards_write_chunks_and_the_last_one_assembles_the_same_matrix(tmp_path):
    paths = write_clips(tmp_path, 10)
    clean = tmp_path / "clean" / "spectral.npy"
    run_embed(paths, SpectralEmbedder(), clean)
    out = tmp_path / "sharded" / "spectral.npy"
    chunks = out.with_name("spectral.chunks")
    # Chunks of 4 rows: 0 and 2 belong to shard 0/2, chunk 1 to shard 1/2.
    first = Counting()
    stats = run_embed(paths, first, out, shard=Shard(1, 2))
    assert first.rows == 4 and stats.chunks_missing == 2 and not out.exists()
    assert sorted(p.name for p in chunks.iterdir()) == ["00001.npy", "manifest.json"]
    assert "2 chunks of other shards still missing" in stats.summary()
    # A kill of shard 0 left a temp file of its own chunk and shard 1 one of its (live) chunk: only its own goes.
    (chunks / ".00000.npy.abc123.tmp").write_bytes(b"partial")
    (chunks / ".00001.npy.def456.tmp").write_bytes(b"live")
    last = Counting()
    stats = run_embed(paths, last, out, shard=Shard(0, 2))
    assert last.rows == 6 and stats.chunks_missing == 0
    assert out.read_bytes() == clean.read_bytes()
    assert read_json(out.with_suffix(".json")) == read_json(clean.with_suffix(".json"))
    assert not chunks.exists()
    # Every shard now finds the matrix up to date.
    assert run_embed(paths, Counting(), out, shard=Shard(1, 2)).skipped


def test_forced_shard_redoes_only_its_own_chunks(tmp_path):
    paths = write_clips(tmp_path, 8)
    out = tmp_path / "spectral.npy"
    run_embed(paths, SpectralEmbedder(), out, shard=Shard(1, 2))
    forced = Counting()
    stats = run_embed(paths, forced, out, shard=Shard(0, 2), force=True)
    assert forced.rows == 4 and stats.chunks_missing == 0 and out.is_file()
