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
  written as wavs; only one sampler call's latents are held at a time. The part's sidecar
  generated/index/<prompt_id>.json (data/parts.py: the generation.json it was made under) comes next, and the
  index part generated/index/<prompt_id>.csv is written last, atomically: a prompt has a part if and only if all
  its clips were written. A killed run leaves no part for its unfinished prompt; the rerun clears that prompt's
  audio folder and makes it again.
- Resume: a prompt is done when its part lists exactly the expected (sample, kind, step) rows and their wavs
  (and realised content and truth parts, for generators that report them) exist, and its sidecar names the
  current generation.json; generated/generation.json (written atomically before any clip) must match this run's
  provenance. So a --force with new settings killed half-way is finished by a plain rerun, which redoes exactly
  the prompts still made with the old settings.
- Nothing is removed or written before the generator has loaded and checked what sampling reads
  (`Generator.prepare`: a bank, a checkpoint), so a corrupt input costs no finished clip.
- --force rewrites generation.json, redoes this shard's prompts and deletes parts of prompts that are no longer
  in annotated.csv. It never leaves clips of two settings under one generation.json: with new settings, a
  --limit-prompts run that would leave other prompts' clips is refused (`stale_prompts`), and a shard deletes
  the other shards' old clips, which those shards then remake (with or without --force).
- generation.json is the one file every shard may write: shards started together write identical bytes, each
  with an atomic rename.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from data.audio import write_wav
from data.contract import INDEX_COLUMNS
from data.files import read_json, write_npy, write_text
from data.generation import TrajectoryAxis
from data.identifiers import path_inside
from data.parts import (GENERATION_JSON, RunRecord, check_run_folders, part_is_current, part_path, part_sidecar_path,
                        write_part_sidecar)
from data.provenance import Provenance, begin, commit, decide
from data.realised_content import content_part_path, format_content_part
from data.stage import InputError, Shard
from data.truth import TRUTH_DIR, format_truth_part, truth_part_path
from diffusion.base import KINDS, Conditioning, Generator, TrajectoryObserver

PROVENANCE_FIX = "pass --force to regenerate with these settings, or use another --data"
# fsync dominates a wav write (~8 ms of ~9 ms each here); a few writer threads overlap the waits.
WAV_WRITERS = 4


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
    for key in ("model", "checkpoint_sha256", "preset"):
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


def generation_provenance(generated: Path, record: dict) -> Provenance:
    """Stage 2's provenance: generation.json describes every clip under generated/. Unlike other stages' sidecars
    it is written before the clips (shards started together need it), and each prompt's index part is that
    prompt's "done" marker; so the sidecar lists no outputs."""
    return Provenance(sidecar=Path(generated) / GENERATION_JSON, record=record, outputs=[])


def check_generation(generator: Generator, settings: TrajectorySettings, annotated_sha256: str, generated: Path,
                     force: bool = False) -> dict:
    """This run's generation.json record; InputError if generated/ holds outputs of other settings (unless
    force), or if a folder the run writes in is a link out of it (data/parts.py check_run_folders). Writes
    nothing."""
    check_run_folders(generated)
    record = generation_record(generator, settings, annotated_sha256)
    prov = generation_provenance(generated, record)
    index_dir = Path(generated) / "index"
    if not force and not prov.sidecar.exists() and index_dir.is_dir() and any(index_dir.glob("*.csv")):
        raise InputError(f"{prov.sidecar}: missing beside existing index parts, so what made them is unknown — "
                         f"{PROVENANCE_FIX}")
    decide(prov, force, PROVENANCE_FIX)
    return prov.record


def stored_generation(generated: Path) -> dict | None:
    """generation.json as stored; None when absent or unreadable (only a --force run gets this far then)."""
    try:
        stored = read_json(Path(generated) / GENERATION_JSON)
    except (OSError, ValueError):
        return None
    return stored if isinstance(stored, dict) else None


def check_force(generated: Path, record: dict, prompts, shard: Shard,
                all_prompt_ids: Sequence[str] | None = None) -> set[str]:
    """What --force must remove so that generation.json describes every clip (`stale_prompts`); InputError
    when it is refused. Writes nothing."""
    given = set(prompts["prompt_id"])
    known = set(all_prompt_ids) if all_prompt_ids is not None else given
    return stale_prompts(Path(generated), record, known, set(shard.select(sorted(given))), limited=given != known)


