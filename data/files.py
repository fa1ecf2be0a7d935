"""Files that survive a kill: every artifact is written to a temp file beside it, fsynced, then renamed."""
import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files 0600; artifacts get the mode open() would give them (0644 under the usual umask 022),
# so a lab group on a shared cluster can read each other's results. Read once: the umask is per process.
ARTIFACT_MODE = 0o666 & ~_current_umask()
TEMP_SUFFIX = ".tmp"


def temp_prefix(path) -> str:
    """Temp files of `path` are named .<name>.<random>.tmp beside it (stale_temps finds them after a kill)."""
    return f".{Path(path).name}."


@contextlib.contextmanager
def atomic_path(path, fsync: bool = True, before_replace=None):
    """Yield a temp path in the same directory; on success it replaces `path` in one rename.

    fsync=False skips the flush to disk for many small files (a killed process loses nothing, the page cache
    survives it; only an OS crash can), when the caller syncs once at the end instead. before_replace() runs
    once the new content is safely written, just before the rename (e.g. data.contract.begin: the old
    sidecar goes only when the old output really is about to be replaced, not when a full disk stops the run).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, ARTIFACT_MODE)
    finally:
        os.close(fd)
    try:
        yield Path(tmp)
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temps(directory, names=None) -> int:
    """Delete temp files a killed run left in `directory` (only those of `names`, when given); returns how many.
    Call it only while holding the stage's lock: another live run's temp files look the same."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    prefixes = None if names is None else tuple(temp_prefix(name) for name in names)
    removed = 0
    for stale in directory.glob(f".*{TEMP_SUFFIX}"):
        if prefixes is None or stale.name.startswith(prefixes):
            stale.unlink(missing_ok=True)
            removed += 1
    return removed


def write_text(path, text: str, before_replace=None) -> None:
    with atomic_path(path, before_replace=before_replace) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def write_json(path, payload, before_replace=None) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=_jsonable) + "\n", before_replace)


def write_csv(path, frame, before_replace=None) -> None:
    with atomic_path(path, before_replace=before_replace) as tmp:
        frame.to_csv(tmp, index=False)


def write_npy(path, array: np.ndarray, before_replace=None) -> None:
    with atomic_path(path, before_replace=before_replace) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)


def read_json(path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def sha256_file(path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_json(payload) -> str:
    return sha256_text(json.dumps(payload, sort_keys=True, default=_jsonable))


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
