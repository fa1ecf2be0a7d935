"""Realised content of generated clips: what the model actually made, beside what the prompt asked for.

Stage 6's second yardstick. A generator that knows what its clean estimate is made of (the ideal reference
model: a posterior-weighted blend of labelled bank clips) reports, per captured step, each label's mass in
that estimate. Stage 2 writes it next to the index, one part per prompt (data/ARTIFACTS.md, stage 2):

    generated/content/<prompt_id>.csv: prompt_id, sample, kind, step, content_<label> ...

rows exactly the prompt's index part rows in the same order, labels those of generation.json's
`content_labels`. Stage 6 reads it through `read_realised_content`, row-aligned with the index.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from data.contract import generated_dir
from data.generation import read_generation
from data.stage import InputError

KEY_COLUMNS = ("prompt_id", "sample", "kind", "step")
PREFIX = "content_"


def content_columns(labels: Sequence[str]) -> list[str]:
    return [PREFIX + label for label in labels]


def content_part_path(generated: Path, prompt_id: str) -> Path:
    return Path(generated) / "content" / f"{prompt_id}.csv"


def format_content_part(rows: Sequence[dict], labels: Sequence[str]) -> str:
    """rows: dicts with the key columns and `content` (label -> mass). The text of one prompt's part."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([*KEY_COLUMNS, *content_columns(labels)])
    for row in rows:
        # 9 decimals: masses are probabilities in [0, 1]; a fixed precision keeps the bytes independent of
        # how the sampler batched the samples (the last bits of a matrix product are not).
        writer.writerow([*(row[key] for key in KEY_COLUMNS), *(f"{row['content'][label]:.9f}" for label in labels)])
    return text.getvalue()


def read_realised_content(data: Path, index: pd.DataFrame, fix: str = "rerun stage 2 with --force") -> pd.DataFrame | None:
    """The realised content row-aligned with `index` (data.contract.read_generated_index): row i <-> index row i,
    columns content_<label>. None when generation.json lists no content labels (the generator reports none)."""
    generated = generated_dir(data)
    labels = list(read_generation(data).content_labels)
    if not labels:
        return None
    columns = content_columns(labels)
    frames = []
    for prompt_id, rows in index.groupby("prompt_id", sort=False):
        path = content_part_path(generated, prompt_id)
        if not path.is_file():
            raise InputError(f"{path}: missing (generation.json lists content labels) — {fix}")
        try:
            part = pd.read_csv(path, dtype={"prompt_id": str, "kind": str})
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            raise InputError(f"{path}: not a readable CSV ({str(error).splitlines()[0]}) — {fix}") from None
        missing = [column for column in (*KEY_COLUMNS, *columns) if column not in part.columns]
        if missing:
            raise InputError(f"{path}: column '{missing[0]}' is missing — {fix}")
        values = part[columns].apply(pd.to_numeric, errors="coerce")
        bad = (values.isna() | (values < 0) | (values > 1 + 1e-6)).any(axis=1).to_numpy()
        if bad.any():
            raise InputError(f"{path} row {int(np.argmax(bad)) + 2}: a content value is not a number in [0, 1] — {fix}")
        keyed = values.set_index(pd.MultiIndex.from_frame(part[list(KEY_COLUMNS)]))
        if keyed.index.duplicated().any():
            raise InputError(f"{path}: a (sample, kind, step) row appears twice — {fix}")
        keys = pd.MultiIndex.from_frame(rows[list(KEY_COLUMNS)])
        absent = ~keys.isin(keyed.index)
        if absent.any():
            _, sample, kind, step = rows[list(KEY_COLUMNS)].iloc[int(np.argmax(absent))].tolist()
            raise InputError(f"{path}: no row for sample {sample}, {kind}, step {step} of the index — {fix}")
        values = keyed.loc[keys]
        frames.append(values.set_index(rows.index))
    return pd.concat(frames).loc[index.index].reset_index(drop=True)
