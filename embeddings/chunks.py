"""The embedding runner's files on disk: the chunk folder a run (or an array of shards) fills, and the row keys that
let a later run reuse the rows of an earlier output (data/ARTIFACTS.md, stages 3 and 5).

- `<name>.chunks/` holds chunk k (rows [k * chunk_rows, (k + 1) * chunk_rows)) as `<k:05d>.npy` and `manifest.json`,
  the provenance the chunks were made for plus `chunk_rows` and the number of `shards` that split them (chunk k
  belongs to shard k mod shards). A consumer that finds no matrix asks `unfinished(out_path)` which chunks are
  still missing and which shards own them.
- `<name>.rows.csv` (when the caller keys its rows): row i's `clip_key`, a digest of what made the clip. A later
  run over a grown or reordered table copies the vector of every row whose key it already has (same embedder, same
  settings: the sidecar's identity decides that) and embeds only the rest.
"""
from __future__ import annotations

import contextlib
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from data.contract import read_npy
from data.files import atomic_path, read_json, sha256_text, write_csv, write_npy
from data.provenance import Provenance, commit, decide, first_difference
from data.stage import InputError, Shard, file_lock, lock_path

MANIFEST = "manifest.json"
KEYS_COLUMNS = ("clip_key",)


def chunks_dir(out_path: Path) -> Path:
    return Path(out_path).with_name(Path(out_path).stem + ".chunks")


def chunk_name(k: int) -> str:
    return f"{k:05d}.npy"


def chunk_bounds(n_rows: int, chunk_rows: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk_rows, n_rows)) for start in range(0, n_rows, chunk_rows)]


def chunk_complete(path: Path, n_rows: int, dim: int) -> bool:
    if not path.is_file():
        return False
    try:
        chunk = read_npy(path, "", mmap_mode="r")
    except InputError:   # a chunk that is not a whole .npy (0 bytes, cut off, an .npz archive) is made again
        return False
    return chunk.dtype == np.float32 and chunk.shape == (n_rows, dim)


def read_json_or_none(path: Path) -> dict | None:
    try:
        payload = read_json(path)
    except (ValueError, OSError):
        return None
    return payload if isinstance(payload, dict) else None


@contextlib.contextmanager
def shared_state_lock(out_path: Path):
    """Held for moments: around the manifest check and the final assembly, which every shard may reach."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(lock_path(out_path.parent, out_path.stem + ".chunks")):
        yield


def open_chunks(folder: Path, prov: Provenance, chunk_rows: int, force: bool, shard: Shard) -> int:
    """Check leftover chunks against this run (under the shared lock); return the chunk size to use (a
    resumed run keeps its own). The manifest is data.provenance's rule applied to the partial results."""
    manifest = Provenance(sidecar=folder / MANIFEST, record=prov.record, outputs=[])
    if force:
        existing = read_json_or_none(manifest.sidecar)
        if (existing is None or first_difference(existing, prov.record, "") is not None
                or not isinstance(existing.get("chunk_rows"), int) or existing["chunk_rows"] < 1):
            shutil.rmtree(folder, ignore_errors=True)
        else:
            # Same settings: other shards' chunks stay; this shard's are made again.
            for k in range(math.ceil(prov.record["n_rows"] / existing["chunk_rows"])):
                if shard.owns(k):
                    (folder / chunk_name(k)).unlink(missing_ok=True)
    elif manifest.sidecar.exists():
        decide(manifest, False, "pass --force to discard those partial results (every shard with --force)")
    elif folder.exists():
        shutil.rmtree(folder)  # chunks no manifest describes: of unknown origin
    existing = read_json_or_none(manifest.sidecar)
    if existing is not None and isinstance(existing.get("chunk_rows"), int) and existing["chunk_rows"] >= 1:
        return existing["chunk_rows"]
    folder.mkdir(parents=True, exist_ok=True)
    commit(manifest, extra={"chunk_rows": chunk_rows, "shards": shard.count})
    return chunk_rows


def unfinished(out_path: Path) -> str | None:
    """When `out_path` is missing but a chunk folder is filling: 'N of M chunks missing (k, ...), owned by shard
    i/n'; None when there is no such folder."""
    manifest = read_json_or_none(chunks_dir(out_path) / MANIFEST)
    if manifest is None or not all(isinstance(manifest.get(key), int) for key in ("n_rows", "chunk_rows", "dim")):
        return None
    bounds = chunk_bounds(manifest["n_rows"], max(manifest["chunk_rows"], 1))
    missing = [k for k, (start, stop) in enumerate(bounds)
               if not chunk_complete(chunks_dir(out_path) / chunk_name(k), stop - start, manifest["dim"])]
    if not missing:
        return None
    shown = ", ".join(map(str, missing[:5])) + (", …" if len(missing) > 5 else "")
    text = f"{len(missing)} of {len(bounds)} chunks are missing ({shown})"
    shards = manifest.get("shards")
    if isinstance(shards, int) and shards > 1:
        owners = sorted({k % shards for k in missing})
        text += f", owned by shard{'s' if len(owners) > 1 else ''} " + ", ".join(str(Shard(o, shards)) for o in owners)
    return text


def concatenate(folder: Path, bounds, dim: int, out_path: Path, before_replace) -> None:
    """Stream the chunks into the final matrix through a memory map (the rows never sit in RAM together)."""
    n_rows = bounds[-1][1] if bounds else 0
    if n_rows == 0:
        write_npy(out_path, np.zeros((0, dim), dtype=np.float32), before_replace=before_replace)
        return
    with atomic_path(out_path, before_replace=before_replace) as tmp:
        matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n_rows, dim))
        for k, (start, stop) in enumerate(bounds):
            matrix[start:stop] = np.load(folder / chunk_name(k), allow_pickle=False)
        matrix.flush()
        del matrix


# -- row keys: reusing an earlier output's rows --------------------------------------------------------------------

def keys_path(out_path: Path) -> Path:
    return Path(out_path).with_suffix(".rows.csv")


def keys_sha256(row_keys) -> str:
    return sha256_text("\n".join(row_keys))


def write_keys(out_path: Path, row_keys) -> None:
    write_csv(keys_path(out_path), pd.DataFrame({"clip_key": list(row_keys)}, columns=list(KEYS_COLUMNS)))


def previous_rows(out_path: Path, stored: dict | None, dim: int) -> tuple[np.ndarray | None, dict[str, int]]:
    """The earlier output's matrix (memory-mapped) and {clip_key: its row}, when the output, its sidecar (`stored`,
    already found to be of this embedder configuration) and its keys file agree; else (None, {}): nothing is reused
    from an output that cannot vouch for its rows."""
    if stored is None:
        return None, {}
    try:
        matrix = read_npy(out_path, "", mmap_mode="r")
        keys = pd.read_csv(keys_path(out_path), dtype=str, keep_default_na=False)
    except (InputError, OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None, {}
    if (matrix.dtype != np.float32 or matrix.shape != (len(keys), dim) or list(keys.columns) != list(KEYS_COLUMNS)
            or stored.get("row_keys_sha256") != keys_sha256(keys["clip_key"])):
        return None, {}
    return matrix, {key: row for row, key in enumerate(keys["clip_key"])}


def check_row_keys(row_keys, n_rows: int) -> list[str]:
    row_keys = [str(key) for key in row_keys]
    if len(row_keys) != n_rows:
        raise ValueError(f"expected one row key per file ({n_rows}), got {len(row_keys)}")
    if len(set(row_keys)) != len(row_keys):
        raise InputError("two rows have the same clip key (the same clip listed twice) — fix the table the rows "
                         "come from")
    return row_keys
