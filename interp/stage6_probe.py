"""Stage 6: train a probe per concept on NSynth embeddings, apply it to every position of every trajectory, and
chart when each concept emerges against every yardstick the run has (interp/yardsticks.py: the prompt annotations
and, for generators that record it, the final content the generator realised) (data/ARTIFACTS.md, stage 6).

    python interp/stage6_probe.py --data data --embedder spectral [--model X] [--probe logreg|svm|cav|text]
                                  [--kind x0] [--baseline instruments|notes] [--compare]
                                  [--judge musicnn-tags [--judge-model MTT_musicnn]]
    python interp/stage6_probe.py --data data --space activations [--branch cond] [--pool mean]

Outputs go to <data>/results/<embedder stem>/<probe>/<kind>/ (the stem of --embedder/--model, as stages 3 and 5
name their files; another --alpha, --baseline or --seed than the default appends them, e.g. x0_seed-1/, so that
analyses are kept side by side: interp/result_folder.py) and are skipped when up to date with their inputs
(data.provenance's rule).
Read top to bottom: inputs (named records, interp/records.py) -> probes, their quality over re-splits and the
pool of random-concept probes (interp/fitting.py) -> emergence per yardstick: AUROC, the primary metric, tested
against "no information" with one Holm family, status and emergence step per concept (interp/emergence.py) ->
known answers where the generator planted them (interp/known_answers.py) -> files, figures, report, summary.
`--compare` scores the intervened clips against their pairs (interp/compare.py) under a provenance of its own
(compare/compare.json). `--space activations` is the activation-space stage, interp/stage6_activations.py, run
as is.
"""
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from data.concepts import CONCEPTS
from data.contract import concepts_dir, generated_dir, table_sha256
from data.files import read_json, sha256_file, write_csv
from data.identifiers import path_inside
from data.provenance import Provenance, begin, commit, decide
from data.stage import InputError, add_progress_argument, main_exit, stage_parser
from embeddings import EMBEDDERS, embedding_stem
from interp import (compare, compare_report, judge, known_answers, plots, report, result_folder, stage6_activations,
                    statistics, summary)
from interp import probes as probe_families
from interp.emergence import (PRIMARY_METRIC, RANDOM_PERCENTILE, distinct_positions, drift_tables, emergence,
                              emergence_steps)
from interp.fitting import (BASELINES, concept_scores, fit_concept_probes, probe_quality, resplit_quality,
                            score_clips, text_embeddings)
from interp.records import (REALISED_MASS, ConceptNotes, GeneratedClips, KnownTruth, ProbeScores, concept_splits,
                            load_concept_notes, load_generated, load_known_truth)
from interp.yardsticks import BY_NAME as YARDSTICK_KINDS
from interp.yardsticks import YARDSTICKS, build_yardsticks, final_content_labels

OUTPUT_FILES = ("probe_quality.csv", "emergence.csv", "emergence_steps.csv", "known_answers.csv", "known_order.csv",
                "known_commitment.csv", "judge_validation.csv", "drift.csv", "drift_summary.csv", "probabilities.csv",
                summary.SUMMARY_JSON, summary.SUMMARY_MD)
SIDECAR = "stage6.json"
EMBEDDER_KEYS = ("embedder", "model", "checkpoint_sha256", "window_policy", "dim")
# Options of one space that the other does not read: given with the other space (other than their default),
# they are refused rather than silently ignored. --embedder, --model, --judge and --judge-model are read by the
# embedding space only, and ignored by the activation space, so that `make stage6 STAGE6_ARGS="--space activations"`
# runs as written.
EMBEDDING_OPTIONS = {"probe": "logreg", "kind": "x0", "baseline": "instruments", "compare": False, "resplits": 20}
# The random probes of each space: a pool of random-concept probes (one fit each) here, probes on permuted labels
# per concept, layer and fold there (far dearer: interp/activations.py).
RANDOM_BASELINES = {"embeddings": 100, "activations": stage6_activations.RANDOM_BASELINES}
ACTIVATION_OPTIONS = {"branch": "cond", "pool": "mean"}


def results_dir(data: Path, embedder: str, probe: str, kind: str) -> Path:
    return Path(data) / "results" / embedder / probe / kind


