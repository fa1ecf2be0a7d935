"""The provenance rule every stage follows: when existing outputs are done, when they are redone, and when a run is
refused because they were made from other inputs or settings (data/ARTIFACTS.md, "Provenance")."""
import json
from dataclasses import dataclass, field
from pathlib import Path

from data.contract import first_line
from data.files import _jsonable, read_json, write_json
from data.stage import InputError


@dataclass
class Provenance:
    """What a stage's outputs were made from, and where that is written down.

    sidecar: the JSON written LAST, next to the outputs (its presence says the outputs are finished).
    record:  everything that changes the outputs, e.g. {"inputs": {name: sha256}, "settings": {...}}.
    outputs: the files that must exist for the work to count as done.
    """
    sidecar: Path
    record: dict
    outputs: list = field(default_factory=list)

    def __post_init__(self):
        self.sidecar = Path(self.sidecar)
        self.outputs = [Path(path) for path in self.outputs]
        # Compare as the JSON file will read back (tuples become lists, numpy scalars plain numbers).
        self.record = json.loads(json.dumps(self.record, default=_jsonable))


def decide(prov: Provenance, force: bool, fix: str) -> bool:
    """True: the outputs are done (skip). False: (re)do them, then call commit(prov).

    Refuses (InputError naming the sidecar and the first differing key) when existing outputs were made from
    other inputs or settings and force is not set; mixing or silently replacing them is never right.
    A sidecar that is not a JSON object is refused (it is corrupt or hand-made: the outputs are unexplained).
    Writes nothing: a run that then stops on bad input has changed nothing (see begin()).
    """
    if force:
        return False
    existing = read_provenance(prov.sidecar, f"delete it, or rerun with --force — {fix}")
    if existing is None:
        return False
    found = first_difference(existing, prov.record, "")
    if found:
        key, was, now = found
        raise InputError(f"{prov.sidecar}: existing outputs were made with {key}={_shown(was)}, this run has "
                         f"{_shown(now)} — {fix}")
    return all(path.exists() for path in prov.outputs)


def begin(prov: Provenance) -> None:
    """Call right before the first output is replaced (data.files writers take it as before_replace, so it
    runs after the new content is safely on disk): drops the old sidecar, so that a run killed from here on
    leaves outputs that no sidecar describes (redone or refused next time, never taken as done)."""
    prov.sidecar.unlink(missing_ok=True)


def commit(prov: Provenance, extra: dict | None = None) -> None:
    """Write the sidecar (record + extra) atomically; call it after every output is in place."""
    missing = [path for path in prov.outputs if not path.exists()]
    if missing:
        raise RuntimeError(f"commit({prov.sidecar}) before its output {missing[0]} was written")
    clash = sorted(set(extra or {}) & set(prov.record))
    if clash:
        raise RuntimeError(f"commit({prov.sidecar}): extra key {clash[0]!r} would overwrite the record")
    write_json(prov.sidecar, {**prov.record, **(extra or {})})


def read_provenance(path, fix: str) -> dict | None:
    """A sidecar as a dict; None when it does not exist; InputError when it is unreadable or not an object."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        payload = read_json(path)
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: sidecar is not valid JSON ({first_line(error)}) — {fix}") from None
    except IsADirectoryError:
        raise InputError(f"{path}: sidecar is a directory — {fix}") from None
    if not isinstance(payload, dict):
        raise InputError(f"{path}: sidecar is a JSON {type(payload).__name__}, not an object — {fix}")
    return payload


def first_difference(was, now, path: str):
    """(dotted key, old value, new value) of the first key of `now` whose value differs in `was`, else None.

    Keys only in `was` are ignored: a sidecar also holds facts about the outputs (counts, hashes) that are
    not part of what made them.
    """
    if isinstance(now, dict):
        if not isinstance(was, dict):
            return (path or "<record>", was, now)
        for key in now:
            found = first_difference(was.get(key, _MISSING), now[key], f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    return None if was == now else (path, was, now)


class _Missing:
    def __repr__(self):
        return "<absent>"


_MISSING = _Missing()


def _shown(value) -> str:
    """One short token: hashes by their first 12 digits, long values cut, so the error stays on one line."""
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return repr(value[:12] + "…")
    text = repr(value) if not isinstance(value, _Missing) else "<absent>"
    text = " ".join(text.split())
    return text if len(text) <= 80 else text[:77] + "…"
