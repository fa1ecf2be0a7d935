"""Stage 5: embed the concept notes with the same embedder as stage 3 (data/ARTIFACTS.md, stage 5).

Reads concepts/notes.csv and concepts/concepts.json (whose `nsynth_dir` the note paths are relative to) and
writes concepts/embeddings/<embedder>.npy, row i ↔ row i of notes.csv, with its sidecar. NSynth audio must be
16 kHz mono; any other file stops the run naming it.

Outputs that are up to date are kept; if notes.csv changed they are recomputed; if they were made by another
embedder configuration the run stops and --force replaces them. A killed run resumes from its finished chunks
(the full 289k-note train split runs in constant memory).

    python interp/stage5_embed_nsynth.py --data data --embedder spectral
"""

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the repository root importable (the project is not installed as a package).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.contract import concepts_dir, read_notes, read_sidecar, relative_path, table_sha256
from data.files import sha256_file
from data.stage import InputError, main_exit, parse_shard, stage_parser
from embeddings import embedding_stem
from embeddings.run import (add_embedder_arguments, batch_size_from_args, embed_files, embedder_from_args, lock_name,
                            report)
from interp.nsynth import examples_path as nsynth_examples_path

NSYNTH_RATE = 16_000
NSYNTH_CHANNELS = 1
NSYNTH_FRAMES = 4 * NSYNTH_RATE  # every NSynth note is 4 s


def build_parser():
    parser = stage_parser(__doc__.splitlines()[0])
    add_embedder_arguments(parser)
    return parser


def read_concepts_json(data) -> dict:
    path = concepts_dir(data) / "concepts.json"
    fix = "rerun stage 4 with --force"
    concepts = read_sidecar(path, "run stage 4 first", fix)
    if not isinstance(concepts.get("nsynth_dir"), str) or not concepts["nsynth_dir"]:
        raise InputError(f"{path}: has no nsynth_dir — {fix}")
    return concepts


def resolve_nsynth_dir(concepts: dict, data: Path, concepts_path: Path) -> Path:
    """Stage 4 stores nsynth_dir relative to --data when it lies below it (a copied or moved data directory
    reads its own copy, never the old tree), else absolute. Either way its examples.json must still be the one
    the concept sets were built from."""
    recorded = Path(concepts["nsynth_dir"])
    directory = recorded if recorded.is_absolute() else Path(data) / recorded
    if not directory.is_dir():
        raise InputError(f"{concepts_path}: nsynth_dir {concepts['nsynth_dir']!r} is not a directory (looked at "
                         f"{directory}) — restore it, or rerun stage 4 with --force and its new --nsynth-dir")
    examples = nsynth_examples_path(directory)
    if not examples.is_file() or sha256_file(examples) != concepts.get("examples_sha256"):
        raise InputError(f"{examples}: is not the examples.json the concept sets were built from (its sha256 "
                         f"differs from examples_sha256 in {concepts_path}) — rerun stage 4 with --force")
    return directory


def main(args) -> None:
    notes = read_notes(args.data)
    concepts = read_concepts_json(args.data)
    nsynth_dir = resolve_nsynth_dir(concepts, args.data, concepts_dir(args.data) / "concepts.json")
    if notes["path"].isna().any():
        row = int(notes["path"].isna().idxmax()) + 2
        raise InputError(f"{concepts_dir(args.data) / 'notes.csv'} row {row}: empty path "
                         "— rerun stage 4 with --force")
    shard = parse_shard(args.shard)
    stem = embedding_stem(args.embedder, args.model)
    embedder = embedder_from_args(args)
    out_path = concepts_dir(args.data) / "embeddings" / f"{stem}.npy"
    # examples.json identifies the audio itself: a re-rendered soundfont set under the same directory and the
    # same note names is different sound.
    extra = {"examples_sha256": concepts.get("examples_sha256")}
    stats = embed_files(
        [relative_path(path, nsynth_dir, f"{concepts_dir(args.data) / 'notes.csv'} ({note})", "rerun stage 4 with --force")
         for path, note in zip(notes["path"], notes["note_str"])], embedder, out_path,
        rows_key="notes_sha256", rows_sha256=table_sha256(notes), extra=extra,
        expect_rate=NSYNTH_RATE, expect_channels=NSYNTH_CHANNELS, expect_frames=NSYNTH_FRAMES,
        batch_size=batch_size_from_args(args, embedder), workers=args.workers, chunk_rows=args.chunk_rows,
        force=args.force, shard=shard, progress=not args.no_progress)
    report(stats, out_path)


if __name__ == "__main__":
    main_exit(main, build_parser(), lock=lock_name("stage5"))