def build_parser():
    parser = stage_parser(__doc__)
    parser.add_argument("--space", default="embeddings", choices=("embeddings", "activations"),
                        help="embeddings: probes on stage 3/5 embeddings of the audio; activations: linear probes "
                             "per layer on MusicGen's residual stream (interp/stage6_activations.py), or per (block, step) on the "
                             "organism's blocks (interp/stage6_blocks.py)")
    parser.add_argument("--branch", default="cond", help="--space activations: cond or uncond rows of the CFG batch")
    parser.add_argument("--pool", default="mean", help="--space activations: mean over positions or the last one")
    parser.add_argument("--embedder", default=None,
                        help=f"the embedder stages 3 and 5 used ({', '.join(sorted(EMBEDDERS))}); with --model it "
                             "names the embeddings file exactly as they do (embeddings.embedding_stem); required "
                             "for --space embeddings")
    parser.add_argument("--model", help="the --model given to stages 3 and 5 (embedders with weights, e.g. clap)")
    parser.add_argument("--probe", default="logreg",
                        help=f"probe family: {', '.join(probe_families.FAMILIES)} (see interp/probes.py)")
    parser.add_argument("--judge", default="musicnn-tags",
                        help="the judge whose verdicts (embeddings/judge_generated.py) give the judged-content "
                             "yardstick when its table exists; '' ignores any judge")
    parser.add_argument("--judge-model", default=None, help="the judge's --model (unset: its default checkpoint)")
    parser.add_argument("--kind", default="x0", help="which captured clips to analyse: x0 (clean estimate) or xt")
    parser.add_argument("--baseline", default="instruments",
                        help="random concepts drawn as random instrument subsets matched in number of instruments "
                             "(instruments) or as random notes matched in number of notes (notes)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for every CI")
    parser.add_argument("--random-baselines", type=int, default=None,
                        help="random-concept probes in the pool every concept's probe is compared with, the "
                             f"secondary specificity check (default {RANDOM_BASELINES['embeddings']}; --space "
                             "activations: probes on permuted labels per concept and layer, default "
                             f"{RANDOM_BASELINES['activations']})")
    parser.add_argument("--resplits", type=int, default=20,
                        help="fresh instrument splits of the NSynth notes over which probe quality is re-measured "
                             "(median and range in probe_quality.csv); 0 skips them")
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="family-wise error rate (Holm over every AUROC p-value in emergence.csv); "
                             "CIs are 1 - alpha")
    parser.add_argument("--seed", type=int, default=0, help="seed for probes, baselines and resamples")
    parser.add_argument("--no-report", action="store_true", help="skip plots/ and report.html")
    add_progress_argument(parser)
    parser.add_argument("--compare", action="store_true",
                        help="also score the intervened clips of stage 2 --intervene against their unintervened "
                             "pairs: effects, random-direction baseline, commitment steps (interp/compare.py)")
    return parser


@dataclass(frozen=True)
class Analysis:
    """The embedding-space analysis in memory, before anything is written."""
    tables: dict              # output file name -> DataFrame
    facts: dict               # what the run found: trajectory axis, n_tests, distinct_by, yardsticks, embedder
    scores: np.ndarray        # [n_clips, n_concepts] the concept probes' scores
    runs: dict                # position -> first position of its run of identical positions


