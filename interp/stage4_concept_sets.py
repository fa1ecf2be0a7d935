"""Stage 4: positive and negative NSynth note sets for each of the 28 concepts, split by instrument.

    python interp/stage4_concept_sets.py --data data --nsynth-dir data/nsynth/nsynth-soundfont
        [--test-fraction 0.25] [--split-seed 0] [--max-per-concept N] [--metadata-only] [--force]

Writes <data>/concepts/notes.csv, sets.csv and concepts.json (data/ARTIFACTS.md, stage 4).

- Labels: data.concepts.Concept.label_note on each example's family, source, qualities, GM program and, for
  a mix, parts: 1 positive, 0 negative; "like" examples (sharing the concept's sound without being
  positives, or not to be told from one) are left out of its set. Labels are computed once per distinct
  (family, source, qualities, program, parts) combination and mapped back, so the 289k-note train split costs
  a few hundred rule evaluations. Real NSynth has no program and no mixes: data/concepts.py says how the
  rules that need them degrade.
- Split: by instrument, so that a probe is tested on instruments it never heard. The instruments are every
  example's own and every mix part's (a drum kit is an instrument of family "drum"). They are stratified
  by family: each family with n >= 2 instruments sends round(n * test_fraction), clamped to 1..n-1, to test
  (a family with one instrument stays in train), and at least 2 when n >= 4: a test score whose interval
  resamples instruments needs two of them (the rendered split's vocal family has four). An example goes to
  the side that holds all of its instruments; a mix whose parts straddle the split is used on neither side
  (notes.csv leaves it out). Stratifying by family alone cannot guarantee the quality and higher-level
  concepts positives on both sides, so 32 candidate shuffles are drawn from --split-seed and the first one
  that gives the most concepts positives and negatives in both splits is kept (ties: the most test positives
  of the concept with the fewest, then the test share of examples closest to --test-fraction). Same seed,
  same split.
- Capping (--max-per-concept N): per concept and split, at most N positives and at most N negatives, drawn
  at random (seeded by --split-seed and the concept); where both sides exceed N the set is balanced. notes.csv
  keeps the notes used by at least one set. Without it every labelled note is used (fine for the rendered
  set and the test split; on nsynth-train a cap of a few thousand keeps stage 5 affordable).
- Audio: every used note's wav must exist and be a readable 16 kHz mono 4 s PCM-16 file. --metadata-only
  skips audio (the sets can be built and inspected from examples.json alone, e.g. from the real test split's
  metadata); it is an explicit flag rather than automatic so that a lost audio/ folder is reported, not
  silently ignored. The sidecar records it, and stage 5 has no audio to embed for such sets.
- Resume: the three files are rebuilt together (seconds even for the train split); a run whose inputs and
  settings match an existing concepts.json (data.provenance.decide), and whose notes.csv and sets.csv match its
  hashes, is skipped. Existing outputs made with other inputs or settings are refused unless --force.
- Relocatable: concepts.json stores nsynth_dir relative to --data when it lies below it (the rendered set),
  else as an absolute path; stage 5 checks examples.json's hash wherever it reads the notes from.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd

from data.concepts import CONCEPTS
from data.contract import NOTES_COLUMNS, NOTES_PART_COLUMNS, SETS_COLUMNS, concepts_dir, table_sha256
from data.files import read_json, sha256_file, write_csv
from data.provenance import Provenance, begin, commit, decide
from data.stage import InputError, add_progress_argument, main_exit, stage_parser
from interp import nsynth
from interp.instrument_split import example_instruments, split_instruments

SPLITS = ("train", "test")
SIDECAR = "concepts.json"


def build_parser():
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--nsynth-dir", type=Path, required=True,
                        help="an NSynth split (examples.json + audio/): nsynth-train/valid/test or the rendered "
                             "<data>/nsynth/nsynth-soundfont")
    parser.add_argument("--test-fraction", type=float, default=0.25,
                        help="share of each family's instruments held out for testing")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the instrument split and of capping")
    parser.add_argument("--max-per-concept", type=int, default=None,
                        help="at most this many positives and this many negatives per concept and split")
    parser.add_argument("--metadata-only", action="store_true",
                        help="build the sets from examples.json without audio/ (no wav is required or checked)")
    add_progress_argument(parser)
    return parser


def concept_rules() -> list[dict]:
    return [{"name": concept.name, "group": concept.group, "positive": sorted(concept.positive),
             "require": sorted(concept.require), "like": sorted(concept.like), "exclude": sorted(concept.exclude),
             "instruments": None if concept.instruments is None else {
                 "name": concept.instruments.name, "programs": sorted(concept.instruments.programs),
                 "kits": sorted(concept.instruments.kits), "ensemble": concept.instruments.ensemble,
                 "needs_drum": concept.instruments.needs_drum}}
            for concept in CONCEPTS]


def label_matrix(notes: pd.DataFrame) -> np.ndarray:
    """int8 [n_notes, n_concepts]: 1 positive, 0 negative, -1 excluded ("like")."""
    keys = pd.DataFrame({"family": notes["family"], "source": notes["source"], "qualities": notes["qualities"],
                         "program": notes["program"].astype("string").fillna(""), "parts": notes["parts"]})
    combos = keys.drop_duplicates().reset_index(drop=True)
    combo_labels = np.array([[{1: 1, 0: 0, None: -1}[concept.label_note(note)] for concept in CONCEPTS]
                             for note in nsynth.notes_of(combos)], dtype=np.int8)
    combo_index = keys.merge(combos.reset_index(), on=list(keys.columns), how="left")["index"].to_numpy()
    return combo_labels[combo_index]


def concept_sets(notes: pd.DataFrame, labels: np.ndarray, max_per_concept: int | None, seed: int) -> pd.DataFrame:
    """One row per (concept, note) in the concept's set, capped per concept, split and label when asked."""
    split = notes["split"].to_numpy()
    in_split = {split_name: split == split_name for split_name in SPLITS}
    concept_of, row_of, label_of = [], [], []
    for concept_index, concept in enumerate(CONCEPTS):
        for split_index, split_name in enumerate(SPLITS):
            for label in (1, 0):
                rows = np.flatnonzero((labels[:, concept_index] == label) & in_split[split_name])
                if max_per_concept is not None and rows.size > max_per_concept:
                    rng = np.random.default_rng([seed, concept_index, split_index, label])
                    rows = rng.choice(rows, size=max_per_concept, replace=False)
                concept_of.append(np.full(rows.size, concept_index))
                row_of.append(rows)
                label_of.append(np.full(rows.size, label))
    concept_of, row_of, label_of = (np.concatenate(parts) for parts in (concept_of, row_of, label_of))
    # Rows ordered by concept (CONCEPTS order), then as in notes.csv.
    order = np.lexsort((row_of, concept_of))
    concept_names = np.array([concept.name for concept in CONCEPTS], dtype=object)
    return pd.DataFrame({"concept": concept_names[concept_of[order]],
                         "note_str": notes["note_str"].to_numpy()[row_of[order]],
                         "label": label_of[order].astype(np.int64),
                         "split": split[row_of[order]]})[list(SETS_COLUMNS)]


