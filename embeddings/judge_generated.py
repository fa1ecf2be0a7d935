"""The judge: tag generated clips with a pretrained tagger and turn its tags into per-concept verdicts through the
mapping table data/judge_tags.csv, an independent yardstick of what was generated (data/ARTIFACTS.md, "The judge").

Reads generated/generation.json and the sorted index like stage 3, tags the chosen clips (every position of every
run, intervened runs included, or with --positions final only each trajectory's last captured position) through
the embedder runner (chunked, resumable, incremental: clips already tagged by an earlier run of the same tagger are
copied, so going from final to all positions tags only the rest; another tagger configuration is refused unless
--force), and writes

    generated/judge/<judge stem>/taggram.npy (+ .json, .rows.csv)  tag probabilities, row i <-> row i of judge.csv
    generated/judge/<judge stem>/judge.csv    per clip: its index key, tag_<tag>, score_<concept>, judged_<concept>
    generated/judge/<judge stem>/judge.json   provenance, written last

A concept's score is the highest probability among its evidence tags; it is judged present at the tagger's own
0.5 (data/judge.py). Concepts the tag set cannot judge have an empty score and are never judged present.

    python embeddings/judge_generated.py --data data --judge musicnn-tags [--model MTT_musicnn] [--positions final]
"""
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

from data import judge as judge_table
from data.concepts import CONCEPT_NAMES
from data.contract import (check_index_prompts, generated_dir, read_annotated, read_generated_index, relative_path,
                           table_sha256)
from data.files import sha256_file, write_csv
from data.generation import read_generation
from data.judge import KEY_COLUMNS, SIDECAR, TABLE, TAGGRAM, judge_dir
from data.provenance import Provenance, begin, commit, first_difference, read_provenance
from data.requested import check_complete
from data.stage import InputError, Shard, add_progress_argument, main_exit, stage_parser
from embeddings import EMBEDDERS, embedding_stem
from embeddings.run import DEFAULT_WORKERS, batch_size_from_args, embed_files, embedder_from_args, report
from embeddings.stage3_embed_generated import clip_keys

POSITIONS = ("all", "final")

def build_parser():
    parser = stage_parser(__doc__)
    parser.add_argument("--judge", default="musicnn-tags",
                        help="the tagger: an embedder whose outputs are tag probabilities (musicnn-tags)")
    parser.add_argument("--model", help="the tagger's checkpoint (musicnn-tags: MTT_musicnn, MSD_musicnn, MTT_vgg, "
                                        "MSD_vgg; unset: MTT_musicnn)")
    parser.add_argument("--positions", default="all", choices=POSITIONS,
                        help="all: every captured position of every run; final: each trajectory's last position "
                             "only (what stage 6's judged-content yardstick reads; the demo's choice)")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--batch-size", type=int, help="clips per call of the tagger (unset: its own)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="threads reading audio ahead of the model")
    parser.add_argument("--chunk-rows", type=int, default=512, help="rows per chunk file (the unit a killed run "
                                                                     "resumes from)")
    add_progress_argument(parser)
    return parser


def final_rows(index: pd.DataFrame) -> np.ndarray:
    """Each trajectory's (run, prompt, sample, kind) last captured position."""
    last = index.groupby(["intervention", "prompt_id", "sample", "kind"], sort=False)["step"].transform("max")
    return (index["step"] == last).to_numpy()


