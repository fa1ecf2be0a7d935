"""Where does the probes' transfer to the planted demo's final clips fall? Measures, on the demo's own artifacts,
the candidate causes the README's "What the numbers say" discusses (medians over the content concepts):

    .venv/bin/python bench/bench_mix_transfer.py [--data data] [--geometry FILE] [--mixes 600] [--seed 0]

1. decoder: is every final clip (step 49) exactly one planted cell's audio?
2. mixing rule: the 100 cells rebuilt from the same bank solo clips by the generator's rule (each part at the
   clip loudness, the sum renormalised) and by the probes' rule (data/nsynth/plan.py: each part at PART_RMS, the
   sum only peak-limited), scored per number of parts;
3. NSynth-format mixes of unseen instruments: --mixes mixes of the stage-4 test split's plain notes, one
   instrument from each (two or all three) melodic groups of the geometry, the probes' mixing rule;
4. the bank's solo clips (held notes and arpeggios), every one, not only those the cells use first;
5. the in-domain ceiling: a probe trained on the final clips themselves, 5-fold over clips (identical cells on
   both sides) and grouped by cell.

Every score is the AUROC of the stage-6 probe (logreg, fitted on the concept's stage-4 train notes exactly as stage 6
fits it) against the content rule (data/concepts.py prompt_has over the clip's labels, as the truth reads them).
Needs the demo's stages 2-5 (`make stages`). Writes bench/results/mix_transfer[_<geometry>][_seed<n>].json
and prints it; the README quotes them.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from threadpoolctl import threadpool_limits

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from data.concepts import BY_NAME, CONCEPTS  # noqa: E402
from data.files import write_json  # noqa: E402
from data.nsynth.plan import DRUM_GAIN, PART_RMS  # noqa: E402
from data.nsynth.qualities import PEAK_LIMIT, PLAIN  # noqa: E402
from diffusion.bank import DRUM_MIX_GAIN, family_labels, load_bank, normalise, open_bank_dir  # noqa: E402
from diffusion.planted import load_geometry, planted_bank  # noqa: E402
from embeddings import load_embedder  # noqa: E402
from interp import records  # noqa: E402
from interp.probes import make_probe  # noqa: E402

CONTENT_GROUPS = ("family", "source", "higher")


def embed(embedder, audio) -> np.ndarray:
    return np.concatenate([embedder.embed(list(audio[start:start + 64])) for start in range(0, len(audio), 64)])


def labels_of(label_sets, names) -> np.ndarray:
    """bool [clips, concepts]: the content rule over each clip's labels."""
    return np.array([[BY_NAME[name].prompt_has(frozenset(labels)) for name in names] for labels in label_sets])


def median_auroc(probes, X, Y, names, rows=None) -> dict:
    """Median over concepts (both classes present) of the probes' AUROC, and each concept's."""
    rows = np.ones(len(X), bool) if rows is None else rows
    scores = {}
    for j, name in enumerate(names):
        y = Y[rows, j]
        if name in probes and 0 < y.sum() < len(y):
            scores[name] = round(float(roc_auc_score(y, probes[name].decision_function(X[rows]))), 3)
    return {"median": round(float(np.median(list(scores.values()))), 3) if scores else None, "n": int(rows.sum()),
            "concepts": scores}


def mix(parts, rule: str) -> np.ndarray:
    """parts: [(audio, is_drum)] -> the mix by the generator's or the probes' rule."""
    if rule == "generator":
        return normalise(sum((DRUM_MIX_GAIN if len(parts) > 1 and drum else 1.0) * audio.astype(np.float64)
                             for audio, drum in parts))
    total = sum((DRUM_GAIN if drum else 1.0) * PART_RMS * audio / np.sqrt(np.mean(np.square(audio, dtype=np.float64)))
                for audio, drum in parts)
    peak = np.max(np.abs(total))
    return (total * (PEAK_LIMIT / peak if peak > PEAK_LIMIT else 1.0)).astype(np.float32)


