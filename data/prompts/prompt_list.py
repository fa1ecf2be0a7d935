"""Prompt texts → the prompts table: normalised de-duplication and ids that never renumber.

A prompt's id is "p" + the first 10 hex digits of sha256 of its normalised text. Ids therefore depend on the
text alone: adding, removing or reordering prompts (in the embedded list or in an LLM run) never changes the id
of another prompt, and the same prompt gets the same id from either source. Normalisation (Unicode NFKC,
case-folded, whitespace collapsed, trailing full stops dropped) is also what de-duplication compares, so
"Jazz trio." and "jazz  trio" are one prompt. 40 bits make a collision between different prompts vanishingly
unlikely; one would be refused rather than silently merged.
"""
import hashlib
import re
import unicodedata
from pathlib import Path

import pandas as pd

from data.files import sha256_file

EMBEDDED_PROMPTS = Path(__file__).resolve().parent / "embedded_prompts.txt"
ID_HEX_DIGITS = 10


def normalise_prompt(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"\s+", " ", text).strip()
    return text.rstrip(" .!").strip()


def clean_prompt(text: str) -> str:
    """The text written to prompts.csv: one line, single spaces (an LLM may return line breaks)."""
    return re.sub(r"\s+", " ", text).strip()


def prompt_id(text: str) -> str:
    return "p" + hashlib.sha256(normalise_prompt(text).encode("utf-8")).hexdigest()[:ID_HEX_DIGITS]


def prompts_table(texts, origin: str) -> pd.DataFrame:
    """prompt_id, prompt, origin for each distinct prompt, in first-seen order; empty texts are skipped."""
    rows, seen = [], {}
    for text in texts:
        text = clean_prompt(text)
        if not normalise_prompt(text):
            continue
        identifier = prompt_id(text)
        if identifier in seen:
            if normalise_prompt(seen[identifier]) != normalise_prompt(text):
                raise ValueError(f"prompt id collision: {seen[identifier]!r} and {text!r} share {identifier}")
            continue
        seen[identifier] = text
        rows.append((identifier, text, origin))
    return pd.DataFrame(rows, columns=["prompt_id", "prompt", "origin"])


def read_embedded_texts(path: Path = EMBEDDED_PROMPTS) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def embedded_prompts(path: Path = EMBEDDED_PROMPTS) -> pd.DataFrame:
    return prompts_table(read_embedded_texts(path), origin="embedded")


def embedded_sha256(path: Path = EMBEDDED_PROMPTS) -> str:
    return sha256_file(path)