def main(args) -> None:
    if args.judge not in EMBEDDERS:
        raise InputError(f"--judge {args.judge!r} is not an embedder — use musicnn-tags")
    args.embedder = args.judge
    stem = embedding_stem(args.judge, args.model)
    stored = read_generation(args.data)
    index = read_generated_index(args.data)
    check_index_prompts(index, read_annotated(args.data), args.data)
    check_complete(args.data, index, stored.record, "the judge")
    keys = clip_keys(args.data, index, stored.sha256)
    chosen = final_rows(index) if args.positions == "final" else np.ones(len(index), bool)
    clips = index[chosen].reset_index(drop=True)[list(KEY_COLUMNS)]
    keys = [key for key, keep in zip(keys, chosen) if keep]
    fix = "rerun stage 2 (add --force if its outputs are corrupt)"
    paths = [relative_path(path, generated_dir(args.data), f"{generated_dir(args.data) / 'index'} ({prompt_id})", fix)
             for path, prompt_id in zip(clips["path"], clips["prompt_id"])]
    out = judge_dir(args.data, stem)
    rows = index[chosen]
    record = {"judge": stem, "positions": args.positions, "generation_sha256": stored.sha256,
              "clips_sha256": table_sha256(clips), "mapping_sha256": sha256_file(judge_table.JUDGE_TABLE),
              "threshold": judge_table.THRESHOLD}
    prov = Provenance(out / SIDECAR, record, [out / TABLE, out / TAGGRAM])
    # judge.csv is a function of the taggram, the clips and the mapping table: made for other clips or another
    # mapping it is simply redone. The taggram is the work, under the embedder runner's rule: another tagger
    # configuration is refused (--force replaces it), other clips reuse every row it already has.
    previous = None if args.force else read_provenance(prov.sidecar, "delete it, or rerun the judge with --force")
    if previous is not None and first_difference(previous, prov.record, "") is None \
            and all(path.is_file() for path in prov.outputs):
        print(f"{out / TABLE}: up to date ({len(clips)} clips) — pass --force to recompute")
        return

    tagger = embedder_from_args(args)
    tags = getattr(tagger, "tags", None)
    if not tags:
        raise InputError(f"--judge {args.judge} has no tags to judge with — use musicnn-tags")
    mapping = judge_table.mapping_for(tagger.model, tags)
    channels = stored.record.get("channels")
    stats = embed_files(
        paths, tagger, out / TAGGRAM, rows_key="clips_sha256", rows_sha256=record["clips_sha256"],
        extra={"generation_sha256": stored.sha256}, row_keys=keys,
        expect_rate=rows["sample_rate"].tolist(), expect_channels=int(channels) if channels is not None else None,
        expect_frames=[int(round(s * r)) for s, r in zip(rows["seconds_total"], rows["sample_rate"])],
        batch_size=batch_size_from_args(args, tagger), workers=args.workers, chunk_rows=args.chunk_rows,
        force=args.force, shard=Shard(0, 1), progress=not args.no_progress)
    report(stats, out / TAGGRAM)
    probabilities = np.load(out / TAGGRAM)
    table = judged_table(clips, probabilities, tags, mapping)
    write_csv(out / TABLE, table, before_replace=lambda: begin(prov))
    commit(prov, {"tags": list(tags), "checkpoint_sha256": tagger.provenance().get("checkpoint_sha256"),
                  "model": tagger.model, "table_sha256": sha256_file(out / TABLE),
                  "unjudgeable": mapping.unjudgeable, "evidence": {k: list(v) for k, v in mapping.evidence.items()}})
    judged = table[[f"judged_{name}" for name in CONCEPT_NAMES]].to_numpy().sum()
    print(f"{out / TABLE}: {len(table)} clips ({args.positions} positions), {len(mapping.evidence)} judgeable "
          f"concepts, {int(judged)} (clip, concept) verdicts present")


def judged_table(clips: pd.DataFrame, probabilities: np.ndarray, tags, mapping) -> pd.DataFrame:
    scores = judge_table.concept_scores(probabilities, tags, mapping)
    present = judge_table.judged_present(scores)
    return pd.concat([clips.reset_index(drop=True),
                      pd.DataFrame(np.round(probabilities.astype(np.float64), 6), columns=[f"tag_{t}" for t in tags]),
                      pd.DataFrame(np.round(scores, 6), columns=[f"score_{name}" for name in CONCEPT_NAMES]),
                      pd.DataFrame(present, columns=[f"judged_{name}" for name in CONCEPT_NAMES])], axis=1)


def lock_name(args) -> str:
    return f"judge-{embedding_stem(args.judge, args.model) if args.judge in EMBEDDERS else args.judge}"


if __name__ == "__main__":
    main_exit(main, build_parser(), lock=lock_name)