def stale_prompts(generated: Path, record: dict, known: set, redone: set, limited: bool) -> set[str]:
    """--force with a subset of the prompts must not split provenance (one generation.json over clips made
    with two settings). When this run's record differs from generation.json (or there is none beside existing
    clips), the prompts it will not redo are stale:
    - with --limit-prompts, refuse (InputError): the user asked for a quick look, not to drop other work;
    - for a shard (the other shards make the rest), return them: they are removed before generation.json is
      rewritten, so every clip left on disk matches it and the other shards regenerate their own prompts.
    """
    provenance_path = generated / GENERATION_JSON
    existing = stored_generation(generated)
    if existing == record:
        return set()
    others = sorted((prompts_on_disk(generated) & known) - redone)
    if not others:
        return set()
    if limited:
        if existing is None:
            why = "without a readable generation.json"
        else:
            key = next((key for key in record if existing.get(key) != record[key]),
                       next(iter(set(existing) - set(record)), "?"))
            why = f"with other settings ({key} differs)"
        raise InputError(f"{provenance_path}: --force with these settings would leave {len(others)} prompts made "
                         f"{why} beside the {len(redone)} it redoes (e.g. {others[0]}, outside --limit-prompts) — "
                         "rerun --force without --limit-prompts, or use a fresh --data for a quick look")
    return set(others)


@dataclass
class RunSummary:
    shard: Shard
    prompts: int = 0
    skipped: int = 0
    generated: int = 0
    clips: int = 0
    removed_orphans: list[str] = field(default_factory=list)
    removed_stale: list[str] = field(default_factory=list)


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
    prov = generation_provenance(generated, record)
    made_under = RunRecord.of(GENERATION_JSON, record)
    summary = RunSummary(shard)
    by_id = {row.prompt_id: row for row in prompts.itertuples(index=False)}
    mine = shard.select(list(by_id))
    known = set(all_prompt_ids if all_prompt_ids is not None else by_id)
    stale = check_force(generated, record, prompts, shard, all_prompt_ids) if force else set()
    todo = pending_prompts(generator, mine, generated, settings, record, force)
    if todo:
        generator.prepare()
    # Nothing is written before this point: a refused run changes nothing. New settings: the old sidecar goes
    # first and the new one is written once no clip of the old settings is left, so a kill in between leaves
    # clips that no generation.json describes (refused without --force), never a mixed set under one.
    renewed = stored_generation(generated) != record
    if renewed:
        begin(prov)
    if force:
        summary.removed_orphans = remove_orphans(generated, known)
        summary.removed_stale = remove_prompt_outputs(generated, stale)
    if renewed:
        commit(prov)

    summary.prompts = len(mine)
    summary.skipped = len(mine) - len(todo)
    with ThreadPoolExecutor(max_workers=WAV_WRITERS) as writers, \
            tqdm(total=len(todo), unit="prompt", desc=f"stage 2 {generator.name} shard {shard}",
                 disable=not progress or not todo, dynamic_ncols=True) as bar:
        for prompt_id in todo:
            row = by_id[prompt_id]
            conditioning = Conditioning(prompt=row.prompt, labels=tuple(row.labels))
            summary.clips += generate_prompt(generator, prompt_id, conditioning, generated, settings, writers,
                                             made_under=made_under)
            summary.generated += 1
            bar.update(1)
    return summary


def pending_prompts(generator: Generator, prompt_ids: Sequence[str], generated: Path, settings: TrajectorySettings,
                    record: dict, force: bool = False) -> list[str]:
    """The prompts a run still has to make (all with --force): those whose part is not complete under `record`
    (generation.json's content). Writes nothing."""
    made_under = RunRecord.of(GENERATION_JSON, record)
    expected = settings.expected_rows()
    return [prompt_id for prompt_id in prompt_ids
            if force or not part_is_complete(generated, prompt_id, expected, generator.content_labels,
                                             generator.truth_concepts, made_under)]


