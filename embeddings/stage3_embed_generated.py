"""Stage 3: embed every clip of the generated index (data/ARTIFACTS.md, stage 3).

Reads generated/generation.json and the sorted index (generated/index/*.csv) and writes
generated/embeddings/<embedder>.npy, row i ↔ row i of the sorted index, with its sidecar.

An output that is up to date is kept. If the index changed (stage 2 added prompts or intervened runs, or was
rerun with other settings), only the clips the embeddings do not hold yet are embedded: each row is keyed by what
made its clip (its run's provenance and its path), and rows whose key the existing output has are copied. If the
embeddings were made by another embedder configuration (another checkpoint, dtype, ...), the run stops and --force
replaces them. A killed run resumes from its finished chunks. An index that some stage-2 shard has not finished
(generated/requested.json lists what stage 2 was asked for) is refused, naming the missing prompts and shards.

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
from data.files import sha256_file, sha256_text
from data.generation import read_generation
from data.interventions import INTERVENTION_JSON, intervention_dir
from data.requested import check_complete
from data.stage import InputError, main_exit, parse_shard, stage_parser
from embeddings import embedding_stem
from embeddings.run import (add_embedder_arguments, batch_size_from_args, embed_files, embedder_from_args, lock_name,
                            report)


def build_parser():
    parser = stage_parser(__doc__.splitlines()[0])
    add_embedder_arguments(parser)
    return parser


def clip_keys(data, index, generation_sha256: str) -> list[str]:
    """What made each clip: its run's provenance (generation.json for the reference run, the intervened run's
    intervention.json) and its path. A clip whose key the existing embeddings have is not embedded again, so adding
    an intervention to a finished study embeds only its own clips; new run settings change every key of that run."""
    run_sha256 = {"": generation_sha256}
    for identifier in sorted(set(index["intervention"]) - {""}):
        sidecar = intervention_dir(generated_dir(data), identifier) / INTERVENTION_JSON
        if not sidecar.is_file():
            raise InputError(f"{sidecar}: missing beside its index parts — rerun stage 2 with --intervene and "
                             "--force, or delete that intervention's folder")
        run_sha256[identifier] = sha256_file(sidecar)
    return [sha256_text(f"{run_sha256[run]}\n{path}")[:32] for run, path in zip(index["intervention"], index["path"])]


def main(args) -> None:
    stored = read_generation(args.data)
    generation, generation_sha256 = stored.record, stored.sha256
    index = read_generated_index(args.data)
    if index["path"].isna().any():
        row = index.loc[index["path"].isna().idxmax()]
        raise InputError(f"{generated_dir(args.data) / 'index'}: clip ({row.prompt_id}, sample {row['sample']}, "
                         f"{row.kind}, step {row.step}) has no path — rerun stage 2 for prompt {row.prompt_id}")
    # A clip of a prompt annotated.csv no longer has would be embedded, then scored against no labels.
    check_index_prompts(index, read_annotated(args.data), args.data)
    # A stage-2 shard still running (or never run) leaves a partial index: embedding it would race that shard.
    check_complete(args.data, index, generation, "stage 3")
    fix = "rerun stage 2 (add --force if its outputs are corrupt)"
    paths = [relative_path(path, generated_dir(args.data), f"{generated_dir(args.data) / 'index'} ({prompt_id})", fix)
             for path, prompt_id in zip(index["path"], index["prompt_id"])]
    shard = parse_shard(args.shard)
    stem = embedding_stem(args.embedder, args.model)
    embedder = embedder_from_args(args)
    out_path = generated_dir(args.data) / "embeddings" / f"{stem}.npy"
    # Channels are a property of the whole generation; the rate is recorded per clip in the index.
    channels = generation.get("channels")
    if channels is not None and (not isinstance(channels, int) or isinstance(channels, bool) or channels < 1):
        raise InputError(f"{generated_dir(args.data) / 'generation.json'}: channels {channels!r} is not a positive "
                         "integer — rerun stage 2 with --force")
    stats = embed_files(
        paths, embedder, out_path,
        rows_key="index_sha256", rows_sha256=table_sha256(index), extra={"generation_sha256": generation_sha256},
        row_keys=clip_keys(args.data, index, generation_sha256),
        expect_rate=index["sample_rate"].tolist(), expect_channels=int(channels) if channels is not None else None,
        expect_frames=[int(round(seconds * rate)) for seconds, rate in zip(index["seconds_total"], index["sample_rate"])],
        batch_size=batch_size_from_args(args, embedder), workers=args.workers, chunk_rows=args.chunk_rows,
        force=args.force, shard=shard, progress=not args.no_progress)
    report(stats, out_path)


if __name__ == "__main__":
    main_exit(main, build_parser(), lock=lock_name("stage3"))
