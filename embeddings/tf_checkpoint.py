"""Read a TensorFlow checkpoint bundle (`<prefix>.index` + `<prefix>.data-NNNNN-of-MMMMM`) without TensorFlow.

Written from the format's documentation (TensorFlow's tensor_bundle.proto and table format, which is LevelDB's):

- `<prefix>.index` is an immutable sorted table. Its last 48 bytes are the footer: two block handles (varint
  offset and size of the metaindex block and of the index block), zero padding to 40 bytes, and the magic
  number 0xdb4775248b80fb57 (little-endian). Every block is followed by a 5-byte trailer: a compression byte
  (0: none; TensorFlow writes bundles uncompressed) and the masked CRC-32C of the block and that byte. A block
  holds prefix-compressed entries (varints shared, unshared and value length, then the key's unshared bytes and
  the value), then an array of uint32 restart offsets and their count. The index block maps a key at or after
  the last key of each data block to that data block's handle.
- The table's entries: key "" holds a BundleHeaderProto (num_shards, endianness); every other key is a tensor
  name whose value is a BundleEntryProto: dtype (1), shape (2: TensorShapeProto, dims in field 2, each with its
  size in field 1), shard_id (3), offset (4), size (5), crc32c (6: fixed32, the masked CRC-32C of the tensor's
  bytes) and slices (7, for partitioned variables, which this reader does not assemble).
- `<prefix>.data-<shard>-of-<num_shards>` holds the tensors' raw bytes, in the header's byte order.

Every block and every tensor read is checked against its CRC-32C; a file that is truncated, corrupt or not a
bundle is refused with one InputError line. CRC-32C (Castagnoli) is computed here with numpy (crc32c below).
The protobuf messages are parsed from the wire format directly (a dozen lines; no protobuf dependency).
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.stage import InputError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_BYTES = 48
BLOCK_TRAILER_BYTES = 5
# TensorFlow's DataType enum -> numpy dtype, for the numeric types a checkpoint of weights holds.
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 9: np.int64,
          10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64}
DEFAULT_FIX = "replace the checkpoint files with an intact copy"

# ---- CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) ---------------------------------------------------

_POLY = 0x82F63B78
_TABLE = np.zeros(256, dtype=np.uint32)
for _byte in range(256):
    _crc = _byte
    for _ in range(8):
        _crc = (_crc >> 1) ^ (_POLY if _crc & 1 else 0)
    _TABLE[_byte] = _crc
_TABLE_LIST = [int(value) for value in _TABLE]
# Below this many bytes a plain loop is faster than setting up the lanes.
_LANE_MIN_BYTES = 1 << 16
_LANES = 1024


def _crc_register(register: int, data) -> int:
    """The CRC register after feeding `data` byte by byte (no initial or final inversion)."""
    table = _TABLE_LIST
    for byte in bytes(data):
        register = table[(register ^ byte) & 0xFF] ^ (register >> 8)
    return register


def _zeros_operator(n_bytes: int) -> list[int]:
    """Column k: the register that bit k of a register becomes after n_bytes zero bytes (the map is linear)."""
    registers = np.left_shift(np.uint32(1), np.arange(32, dtype=np.uint32))
    for _ in range(n_bytes):
        registers = _TABLE[registers & 0xFF] ^ (registers >> 8)
    return [int(value) for value in registers]


def _apply(columns: list[int], register: int) -> int:
    out = 0
    for bit, column in enumerate(columns):
        if register >> bit & 1:
            out ^= column
    return out


def crc32c(data) -> int:
    """CRC-32C of `data` (bytes-like), as TensorFlow and LevelDB compute it; crc32c(b"123456789") == 0xE3069283.

    Long inputs are cut into 1024 equal lanes whose registers advance together, one numpy step per byte
    position; since the register update is linear, the lanes are then joined by carrying each register over
    the zero bytes of the lanes after it (one 32x32 bit matrix, applied 1024 times).
    """
    view = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    register = 0xFFFFFFFF
    if len(view) >= _LANE_MIN_BYTES:
        lane_bytes = len(view) // _LANES
        lanes = view[:lane_bytes * _LANES].reshape(_LANES, lane_bytes).T.copy()
        registers = np.zeros(_LANES, dtype=np.uint32)
        for column in lanes:
            registers = _TABLE[(registers ^ column) & 0xFF] ^ (registers >> 8)
        carry = _zeros_operator(lane_bytes)
        for lane_register in registers:
            register = _apply(carry, register) ^ int(lane_register)
        view = view[lane_bytes * _LANES:]
    return _crc_register(register, view) ^ 0xFFFFFFFF


def mask_crc(crc: int) -> int:
    """The masked form stored in tables and bundles (so that a CRC of data holding CRCs stays informative)."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ---- protobuf wire format and the table -----------------------------------------------------------------------

