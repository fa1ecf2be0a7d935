"""Readers that check every artifact against data/ARTIFACTS.md and fail with one actionable line."""
import contextlib
import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from data.files import _jsonable, read_json, sha256_text, write_json
from data.stage import InputError
from data.vocabulary import VOCABULARY, parse_labels

PROMPT_ID = re.compile(r"^[A-Za-z0-9_-]+$")

PROMPTS_COLUMNS = ("prompt_id", "prompt", "origin")
ANNOTATED_COLUMNS = ("prompt_id", "prompt", "labels", "bpm", "annotator")
INDEX_COLUMNS = ("prompt_id", "sample", "step", "sigma", "kind", "seed", "seconds_total", "sample_rate", "path")
# Intervened runs (issue 11) live in generated/interventions/<id>/ with the same parts; the reader adds them as
# ordinary rows whose `intervention` is that id ("" for the reference run) and whose path is relative to generated/.
INTERVENTION_COLUMN = "intervention"
INDEX_ORDER = ["intervention", "prompt_id", "sample", "kind", "step"]
NOTES_COLUMNS = ("note_str", "instrument_str", "family", "source", "qualities", "pitch", "velocity", "split", "path")
SETS_COLUMNS = ("concept", "note_str", "label", "split")
# Keys of an embedder's provenance that must agree between stage 3 and stage 5 outputs.
EMBEDDER_IDENTITY = ("embedder", "model", "checkpoint_sha256", "window_policy", "dim")


def prompts_csv(data: Path) -> Path:
    return Path(data) / "prompts" / "prompts.csv"


def annotated_csv(data: Path) -> Path:
    return Path(data) / "prompts" / "annotated.csv"


def generated_dir(data: Path) -> Path:
    return Path(data) / "generated"


def concepts_dir(data: Path) -> Path:
    return Path(data) / "concepts"


def read_table(path, columns, fix: str, dtype=None) -> pd.DataFrame:
    """Read a CSV and check it exists, is non-empty and has the contract's columns."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: missing — {fix}")
    try:
        frame = pd.read_csv(path, dtype=dtype, keep_default_na=False, na_values=[""])
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a readable CSV ({str(error).splitlines()[0]}) — {fix}") from None
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise InputError(f"{path}: column '{missing[0]}' is missing (expected {', '.join(columns)}) — {fix}")
    if frame.empty:
        raise InputError(f"{path}: has no rows — {fix}")
    return frame


def _row(index, path=None) -> int:
    """The line of the file where data row `index` (as pandas numbered it) starts: what an editor shows.

    pandas skips blank lines and a quoted field may span lines, so index + 2 is right only for plain files;
    the file is re-read (only when an error is reported) to count its lines the way pandas read them.
    """
    if path is not None:
        with contextlib.suppress(OSError, UnicodeDecodeError, csv.Error):
            with open(path, newline="", encoding="utf-8") as handle:
                reader = csv.reader(handle)
                starts, previous_end = [], 0
                for record in reader:
                    if record:  # csv yields [] for a blank line, which pandas skips
                        starts.append(previous_end + 1)
                    previous_end = reader.line_num
                if int(index) + 1 < len(starts):
                    return starts[int(index) + 1]  # starts[0] is the header
    return int(index) + 2


def check_prompt_ids(frame: pd.DataFrame, path, fix: str) -> None:
    for index, prompt_id in frame["prompt_id"].items():
        if not isinstance(prompt_id, str) or not PROMPT_ID.match(prompt_id):
            raise InputError(f"{path} row {_row(index, path)}: prompt_id {prompt_id!r} must match [A-Za-z0-9_-]+ — {fix}")
    duplicated = frame["prompt_id"].duplicated()
    if duplicated.any():
        index = duplicated.idxmax()
        raise InputError(f"{path} row {_row(index, path)}: duplicate prompt_id '{frame.at[index, 'prompt_id']}' — {fix}")
    for index, prompt in frame["prompt"].items():
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"{path} row {_row(index, path)}: empty prompt — {fix}")


def read_prompts(data: Path, fix: str = "rerun stage 1 with --force") -> pd.DataFrame:
    path = prompts_csv(data)
    frame = read_table(path, PROMPTS_COLUMNS, fix, dtype={"prompt_id": str, "prompt": str, "origin": str})
    check_prompt_ids(frame, path, fix)
    return frame


def read_annotated(data: Path, fix: str = "fix the row or rerun stage 1 with --force") -> pd.DataFrame:
    """Annotated prompts with `labels` parsed into lists and `bpm` as nullable Int64."""
    path = annotated_csv(data)
    frame = read_table(path, ANNOTATED_COLUMNS, fix,
                       dtype={"prompt_id": str, "prompt": str, "labels": str, "annotator": str})
    check_prompt_ids(frame, path, fix)
    parsed = []
    for index, text in frame["labels"].items():
        try:
            parsed.append(parse_labels(text))
        except ValueError as error:
            raise InputError(f"{path} row {_row(index, path)}: {error} ({', '.join(VOCABULARY)}) — {fix}") from None
    frame["labels"] = parsed
    bpm = pd.to_numeric(frame["bpm"], errors="coerce")
    bad = frame["bpm"].notna() & (bpm.isna() | (bpm % 1 != 0) | (bpm < 20) | (bpm > 400))
    if bad.any():
        index = bad.idxmax()
        raise InputError(f"{path} row {_row(index, path)}: bpm {frame.at[index, 'bpm']!r} is not an integer in 20–400 — {fix}")
    frame["bpm"] = bpm.astype("Int64")
    return frame


def table_sha256(frame: pd.DataFrame) -> str:
    """Hash of a table's canonical CSV text: identifies which rows an embedding matrix is aligned with."""
    return sha256_text(frame.to_csv(index=False, lineterminator="\n"))


