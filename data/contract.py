"""Readers that check every artifact against data/ARTIFACTS.md and fail with one actionable line."""
import contextlib
import csv
import re
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from data.concepts import CONCEPT_NAMES
from data.files import read_json, sha256_text
from data.identifiers import name_problem, safe_name
from data.parts import GENERATION_JSON, INTERVENTION_JSON, check_parts_current, record_sha256
from data.stage import InputError
from data.vocabulary import FAMILIES, QUALITIES, SOURCES, VOCABULARY, parse_labels

# Control characters other than whitespace (a NUL, an escape sequence) have no place in a text prompt.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# A clip or note may be this much shorter than its declared length (seconds × rate) before it is refused:
# 1 % absorbs a decoder's rounding to whole latent frames; a cut-off copy is far shorter.
LENGTH_TOLERANCE = 0.01

PROMPTS_COLUMNS = ("prompt_id", "prompt", "origin")
ANNOTATED_COLUMNS = ("prompt_id", "prompt", "labels", "bpm", "annotator")
INDEX_COLUMNS = ("prompt_id", "sample", "step", "sigma", "kind", "seed", "seconds_total", "sample_rate", "path")
# Intervened runs live in generated/interventions/<id>/ (data/interventions.py) with the same parts; the reader
# adds them as ordinary rows whose `intervention` is that id ("" for the reference run) and whose path is relative
# to generated/.
INTERVENTION_COLUMN = "intervention"
INDEX_ORDER = ["intervention", "prompt_id", "sample", "kind", "step"]
NOTES_COLUMNS = ("note_str", "instrument_str", "family", "source", "qualities", "pitch", "velocity", "split", "path")
# Written by stage 4 after NOTES_COLUMNS; optional for readers (a notes.csv without them has single notes only).
NOTES_PART_COLUMNS = ("program", "parts")
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


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type when the message is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# Largest CSV field read at all (64 MiB); anything bigger is refused as unreadable.
MAX_FIELD_CHARACTERS = 1 << 26


def _record_lines(path: Path, fix: str) -> list[int]:
    """Line number (header = 1) of each non-blank record, after checking every record has the header's fields.

    pandas would silently pad a short row with NaN, or turn the first column into the index when a row has one
    field too many (an unquoted comma), so the shape is checked here, by the csv module, line by line."""
    lines = []
    # The csv module stops at fields over 128 KiB; raise that cap so an over-long prompt reaches the check that
    # names the limit (MAX_PROMPT_CHARACTERS) instead of a parser error. Reading stays linear in the file size.
    csv.field_size_limit(max(csv.field_size_limit(), MAX_FIELD_CHARACTERS))
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header:
                raise InputError(f"{path}: not a readable CSV (empty: no header row) — {fix}")
            start = reader.line_num + 1
            for record in reader:
                if record:
                    if len(record) != len(header):
                        raise InputError(f"{path} row {start}: {len(record)} fields but the header has {len(header)} "
                                         f"(a comma inside a field must be quoted) — {fix}")
                    lines.append(start)
                start = reader.line_num + 1
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text ({first_line(error)}) — {fix}") from None
    except csv.Error as error:
        reason = first_line(error)
        if "field limit" in reason:
            reason = f"a field longer than {csv.field_size_limit()} characters"
        raise InputError(f"{path} row {start}: not a readable CSV row ({reason}) — {fix}") from None
    return lines


class _Lines(tuple):
    """Row line numbers. pandas deep-copies attrs into every derived frame: these never change, so no copy."""
    def __deepcopy__(self, memo):
        return self


def run_first(data, stage: int) -> str:
    """The fix for a missing upstream file: run the stage that writes it (not "rerun with --force": it has simply
    not run), and when --data holds no stage output at all, say that --data may be the wrong folder."""
    fix = f"run stage {stage} first"
    if not any((Path(data) / folder).exists() for folder in ("prompts", "generated", "concepts", "results")):
        fix += f" (--data {data} holds no stage outputs: is it the folder you meant?)"
    return fix


