"""The embedding runner shared by stage 3 (generated clips) and stage 5 (NSynth notes).

`embed_files(paths, embedder, out_path, ...)` turns a list of wav files into one float32 matrix, row i for
file i, and its provenance sidecar:

- Files are read, checked (missing, unreadable, truncated, empty, NaN, silent, wrong rate or channel count:
  data.audio.read_audio plus a WAV length check), downmixed to mono and resampled to the embedder's rate by a
  small thread pool that runs ahead of the model by a bounded number of files, so decoding overlaps embed()
  and memory stays constant however many files there are.
- Rows are embedded in fixed chunks (`<name>.chunks/00000.npy` holds rows [0, chunk_rows)), each written
  atomically; `manifest.json` beside them (written first) records the provenance they were made for. A killed
  run resumes at the missing chunks. Provenance follows data.provenance.decide: an output or chunks made from
  other rows, inputs or embedder settings are refused; --force replaces them.
- Shards (--shard i/n, or a SLURM array's task id and count): shard i embeds chunks k with k mod n == i into
  the one shared chunks folder. Whichever shard finds every chunk present (the last to finish) streams them
  into the matrix, under a lock held for that moment only; readers only ever see the final matrix.
- Batches never straddle a chunk boundary, so a resumed run (with the same batch size) feeds the embedder the
  very same batches as an uninterrupted one and produces a byte-identical matrix.
- When every chunk exists they are streamed into `<name>.npy` through a memory map (the rows never sit in
  RAM together), the sidecar `<name>.json` is written, and the chunks are removed.
- Incremental (when the caller keys its rows, as stage 3 does): a later run over other rows with the same embedder
  configuration copies every row whose key the existing output has (`<name>.rows.csv`) and embeds only the rest,
  so clips added to a finished study cost only their own time. Chunk files and their manifest:
  embeddings/chunks.py.

A bad file stops the run with one InputError naming it. Chunks finished before it are kept, as for a kill.
"""
import contextlib
import importlib
import inspect
import os
import shutil
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

from data.audio import read_audio, resample, to_mono
from data.contract import LENGTH_TOLERANCE, first_line, read_npy
from data.files import remove_stale_temps, write_npy
from data.provenance import Provenance, begin, commit, decide, first_difference, read_provenance
from data.stage import InputError, Shard, add_progress_argument, add_shard_argument, parse_shard
from embeddings import EMBEDDERS, chunks, embedding_stem, load_embedder

DEFAULT_BATCH_SIZE = 16
DEFAULT_WORKERS = 2
# Rows per chunk: a kill loses at most this much work (half a minute of spectral embedding on one core, a few
# minutes of CLAP on a CPU), and the 289k-note NSynth train split makes ~140 chunk files.
DEFAULT_CHUNK_ROWS = 2048
# A progress bar appears after this long: a run that stops on a bad first file prints only its error line.
BAR_DELAY_SECONDS = 2.0
# How the runner turns a file into the embedder's input; part of the provenance because it changes vectors.
INPUT_POLICY = {"downmix": "channel mean", "resampler": f"soxr {soxr.__version__} HQ"}


@dataclass
class RunStats:
    """What a run did and where its time went (the CLAP benchmark reads embed_fraction)."""
    n_rows: int
    rows_embedded: int = 0     # rows embedded by this run (the rest came from earlier chunks or the earlier output)
    rows_reused: int = 0       # rows copied from the earlier output (keyed rows, same embedder)
    chunks_reused: int = 0
    skipped: bool = False      # the output was already up to date
    wall_seconds: float = 0.0
    embed_seconds: float = 0.0      # inside embedder.embed()
    load_wait_seconds: float = 0.0  # the model waiting for the loader: > 0 means decoding is the bottleneck
    concat_seconds: float = 0.0
    chunks_missing: int = 0         # chunks other shards have still to write (0: the matrix was written)

    @property
    def embed_fraction(self) -> float:
        return self.embed_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows_embedded / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def summary(self) -> str:
        if self.skipped:
            return f"up to date: {self.n_rows} rows"
        waiting = (f"; {self.chunks_missing} chunks of other shards still missing: the last shard to finish "
                   "writes the matrix" if self.chunks_missing else "")
        reused = f"{self.rows_reused} rows reused from the previous output, " if self.rows_reused else ""
        return (f"embedded {self.rows_embedded} of {self.n_rows} rows ({reused}{self.chunks_reused} chunks reused) in "
                f"{self.wall_seconds:.1f} s ({self.rows_per_second:.1f} rows/s); {100 * self.embed_fraction:.0f}% "
                f"of wall time inside embed(), {self.load_wait_seconds:.1f} s waiting for audio{waiting}")