def read_generated_index(data: Path, fix: str = "rerun stage 2 (add --force if its outputs are corrupt)") -> pd.DataFrame:
    """The union of index parts, sorted by prompt_id, sample, kind, step."""
    index_dir = generated_dir(data) / "index"
    parts = sorted(index_dir.glob("*.csv")) if index_dir.is_dir() else []
    if not parts:
        raise InputError(f"{index_dir}: no index parts — run stage 2 first")
    frames = [read_table(part, INDEX_COLUMNS, fix, dtype={"prompt_id": str, "kind": str, "path": str})
              .assign(**{INTERVENTION_COLUMN: ""}) for part in parts]
    for run_index in sorted((generated_dir(data) / "interventions").glob("*/index")):
        identifier = run_index.parent.name
        for part in sorted(run_index.glob("*.csv")):
            part_frame = read_table(part, INDEX_COLUMNS, fix, dtype={"prompt_id": str, "kind": str, "path": str})
            frames.append(part_frame.assign(**{INTERVENTION_COLUMN: identifier,
                                               "path": f"interventions/{identifier}/" + part_frame["path"]}))
    frame = pd.concat(frames, ignore_index=True)[[*INDEX_COLUMNS, INTERVENTION_COLUMN]]
    for column in ("sample", "step", "seed", "sample_rate"):
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.isna().any():
            raise InputError(f"{index_dir}: column '{column}' has a non-integer value "
                             f"(prompt {frame.at[values.isna().idxmax(), 'prompt_id']}) — {fix}")
        frame[column] = values.astype(np.int64)
    frame["sigma"] = pd.to_numeric(frame["sigma"], errors="coerce")
    frame["seconds_total"] = pd.to_numeric(frame["seconds_total"], errors="coerce")
    bad_kind = ~frame["kind"].isin(["x0", "xt"])
    if bad_kind.any():
        raise InputError(f"{index_dir}: kind {frame.at[bad_kind.idxmax(), 'kind']!r} is not x0 or xt — {fix}")
    duplicated = frame.duplicated(INDEX_ORDER)
    if duplicated.any():
        row = frame.loc[duplicated.idxmax()]
        raise InputError(f"{index_dir}: clip ({row.prompt_id}, sample {row['sample']}, {row.kind}, step {row.step}) "
                         f"appears twice — remove the stale part and rerun stage 2")
    return frame.sort_values(INDEX_ORDER, kind="stable").reset_index(drop=True)


