"""Files that survive a kill: every artifact is written to a temp file beside it, fsynced, then renamed."""
import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
from pathlib import Path

import numpy as np


# Temp files are named .<target name>~<host>~<pid>~<random>.tmp: a later run on the same host can tell the
# leftovers of a killed writer (pid gone) from the live temp files of a concurrent shard (pid alive).
TEMP_SUFFIX = ".tmp"
_HOST = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"


def make_temp_file(path) -> Path:
    """Create an empty temp file beside `path` for an atomic write; the caller renames it over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}~{_HOST}~{os.getpid()}~", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def remove_stale_temp_files(root) -> list[Path]:
    """Delete temp files under `root` left by killed writers on this host; return them.

    Temp files of live processes and of other hosts (a shared cluster filesystem) are left alone."""
    removed = []
    for directory, _, names in os.walk(root):
        for name in names:
            if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)) or name.count("~") < 3:
                continue
            _, host, pid, _ = name.rsplit("~", 3)
            if host != _HOST or not pid.isdigit() or _process_alive(int(pid)):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))
                removed.append(Path(directory, name))
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temp path in the same directory; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_file(path)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def write_json(path, payload) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=_jsonable) + "\n")


def write_csv(path, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_npy(path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)


def read_json(path) -> dict:
    """Parse a JSON file; a key that appears twice in one object is an error (json would keep the last)."""
    return json.loads(Path(path).read_text(encoding="utf-8"), object_pairs_hook=unique_keys)


def unique_keys(pairs) -> dict:
    """json object_pairs_hook: the object as a dict, or ValueError naming a repeated key."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {key!r} appears twice in one object")
        result[key] = value
    return result


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