def analyse(args, generated: GeneratedClips, nsynth: ConceptNotes | None, family, splits: dict, fitted: dict,
            known: KnownTruth | None, out: Path) -> Analysis:
    clips = generated.clips
    level = 1.0 - args.alpha
    probe_scores = score_clips(family, fitted, nsynth, splits, generated.embeddings, args.baseline,
                               args.random_baselines, args.seed, progress=not args.no_progress)
    quality = probe_quality(family, fitted, splits, nsynth, args.bootstrap, level, args.seed)
    resplits = resplit_quality(family, nsynth, args.resplits, args.seed, not args.no_progress).set_index("concept")
    for column in resplits.columns:
        quality[column] = quality["concept"].map(resplits[column])

    # Emergence against every yardstick this run has; AUROC corrected as one family of tests.
    _, clip_prompt = np.unique(clips["prompt_id"].to_numpy(), return_inverse=True)
    yardsticks = build_yardsticks(generated)
    names = [concept.name for concept in CONCEPTS]
    positions = clips["step"].to_numpy()
    table, n_tests, resampled = emergence(probe_scores, yardsticks, clip_prompt, positions, names,
                                          generated.axis.name, args.bootstrap, args.alpha, args.seed,
                                          not args.no_progress)
    runs, distinct_by = distinct_positions(clips, generated.embeddings,
                                           None if generated.content is None else generated.content.mass)
    steps_table = emergence_steps(table, runs, resampled, level)

    # Transfer: each probe against the generator's exact answer at the final position, beside its NSynth quality.
    exact = next((yardstick.name for yardstick in yardsticks if YARDSTICK_KINDS[yardstick.name].exact), None)
    if exact is not None:
        final = steps_table[steps_table["yardstick"] == exact].set_index("concept")
        quality["transfer_yardstick"] = exact
        for column, source in (("transfer_step", "final_step"), ("transfer_auroc", "final_value"),
                               ("transfer_auroc_low", "final_low"), ("transfer_auroc_high", "final_high")):
            quality[column] = quality["concept"].map(final[source])
        quality.loc[quality["transfer_auroc"].isna(), ["transfer_yardstick", "transfer_step"]] = np.nan

    known_tables = {"known_answers.csv": pd.DataFrame(columns=known_answers.KNOWN_COLUMNS),
                    "known_order.csv": pd.DataFrame(columns=known_answers.ORDER_COLUMNS),
                    "known_commitment.csv": known_answers.known_commitment(known_answers.read_commitment_search(out))}
    if known is not None and exact is not None:
        exact_yardstick = next(yardstick for yardstick in yardsticks if yardstick.name == exact)
        # The oracle: the exact posterior probability as a probe's score, through the very same rule (its own
        # family of tests: it is the ceiling, not a claim of this run).
        oracle = known_answers.oracle_scores(known.truth, clips, names)
        oracle_table, _, oracle_resampled = emergence(
            ProbeScores(oracle, None, np.zeros((len(names), 0, len(clips))), None), [exact_yardstick], clip_prompt,
            positions, names, generated.axis.name, args.bootstrap, args.alpha, args.seed, progress=False)
        oracle_steps = emergence_steps(oracle_table, runs, oracle_resampled, level)
        captured = np.unique(positions)
        answers = known_answers.known_answers(steps_table, oracle_steps, known.tables["emergence_truth"], exact,
                                              captured, int(known.truth.steps[0]))
        crossings = {name: statistics.level_crossings(captured, resampled[(exact, name)], runs) for name in names}
        oracle_crossings = {name: statistics.level_crossings(captured, oracle_resampled[(exact, name)], runs)
                            for name in names}
        known_tables["known_answers.csv"] = answers
        known_tables["known_order.csv"] = known_answers.known_order(answers, crossings, oracle_crossings, level)

    judge_validation = judge.judge_validation(generated.judge, clips, final_content_labels(generated))
    probabilities = pd.concat([clips[["prompt_id", "sample", "step", "kind", "path"]],
                               pd.DataFrame(probe_scores.scores, columns=names)], axis=1)
    drift, drift_summary = drift_tables(clips, generated.embeddings, runs, args.bootstrap, args.alpha, args.seed)
    tables = {"probe_quality.csv": quality, "emergence.csv": table, "emergence_steps.csv": steps_table,
              **known_tables, "judge_validation.csv": judge_validation, "drift.csv": drift,
              "drift_summary.csv": drift_summary, "probabilities.csv": probabilities}
    facts = {"trajectory_axis": generated.axis.record(), "n_tests": n_tests, "distinct_by": distinct_by,
             "yardsticks": [yardstick.name for yardstick in yardsticks], "exact_yardstick": exact,
             "embedder": {key: generated.sidecar.get(key) for key in EMBEDDER_KEYS},
             "judge": None if generated.judge is None else
             {"stem": generated.judge.stem, "model": generated.judge.sidecar.get("model"),
              "checkpoint_sha256": generated.judge.sidecar.get("checkpoint_sha256"),
              "positions": generated.judge.sidecar.get("positions"),
              "shared_with_probes": generated.judge.shared_with_probes,
              "warning": judge.shared_warning(generated.judge)}}
    return Analysis(tables, facts, probe_scores.scores, runs)