def read_table(path, columns, fix: str, dtype=None, missing_fix: str | None = None) -> pd.DataFrame:
    """Read a CSV and check it exists, is non-empty, is well formed and has the contract's columns.

    A row whose every field is empty (",,") is refused as such.
    frame.attrs["lines"] holds each row's line number in the file, so errors point at the line a person sees
    even after blank lines. `missing_fix`: the fix when the file does not exist (default `fix`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: missing — {missing_fix or fix}")
    lines = _record_lines(path, fix)
    try:
        frame = pd.read_csv(path, dtype=dtype, keep_default_na=False, na_values=[""])
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise InputError(f"{path}: not a readable CSV ({first_line(error)}) — {fix}") from None
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise InputError(f"{path}: column '{missing[0]}' is missing (expected {', '.join(columns)}) — {fix}")
    if frame.empty:
        raise InputError(f"{path}: has no rows — {fix}")
    if len(lines) == len(frame):
        frame.attrs["lines"] = _Lines(lines)
    blank = frame.isna().all(axis=1)
    if blank.any():
        raise InputError(f"{path} row {_row(blank.idxmax(), frame)}: the row is empty (every field is blank) — "
                         f"delete the row ({fix})")
    return frame


# Prompts are a sentence or a paragraph (MusicCaps captions average ~300 characters, text-to-music encoders
# truncate at 128-512 tokens); a longer one is a mistake or an attack, refused before anyone annotates it.
MAX_PROMPT_CHARACTERS = 2000


def _row(index, source=None) -> int:
    """The line of the file where data row `index` (as pandas numbered it) starts: what an editor shows.

    `source` is the frame read_table returned (it knows its lines) or the CSV's path (re-read, only when an
    error is reported, to count lines the way pandas read them: blank lines skipped, quoted fields spanning
    lines). index + 2 is the fallback, right for plain files."""
    if isinstance(source, pd.DataFrame):
        lines = source.attrs.get("lines")
        if lines is not None and 0 <= int(index) < len(lines):
            return lines[int(index)]
    elif source is not None:
        with contextlib.suppress(OSError, UnicodeDecodeError, csv.Error):
            with open(source, newline="", encoding="utf-8") as handle:
                reader = csv.reader(handle)
                starts, previous_end = [], 0
                for record in reader:
                    if record:  # csv yields [] for a blank line, which pandas skips
                        starts.append(previous_end + 1)
                    previous_end = reader.line_num
                if int(index) + 1 < len(starts):
                    return starts[int(index) + 1]  # starts[0] is the header
    return int(index) + 2


def relative_path(value, root: Path, where: str, fix: str) -> Path:
    """`root / value` for a path an artifact stores relative to `root`; refuse one that leaves it.

    The check is on the text (absolute, empty, or with a '..' part), not on the resolved file, so a --data
    folder that is itself a symlink, or holds symlinked audio folders, keeps working."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: empty path — {fix}")
    text = value.replace("\\", "/")
    relative = PurePosixPath(text)
    if relative.is_absolute() or re.match(r"[A-Za-z]:", text) or ".." in relative.parts or "\0" in text:
        raise InputError(f"{where}: path {value!r} must stay inside {root} (relative, no '..') — {fix}")
    return Path(root) / relative


def check_id_column(frame: pd.DataFrame, path, fix: str, column: str = "prompt_id") -> None:
    """Every id of the column is a safe name (data/identifiers.py): ids name folders and files."""
    for index, value in frame[column].items():
        problem = name_problem(value, column)
        if problem:
            raise InputError(f"{path} row {_row(index, frame)}: {problem} — {fix}")


def check_prompt_ids(frame: pd.DataFrame, path, fix: str) -> None:
    check_id_column(frame, path, fix)
    duplicated = frame["prompt_id"].duplicated()
    if duplicated.any():
        index = duplicated.idxmax()
        raise InputError(f"{path} row {_row(index, frame)}: duplicate prompt_id '{frame.at[index, 'prompt_id']}' "
                         f"— {fix}")
    for index, prompt in frame["prompt"].items():
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"{path} row {_row(index, frame)}: empty prompt — {fix}")
        if CONTROL_CHARACTERS.search(prompt):
            raise InputError(f"{path} row {_row(index, frame)}: the prompt holds a control character "
                             f"({CONTROL_CHARACTERS.search(prompt).group()!r}) — remove it ({fix})")
        if len(prompt) > MAX_PROMPT_CHARACTERS:
            raise InputError(f"{path} row {_row(index, frame)}: the prompt has {len(prompt):,} characters, more "
                             f"than the limit of {MAX_PROMPT_CHARACTERS:,} — shorten it ({fix})")


def read_prompts(data: Path, fix: str = "rerun stage 1 with --force",
                 missing_fix: str = "run stage 1 first") -> pd.DataFrame:
    path = prompts_csv(data)
    frame = read_table(path, PROMPTS_COLUMNS, fix, dtype={"prompt_id": str, "prompt": str, "origin": str},
                       missing_fix=missing_fix)
    check_prompt_ids(frame, path, fix)
    return frame