def embed_files(paths: Sequence, embedder, out_path, *, rows_key: str, rows_sha256: str, extra: dict | None = None,
                row_keys: Sequence[str] | None = None,
                expect_rate: int | Sequence[int] | None = None, expect_channels: int | Sequence[int] | None = None,
                expect_frames: int | Sequence[int] | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                workers: int = DEFAULT_WORKERS, chunk_rows: int = DEFAULT_CHUNK_ROWS, force: bool = False, shard: Shard = Shard(0, 1),
                progress: bool = True) -> RunStats:
    """Embed `paths` (row i = file i) into float32 `out_path` [len(paths), embedder.dim] plus its sidecar.

    rows_key/rows_sha256 name the table the rows are aligned with (e.g. "index_sha256"); `extra` holds other
    input identities for the sidecar (e.g. generation_sha256). expect_rate/expect_channels are one value for
    every file or one per file; so is expect_frames, the declared length that a file may fall short of by at most
    data.contract.LENGTH_TOLERANCE. The provenance rule is data.provenance.decide: an output that is up to date is
    kept; one made from other rows, inputs or embedder settings is refused unless force.

    row_keys (one per file: what made the clip, e.g. its run's provenance and path) make the output incremental:
    with other rows but the same embedder configuration, the rows whose key the existing output has are copied from
    it and only the others are embedded (another embedder configuration is still refused unless force). The keys are
    written beside the matrix (embeddings/chunks.py).

    shard i/n embeds chunks k with k mod n == i; the shard that finds every chunk present writes the matrix
    and its sidecar (under a short lock, so two shards finishing together do it once).
    """
    started = time.perf_counter()
    paths = [Path(path) for path in paths]
    out_path = Path(out_path)
    folder = chunks.chunks_dir(out_path)
    if batch_size < 1 or chunk_rows < 1 or workers < 0:
        raise InputError(f"batch size {batch_size}, chunk rows {chunk_rows} and workers {workers}: "
                         "batch size and chunk rows must be ≥ 1 and workers ≥ 0 — fix the option")

    identity = {**embedder.provenance(), "input": INPUT_POLICY, "dim": int(embedder.dim)}
    rows = {**(extra or {}), rows_key: rows_sha256, "n_rows": len(paths)}
    outputs = [out_path]
    if row_keys is not None:
        row_keys = chunks.check_row_keys(row_keys, len(paths))
        rows["row_keys_sha256"] = chunks.keys_sha256(row_keys)
        outputs.append(chunks.keys_path(out_path))
    prov = Provenance(sidecar=out_path.with_suffix(".json"), record={**identity, **rows}, outputs=outputs)
    stats = RunStats(n_rows=len(paths))
    fix = "pass --force to replace them (after changing settings, every shard with --force)"
    # Keyed rows: another embedder configuration is refused, other rows are an update; unkeyed: both are refused.
    rule = prov if row_keys is None else Provenance(prov.sidecar, identity, outputs)
    done = decide(rule, force, fix)
    stored = None if force else read_provenance(prov.sidecar, fix)
    matrix_ok = stored is not None and _matrix_complete(out_path, len(paths), embedder.dim)
    unkeyed = {key: value for key, value in prov.record.items() if key != "row_keys_sha256"}
    if row_keys is not None and matrix_ok and "row_keys_sha256" not in stored \
            and first_difference(stored, unkeyed, "") is None:
        # An output made before rows were keyed, of exactly these rows: its keys are written, nothing re-embedded.
        begin(prov)
        chunks.write_keys(out_path, row_keys)
        commit(prov)
        stored, done = prov.record, True
    complete = done and matrix_ok
    if complete and first_difference(stored, prov.record, "") is None:
        with chunks.shared_state_lock(out_path):
            # A kill between writing the sidecar and removing the chunks leaves chunks of this very output.
            manifest = chunks.read_json_or_none(folder / chunks.MANIFEST)
            if manifest is not None and first_difference(manifest, prov.record, "") is None:
                shutil.rmtree(folder, ignore_errors=True)
        stats.skipped = True
        stats.wall_seconds = time.perf_counter() - started
        return stats

    created = _missing_dirs(folder)
    try:
        with chunks.shared_state_lock(out_path):
            chunk_rows = chunks.open_chunks(folder, prov, chunk_rows, force, shard)
        bounds = chunks.chunk_bounds(len(paths), chunk_rows)
        mine = [k for k in range(len(bounds)) if shard.owns(k)]
        # Temp files of this shard's chunks that a killed run left behind (other shards' may be live).
        remove_stale_temps(folder, names=[chunks.chunk_name(k) for k in mine])
        todo = [k for k in mine if not chunks.chunk_complete(folder / chunks.chunk_name(k), bounds[k][1] - bounds[k][0],
                                                             embedder.dim)]
        stats.chunks_reused = len(mine) - len(todo)
        # The earlier output is read only while this shard has chunks to write, so no shard can have replaced it.
        previous, known = chunks.previous_rows(out_path, stored if done else None, embedder.dim) \
            if row_keys is not None and todo else (None, {})
        reuse = {row: known[row_keys[row]] for k in todo for row in range(*bounds[k])
                 if known and row_keys[row] in known}
        _embed_chunks(paths, todo, bounds, folder, embedder, stats, expect_rate, expect_channels,
                      batch_size, workers, progress, out_path.name, expect_frames=expect_frames,
                      previous=previous, reuse=reuse)
    except BaseException:
        # Nothing embedded by anyone: leave no empty folders or lone manifest behind.
        with chunks.shared_state_lock(out_path):
            if not any(folder.glob("[0-9]*.npy")):
                shutil.rmtree(folder, ignore_errors=True)
        for directory in reversed(created[:-1]):
            with contextlib.suppress(OSError):
                directory.rmdir()  # only when empty: another shard's or output's files keep it
        raise

    with chunks.shared_state_lock(out_path):
        missing = [k for k, (start, stop) in enumerate(bounds)
                   if not chunks.chunk_complete(folder / chunks.chunk_name(k), stop - start, embedder.dim)]
        stats.chunks_missing = len(missing)
        if not missing:
            concat_started = time.perf_counter()
            remove_stale_temps(out_path.parent, names=[out_path.name, prov.sidecar.name,
                                                       chunks.keys_path(out_path).name])
            chunks.concatenate(folder, bounds, embedder.dim, out_path, before_replace=lambda: begin(prov))
            if row_keys is not None:
                chunks.write_keys(out_path, row_keys)
            commit(prov)
            shutil.rmtree(folder, ignore_errors=True)
            stats.concat_seconds = time.perf_counter() - concat_started
    stats.wall_seconds = time.perf_counter() - started
    return stats