class _Corrupt(ValueError):
    """A structural error, turned into one InputError line naming the file."""


def _varint(buffer: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if position >= len(buffer) or shift > 63:
            raise _Corrupt("a varint runs past its buffer")
        byte = buffer[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _fields(message: bytes):
    """(field number, value) pairs of a protobuf message: ints for varint/fixed fields, bytes for the others."""
    position = 0
    while position < len(message):
        key, position = _varint(message, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(message, position)
        elif wire_type in (1, 5):
            width = 8 if wire_type == 1 else 4
            value = int.from_bytes(message[position:position + width], "little")
            position += width
        elif wire_type == 2:
            length, position = _varint(message, position)
            value = message[position:position + length]
            position += length
        else:
            raise _Corrupt(f"protobuf wire type {wire_type} is not used by bundle entries")
        if position > len(message):
            raise _Corrupt("a protobuf field runs past its message")
        yield number, value


def _block(index: bytes, handle: bytes) -> bytes:
    """The contents of the block a handle points at, after checking its trailer."""
    offset, position = _varint(handle, 0)
    size, _ = _varint(handle, position)
    end = offset + size
    if end + BLOCK_TRAILER_BYTES > len(index) - FOOTER_BYTES:
        raise _Corrupt(f"a block ({offset}+{size} bytes) runs past the end of the table")
    contents, trailer = index[offset:end], index[end:end + BLOCK_TRAILER_BYTES]
    if trailer[0] != 0:
        raise _Corrupt(f"block compression type {trailer[0]} (only uncompressed tables are read)")
    if mask_crc(crc32c(contents + trailer[:1])) != int.from_bytes(trailer[1:], "little"):
        raise _Corrupt(f"the block at byte {offset} fails its CRC-32C check")
    return contents


def _block_entries(block: bytes):
    """(key, value) pairs of one block, undoing the prefix compression of the keys."""
    if len(block) < 4:
        raise _Corrupt("a block is shorter than its restart count")
    n_restarts = int.from_bytes(block[-4:], "little")
    limit = len(block) - 4 - 4 * n_restarts
    if limit < 0:
        raise _Corrupt("a block's restart array is longer than the block")
    position, key = 0, b""
    while position < limit:
        shared, position = _varint(block, position)
        unshared, position = _varint(block, position)
        value_length, position = _varint(block, position)
        if shared > len(key) or position + unshared + value_length > limit:
            raise _Corrupt("a block entry runs past its block")
        key = key[:shared] + block[position:position + unshared]
        position += unshared
        yield key, block[position:position + value_length]
        position += value_length


def _table_entries(index: bytes):
    if len(index) < FOOTER_BYTES:
        raise _Corrupt(f"{len(index)} bytes, shorter than a table footer")
    footer = index[-FOOTER_BYTES:]
    if int.from_bytes(footer[-8:], "little") != TABLE_MAGIC:
        raise _Corrupt("no table magic number at the end (not a checkpoint index, or cut off)")
    _, position = _varint(footer, 0)
    _, position = _varint(footer, position)   # skip the metaindex handle (bundles put nothing there)
    for _, handle in _block_entries(_block(index, footer[position:])):
        yield from _block_entries(_block(index, handle))


# ---- the bundle --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: int          # TensorFlow DataType enum value
    shape: tuple
    shard: int
    offset: int
    size: int
    crc32c: int         # masked, as stored


def _entry(name: str, message: bytes) -> TensorEntry:
    values = {"dtype": 0, "shape": (), "shard": 0, "offset": 0, "size": 0, "crc32c": 0}
    for number, value in _fields(message):
        if number == 1:
            values["dtype"] = value
        elif number == 2:
            dims = []
            for shape_field, dim in _fields(value):
                if shape_field == 2:
                    dims.append(next((_signed64(size) for field, size in _fields(dim) if field == 1), 0))
                elif shape_field == 3 and value:
                    raise _Corrupt(f"tensor {name!r} has an unknown rank")
            values["shape"] = tuple(dims)
        elif number in (3, 4, 5):
            values[{3: "shard", 4: "offset", 5: "size"}[number]] = _signed64(value)
        elif number == 6:
            values["crc32c"] = value
        elif number == 7:
            raise _Corrupt(f"tensor {name!r} is saved in slices (a partitioned variable), which is not read here")
    return TensorEntry(name=name, **values)


class TensorBundle:
    """The tensors of one checkpoint: `TensorBundle(prefix).read(name)` -> np.ndarray, CRC-checked."""

    def __init__(self, prefix, fix: str = DEFAULT_FIX):
        self.prefix = str(prefix)
        self.fix = fix
        index_path = Path(self.prefix + ".index")
        if not index_path.is_file():
            raise InputError(f"{index_path}: checkpoint index not found — {fix}")
        self.index_path = index_path
        try:
            entries = list(_table_entries(index_path.read_bytes()))
            header = dict(_fields(entries[0][1])) if entries and entries[0][0] == b"" else None
            if header is None:
                raise _Corrupt("no bundle header (the table's first key is not empty)")
            self.num_shards = header.get(1, 0)
            self.big_endian = header.get(2, 0) == 1
            if self.num_shards < 1:
                raise _Corrupt(f"the bundle header declares {self.num_shards} data shards")
            self.entries = {}
            for key, value in entries[1:]:
                entry = _entry(key.decode("utf-8"), value)
                if not 0 <= entry.shard < self.num_shards or entry.offset < 0 or entry.size < 0:
                    raise _Corrupt(f"tensor {entry.name!r} points at shard {entry.shard}, offset {entry.offset}")
                self.entries[entry.name] = entry
        except (_Corrupt, UnicodeDecodeError, IndexError) as error:
            raise InputError(f"{index_path}: corrupt checkpoint index ({error}) — {fix}") from None

    def data_path(self, shard: int) -> Path:
        return Path(f"{self.prefix}.data-{shard:05d}-of-{self.num_shards:05d}")

    def read(self, name: str) -> np.ndarray:
        entry = self.entries.get(name)
        if entry is None:
            raise InputError(f"{self.index_path}: no tensor {name!r} in this checkpoint — {self.fix}")
        path = self.data_path(entry.shard)
        if entry.dtype not in DTYPES:
            raise InputError(f"{self.index_path}: tensor {name!r} has TensorFlow dtype {entry.dtype}, which is not "
                             f"a numeric type this reader knows — {self.fix}")
        dtype = np.dtype(DTYPES[entry.dtype]).newbyteorder(">" if self.big_endian else "<")
        expected = dtype.itemsize * int(np.prod(entry.shape, dtype=np.int64))
        if entry.size != expected:
            raise InputError(f"{self.index_path}: tensor {name!r} declares {entry.size} bytes, but its shape "
                             f"{list(entry.shape)} needs {expected} — {self.fix}")
        try:
            with open(path, "rb") as handle:
                handle.seek(entry.offset)
                raw = handle.read(entry.size)
        except OSError as error:
            raise InputError(f"{path}: cannot read checkpoint data ({error.strerror or error}) — {self.fix}") from None
        if len(raw) != entry.size:
            raise InputError(f"{path}: tensor {name!r} needs bytes {entry.offset}..{entry.offset + entry.size}, "
                             f"the file ends before (truncated) — {self.fix}")
        if mask_crc(crc32c(raw)) != entry.crc32c:
            raise InputError(f"{path}: tensor {name!r} fails its CRC-32C check (corrupt data) — {self.fix}")
        return np.frombuffer(raw, dtype=dtype).reshape(entry.shape).astype(dtype.newbyteorder("="))