def read_annotated(data: Path, fix: str = "fix the row or rerun stage 1 with --force") -> pd.DataFrame:
    """Annotated prompts with `labels` parsed into lists and `bpm` as nullable Int64."""
    path = annotated_csv(data)
    frame = read_table(path, ANNOTATED_COLUMNS, fix,
                       dtype={"prompt_id": str, "prompt": str, "labels": str, "annotator": str},
                       missing_fix=run_first(data, 1))
    check_prompt_ids(frame, path, fix)
    parsed = []
    for index, text in frame["labels"].items():
        try:
            parsed.append(parse_labels(text))
        except ValueError as error:
            raise InputError(f"{path} row {_row(index, frame)}: {error} ({', '.join(VOCABULARY)}) — {fix}") from None
    frame["labels"] = parsed
    bpm = pd.to_numeric(frame["bpm"], errors="coerce")
    bad = frame["bpm"].notna() & (bpm.isna() | (bpm % 1 != 0) | (bpm < 20) | (bpm > 400))
    if bad.any():
        index = bad.idxmax()
        raise InputError(f"{path} row {_row(index, frame)}: bpm {str(frame.at[index, 'bpm'])!r} is not an integer in "
                         f"20–400 — {fix}")
    frame["bpm"] = bpm.astype("Int64")
    return frame


def table_sha256(frame: pd.DataFrame) -> str:
    """Hash of a table's canonical CSV text: identifies which rows an embedding matrix is aligned with."""
    return sha256_text(frame.to_csv(index=False, lineterminator="\n"))


def read_generated_index(data: Path, fix: str = "rerun stage 2 (add --force if its outputs are corrupt)") -> pd.DataFrame:
    """The union of index parts, sorted by prompt_id, sample, kind, step; every part made under its run's current
    record (data/parts.py): generation.json, or an intervened run's intervention.json made beside it."""
    generated = generated_dir(data)
    index_dir = generated / "index"
    parts = sorted(index_dir.glob("*.csv")) if index_dir.is_dir() else []
    if not parts:
        raise InputError(f"{index_dir}: no index parts — {run_first(data, 2)}")
    generation = read_sidecar(generated / GENERATION_JSON, run_first(data, 2), "rerun stage 2 with --force")
    check_parts_current(generated, GENERATION_JSON, generation)
    frames = [_read_index_part(part, data, fix).assign(**{INTERVENTION_COLUMN: ""}) for part in parts]
    # Intervened runs (stage 2 --intervene) are ordinary rows with the run's id in the intervention column.
    for run_index in sorted((generated / "interventions").glob("*/index")):
        identifier = safe_name(run_index.parent.name, "intervention id", run_index.parent,
                               "remove the folder (stage 2 --intervene names its runs with valid ids)")
        _check_intervened_run(run_index.parent, generation)
        for part in sorted(run_index.glob("*.csv")):
            part_frame = _read_index_part(part, data, fix)
            frames.append(part_frame.assign(**{INTERVENTION_COLUMN: identifier,
                                               "path": f"interventions/{identifier}/" + part_frame["path"]}))
    frame = pd.concat(frames, ignore_index=True)[[*INDEX_COLUMNS, INTERVENTION_COLUMN]]
    for column in ("sample", "step", "seed", "sample_rate"):
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() | (values % 1 != 0) | (values < 0)
        if bad.any():
            raise InputError(f"{index_dir}: column '{column}' has {frame.at[bad.idxmax(), column]!r}, not a "
                             f"non-negative integer (prompt {frame.at[bad.idxmax(), 'prompt_id']}) — {fix}")
        frame[column] = values.astype(np.int64)
    sigma = pd.to_numeric(frame["sigma"], errors="coerce")
    bad = frame["sigma"].notna() & ~np.isfinite(sigma)  # empty is allowed: layer trajectories have no sigma
    if bad.any():
        raise InputError(f"{index_dir}: sigma {frame.at[bad.idxmax(), 'sigma']!r} is not a number "
                         f"(prompt {frame.at[bad.idxmax(), 'prompt_id']}) — {fix}")
    frame["sigma"] = sigma
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


def _check_intervened_run(folder: Path, generation: dict) -> None:
    """An intervened run was made beside the current reference run, and its parts under its intervention.json."""
    rerun = f"rerun stage 2 with --intervene <spec> --force, or delete {folder}"
    record = read_sidecar(folder / INTERVENTION_JSON, rerun, rerun)
    if record.get("generation_sha256") != record_sha256(generation):
        raise InputError(f"{folder / INTERVENTION_JSON}: made beside another reference run (generation.json changed "
                         f"since) — {rerun}")
    check_parts_current(folder, INTERVENTION_JSON, record,
                        fix="rerun stage 2 with --intervene <spec>: it redoes exactly those prompts")


