"""Known answers for the one checkpoint-identity rule (data/hub.py) that Stable Audio, MusicGen and CLAP share."""
import hashlib
import os

import pytest

from data.hub import checkpoint_sha256, loaded_files


@pytest.fixture(autouse=True)
def hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def write(folder, files: dict):
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return folder


def test_the_hash_is_sha256_over_relative_path_and_file_hash_lines(tmp_path):
    model = write(tmp_path / "model", {"config.json": b"{}", "model.safetensors": b"weights",
                                       "tokenizer/spiece.model": b"sp"})
    lines = "".join(f"{name}\0{hashlib.sha256(content).hexdigest()}\n" for name, content in
                    sorted({"config.json": b"{}", "model.safetensors": b"weights", "tokenizer/spiece.model": b"sp"}
                           .items()))
    assert checkpoint_sha256(model, loaded_files(model)) == hashlib.sha256(lines.encode()).hexdigest()


def test_files_the_loader_never_reads_do_not_change_it_and_files_it_reads_do(tmp_path):
    model = write(tmp_path / "model", {"config.json": b"{}", "model.safetensors": b"weights"})
    plain = checkpoint_sha256(model, loaded_files(model))
    write(model, {"README.md": b"card", "pytorch_model.bin": b"other format", "model.fp16.safetensors": b"variant",
                  ".cache/huggingface/x.json": b"download metadata"})
    assert [path.name for path in loaded_files(model)] == ["config.json", "model.safetensors"]
    assert checkpoint_sha256(model, loaded_files(model)) == plain
    write(model, {"config.json": b'{"edited": 1}'})
    assert checkpoint_sha256(model, loaded_files(model)) != plain
    only_bin = write(tmp_path / "bin", {"config.json": b"{}", "pytorch_model.bin": b"weights"})
    assert [path.name for path in loaded_files(only_bin)] == ["config.json", "pytorch_model.bin"]


def test_a_hub_blob_is_named_by_its_hash_and_never_read(tmp_path, monkeypatch):
    """Hub snapshots are symlinks to LFS blobs named by their sha256: the name is the hash."""
    content = b"large weights"
    blob = write(tmp_path / "blobs", {hashlib.sha256(content).hexdigest(): content})
    snapshot = write(tmp_path / "snapshot", {"config.json": b"{}"})
    os.symlink(blob / hashlib.sha256(content).hexdigest(), snapshot / "model.safetensors")
    copy = write(tmp_path / "copy", {"config.json": b"{}", "model.safetensors": content})
    expected = checkpoint_sha256(copy, loaded_files(copy))
    read = []
    monkeypatch.setattr("data.hub.sha256_file", lambda path: read.append(path.name) or
                        hashlib.sha256(path.read_bytes()).hexdigest())
    assert checkpoint_sha256(snapshot, loaded_files(snapshot)) == expected
    assert read == ["config.json"]


def test_a_local_file_is_hashed_once_and_again_when_it_changes(tmp_path, monkeypatch):
    model = write(tmp_path / "model", {"config.json": b"{}", "model.safetensors": b"weights"})
    first = checkpoint_sha256(model, loaded_files(model))
    monkeypatch.setattr("data.hub.sha256_file", lambda path: pytest.fail(f"{path} hashed again"))
    assert checkpoint_sha256(model, loaded_files(model)) == first
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    write(model, {"model.safetensors": b"other weights, other size"})
    assert checkpoint_sha256(model, loaded_files(model)) != first
