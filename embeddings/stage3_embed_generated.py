"""Stage 3: embed every clip of the generated index (data/ARTIFACTS.md, stage 3).

Reads generated/generation.json and the sorted index (generated/index/*.csv) and writes
generated/embeddings/<embedder>.npy, row i ↔ row i of the sorted index, with its sidecar.

An output that is up to date is kept. If the index or generation.json changed (stage 2 added prompts or was
rerun), the embeddings describe other clips, so they are recomputed. If they were made by another embedder
configuration (another checkpoint, dtype, ...), the run stops and --force replaces them. A killed run resumes
from its finished chunks.

    python embeddings/stage3_embed_generated.py --data data --embedder spectral
    python embeddings/stage3_embed_generated.py --data data --embedder clap --model laion/larger_clap_general --device cuda
"""

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the repository root importable (the project is not installed as a package).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.contract import (check_index_prompts, generated_dir, read_annotated, read_generated_index, relative_path,
                           table_sha256)
from data.generation import read_generation
from data.stage import InputError, main_exit, parse_shard, stage_parser
from embeddings import embedding_stem
from embeddings.run import (add_embedder_arguments, batch_size_from_args, embed_files, embedder_from_args, lock_name,
                            report)


def build_parser():
    parser = stage_parser(__doc__.splitlines()[0])
    add_embedder_arguments(parser)
    return parser


def main(args) -> None:
    stored = read_generation(args.data)
    generation, generation_sha256 = stored.record, stored.sha256
    # Channels are a property of the whole generation; the rate is recorded per clip in the index.
    channels = generation.get("channels")
    if channels is not None and (not isinstance(channels, int) or isinstance(channels, bool) or channels < 1):
        raise InputError(f"{generated_dir(args.data) / 'generation.json'}: channels {channels!r} is not a positive "
                         "integer — rerun stage 2 with --force")
    # Every part made under this generation.json (a killed stage 2 --force is refused, naming its parts).
    index = read_generated_index(args.data)
    if index["path"].isna().any():
        row = index.loc[index["path"].isna().idxmax()]
        raise InputError(f"{generated_dir(args.data) / 'index'}: clip ({row.prompt_id}, sample {row['sample']}, "
                         f"{row.kind}, step {row.step}) has no path — rerun stage 2 for prompt {row.prompt_id}")
    # A clip of a prompt annotated.csv no longer has would be embedded, then scored against no labels.
    check_index_prompts(index, read_annotated(args.data), args.data)
    fix = "rerun stage 2 (add --force if its outputs are corrupt)"
    paths = [relative_path(path, generated_dir(args.data), f"{generated_dir(args.data) / 'index'} ({prompt_id})", fix)
             for path, prompt_id in zip(index["path"], index["prompt_id"])]
    shard = parse_shard(args.shard)
    stem = embedding_stem(args.embedder, args.model)
    embedder = embedder_from_args(args)
    out_path = generated_dir(args.data) / "embeddings" / f"{stem}.npy"
    stats = embed_files(
        paths, embedder, out_path,
        rows_key="index_sha256", rows_sha256=table_sha256(index), extra={"generation_sha256": generation_sha256},
        expect_rate=index["sample_rate"].tolist(), expect_channels=int(channels) if channels is not None else None,
        expect_frames=[int(round(seconds * rate)) for seconds, rate in zip(index["seconds_total"], index["sample_rate"])],
        batch_size=batch_size_from_args(args, embedder), workers=args.workers, chunk_rows=args.chunk_rows,
        force=args.force, shard=shard)
    report(stats, out_path)


if __name__ == "__main__":
    main_exit(main, build_parser(), lock=lock_name("stage3"))