def summary_table(sets: pd.DataFrame) -> pd.DataFrame:
    counts = sets.groupby(["concept", "split", "label"]).size()
    rows = []
    for concept in CONCEPTS:
        row = {"concept": concept.name, "group": concept.group}
        for split_name in SPLITS:
            for label, word in ((1, "pos"), (0, "neg")):
                row[f"{split_name}_{word}"] = int(counts.get((concept.name, split_name, label), 0))
        row["note"] = "" if all(row[f"{s}_{w}"] for s in SPLITS for w in ("pos", "neg")) else "missing on a side"
        rows.append(row)
    return pd.DataFrame(rows)


def stored_nsynth_dir(nsynth_dir: Path, data: Path) -> str:
    """How concepts.json names the NSynth directory: relative to --data when it lies below it (so a copied or
    moved data directory reads its own copy), else the absolute path; stage 5 checks examples.json's hash
    there either way."""
    try:
        return nsynth_dir.relative_to(Path(data).resolve()).as_posix()
    except ValueError:
        return str(nsynth_dir)


def outputs_unchanged(out_dir: Path) -> bool:
    """notes.csv and sets.csv are the files concepts.json describes (not edited or replaced since)."""
    existing = read_json(out_dir / SIDECAR)
    return all(sha256_file(out_dir / name) == existing.get(f"{name}_file_sha256") for name in ("notes.csv", "sets.csv"))