def _embed_chunks(paths, todo, bounds, folder, embedder, stats, expect_rate, expect_channels, batch_size,
                  workers, progress, label, expect_frames=None, previous=None, reuse=None) -> None:
    """Write chunks `todo`: rows in `reuse` (row -> row of `previous`) are copied, the others embedded."""
    reuse = reuse or {}
    rows = [row for k in todo for row in range(*bounds[k]) if row not in reuse]
    rates, channels = _per_row(expect_rate, len(paths)), _per_row(expect_channels, len(paths))
    frames = _per_row(expect_frames, len(paths))
    # Headers are checked up front: a file that stage 2 or 4 never wrote, or a cut-off copy, should stop the run
    # now, before any output or progress bar, not hours in.
    for row in tqdm(rows, desc="check audio headers", unit="file", disable=not progress or len(rows) < 5000):
        check_header(paths[row], rates[row], channels[row], frames[row])
    if not todo:
        return

    def load(row):
        check_wav_complete(paths[row])
        audio, rate = read_audio(paths[row], expect_rate=rates[row], expect_channels=channels[row])
        return resample(to_mono(audio), rate, embedder.sample_rate)

    loaded = _prefetch(rows, load, workers, ahead=2 * batch_size + workers)
    # delay: a run that stops on its first files prints its one error line and no bar fragment before it.
    bar = tqdm(total=len(rows), unit="clip", desc=f"embed {label}", disable=not progress, dynamic_ncols=True,
               delay=BAR_DELAY_SECONDS)
    failed = True
    try:
        with contextlib.closing(loaded):
            for k in todo:
                start, stop = bounds[k]
                chunk = np.empty((stop - start, embedder.dim), dtype=np.float32)
                fresh = [row for row in range(start, stop) if row not in reuse]
                for row in range(start, stop):
                    if row in reuse:
                        chunk[row - start] = previous[reuse[row]]
                # Batches never straddle a chunk: a resumed run feeds the embedder the same batches.
                for batch_start in range(0, len(fresh), batch_size):
                    batch_rows = fresh[batch_start:batch_start + batch_size]
                    waited = time.perf_counter()
                    waveforms = [next(loaded) for _ in batch_rows]
                    began = time.perf_counter()
                    stats.load_wait_seconds += began - waited
                    vectors = embedder.embed(waveforms)
                    stats.embed_seconds += time.perf_counter() - began
                    chunk[[row - start for row in batch_rows]] = _check_vectors(vectors, embedder,
                                                                                [paths[row] for row in batch_rows])
                    bar.update(len(batch_rows))
                write_npy(folder / chunks.chunk_name(k), chunk)
                stats.rows_embedded += len(fresh)
                stats.rows_reused += stop - start - len(fresh)
        failed = False
    finally:
        # On an error the bar's line is cleared, so the error stands alone on stderr.
        bar.leave = not failed
        bar.close()