def _input_fingerprint(data: Path, generated: GeneratedClips, nsynth: ConceptNotes | None, known: KnownTruth | None,
                       out: Path) -> dict:
    fingerprint = {
        "annotated_sha256": sha256_file(data / "prompts" / "annotated.csv"),
        "index_sha256": table_sha256(generated.index),
        "generation_sha256": sha256_file(generated.generation),
        "generated_embeddings_sha256": sha256_file(generated.npy),
        "generated_sidecar": read_json(generated.npy.with_suffix(".json")),
    }
    for kind in YARDSTICKS:
        fingerprint.update(kind.fingerprint(generated))
    if known is not None:
        fingerprint["truth_tables_sha256"] = known.sha256
    if (out / known_answers.COMMITMENT_SEARCH).is_file():
        fingerprint["commitment_search_sha256"] = sha256_file(out / known_answers.COMMITMENT_SEARCH)
    if nsynth is not None:
        fingerprint.update(notes_sha256=sha256_file(concepts_dir(data) / "notes.csv"),
                           sets_sha256=sha256_file(concepts_dir(data) / "sets.csv"),
                           concept_embeddings_sha256=sha256_file(nsynth.npy))
    return fingerprint


def main(args) -> None:
    other_space = ACTIVATION_OPTIONS if args.space == "embeddings" else EMBEDDING_OPTIONS
    for option, default in other_space.items():
        if getattr(args, option) != default:
            raise InputError(f"--{option.replace('_', '-')} does not apply to --space {args.space} — drop it")
    if args.random_baselines is None:
        args.random_baselines = RANDOM_BASELINES[args.space]
    if args.space == "activations":
        stage6_activations.main(args)
        return
    if args.probe not in probe_families.FAMILIES:
        raise InputError(f"--probe '{args.probe}' is unknown — choose from {', '.join(probe_families.FAMILIES)}")
    if args.baseline not in BASELINES:
        raise InputError(f"--baseline '{args.baseline}' is unknown — choose from {', '.join(BASELINES)}")
    if (args.bootstrap < 1 or args.random_baselines < 0 or args.resplits < 0 or args.seed < 0
            or not 0 < args.alpha < 1):
        raise InputError("--bootstrap must be >= 1, --random-baselines, --resplits and --seed >= 0 and --alpha in "
                         "(0, 1) — fix the option")
    # Every fit and matrix here is small: BLAS/OpenMP threads only add synchronisation, which costs ~10x when
    # the cores are shared (measured: a 300 x 64 logistic fit 15 ms on one thread, 100 ms on two, under load).
    with threadpool_limits(limits=1):
        run(args)


