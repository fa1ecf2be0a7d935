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


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files 0600; artifacts get the mode open() would give them (0644 under the usual umask 022),
# so a lab group on a shared cluster can read each other's results. Read once: the umask is per process.
ARTIFACT_MODE = 0o666 & ~_current_umask()
TEMP_SUFFIX = ".tmp"
# After the prefix, a temp file's name holds its writer: .<name>.~<host>~<pid>~<random>.tmp, so a later run on the
# same host can tell the leftovers of a killed writer (pid gone) from the live temp files of a concurrent one.
_HOST = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"


def temp_prefix(path) -> str:
    """Temp files of `path` are named .<name>.<random>.tmp beside it (stale_temps finds them after a kill)."""
    return f".{Path(path).name}."


def make_temp_file(path) -> Path:
    """Create an empty temp file beside `path` (mode as open() would give) for an atomic write over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{temp_prefix(path)}~{_HOST}~{os.getpid()}~", suffix=TEMP_SUFFIX,
                               dir=path.parent)
    try:
        os.fchmod(fd, ARTIFACT_MODE)
    finally:
        os.close(fd)
    return Path(tmp)


def remove_dead_writers_temps(root) -> list[Path]:
    """Delete temp files anywhere under `root` whose writer ran on this host and is gone; return them.

    Safe without a lock: temp files of live processes, and of other hosts (a shared cluster filesystem), stay."""
    removed = []
    for directory, _, names in os.walk(root):
        for name in names:
            if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)) or name.count("~") < 3:
                continue
            _, host, pid, _ = name.rsplit("~", 3)
            if host != _HOST or not pid.isdigit() or _process_alive(int(pid)):
                continue
            with contextlib.suppress(OSError):  # gone already, or a read-only folder: leave it
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
def atomic_path(path, fsync: bool = True, before_replace=None):
    """Yield a temp path in the same directory; on success it replaces `path` in one rename.

    fsync=False skips the flush to disk for many small files (a killed process loses nothing, the page cache
    survives it; only an OS crash can), when the caller syncs once at the end instead. before_replace() runs
    once the new content is safely written, just before the rename (e.g. data.provenance.begin: the old
    sidecar goes only when the old output really is about to be replaced, not when a full disk stops the run).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_file(path)
    try:
        yield Path(tmp)
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except OSError as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        # A write or sync that failed (a full disk) names no file, or the temp file: name the artifact instead.
        if error.filename in (None, str(tmp)):
            error.filename = str(path)
        raise
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
    """Parse a JSON file; a key that appears twice in one object is an error (json would keep the last)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except RecursionError:
        raise ValueError("nested too deeply to parse") from None


def read_yaml(path):
    """Parse a YAML file with pyyaml's safe loader, refusing like read_json: a key that appears twice in one mapping
    (pyyaml would keep the last) or nesting too deep to parse is a ValueError, as is a YAML syntax error.
    pyyaml is optional: ImportError when it is not installed."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen = set()
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=True)
                    if key in seen:
                        raise ValueError(f"key {key!r} appears twice in one mapping")
                    seen.add(key)
            return super().construct_mapping(node, deep)

    text = Path(path).read_text(encoding="utf-8")
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except RecursionError:
        raise ValueError("nested too deeply to parse") from None
    except yaml.YAMLError as error:
        raise ValueError(f"not valid YAML: {' '.join(str(error).split())}") from None
    except TypeError as error:  # an unhashable key (a list or mapping used as a key)
        raise ValueError(f"not a plain YAML mapping: {error}") from None


def unique_keys(pairs) -> dict:
    """json object_pairs_hook: the object as a dict, or ValueError naming a repeated key."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {key!r} appears twice in one object")
        result[key] = value
    return result


def link_out_of(path, root) -> Path | None:
    """Where `path` leads when it is a symbolic link to a place outside `root` (both resolved), else None: the one
    test behind every "no link out of its folder" refusal (data/identifiers.py path_inside, data/stage.py)."""
    if not os.path.islink(path):
        return None
    target = Path(os.path.realpath(path))
    return None if target.is_relative_to(Path(os.path.realpath(root))) else target


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