def _read_index_part(part: Path, data: Path, fix: str) -> pd.DataFrame:
    """One index part, with the checks that name its row: anchored prompt ids, a clip length, and a path that
    stays inside generated/."""
    frame = read_table(part, INDEX_COLUMNS, fix, dtype={"prompt_id": str, "kind": str, "path": str})
    check_id_column(frame, part, fix)
    for column in ("seconds_total", "sample_rate"):
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = ~(np.isfinite(values) & (values > 0))
        if bad.any():
            index = bad.idxmax()
            raise InputError(f"{part} row {_row(index, frame)}: {column} {frame.at[index, column]!r} is not a "
                             f"positive number — {fix}")
    for index, path in frame["path"].items():
        relative_path(path, generated_dir(data), f"{part} row {_row(index, frame)}", fix)
    return frame


def check_index_prompts(index: pd.DataFrame, annotated: pd.DataFrame, data: Path) -> None:
    """Every clip's prompt must be one annotated.csv has: a clip of another prompt has no labels to score."""
    unknown = ~index["prompt_id"].isin(set(annotated["prompt_id"]))
    if unknown.any():
        prompt_id = index.at[unknown.idxmax(), "prompt_id"]
        raise InputError(f"{generated_dir(data) / 'index'}: prompt '{prompt_id}' is not in {annotated_csv(data)} "
                         "— remove its index part, or rerun stage 2 for the current prompts")


def read_notes(data: Path, fix: str = "rerun stage 4 with --force") -> pd.DataFrame:
    path = concepts_dir(data) / "notes.csv"
    frame = read_table(path, NOTES_COLUMNS, fix, dtype={"note_str": str, "instrument_str": str, "family": str,
                                                         "source": str, "qualities": str, "split": str, "path": str,
                                                         "parts": str}, missing_fix=run_first(data, 4))
    frame["qualities"] = frame["qualities"].fillna("")
    for column in ("note_str", "instrument_str", "family", "source", "path"):
        empty = frame[column].isna()
        if empty.any():
            raise InputError(f"{path} row {_row(empty.idxmax(), frame)}: empty {column} — {fix}")
    bad = ~frame["split"].isin(["train", "test"])
    if bad.any():
        raise InputError(f"{path} row {_row(bad.idxmax(), frame)}: split must be train or test — {fix}")
    for column, names in (("family", FAMILIES), ("source", SOURCES)):
        bad = ~frame[column].isin(names)
        if bad.any():
            raise InputError(f"{path} row {_row(bad.idxmax(), frame)}: {column} {frame.at[bad.idxmax(), column]!r} "
                             f"is not one of NSynth's ({', '.join(names)}) — {fix}")
    known = set(QUALITIES)
    bad = frame["qualities"].map(lambda text: not set(filter(None, str(text).split(";"))) <= known)
    if bad.any():
        raise InputError(f"{path} row {_row(bad.idxmax(), frame)}: qualities {frame.at[bad.idxmax(), 'qualities']!r} "
                         f"are not ';'-joined NSynth qualities ({', '.join(QUALITIES)}) — {fix}")
    for column in ("pitch", "velocity"):
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() | (values % 1 != 0) | (values < 0) | (values > 127)
        if bad.any():
            raise InputError(f"{path} row {_row(bad.idxmax(), frame)}: {column} {frame.at[bad.idxmax(), column]!r} "
                             f"is not a MIDI number 0–127 — {fix}")
    if frame["note_str"].duplicated().any():
        raise InputError(f"{path} row {_row(frame['note_str'].duplicated().idxmax(), frame)}: duplicate note_str "
                         f"— {fix}")
    # The split is by instrument, so that probes are tested on instruments they never heard (a mix: its parts').
    parts = frame["parts"].fillna("").astype(str) if "parts" in frame.columns else pd.Series("", index=frame.index)
    instruments = pd.Series([[token.rpartition(":")[0] for token in text.split(";")] if text else [own]
                             for own, text in zip(frame["instrument_str"], parts)], index=frame.index).explode()
    played = pd.DataFrame({"instrument": instruments, "split": frame["split"].reindex(instruments.index)})
    sides = played.groupby("instrument")["split"].nunique()
    if (sides > 1).any():
        instrument = sides.index[int(np.argmax(sides.to_numpy() > 1))]
        index = played.index[(played["instrument"] == instrument) & (played["split"] == "test")][0]
        raise InputError(f"{path} row {_row(index, frame)}: instrument '{instrument}' is on both sides of the "
                         f"train/test split — {fix}")
    for index, note_path in frame["path"].items():
        relative_path(note_path, Path("<nsynth_dir>"), f"{path} row {_row(index, frame)}", fix)
    return frame