def run(args) -> None:
    family_type = probe_families.FAMILIES[args.probe]
    data = Path(args.data)
    stem = _stem(args)
    generated = load_generated(data, stem, args.kind)
    if args.judge:
        judge_stem = embedding_stem(args.judge, args.judge_model)
        generated = replace(generated, judge=judge.load_judge(data, judge_stem, generated.clips, generated.sidecar))
        if generated.judge is not None and generated.judge.shared_with_probes:
            print(f"warning: {judge.shared_warning(generated.judge)}")
    nsynth = load_concept_notes(data, stem, generated, required=family_type.needs_notes)
    known = load_known_truth(data, generated)
    # Another alpha, baseline or seed is another analysis, kept beside the default one (interp/result_folder.py).
    out = result_folder.keyed(results_dir(data, stem, args.probe, args.kind), vars(args))
    path_inside(out.parent, out.name, "results folder", out.parent, "remove the link")   # never written through
    known_answers.read_commitment_search(out)   # checked before any work (the known answers read it at the end)
    analysis = Provenance(
        sidecar=out / SIDECAR,
        record={"inputs": _input_fingerprint(data, generated, nsynth, known, out),
                "settings": {"probe": args.probe, "kind": args.kind, "baseline": args.baseline,
                             "bootstrap": args.bootstrap, "random_baselines": args.random_baselines,
                             "resplits": args.resplits, "alpha": args.alpha, "seed": args.seed,
                             "primary_metric": PRIMARY_METRIC, "multiple_testing": "holm",
                             "emergence_fraction": statistics.HALFWAY, "random_percentile": RANDOM_PERCENTILE,
                             "realised_mass": REALISED_MASS}},
        outputs=[out / name for name in OUTPUT_FILES] + ([] if args.no_report else [out / "report.html"]))
    comparison = compare.provenance(out, data, analysis.record, generated.intervened[0]) if args.compare else None
    # Each is decided on its own, both before anything is written: a refused compare/ leaves the analysis as it was,
    # and an up-to-date analysis beside a stale compare/ redoes compare/ only.
    analysis_done = decide(analysis, args.force, fix="rerun with --force to replace them")
    comparison_done = comparison is None or decide(
        comparison, args.force, fix="rerun stage 6 with --compare --force to score the current intervened runs")
    if analysis_done and comparison_done:
        print(f"{out}: up to date with its inputs; pass --force to redo")
        return
    started = time.perf_counter()

    # Probes: one interface whatever the family (interp/probes.py).
    family = family_type(seed=args.seed, text_vectors=text_embeddings(generated) if family_type.needs_text else None)
    splits = concept_splits(nsynth)
    fitted = fit_concept_probes(family, nsynth, splits)
    if analysis_done:
        result, record = None, read_json(analysis.sidecar)
        scores, _ = concept_scores(family, fitted, generated.embeddings)
        steps_table = pd.read_csv(out / "emergence_steps.csv", keep_default_na=False, na_values=[""])
    else:
        result = analyse(args, generated, nsynth, family, splits, fitted, known, out)
        record = {**analysis.record, **result.facts}
        scores, steps_table = result.scores, result.tables["emergence_steps.csv"]
    interventions = None
    if not comparison_done:
        interventions = compare.score_interventions(
            data, generated.clips, generated.embeddings, scores, generated.intervened, args.kind,
            [concept.name for concept in CONCEPTS], {name: probe.model for name, probe in fitted.items()},
            family.outputs, steps_table[steps_table["yardstick"] == "prompt"], generated.axis.name, args.bootstrap,
            args.alpha, args.seed)

    # Files: the analysis, then compare/, then the report that shows both; each sidecar last.
    if result is not None:
        begin(analysis)
        for name, frame in result.tables.items():
            write_csv(out / name, frame)
        summary.write_summary(out, record)
        if not args.no_report:
            plots.write_plots(out, result.tables["emergence.csv"], result.tables["emergence_steps.csv"],
                              result.tables["drift_summary.csv"], generated.clips, generated.embeddings,
                              generated.axis.unit)
    if interventions is not None:
        begin(comparison)
        compare_report.write_outputs(out / compare.COMPARE_DIR, interventions, generated_dir(data), out,
                                     generated.axis.unit)
    if not args.no_report:
        figures = plots.figure_files([concept.name for concept in CONCEPTS], record["yardsticks"])
        report.write_report(out, data, record, {key: path for key, path in figures.items() if (out / path).is_file()})
    seconds = round(time.perf_counter() - started, 2)
    if interventions is not None:
        commit(comparison, {"scored_step": interventions["scored_step"], "outputs": list(compare.OUTPUT_FILES)})
        print(f"{out / compare.COMPARE_DIR}: {compare.headline(interventions, generated.axis.unit)}")
    if result is None:
        print(f"{out}: the analysis was up to date; compare/ redone in {seconds} s")
        return
    commit(analysis, {**result.facts, "seconds": seconds,
                      "outputs": list(OUTPUT_FILES) + ([] if args.no_report else ["report.html", "plots/"])})
    steps_table = result.tables["emergence_steps.csv"]
    clips = generated.clips
    counts = "; ".join(f"{yardstick}: {(group['status'] == 'emerged').sum()} emerged, "
                       f"{(group['status'] == 'transient').sum()} transient"
                       for yardstick, group in steps_table.groupby("yardstick", sort=False))
    print(f"{out}: AUROC of {len(CONCEPTS)} concepts over {clips['step'].nunique()} {generated.axis.unit}s of "
          f"{clips['prompt_id'].nunique()} prompts ({counts}; Holm over {result.facts['n_tests']} tests); {seconds} s")


def _stem(args) -> str:
    if not args.embedder:
        raise InputError("--embedder is required for --space embeddings — pass the embedder stages 3 and 5 used")
    return embedding_stem(args.embedder, args.model)


def lock_name(args) -> str:
    """One lock per results folder: analyses of other embedders, probes or kinds (or activation-space analyses of
    other branches or pools) may run side by side."""
    if args.space == "activations":
        return stage6_activations.lock_name(args)
    return "stage6-" + results_dir(Path("."), _stem(args), args.probe, args.kind).as_posix()


if __name__ == "__main__":
    main_exit(main, build_parser(), lock=lock_name)