def generate_prompt(generator: Generator, prompt_id: str, conditioning: Conditioning, generated: Path,
                    settings: TrajectorySettings, writers: ThreadPoolExecutor, sample: Callable | None = None, *,
                    made_under: RunRecord) -> int:
    """All samples of one prompt into the run folder `generated`: wavs first, then the realised content part (if
    the generator reports content), the part's sidecar (the run's record it is `made_under`, data/parts.py), the
    index part last. Returns the number of clips written.

    `sample(conditioning, seed, num_samples, seconds, observer)` replaces `generator.sample` where the samples come
    from elsewhere (an interchange site's rows of a batched generation, diffusion/intervened_runs.py)."""
    index_part = part_path(generated, prompt_id)
    content_path = content_part_path(generated, prompt_id)
    # A part says "complete"; drop it before touching the prompt's clips so that no kill leaves it lying.
    index_part.unlink(missing_ok=True)
    part_sidecar_path(generated, prompt_id).unlink(missing_ok=True)
    content_path.unlink(missing_ok=True)
    truth_part_path(generated, prompt_id).unlink(missing_ok=True)
    audio_dir = audio_folder(generated, prompt_id)
    if audio_dir.exists():
        shutil.rmtree(audio_dir)
    for path in activations_paths(generated, prompt_id):
        path.unlink(missing_ok=True)
    labels = tuple(generator.content_labels)
    base_seed = prompt_seed(settings.seed, prompt_id)
    rows, activations, trace = [], [], []
    for first in range(0, settings.samples, settings.batch_size):
        count = min(settings.batch_size, settings.samples - first)
        observer = TrajectoryObserver(settings.capture_steps, settings.kinds)
        (sample or generator.sample)(conditioning, base_seed + first, count, settings.seconds, observer)
        clips = []  # (sample, kind, step, sigma, latent, content {label: mass})
        for captured in observer.captured:
            if set(captured.content) != set(labels):
                raise RuntimeError(f"{generator.name}: the observer's content at step {captured.position} has "
                                   f"labels {sorted(captured.content)}, not the declared {list(labels)}")
            for row in range(count):
                clips.append((first + row, captured.kind, captured.position, captured.sigma, captured.latent[row],
                              {label: float(captured.content[label][row]) for label in labels}))
        missing = {(sample, kind, step) for sample in range(first, first + count) for kind in settings.kinds
                   for step in settings.capture_steps} - {clip[:3] for clip in clips}
        if missing:
            sample, kind, step = sorted(missing)[0]
            raise RuntimeError(f"{generator.name}: the observer got no {kind} at step {step} (sample {sample})")
        observer.captured.clear()
        # The truth of every step (data/truth.py), not only the captured ones.
        trace.extend({"prompt_id": prompt_id, "sample": first + row, "step": position, "sigma": sigma,
                      "content": {label: float(content[label][row]) for label in labels},
                      "truth": {concept: float(truth[concept][row]) for concept in generator.truth_concepts}}
                     for position, sigma, content, truth in observer.trace for row in range(count))
        activations.extend(({**row, "sample": first + row["sample"]}, vector)
                           for batch_rows, vectors in observer.activations for row, vector in zip(batch_rows, vectors))
        rows.extend(_decode_and_write(generator, prompt_id, clips, base_seed, generated, settings, writers))
    rows.sort(key=lambda row: (row["sample"], row["kind"], row["step"]))
    if activations:
        write_activations(generated, prompt_id, base_seed, activations)
    if labels:
        write_text(content_path, format_content_part(rows, labels))
    if generator.truth_concepts:
        trace.sort(key=lambda row: (row["sample"], row["step"]))
        write_text(truth_part_path(generated, prompt_id), format_truth_part(trace, labels, generator.truth_concepts))
    write_part_sidecar(generated, prompt_id, made_under)
    write_text(index_part, _part_csv(rows))
    return len(rows)


def audio_folder(generated: Path, prompt_id: str) -> Path:
    return path_inside(generated / "audio", prompt_id, "prompt_id", generated / "audio", "fix the prompt id")


def activations_paths(generated: Path, prompt_id: str) -> tuple[Path, Path]:
    folder = generated / "activations"
    return tuple(path_inside(folder, f"{prompt_id}{suffix}", "activation file", folder, "fix the prompt id")
                 for suffix in (".npy", ".csv"))


