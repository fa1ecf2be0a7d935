"""The TensorFlow checkpoint reader: CRC-32C, the table format, the bundle entries, and refusal of damaged files.

Two sources of bundles: the musicnn wheel's real checkpoint (written by TensorFlow 1.12), and small bundles
written here from the format's description (several data blocks, restart points, shared key prefixes, dtypes)
to reach the parts of the format the real file does not use (it has a single data block).
"""
import shutil

import numpy as np
import pytest

from data.stage import InputError
from embeddings.musicnn import wheel_dir
from embeddings.tf_checkpoint import TABLE_MAGIC, TensorBundle, _crc_register, crc32c, mask_crc

MTT_MUSICNN = wheel_dir() / "MTT_musicnn"


# ---- a writer for small bundles, from the format's description -------------------------------------------------

def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire_type) + payload


def _message(number: int, body: bytes) -> bytes:
    return _field(number, 2, _varint(len(body)) + body)


def _block(entries, restart_interval: int) -> bytes:
    out, restarts, previous = bytearray(), [], b""
    for k, (key, value) in enumerate(entries):
        shared = 0
        if k % restart_interval:
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        else:
            restarts.append(len(out))
        out += _varint(shared) + _varint(len(key) - shared) + _varint(len(value)) + key[shared:] + value
        previous = key
    for restart in restarts:
        out += restart.to_bytes(4, "little")
    return bytes(out + len(restarts).to_bytes(4, "little"))


def _append_block(table: bytearray, contents: bytes, block_type: int = 0) -> bytes:
    handle = _varint(len(table)) + _varint(len(contents))
    kind = bytes([block_type])
    table += contents + kind + mask_crc(crc32c(contents + kind)).to_bytes(4, "little")
    return handle


DTYPE_CODES = {np.float32: 1, np.float64: 2, np.int32: 3, np.int64: 9, np.float16: 19}


def write_bundle(prefix, tensors: dict, entries_per_block: int = 2, restart_interval: int = 2, block_type: int = 0,
                 declared_sizes: dict | None = None) -> None:
    """A one-shard bundle; block_type marks every block's compression byte, declared_sizes overrides entries."""
    data = bytearray()
    entries = [(b"", _field(1, 0, _varint(1)))]                  # BundleHeaderProto: one shard, little-endian
    for name in sorted(tensors):
        array = np.array(tensors[name], order="C")       # (ascontiguousarray would make a scalar 1-D)
        raw = array.tobytes()
        shape = b"".join(_message(2, _field(1, 0, _varint(size))) for size in array.shape)
        entry = (_field(1, 0, _varint(DTYPE_CODES[array.dtype.type])) + _message(2, shape)
                 + _field(4, 0, _varint(len(data))) + _field(5, 0, _varint((declared_sizes or {}).get(name, len(raw))))
                 + _field(6, 5, mask_crc(crc32c(raw)).to_bytes(4, "little")))
        entries.append((name.encode(), entry))
        data += raw
    table, index = bytearray(), []
    for start in range(0, len(entries), entries_per_block):
        chunk = entries[start:start + entries_per_block]
        index.append((chunk[-1][0] + b"\xff", _append_block(table, _block(chunk, restart_interval), block_type)))
    metaindex = _append_block(table, _block([], 1), block_type)
    index_handle = _append_block(table, _block(index, 1), block_type)
    footer = (metaindex + index_handle).ljust(40, b"\x00") + TABLE_MAGIC.to_bytes(8, "little")
    with open(f"{prefix}.index", "wb") as handle:
        handle.write(table + footer)
    with open(f"{prefix}.data-00000-of-00001", "wb") as handle:
        handle.write(data)


# ---- tests ----------------------------------------------------------------------------------------------------

def test_crc32c_known_value_and_long_inputs_agree_with_the_plain_loop():
    assert crc32c(b"123456789") == 0xE3069283            # the CRC-32C check value
    assert crc32c(b"") == 0
    rng = np.random.default_rng(0)
    for length in (1, 1000, (1 << 16) - 1, 1 << 16, (1 << 16) + 1023, 300_001):
        data = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        assert crc32c(data) == _crc_register(0xFFFFFFFF, data) ^ 0xFFFFFFFF, length


