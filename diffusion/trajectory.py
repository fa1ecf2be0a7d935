"""Capture, decode, write, shard and resume: everything about trajectories that does not depend on the backend.

A backend (diffusion/base.py) only samples and decodes; `run_trajectories` does the rest for any of them:

- Shards: prompt ids are sorted and prompt k of that order belongs to shard k mod n, so shards are disjoint,
  cover every prompt, and do not depend on the order of annotated.csv. Each prompt's files are written by the
  one shard that owns it.
- Seeds: a prompt's seed is derived from (--seed, prompt_id) with sha256, so it does not change when prompts
  are added, removed, limited or sharded; sample s of the prompt has seed prompt_seed + s (the index's `seed`
  column), which is how backends seed row r of a sampler call (diffusion/base.py).
- Per prompt: the samples run through `generator.sample` in batches of --batch-size with a TrajectoryObserver
  that keeps the requested steps and kinds; the captured latents are decoded --decode-batch-size at a time and
  written as wavs; only one sampler call's latents are held at a time. The index part
  generated/index/<prompt_id>.csv is written last, atomically: a prompt has a part if and only if all its clips
  were written. A killed run leaves no part for its unfinished prompt; the rerun clears that prompt's audio
  folder and makes it again.
- Resume: a prompt is done when its part lists exactly the expected (sample, kind, step) rows and their wavs
  exist; generated/generation.json (written atomically before any clip) must match this run's provenance.
  --force rewrites generation.json, redoes this shard's prompts and deletes parts of prompts that are no longer
  in annotated.csv; after changing settings, rerun every shard with --force (or use a fresh --data).
- generation.json is the one file every shard may write: shards started together write identical bytes, each
  with an atomic rename.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from data.audio import write_wav
from data.contract import INDEX_COLUMNS, check_provenance
from data.files import read_json, write_json, write_text
from data.stage import InputError
from diffusion.base import KINDS, Conditioning, Generator, TrajectoryAxis, TrajectoryObserver

GENERATION_JSON = "generation.json"
PROVENANCE_FIX = "pass --force to regenerate with these settings, or use another --data"
# fsync dominates a wav write (~8 ms of ~9 ms each here); a few writer threads overlap the waits.
WAV_WRITERS = 4


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def select(self, prompt_ids: Sequence[str]) -> list[str]:
        return [prompt_id for position, prompt_id in enumerate(sorted(prompt_ids))
                if position % self.count == self.index]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(spec: str | None, environ=None) -> Shard:
    """'i/n' with 0 <= i < n; without one, a SLURM array task's position in its array, else the whole set."""
    environ = os.environ if environ is None else environ
    origin = "--shard"
    if spec is None:
        task, count = environ.get("SLURM_ARRAY_TASK_ID"), environ.get("SLURM_ARRAY_TASK_COUNT")
        if task is None or count is None:
            return Shard(0, 1)
        try:
            # Array ids need not start at 0 (--array=1-8): the shard is the task's position in the array.
            index = int(task) - int(environ.get("SLURM_ARRAY_TASK_MIN", "0"))
            spec = f"{index}/{int(count)}"
        except ValueError:
            spec = f"{task}/{count}"
        origin = "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT (minus SLURM_ARRAY_TASK_MIN)"
    parts = str(spec).split("/")
    try:
        index, count = (int(part) for part in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        index, count = None, None
    if index is None or count < 1 or not 0 <= index < count:
        raise InputError(f"{origin} {spec!r} is not a shard 'i/n' with 0 <= i < n — pass e.g. --shard 0/4")
    return Shard(index, count)


def parse_capture_steps(text: str | None, axis: TrajectoryAxis, default: Sequence[int]) -> list[int]:
    """--capture-steps: positions on the generator's trajectory axis (denoising steps or layers)."""
    if text is None:
        return sorted(set(int(position) for position in default))
    try:
        chosen = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise InputError(f"--capture-steps {text!r} is not a comma-separated list of integers — "
                         "pass e.g. --capture-steps 5,10,49") from None
    if not chosen:
        raise InputError(f"--capture-steps is empty — pass at least one {axis.unit}, "
                         f"e.g. --capture-steps {axis.positions[-1]}")
    valid = set(axis.positions)
    outside = [position for position in chosen if position not in valid]
    if outside:
        first, last = axis.positions[0], axis.positions[-1]
        where = (f"outside [{first}, {last + 1})" if list(axis.positions) == list(range(first, last + 1))
                 else "not a position of the axis")
        raise InputError(f"--capture-steps {outside[0]} is {where} for a {axis.describe()} — "
                         f"pick {axis.unit}s from {first} to {last}")
    return chosen


def parse_kinds(text: str) -> list[str]:
    kinds = [part.strip() for part in str(text).split(",") if part.strip()]
    unknown = [kind for kind in kinds if kind not in KINDS]
    if not kinds or unknown:
        raise InputError(f"--kinds {text!r}: choose from {', '.join(KINDS)} (comma-separated), e.g. --kinds x0,xt")
    return [kind for kind in KINDS if kind in kinds]


def prompt_seed(base_seed: int, prompt_id: str) -> int:
    """A 31-bit seed per prompt, independent of which other prompts exist and of the shard."""
    digest = hashlib.sha256(f"{int(base_seed)}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


def clip_path(prompt_id: str, sample: int, kind: str, step: int) -> str:
    """Path of a clip relative to generated/ (data/ARTIFACTS.md)."""
    return f"audio/{prompt_id}/s{sample}-{kind}-{step:03d}.wav"


@dataclass(frozen=True)
class TrajectorySettings:
    capture_steps: tuple[int, ...]
    kinds: tuple[str, ...]
    samples: int
    seconds: float
    seed: int
    batch_size: int
    decode_batch_size: int

    def expected_rows(self) -> set[tuple[int, str, int]]:
        return {(sample, kind, step) for sample in range(self.samples) for kind in self.kinds
                for step in self.capture_steps}


def generation_record(generator: Generator, settings: TrajectorySettings, annotated_sha256: str) -> dict:
    """generation.json: the backend's provenance plus the trajectory settings (data/ARTIFACTS.md, stage 2).

    Batch sizes are left out: they change how the work is grouped, not the audio (seed + row per sample).
    """
    record = dict(generator.provenance())
    for key in ("model", "model_sha256", "preset"):
        if key not in record:
            raise RuntimeError(f"{type(generator).__name__}.provenance() must give '{key}'")
    record.update({
        "generator": generator.name,
        "seed": int(settings.seed),
        "capture_steps": [int(step) for step in settings.capture_steps],
        "kinds": list(settings.kinds),
        "samples_per_prompt": int(settings.samples),
        "seconds_total": float(settings.seconds),
        "sample_rate": int(generator.sample_rate),
        "channels": int(generator.channels),
        "trajectory_axis": generator.axis.record(),
        "content_labels": list(generator.content_labels),
        "annotated_sha256": annotated_sha256,
    })
    # What the JSON file will hold (tuples become lists), so that a fresh record compares equal to a stored one.
    return json.loads(json.dumps(record, default=str))


def check_generation(generator: Generator, settings: TrajectorySettings, annotated_sha256: str, generated: Path,
                     force: bool = False) -> dict:
    """This run's generation.json record; InputError if generated/ holds outputs of other settings (unless
    force). Writes nothing."""
    record = generation_record(generator, settings, annotated_sha256)
    provenance_path = Path(generated) / GENERATION_JSON
    if provenance_path.is_file() and not force:
        check_provenance(provenance_path, record, list(record), PROVENANCE_FIX)
        unmatched = sorted(set(read_json(provenance_path)) ^ set(record))
        if unmatched:
            raise InputError(f"{provenance_path}: existing outputs were made by a run that "
                             f"{'lacked' if unmatched[0] in record else 'had'} '{unmatched[0]}' — {PROVENANCE_FIX}")
    return record


@dataclass
class RunSummary:
    shard: Shard
    prompts: int = 0
    skipped: int = 0
    generated: int = 0
    clips: int = 0
    removed_orphans: list[str] = field(default_factory=list)


def run_trajectories(generator: Generator, prompts, generated: Path, settings: TrajectorySettings,
                     annotated_sha256: str, shard: Shard = Shard(0, 1), force: bool = False,
                     all_prompt_ids: Sequence[str] | None = None, progress: bool = True) -> RunSummary:
    """Generate the trajectories of this shard's prompts into `generated` (see the module docstring).

    `prompts`: a frame with prompt_id, prompt and labels (lists), as data.contract.read_annotated gives it.
    `all_prompt_ids`: every prompt of annotated.csv; with --force, index parts of other prompts are stale and
    are removed (default: the prompts given).
    """
    from tqdm import tqdm

    generated = Path(generated)
    record = check_generation(generator, settings, annotated_sha256, generated, force)
    provenance_path = generated / GENERATION_JSON
    summary = RunSummary(shard)
    if not provenance_path.is_file() or read_json(provenance_path) != record:
        write_json(provenance_path, record)
    if force:
        known = set(all_prompt_ids if all_prompt_ids is not None else prompts["prompt_id"])
        summary.removed_orphans = remove_orphans(generated, known)

    by_id = {row.prompt_id: row for row in prompts.itertuples(index=False)}
    mine = shard.select(list(by_id))
    summary.prompts = len(mine)
    expected = settings.expected_rows()
    todo = [prompt_id for prompt_id in mine if force or not part_is_complete(generated, prompt_id, expected)]
    summary.skipped = len(mine) - len(todo)
    with ThreadPoolExecutor(max_workers=WAV_WRITERS) as writers, \
            tqdm(total=len(todo), unit="prompt", desc=f"stage 2 {generator.name} shard {shard}",
                 disable=not progress or not todo, dynamic_ncols=True) as bar:
        for prompt_id in todo:
            row = by_id[prompt_id]
            conditioning = Conditioning(prompt=row.prompt, labels=tuple(row.labels))
            summary.clips += generate_prompt(generator, prompt_id, conditioning, generated, settings, writers)
            summary.generated += 1
            bar.update(1)
    return summary


def generate_prompt(generator: Generator, prompt_id: str, conditioning: Conditioning, generated: Path,
                    settings: TrajectorySettings, writers: ThreadPoolExecutor) -> int:
    """All samples of one prompt: wavs first, the index part last. Returns the number of clips written."""
    part_path = generated / "index" / f"{prompt_id}.csv"
    # A part says "complete"; drop it before touching the prompt's clips so that no kill leaves it lying.
    part_path.unlink(missing_ok=True)
    audio_dir = generated / "audio" / prompt_id
    if audio_dir.exists():
        shutil.rmtree(audio_dir)
    base_seed = prompt_seed(settings.seed, prompt_id)
    rows = []
    for first in range(0, settings.samples, settings.batch_size):
        count = min(settings.batch_size, settings.samples - first)
        observer = TrajectoryObserver(settings.capture_steps, settings.kinds)
        generator.sample(conditioning, base_seed + first, count, settings.seconds, observer)
        clips = []  # (sample, kind, step, sigma, latent)
        for captured in observer.captured:
            for row in range(count):
                clips.append((first + row, captured.kind, captured.position, captured.sigma, captured.latent[row]))
        missing = {(sample, kind, step) for sample in range(first, first + count) for kind in settings.kinds
                   for step in settings.capture_steps} - {clip[:3] for clip in clips}
        if missing:
            sample, kind, step = sorted(missing)[0]
            raise RuntimeError(f"{generator.name}: the observer got no {kind} at step {step} (sample {sample})")
        observer.captured.clear()
        rows.extend(_decode_and_write(generator, prompt_id, clips, base_seed, generated, settings, writers))
    rows.sort(key=lambda row: (row["sample"], row["kind"], row["step"]))
    write_text(part_path, _part_csv(rows))
    return len(rows)


def _decode_and_write(generator: Generator, prompt_id: str, clips: list, base_seed: int, generated: Path,
                      settings: TrajectorySettings, writers: ThreadPoolExecutor) -> list[dict]:
    import torch  # here, not at the top: a rerun with every prompt done never needs it

    rows, pending = [], []
    for start in range(0, len(clips), settings.decode_batch_size):
        chunk = clips[start:start + settings.decode_batch_size]
        audio = generator.decode(torch.stack([clip[4] for clip in chunk]), settings.seconds)
        if audio.ndim != 3 or audio.shape[0] != len(chunk) or audio.shape[1] != generator.channels:
            raise RuntimeError(f"{generator.name}.decode gave shape {list(audio.shape)} for {len(chunk)} latents; "
                               f"expected [{len(chunk)}, {generator.channels}, samples]")
        # The previous chunk's files were written while this one decoded; waiting for them here keeps at most
        # two chunks of audio in memory.
        for future in pending:
            future.result()
        pending = []
        for (sample, kind, step, sigma, _), clip_audio in zip(chunk, audio):
            relative = clip_path(prompt_id, sample, kind, step)
            pending.append(writers.submit(write_wav, generated / relative, clip_audio, generator.sample_rate))
            # A layer trajectory has no noise level: its sigma is NaN and the column stays empty.
            sigma_text = "" if sigma is None or math.isnan(sigma) else repr(float(sigma))
            rows.append({"prompt_id": prompt_id, "sample": sample, "step": step, "sigma": sigma_text,
                         "kind": kind, "seed": base_seed + sample, "seconds_total": repr(float(settings.seconds)),
                         "sample_rate": generator.sample_rate, "path": relative})
    for future in pending:
        future.result()
    return rows


def _part_csv(rows: list[dict]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(INDEX_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def part_is_complete(generated: Path, prompt_id: str, expected: set) -> bool:
    """The prompt's part lists exactly the expected clips, and every listed wav exists."""
    part_path = generated / "index" / f"{prompt_id}.csv"
    if not part_path.is_file():
        return False
    try:
        with open(part_path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        found = {(int(row["sample"]), row["kind"], int(row["step"])) for row in rows}
        paths = [row["path"] for row in rows]
    except (OSError, KeyError, ValueError, TypeError):
        return False
    return (len(rows) == len(found) and found == expected
            and all(row["prompt_id"] == prompt_id for row in rows)
            and all((generated / path).is_file() for path in paths))


def remove_orphans(generated: Path, known_prompt_ids: set) -> list[str]:
    """Delete index parts and audio folders of prompts that are no longer in annotated.csv."""
    removed = []
    index_dir = generated / "index"
    for part in sorted(index_dir.glob("*.csv")) if index_dir.is_dir() else []:
        if part.stem not in known_prompt_ids:
            part.unlink()
            removed.append(part.stem)
    audio_root = generated / "audio"
    for folder in sorted(audio_root.iterdir()) if audio_root.is_dir() else []:
        if folder.is_dir() and folder.name not in known_prompt_ids:
            shutil.rmtree(folder)
    return removed
