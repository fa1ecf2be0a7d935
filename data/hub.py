"""What every backend that takes `--model` (a local directory or a hub id) shares: telling the two apart, one
actionable line for a failed Hugging Face hub load, and the one rule for a checkpoint's identity.

Checkpoint identity (`checkpoint_sha256`, the provenance key of every generator and embedder that loads weights):
sha256 over one line `<path relative to the model directory>\0<sha256 of the file>\n` per file the loader reads
(`loaded_files`), in path order. Files the loader never reads (a model card, another weight format, a variant) do
not change it, so a full hub snapshot and a save_pretrained copy of the same weights hash alike. Files in the
Hugging Face cache are symlinks to blobs named by their own sha256 (LFS files): that name is the file's hash, read
in no time; other files are hashed once and the digest cached by (real path, size, mtime) under
$XDG_CACHE_HOME/musicologist/, so a multi-GB local checkpoint is read once.
"""
import hashlib
import os
import re
from pathlib import Path
from typing import Iterable

from data.files import read_json, sha256_file, write_json
from data.stage import InputError

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
# What from_pretrained reads from a model folder besides its weights: configs, tokenizer files and the index of
# sharded weights. READMEs, images and the like are never read.
READ_SUFFIXES = (".json", ".model", ".txt")
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def local_model_dir(model: str, example_hub_id: str) -> Path | None:
    """The directory `model` names, or None when it is a hub id to fetch; one-line errors for anything else."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(f"{model}: is a file, not a model directory — pass the directory save_pretrained wrote "
                             f"or a hub id such as {example_hub_id}")
        return path
    if not REPO_ID.match(model) or model.startswith((".", "/", "~")):
        raise InputError(f"{model}: no such directory — pass an existing model directory or a hub id such as "
                         f"{example_hub_id}")
    return None


def hub_error_message(model: str, error: BaseException) -> str | None:
    """One actionable line for a hub failure anywhere in the exception chain, or None if it is not one."""
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError)

    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    if any(isinstance(item, GatedRepoError) for item in chain):
        return (f"{model}: access to this gated repository was denied — accept its licence at "
                f"https://huggingface.co/{model} and set HF_TOKEN (or run `hf auth login`)")
    if any(isinstance(item, RepositoryNotFoundError) for item in chain):
        return (f"{model}: no such repository on the Hugging Face hub, or it is private — check the id, "
                "set HF_TOKEN, or pass a local directory")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if offline or any(isinstance(item, (OfflineModeIsEnabled, LocalEntryNotFoundError)) for item in chain):
        from huggingface_hub.constants import HF_HUB_CACHE

        why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
        return (f"{model}: not in the Hugging Face cache ({HF_HUB_CACHE}) and {why} — download it once online "
                f"(`hf download {model}`, with HF_TOKEN for gated repos) or pass a local directory")
    if any(isinstance(item, (ConnectionError, TimeoutError)) or "connect" in type(item).__name__.lower()
           for item in chain):
        return f"{model}: cannot reach the Hugging Face hub ({chain[-1]}) — check the network or pass a local directory"
    return None


def loaded_files(folder) -> list[Path]:
    """The files a transformers or diffusers from_pretrained reads from one model folder: its configs and tokenizer
    files, and one weight format — safetensors when the folder has any (what the libraries then load), else .bin —
    without variant files (name.<variant>.safetensors: no loader here asks for a variant). Hidden files and
    folders (a download tool's metadata) are skipped."""
    folder = Path(folder)
    present = sorted(path for path in folder.rglob("*") if path.is_file()
                     and not any(part.startswith(".") for part in path.relative_to(folder).parts))
    weights = {suffix: [path for path in present if path.name.endswith(suffix) and "." not in path.name[:-len(suffix)]]
               for suffix in WEIGHT_SUFFIXES}
    return sorted([path for path in present if path.suffix in READ_SUFFIXES] + (weights[".safetensors"]
                                                                               or weights[".bin"]))


def checkpoint_sha256(model_dir, files: Iterable[Path]) -> str:
    """The identity of a checkpoint: sha256 over (path relative to model_dir, file sha256) of `files` (module
    docstring)."""
    model_dir = Path(model_dir)
    digest = hashlib.sha256()
    for path in sorted(Path(file) for file in files):
        digest.update(f"{path.relative_to(model_dir).as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """A file's sha256: its hub blob's name when it is one, else read once and cached (module docstring)."""
    real = Path(os.path.realpath(path))
    if HEX64.match(real.name):
        return real.name
    stat = real.stat()
    key = f"{real}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_path = hash_cache_path()
    try:
        cache = read_json(cache_path) if cache_path.is_file() else {}
    except (ValueError, OSError):
        cache = {}  # a torn cache is only a lost shortcut
    if not isinstance(cache, dict):
        cache = {}
    if key not in cache:
        cache[key] = sha256_file(real)
        try:
            write_json(cache_path, cache)
        except OSError:
            pass  # a read-only home still loads the model; it just hashes again next time
    return cache[key]


def hash_cache_path() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "musicologist" / "checkpoint_sha256.json"