def main(args) -> None:
    if not 0.0 < args.test_fraction < 1.0:
        raise InputError(f"--test-fraction {args.test_fraction}: must be between 0 and 1 (exclusive) — e.g. 0.25")
    if args.max_per_concept is not None and args.max_per_concept < 1:
        raise InputError(f"--max-per-concept {args.max_per_concept}: must be a positive number of notes — "
                         "or omit it to use every labelled note")
    nsynth_dir = args.nsynth_dir.resolve()
    notes = nsynth.read_examples(nsynth_dir, require_audio=not args.metadata_only)
    out_dir = concepts_dir(args.data)
    # Flat keys: stage 5 reads nsynth_dir and examples_sha256 from concepts.json.
    prov = Provenance(sidecar=out_dir / SIDECAR, outputs=[out_dir / "notes.csv", out_dir / "sets.csv"], record={
        "nsynth_dir": stored_nsynth_dir(nsynth_dir, args.data),
        "examples_sha256": sha256_file(nsynth.examples_path(nsynth_dir)),
        "split_seed": args.split_seed, "test_fraction": args.test_fraction,
        "max_per_concept": args.max_per_concept, "metadata_only": bool(args.metadata_only),
        "concepts": concept_rules(),
    })
    if decide(prov, args.force, "rerun with --force to replace them") and outputs_unchanged(out_dir):
        print(f"{out_dir}: up to date with {nsynth_dir}; --force rebuilds")
        return

    labels = label_matrix(notes)
    test_instruments = split_instruments(notes, labels, args.test_fraction, args.split_seed)
    sides = [{name in test_instruments for name in names} for names in example_instruments(notes)]
    notes["split"] = [("test" if True in side else "train") if len(side) == 1 else None for side in sides]
    sets = concept_sets(notes, labels, args.max_per_concept, args.split_seed)
    used = notes[notes["note_str"].isin(set(sets["note_str"]))].reset_index(drop=True)
    if not args.metadata_only:
        nsynth.check_audio(nsynth_dir, used["note_str"], progress=not args.no_progress)

    table = used[list(NOTES_COLUMNS + NOTES_PART_COLUMNS)]
    out_dir.mkdir(parents=True, exist_ok=True)
    # The sidecar goes last: until it names these files' hashes, a rerun treats them as unfinished.
    write_csv(out_dir / "notes.csv", table, before_replace=lambda: begin(prov))
    write_csv(out_dir / "sets.csv", sets)
    summary = summary_table(sets)
    instruments = {name: sorted({instrument for names, side in zip(example_instruments(used), used["split"])
                                 if side == name for instrument in names}) for name in SPLITS}
    commit(prov, extra={
        "instruments": instruments,
        "notes_sha256": table_sha256(table),
        "sets_sha256": table_sha256(sets),
        "notes.csv_file_sha256": sha256_file(out_dir / "notes.csv"),
        "sets.csv_file_sha256": sha256_file(out_dir / "sets.csv"),
        "n_notes": len(table),
        "counts": summary.drop(columns=["note"]).to_dict(orient="records"),
    })
    with pd.option_context("display.max_rows", None, "display.width", 200):
        print(summary.to_string(index=False))
    print(f"{len(table)} notes ({', '.join(f'{len(instruments[s])} {s} instruments' for s in SPLITS)}), "
          f"{len(sets)} set rows → {out_dir}")


if __name__ == "__main__":
    main_exit(main, build_parser())