def read_notes(data: Path, fix: str = "rerun stage 4 with --force") -> pd.DataFrame:
    path = concepts_dir(data) / "notes.csv"
    frame = read_table(path, NOTES_COLUMNS, fix, dtype={"note_str": str, "instrument_str": str, "family": str,
                                                         "source": str, "qualities": str, "split": str, "path": str})
    frame["qualities"] = frame["qualities"].fillna("")
    bad = ~frame["split"].isin(["train", "test"])
    if bad.any():
        raise InputError(f"{path} row {_row(bad.idxmax(), path)}: split must be train or test — {fix}")
    if frame["note_str"].duplicated().any():
        raise InputError(f"{path} row {_row(frame['note_str'].duplicated().idxmax(), path)}: duplicate note_str — {fix}")
    return frame


def read_sets(data: Path, fix: str = "rerun stage 4 with --force") -> pd.DataFrame:
    path = concepts_dir(data) / "sets.csv"
    frame = read_table(path, SETS_COLUMNS, fix, dtype={"concept": str, "note_str": str, "split": str})
    bad = ~frame["label"].isin([0, 1])
    if bad.any():
        raise InputError(f"{path} row {_row(bad.idxmax(), path)}: label must be 0 or 1 — {fix}")
    return frame


def read_embeddings(npy_path, n_rows: int, rows_sha256: str, rows_key: str, fix: str) -> tuple[np.ndarray, dict]:
    """Load an embedding matrix and its sidecar; check dtype, shape and that it was made for these rows."""
    npy_path = Path(npy_path)
    sidecar_path = npy_path.with_suffix(".json")
    if not npy_path.is_file() or not sidecar_path.is_file():
        raise InputError(f"{npy_path}: missing (or its .json sidecar is) — {fix}")
    try:
        matrix = np.load(npy_path, mmap_mode="r", allow_pickle=False)
        sidecar = read_json(sidecar_path)
    except (ValueError, OSError) as error:
        raise InputError(f"{npy_path}: unreadable ({str(error).splitlines()[0]}) — {fix}") from None
    if matrix.dtype != np.float32 or matrix.ndim != 2:
        raise InputError(f"{npy_path}: expected float32 [rows, dim], found {matrix.dtype} {list(matrix.shape)} — {fix}")
    if matrix.shape[0] != n_rows:
        raise InputError(f"{npy_path}: {matrix.shape[0]} rows but its table has {n_rows} — {fix}")
    if sidecar.get(rows_key) != rows_sha256:
        raise InputError(f"{npy_path}: made for different rows than the current table ({rows_key} differs) — {fix}")
    if sidecar.get("dim") not in (None, matrix.shape[1]):
        raise InputError(f"{npy_path}: sidecar says dim {sidecar.get('dim')} but the matrix has {matrix.shape[1]} — {fix}")
    return np.asarray(matrix), sidecar


def read_sidecar(path, missing_fix: str, fix: str) -> dict:
    """A provenance JSON another stage wrote: missing -> missing_fix, unparsable or not an object -> fix."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: missing — {missing_fix}")
    try:
        payload = read_json(path)
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({str(error).splitlines()[0]}) — {fix}") from None
    if not isinstance(payload, dict):
        raise InputError(f"{path}: expected a JSON object — {fix}")
    return payload


def check_same_embedder(first: dict, first_path, second: dict, second_path) -> None:
    """Stage 6 compares generated and NSynth embeddings: they must come from the very same embedder."""
    for key in EMBEDDER_IDENTITY:
        if first.get(key) != second.get(key):
            raise InputError(f"{second_path}: {key} is {second.get(key)!r} but {first_path} has {first.get(key)!r} "
                             "— embed both with the same embedder (rerun stage 3 or 5 with --force)")


def check_provenance(sidecar_path, expected: dict, keys, fix: str) -> None:
    """Refuse to add to outputs made with other settings (a resumed run must match the run it resumes)."""
    sidecar_path = Path(sidecar_path)
    if not sidecar_path.is_file():
        return
    existing = read_json(sidecar_path)
    for key in keys:
        if key in existing and existing[key] != expected.get(key):
            raise InputError(f"{sidecar_path}: existing outputs were made with {key}={existing[key]!r}, "
                             f"this run asks for {expected.get(key)!r} — {fix}")


# ---- provenance: the one rule for "done / redo / refuse" that every stage follows ---------------------------

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
        raise InputError(f"{path}: sidecar is not valid JSON ({str(error).splitlines()[0]}) — {fix}") from None
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