def _missing_dirs(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, outermost first."""
    missing = []
    for folder in [path, *path.parents]:
        if folder.exists():
            break
        missing.append(folder)
    return list(reversed(missing))


def _matrix_complete(path: Path, n_rows: int, dim: int) -> bool:
    try:
        matrix = read_npy(path, "", mmap_mode="r")
    except InputError:   # missing, empty, cut off, an .npz archive: made again
        return False
    return matrix.dtype == np.float32 and matrix.shape == (n_rows, dim)


def _per_row(value, n: int) -> list:
    if value is None or isinstance(value, (int, np.integer)):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"expected one value per file ({n}), got {len(value)}")
    return [None if v is None else int(v) for v in value]


def _prefetch(rows: list[int], load, workers: int, ahead: int) -> Iterator[np.ndarray]:
    """Yield load(row) for rows in order, computed by `workers` threads at most `ahead` rows in advance."""
    if workers == 0:
        for row in rows:
            yield load(row)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="embed-loader")
    pending = deque()
    upcoming = iter(rows)
    try:
        for row in upcoming:
            pending.append(pool.submit(load, row))
            if len(pending) >= ahead:
                break
        while pending:
            result = pending.popleft().result()
            row = next(upcoming, None)
            if row is not None:
                pending.append(pool.submit(load, row))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def check_header(path: Path, rate: int | None, channels: int | None, frames: int | None) -> None:
    """A file's header against what its table declares: present, complete, rate, channels, length."""
    if not path.is_file():
        raise InputError(f"{path}: audio file is missing — rerun the stage that writes it")
    check_wav_complete(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as error:
        raise InputError(f"{path}: unreadable audio ({first_line(error)}) — delete it and rerun its stage") from None
    if rate is not None and info.samplerate != rate:
        raise InputError(f"{path}: sample rate {info.samplerate} Hz, expected {rate} Hz — regenerate it at {rate} Hz")
    if channels is not None and info.channels != channels:
        raise InputError(f"{path}: {info.channels} channel(s), expected {channels} — regenerate it")
    if frames is not None and info.frames < frames * (1 - LENGTH_TOLERANCE):
        raise InputError(f"{path}: {info.frames} samples, but its table declares {frames} "
                         f"({frames / info.samplerate:g} s; at most {LENGTH_TOLERANCE:.0%} shorter is accepted) — "
                         "the file is cut off: delete it and rerun the stage that writes it")


def check_wav_complete(path: Path) -> None:
    """Refuse a WAV whose data chunk is shorter than its header declares.

    libsndfile silently reads such a file as a shorter clip, so a copy cut off mid-way would be embedded as if
    it were whole. Only RIFF/WAVE headers are checked; other formats are left to libsndfile.
    """
    with open(path, "rb") as handle:
        header = handle.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return
        size = os.fstat(handle.fileno()).st_size
        offset = 12
        while offset + 8 <= size:
            handle.seek(offset)
            chunk_id, chunk_bytes = handle.read(4), int.from_bytes(handle.read(4), "little")
            if chunk_id == b"data":
                available = size - offset - 8
                # 0xFFFFFFFF marks a stream whose length was never filled in: nothing to compare against.
                if chunk_bytes != 0xFFFFFFFF and chunk_bytes > available:
                    raise InputError(f"{path}: truncated audio (header declares {chunk_bytes} bytes of samples, "
                                     f"the file holds {available}) — delete it and rerun its stage")
                return
            offset += 8 + chunk_bytes + (chunk_bytes & 1)


def _check_vectors(vectors, embedder, batch_paths: list[Path]) -> np.ndarray:
    vectors = np.asarray(vectors)
    if vectors.dtype != np.float32 or vectors.shape != (len(batch_paths), embedder.dim):
        raise TypeError(f"{type(embedder).__name__}.embed returned {vectors.dtype} {list(vectors.shape)}, "
                        f"expected float32 [{len(batch_paths)}, {embedder.dim}]")
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        path = batch_paths[int(np.argmin(finite))]
        raise InputError(f"{path}: the {embedder.name} embedder returned NaN or Inf for this clip — check the clip, "
                         "or rerun with a more precise --dtype")
    return vectors


# ---- what the two stage scripts share: embedder options on the command line -------------------------------

def add_embedder_arguments(parser) -> None:
    parser.add_argument("--embedder", choices=sorted(EMBEDDERS), default="spectral",
                        help="which embedder (embeddings/__init__.py); stages 3 and 5 must use the same one")
    parser.add_argument("--model", help="model id or local directory (embedders with weights, e.g. clap)")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda (embedders with weights)")
    parser.add_argument("--dtype", help="model dtype, e.g. fp32, fp16 or bf16 (embedders with weights)")
    parser.add_argument("--window", help="which part of a clip longer than the embedder's window is embedded: "
                                         "centre or first (clap; unset: centre); stages 3 and 5 must agree")
    parser.add_argument("--batch-size", type=int,
                        help=f"clips per embed() call; unset: the embedder's own batch size, else {DEFAULT_BATCH_SIZE}")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help="threads reading and resampling audio ahead of the model (0: read in the main thread)")
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS,
                        help="rows per chunk file: the unit a killed run resumes from and shards split "
                             "(a resumed run keeps the size it started with)")
    add_shard_argument(parser)
    add_progress_argument(parser)