def write_activations(generated: Path, prompt_id: str, base_seed: int, activations: list) -> None:
    """A backend's reported activations of one prompt (data/ARTIFACTS.md, stage 2): float16 .npy [n, dim] and
    its index CSV (prompt_id, sample, seed, the backend's keys, row), both before the prompt's index part."""
    import numpy as np

    array_path, csv_path = activations_paths(generated, prompt_id)
    table = [{"prompt_id": prompt_id, "sample": row["sample"], "seed": base_seed + row["sample"],
              **{key: value for key, value in row.items() if key != "sample"}, "row": number}
             for number, (row, _) in enumerate(activations)]
    write_npy(array_path, np.stack([vector for _, vector in activations]).astype(np.float16))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(table[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    write_text(csv_path, text.getvalue())


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
        for (sample, kind, step, sigma, _, content), clip_audio in zip(chunk, audio):
            relative = clip_path(prompt_id, sample, kind, step)
            pending.append(writers.submit(write_wav, generated / relative, clip_audio, generator.sample_rate))
            # A layer trajectory has no noise level: its sigma is NaN and the column stays empty.
            sigma_text = "" if sigma is None or math.isnan(sigma) else repr(float(sigma))
            rows.append({"prompt_id": prompt_id, "sample": sample, "step": step, "sigma": sigma_text,
                         "kind": kind, "seed": base_seed + sample, "seconds_total": repr(float(settings.seconds)),
                         "sample_rate": generator.sample_rate, "path": relative, "content": content})
    for future in pending:
        future.result()
    return rows


def _part_csv(rows: list[dict]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(INDEX_COLUMNS), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def part_is_complete(generated: Path, prompt_id: str, expected: set, content_labels: Sequence[str],
                     truth_concepts: Sequence[str], made_under: RunRecord) -> bool:
    """The prompt's part was made under the run's current record (data/parts.py), lists exactly the expected
    clips, every listed wav exists, and so do its realised content and truth parts when the generator reports
    them."""
    index_part = part_path(generated, prompt_id)
    if not part_is_current(generated, prompt_id, made_under):
        return False
    if content_labels and not content_part_path(generated, prompt_id).is_file():
        return False
    if truth_concepts and not truth_part_path(generated, prompt_id).is_file():
        return False
    try:
        with open(index_part, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        found = {(int(row["sample"]), row["kind"], int(row["step"])) for row in rows}
        paths = [row["path"] for row in rows]
    except (OSError, KeyError, ValueError, TypeError):
        return False
    return (len(rows) == len(found) and found == expected
            and all(row["prompt_id"] == prompt_id for row in rows)
            and all((generated / path).is_file() for path in paths))


def remove_prompt_outputs(generated: Path, prompt_ids) -> list[str]:
    """Delete the index parts (and their sidecars), content parts, activations and audio folders of these prompts;
    the ids that had a part."""
    removed = []
    for prompt_id in sorted(prompt_ids):
        part = part_path(generated, prompt_id)
        if part.is_file():
            part.unlink()
            removed.append(prompt_id)
        part_sidecar_path(generated, prompt_id).unlink(missing_ok=True)
        content_part_path(generated, prompt_id).unlink(missing_ok=True)
        truth_part_path(generated, prompt_id).unlink(missing_ok=True)
        for path in activations_paths(generated, prompt_id):
            path.unlink(missing_ok=True)
        if audio_folder(generated, prompt_id).is_dir():
            shutil.rmtree(audio_folder(generated, prompt_id))
    return removed


def prompts_on_disk(generated: Path) -> set[str]:
    """Prompt ids that have an index part (or its sidecar), a content part, activations or an audio folder."""
    found = set()
    for folder, pattern in (("index", "*.csv"), ("index", "*.json"), ("content", "*.csv"), (TRUTH_DIR, "*.csv"), ("activations", "*.csv"),
                            ("activations", "*.npy")):
        directory = generated / folder
        found |= {path.stem for path in directory.glob(pattern)} if directory.is_dir() else set()
    audio_root = generated / "audio"
    found |= {path.name for path in audio_root.iterdir() if path.is_dir()} if audio_root.is_dir() else set()
    return found


def remove_orphans(generated: Path, known_prompt_ids: set) -> list[str]:
    """Delete the outputs of prompts that are no longer in annotated.csv."""
    return remove_prompt_outputs(generated, prompts_on_disk(generated) - set(known_prompt_ids))