def read_sets(data: Path, fix: str = "rerun stage 4 with --force") -> pd.DataFrame:
    path = concepts_dir(data) / "sets.csv"
    frame = read_table(path, SETS_COLUMNS, fix, dtype={"concept": str, "note_str": str, "split": str},
                       missing_fix=run_first(data, 4))
    bad = ~frame["label"].isin([0, 1])
    if bad.any():
        raise InputError(f"{path} row {_row(bad.idxmax(), frame)}: label must be 0 or 1 — {fix}")
    bad = ~frame["split"].isin(["train", "test"]) | frame["concept"].isna() | frame["note_str"].isna()
    if bad.any():
        raise InputError(f"{path} row {_row(bad.idxmax(), frame)}: needs a concept, a note_str and split train or "
                         f"test — {fix}")
    unknown = ~frame["concept"].isin(CONCEPT_NAMES)
    if unknown.any():
        raise InputError(f"{path} row {_row(unknown.idxmax(), frame)}: concept {frame.at[unknown.idxmax(), 'concept']!r} "
                         f"is not one of data/concepts.py's — {fix}")
    duplicated = frame.duplicated(["concept", "note_str"])
    if duplicated.any():
        raise InputError(f"{path} row {_row(duplicated.idxmax(), frame)}: note '{frame.at[duplicated.idxmax(), 'note_str']}' "
                         f"appears twice in concept '{frame.at[duplicated.idxmax(), 'concept']}' — {fix}")
    return frame


def read_npy(path, fix: str, mmap_mode=None) -> np.ndarray:
    """An .npy array, never a pickle; missing, empty (0 bytes), cut off, holding objects or an .npz archive is one
    InputError line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: missing — {fix}")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes), not an .npy array — {fix}")
    try:
        array = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise InputError(f"{path}: unreadable .npy ({first_line(error)}) — {fix}") from None
    if not isinstance(array, np.ndarray):   # np.load opens a zip (an .npz archive) whatever the file is named
        array.close()
        raise InputError(f"{path}: an .npz archive, not an .npy array — {fix}")
    return array


def read_embeddings(npy_path, n_rows: int, rows_sha256: str, rows_key: str, fix: str) -> tuple[np.ndarray, dict]:
    """Load an embedding matrix and its sidecar; check dtype, shape and that it was made for these rows."""
    npy_path = Path(npy_path)
    sidecar_path = npy_path.with_suffix(".json")
    if not npy_path.is_file() or not sidecar_path.is_file():
        raise InputError(f"{npy_path}: missing (or its .json sidecar is) — {fix}")
    sidecar = read_sidecar(sidecar_path, fix, fix)
    matrix = read_npy(npy_path, fix, mmap_mode="r")
    if matrix.dtype != np.float32 or matrix.ndim != 2:
        raise InputError(f"{npy_path}: expected float32 [rows, dim], found {matrix.dtype} {list(matrix.shape)} — {fix}")
    if matrix.shape[0] != n_rows:
        raise InputError(f"{npy_path}: {matrix.shape[0]} rows but its table has {n_rows} — {fix}")
    if sidecar.get(rows_key) != rows_sha256:
        raise InputError(f"{npy_path}: made for different rows than the current table ({rows_key} differs) — {fix}")
    if sidecar.get("dim") not in (None, matrix.shape[1]):
        raise InputError(f"{npy_path}: sidecar says dim {sidecar.get('dim')} but the matrix has {matrix.shape[1]} — {fix}")
    matrix = np.asarray(matrix)
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise InputError(f"{npy_path}: row {row} holds NaN or Inf ({int((~finite).sum())} such rows) — {fix}")
    return matrix, sidecar


def read_sidecar(path, missing_fix: str, fix: str) -> dict:
    """A provenance JSON another stage wrote: missing -> missing_fix, unparsable or not an object -> fix."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: missing — {missing_fix}")
    try:
        payload = read_json(path)
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({first_line(error)}) — {fix}") from None
    if not isinstance(payload, dict):
        raise InputError(f"{path}: expected a JSON object, found a {type(payload).__name__} — {fix}")
    return payload


def check_same_embedder(first: dict, first_path, second: dict, second_path) -> None:
    """Stage 6 compares generated and NSynth embeddings: they must come from the very same embedder."""
    for key in EMBEDDER_IDENTITY:
        if first.get(key) != second.get(key):
            raise InputError(f"{second_path}: {key} is {second.get(key)!r} but {first_path} has {first.get(key)!r} "
                             "— embed both with the same embedder (rerun stage 3 or 5 with --force)")