def lock_name(stage: str):
    """A lock per stage, embedding stem and shard: shards of one SLURM array run side by side on one --data,
    two runs of the same shard (or of the same unsharded output) do not."""
    def name(args) -> str:
        shard = parse_shard(args.shard)
        return f"{stage}-{embedding_stem(args.embedder, args.model)}-shard-{shard.index}-of-{shard.count}"
    return name


def embedder_from_args(args):
    """Build the embedder, passing only the options the user set, and only if the embedder takes them."""
    options = {name: getattr(args, name) for name in ("model", "device", "dtype", "window")
               if getattr(args, name, None) is not None}
    module_name, class_name = EMBEDDERS[args.embedder].split(":")
    try:
        parameters = inspect.signature(getattr(importlib.import_module(module_name), class_name)).parameters
    except ModuleNotFoundError as error:
        raise InputError(f"embedder {args.embedder!r} cannot be imported ({error}) — install its dependencies "
                         "(make install)") from None
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = [name for name in options if name not in parameters and not takes_any]
    if unknown:
        raise InputError(f"--{unknown[0]} is not an option of the {args.embedder} embedder — leave it out")
    return load_embedder(args.embedder, **options)


def batch_size_from_args(args, embedder) -> int:
    """An embedder may name the batch that suits it (spectral: 32; CLAP: 8 on CPU, 32 on CUDA)."""
    if args.batch_size is not None:
        return args.batch_size
    return int(getattr(embedder, "batch_size", None) or DEFAULT_BATCH_SIZE)


def report(stats: RunStats, out_path) -> None:
    if stats.skipped:
        print(f"{out_path}: up to date ({stats.n_rows} rows) — pass --force to recompute")
    else:
        print(f"{out_path}: {stats.summary()}")