def main(args) -> dict:
    data = Path(args.data)
    embedder = load_embedder("spectral")
    generated = records.load_generated(data, "spectral", "x0")
    notes = records.load_concept_notes(data, "spectral", generated, required=True)
    splits = records.concept_splits(notes)
    names = [concept.name for concept in CONCEPTS if concept.group in CONTENT_GROUPS]
    probes = {name: make_probe("logreg", 0).fit(notes.embeddings[splits[name].train_rows], splits[name].train_labels)
              for name in names if splits.get(name) is not None}
    bank = load_bank(open_bank_dir(None)[0])
    cells = planted_bank(bank, load_geometry(args.geometry)).bank
    bank_row = {clip_id: row for row, clip_id in enumerate(bank.clip_ids)}
    parts_of = [[bank_row[part] for part in clip_id.split("+")] for clip_id in cells.clip_ids]
    n_parts = np.array([len(parts) for parts in parts_of])
    cell_labels = labels_of(cells.labels, names)
    out = {"data": str(data), "geometry": str(args.geometry or "default"), "embedder": embedder.provenance()["model"]}

    if args.geometry is None:   # the demo's own final clips were made on the default geometry
        last = (generated.clips["step"] == generated.clips["step"].max()).to_numpy()
        final = np.stack([sf.read(data / "generated" / path, dtype="float32")[0]
                          for path in generated.clips["path"][last]]).astype(np.float64)
        reference = cells.audio.astype(np.float64)
        correlation = (final @ reference.T) / np.outer(np.linalg.norm(final, axis=1), np.linalg.norm(reference, axis=1))
        cell = correlation.argmax(axis=1)
        out["decoder"] = {"final_clips": int(len(final)), "distinct_cells": int(len(set(cell))),
                          "lowest_best_correlation": round(float(correlation.max(axis=1).min()), 6),
                          "largest_sample_difference": float(np.abs(final - reference[cell]).max())}
        X, y_cells = generated.embeddings[last], labels_of([cells.labels[c] for c in cell], names)
        ceiling = {}
        for label, cv, groups in (("5-fold over clips", StratifiedKFold(5, shuffle=True, random_state=0), None),
                                  ("grouped by cell", StratifiedGroupKFold(5, shuffle=True, random_state=0), cell)):
            scores = []
            for j, name in enumerate(names):
                try:
                    predicted = cross_val_predict(make_probe("logreg", 0), X, y_cells[:, j], cv=cv, groups=groups,
                                                  method="decision_function")
                except ValueError:   # a fold without one class: too few positives to cross-validate
                    continue
                scores.append(roc_auc_score(y_cells[:, j], predicted))
            ceiling[label] = {"median": round(float(np.median(scores)), 3), "lowest": round(float(min(scores)), 3),
                              "concepts": len(scores)}
        out["in_domain_ceiling"] = ceiling

    out["mixing_rule"] = {}
    for rule in ("generator", "probes"):
        audio = np.stack([mix([(bank.audio[p], "drum" in bank.labels[p]) for p in parts], rule) for parts in parts_of])
        X = embed(embedder, audio)
        out["mixing_rule"][rule] = {"all": median_auroc(probes, X, cell_labels, names),
                                    **{f"{k} parts": median_auroc(probes, X, cell_labels, names, n_parts == k)
                                       for k in sorted(set(n_parts))}}

    frame = notes.notes
    examples = json.loads((data / "nsynth" / "nsynth-soundfont" / "examples.json").read_text())
    plain = frame[(frame["split"] == "test") & frame["parts"].isna()
                  & frame["note_str"].map(lambda name: examples[name]["treatment"] == PLAIN)]
    groups = [[label for label in group.labels if label != "drum" and (plain["family"] == label).any()]
              for group in load_geometry(args.geometry).groups]
    groups = [group for group in groups if group]
    rng = np.random.default_rng(args.seed)
    audio, label_sets, sizes = [], [], []
    for number in range(args.mixes):
        chosen = groups if number % 2 else [groups[g] for g in sorted(rng.choice(len(groups), 2, replace=False))]
        rows = [plain[plain["family"] == rng.choice(group)].sample(1, random_state=int(rng.integers(1 << 30))).iloc[0]
                for group in chosen]
        parts = [(sf.read(data / "nsynth" / "nsynth-soundfont" / row["path"], dtype="float32")[0], False)
                 for row in rows]
        audio.append(mix(parts, "probes"))
        label_sets.append({term for row in rows for term in (row["family"], row["source"])})
        sizes.append(len(rows))
    X, Y, sizes = embed(embedder, np.stack(audio)), labels_of(label_sets, names), np.array(sizes)
    out["test_split_mixes"] = {f"{k} parts": median_auroc(probes, X, Y, names, sizes == k) for k in sorted(set(sizes))}

    solo = np.array([len(family_labels(labels)) == 1 and "drum" not in labels for labels in bank.labels])
    held = np.array(["held" in clip_id for clip_id in bank.clip_ids])
    X, Y = embed(embedder, bank.audio), labels_of(bank.labels, names)
    out["bank_solos"] = {"all": median_auroc(probes, X, Y, names, solo),
                         "held notes": median_auroc(probes, X, Y, names, solo & held),
                         "arpeggios": median_auroc(probes, X, Y, names, solo & ~held)}
    out["nsynth_test"] = round(float(np.median([roc_auc_score(splits[name].test_labels, probes[name].decision_function(
        notes.embeddings[splits[name].test_rows])) for name in probes if splits[name].evaluable])), 3)
    return out


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO_ROOT / "data"))
    parser.add_argument("--geometry", default=None,
                        help="a planted geometry JSON for the cells and mixes (default: the demo's; the decoder "
                             "check and the in-domain ceiling need the demo's own and are left out otherwise)")
    parser.add_argument("--mixes", type=int, default=600, help="mixes of test-split notes to build")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mixes' draw")
    return parser


if __name__ == "__main__":
    arguments = build_parser().parse_args()
    started = time.perf_counter()
    with threadpool_limits(limits=1):
        result = main(arguments)
    result["seconds"] = round(time.perf_counter() - started, 1)
    name = ("mix_transfer" + ("" if arguments.geometry is None else f"_{Path(arguments.geometry).stem}")
            + ("" if arguments.seed == 0 else f"_seed{arguments.seed}") + ".json")
    write_json(REPO_ROOT / "bench" / "results" / name, result)
    summary = {key: value for key, value in result.items() if key not in ("mixing_rule", "test_split_mixes",
                                                                         "bank_solos")}
    print(json.dumps(summary, indent=1))
    for key in ("mixing_rule", "test_split_mixes", "bank_solos"):
        medians = {rule: ({part: entry["median"] for part, entry in value.items()} if "median" not in value
                          else value["median"]) for rule, value in result[key].items()}
        print(key, json.dumps(medians))