def test_small_bundles_round_trip_through_several_blocks(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {"layer/kernel": rng.standard_normal((3, 4, 5)).astype(np.float32),
               "layer/bias": rng.standard_normal(5).astype(np.float32),
               "layer_1/kernel": rng.standard_normal((70_000,)).astype(np.float64),   # long enough for CRC lanes
               "counts": np.arange(-3, 4, dtype=np.int64), "half": np.array([0.5, -2.0], dtype=np.float16),
               "scalar": np.array(7, dtype=np.int32)}
    for per_block, restart in ((1, 1), (2, 2), (4, 3), (100, 16)):
        prefix = tmp_path / f"b{per_block}_{restart}"
        write_bundle(prefix, tensors, per_block, restart)
        bundle = TensorBundle(prefix)
        assert sorted(bundle.entries) == sorted(tensors)
        for name, array in tensors.items():
            read = bundle.read(name)
            assert read.dtype == array.dtype and read.shape == array.shape and np.array_equal(read, array), name


def test_the_wheel_checkpoint_lists_its_variables_with_shapes():
    bundle = TensorBundle(str(MTT_MUSICNN) + "/")
    assert bundle.num_shards == 1 and not bundle.big_endian
    assert bundle.entries["conv2d/kernel"].shape == (7, 38, 1, 204)
    assert bundle.entries["dense/kernel"].shape == (1506, 200)
    assert bundle.entries["dense_1/bias"].shape == (50,)
    # 42 trained variables, their two Adam slots each, 22 moving statistics, 2 Adam step powers
    assert len(bundle.entries) == 150 and sum(name.endswith("/Adam") for name in bundle.entries) == 42
    mean = bundle.read("batch_normalization/moving_mean")
    assert mean.dtype == np.float32 and mean.shape == (1,) and np.isfinite(mean).all()


def _copy_checkpoint(tmp_path):
    folder = tmp_path / "MTT_musicnn"
    folder.mkdir()
    for name in (".index", ".data-00000-of-00001"):
        shutil.copy(MTT_MUSICNN / name, folder / name)
    return folder


def _refused(prefix, read: str | None = None) -> str:
    with pytest.raises(InputError) as caught:
        bundle = TensorBundle(prefix)
        if read is not None:
            bundle.read(read)
    message = str(caught.value)
    assert "\n" not in message and " — " in message
    return message


def _flip(path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x40
    path.write_bytes(bytes(raw))


def test_damaged_checkpoints_are_refused_with_one_line(tmp_path):
    folder = _copy_checkpoint(tmp_path)
    prefix = str(folder) + "/"
    index, data = folder / ".index", folder / ".data-00000-of-00001"
    entry = TensorBundle(prefix).entries["dense/kernel"]

    _flip(data, entry.offset + entry.size // 2)                     # one flipped bit inside a tensor
    assert "fails its CRC-32C check" in _refused(prefix, "dense/kernel")
    TensorBundle(prefix).read("conv2d/kernel")                      # other tensors still read

    data.write_bytes(data.read_bytes()[:entry.offset + 10])         # cut off inside the tensor
    assert "truncated" in _refused(prefix, "dense/kernel")

    original = index.read_bytes()
    _flip(index, 100)                                               # inside the data block
    assert "fails its CRC-32C check" in _refused(prefix)
    index.write_bytes(original[:-20])                               # cut off: no magic number at the end
    assert "no table magic number" in _refused(prefix)
    index.write_bytes(original[:10])
    assert "corrupt checkpoint index" in _refused(prefix)
    index.unlink()
    assert "not found" in _refused(prefix)


def test_compressed_blocks_unknown_names_and_bad_sizes_are_refused(tmp_path):
    write_bundle(tmp_path / "small", {"w": np.ones(3, np.float32)})
    assert TensorBundle(tmp_path / "small").entries["w"].size == 12
    assert "no tensor 'missing'" in _refused(tmp_path / "small", "missing")
    write_bundle(tmp_path / "snappy", {"w": np.ones(3, np.float32)}, block_type=1)
    assert "compression type 1" in _refused(tmp_path / "snappy")
    write_bundle(tmp_path / "sizes", {"w": np.ones(3, np.float32)}, declared_sizes={"w": 16})
    assert "declares 16 bytes" in _refused(tmp_path / "sizes", "w")
