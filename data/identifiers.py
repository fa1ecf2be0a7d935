"""Names that become paths: the one check every identifier a file or spec gives passes before it names a folder or
a file (prompt ids, intervention ids, concept names, embedding stems, NSynth note names).

A name is safe when it matches its kind's character set IN FULL (fullmatch: a trailing newline is not allowed, as
`$` would allow it), is not `.` or `..`, does not start with a dot (hidden files, and this project's temp files
`.<name>.~...tmp`), and is at most its kind's length (a file name stops at 255 bytes, and a temp file adds ~40
characters). `path_inside(root, name)` is then `root / name`, refused when that entry is a symlink leading out of
`root` (a planted link would make a stage read, write or delete outside --data).
"""
from __future__ import annotations

import re
from pathlib import Path

from data.files import link_out_of
from data.stage import InputError

# kind -> (allowed characters as a regex class body, at most this many characters)
DEFAULT_RULE = ("A-Za-z0-9_.+-", 150)
RULES = {
    # Prompt ids name an index part, an audio folder and every clip row; the documented rule since stage 1.
    "prompt_id": ("A-Za-z0-9_-", 100),
}
# Folder names the project uses beside identifiers: an intervention with one of these ids would share its folder.
RESERVED = {"intervention id": {"component-means"}}


def rule(kind: str) -> tuple[str, int]:
    return RULES.get(kind, DEFAULT_RULE)


def describe(kind: str) -> str:
    """The rule of a kind in words, for an error message."""
    characters, limit = rule(kind)
    return f"must match [{characters}]+ in full, not start with '.', at most {limit} characters"


def shown(value) -> str:
    """A value as an error shows it: quoted, escaped, cut after 40 characters."""
    if isinstance(value, str) and len(value) > 40:
        return repr(value[:40] + "…")
    return repr(value)


def name_problem(value, kind: str) -> str | None:
    """Why `value` is not a safe `kind` name, or None when it is."""
    if value is None or (isinstance(value, float) and value != value) or value == "":
        return f"empty {kind}"
    if not isinstance(value, str):
        return f"{kind} {shown(value)} is not text"
    characters, limit = rule(kind)
    if len(value) > limit:
        return f"{kind} {shown(value)} has {len(value)} characters (at most {limit} characters)"
    if not re.fullmatch(f"[{characters}]+", value) or value.startswith("."):
        return f"{kind} {shown(value)} {describe(kind)}"
    if value in RESERVED.get(kind, ()):
        return f"{kind} {shown(value)} is reserved (a folder of that name holds other outputs)"
    return None


def safe_name(value, kind: str, where, fix: str) -> str:
    """`value` when it is a safe `kind` name; else InputError '<where>: <why> — <fix>'."""
    problem = name_problem(value, kind)
    if problem:
        raise InputError(f"{where}: {problem} — {fix}")
    return value


def path_inside(root, name: str, kind: str, where, fix: str) -> Path:
    """root / name for a safe name; InputError when the name is unsafe or the entry is a symlink out of root."""
    root = Path(root)
    path = root / safe_name(name, kind, where, fix)
    target = link_out_of(path, root)
    if target is not None:
        raise InputError(f"{path}: is a symbolic link to {target}, outside {root} — remove the link")
    return path
