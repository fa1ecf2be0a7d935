"""The commitment search: the last start step from which steering still moves a concept, to one tick of the
generator's intervention clock (data/ARTIFACTS.md, "Commitment search").

    python interp/commitment_search.py --data data --embedder spectral --concept is_synth_lead [--strength 8]
        [--prompts 20 --samples 8 --random-directions-per-prompt 1]
        [--generator ideal --preset planted ...]          # the generator of stage 2, checked against generation.json
        [--where 0,5 --direction dirs/is_brass.npy]       # block steering (Stable Audio); default: the ideal prior

For each concept the search bisects over the start step k (interp/commitment_statistics.py): at each k it asks
for, it generates the steered runs (the concept direction and random directions of the same norm, paired by seed
with an unsteered reference run), embeds their final clips with the stage-3/5 embedder, scores them with the
concept's stage-6 probe (refitted here exactly as stage 6 fits it) and decides whether the effect beyond the random
directions is significant. For a generator that knows what it made (the ideal model), the same runs are also read
by their realised content (the truth) and searched the same way. Runs and embeddings stay in the search's own
folder (interp/commitment_runs.py), so the study's index and embeddings are untouched.

Outputs in <data>/results/<embedder stem>/<probe>/<kind>/commitment/: commitment_search.csv (per concept and
method: the commitment step with its bootstrap interval), commitment_curve.csv (the effect per evaluated k),
commitment.png, section.html (the report's section), commitment_search.json (provenance, written last). Runs
resume after a kill (every run and embedding matrix is skipped when finished); --force redoes everything.
"""
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from threadpoolctl import threadpool_limits

from data.concepts import BY_NAME, CONCEPTS
from data.contract import annotated_csv, concepts_dir, read_annotated
from data.files import read_json, sha256_file
from data.generation import read_generation
from data.identifiers import path_inside
from data.provenance import Provenance, begin, commit, decide
from data.stage import InputError, main_exit, stage_parser
from diffusion import GENERATORS, load_generator, parse_generator_options
from diffusion.interventions.records import MODES, PRIOR, ROWS
from diffusion.interventions.spec import InterventionSpec, check_spec
from diffusion.trajectory import TrajectorySettings, generation_record
from embeddings import EMBEDDERS, embedding_stem
from embeddings.run import embedder_from_args
from interp import commitment_report
from interp import probes as probe_families
from interp.commitment_runs import EMBEDDINGS_DIR, RUNS_DIR, SearchOptions, SearchRuns, SteeringSetting, search_concept
from interp.commitment_statistics import INNER_RESAMPLES, MIN_RANDOM_DIRECTIONS
from interp.fitting import text_embeddings
from interp.records import GeneratedClips, concept_splits, load_concept_notes

COMMITMENT_DIR = "commitment"
SIDECAR = "commitment_search.json"
OUTPUT_FILES = ("commitment_search.csv", "commitment_curve.csv", "commitment.png", "section.html")
DEFAULT_STRENGTH = 8.0


def build_parser():
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--concept", action="append", required=True,
                        help="target concept (data/concepts.py); repeat for several, searched one after the other")
    parser.add_argument("--strength", type=float, default=DEFAULT_STRENGTH,
                        help="steering strength (the prior's tilt in nats, or the block steering's scale); its sign "
                             "says which side of 0 the effect must lie on")
    parser.add_argument("--where", default=None,
                        help="'prior' (the ideal model's concept prior) or comma-separated 0-based blocks, e.g. 0,5 "
                             "(unset: the generator's prior, when it has one)")
    parser.add_argument("--direction", default=None,
                        help="block steering: the concept's direction file (data/directions.py); random directions "
                             "match its norms")
    parser.add_argument("--mode", default="add", help=f"block steering: {' or '.join(MODES)}")
    parser.add_argument("--rows", default="conditional", help=f"which CFG rows to steer: {', '.join(ROWS)}")
    parser.add_argument("--prompts", type=int, default=20,
                        help="prompts per concept: the first N in prompt_id order that do not ask for the concept "
                             "(that do, for a negative strength)")
    parser.add_argument("--samples", type=int, default=8, help="samples per prompt (seeds as stage 2's)")
    parser.add_argument("--random-directions-per-prompt", type=int, default=1,
                        help="random directions of the concept direction's norm run on each prompt, every prompt its "
                             "own (the baseline: --prompts x this many directions in all)")
    parser.add_argument("--embedder", default=None,
                        help=f"the embedder of stages 3 and 5 ({', '.join(sorted(EMBEDDERS))})")
    parser.add_argument("--model", help="the embedder's --model of stages 3 and 5 (embedders with weights)")
    parser.add_argument("--window", help="the embedder's --window of stages 3 and 5 (clap)")
    parser.add_argument("--batch-size", type=int, default=None, help="clips per embed() call (unset: the embedder's)")
    parser.add_argument("--workers", type=int, default=2, help="threads reading audio ahead of the embedder")
    parser.add_argument("--probe", default="logreg", help=f"probe family of stage 6: {', '.join(probe_families.FAMILIES)}")
    parser.add_argument("--kind", default="x0", help="which clips the probe reads: x0 or xt (as stage 6's --kind)")
    parser.add_argument("--generator", default="ideal", help=f"the generator of stage 2: {', '.join(GENERATORS)}")
    parser.add_argument("--generator-model", default=None, help="stage 2's --model of the generator")
    parser.add_argument("--preset", default=None, help="stage 2's --preset")
    parser.add_argument("--steps", type=int, default=None, help="stage 2's --steps")
    parser.add_argument("--generator-option", action="append", default=[], metavar="KEY=VALUE",
                        help="stage 2's --generator-option settings (repeatable)")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="prompt resamples for every interval; each is resampled "
                             f"{INNER_RESAMPLES} times again for the interval of the commitment step")
    parser.add_argument("--alpha", type=float, default=0.05, help="intervals are 1 - alpha")
    parser.add_argument("--seed", type=int, default=0, help="stage 6's --seed (the probes) and the resamples' seed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def results_folder(data: Path, stem: str, probe: str, kind: str) -> Path:
    """Beside stage 6's results of the same embedder, probe and kind (the report includes its section). Never a
    link out of there, nor its runs/ and embeddings/ out of it: --force clears it, and the search writes inside
    --data only."""
    parent = Path(data) / "results" / stem / probe / kind
    folder = path_inside(parent, COMMITMENT_DIR, "results folder", parent, "remove the link")
    for name in (RUNS_DIR, EMBEDDINGS_DIR):
        path_inside(folder, name, "results folder", folder, "remove the link")
    return folder


def check_numbers(args) -> None:
    for flag, value, least in (("--prompts", args.prompts, 1), ("--samples", args.samples, 1),
                               ("--random-directions-per-prompt", args.random_directions_per_prompt, 1),
                               ("--bootstrap", args.bootstrap, 1), ("--workers", args.workers, 0),
                               ("--seed", args.seed, 0),
                               ("--batch-size", 1 if args.batch_size is None else args.batch_size, 1)):
        if value < least:
            raise InputError(f"{flag} {value} must be at least {least}")
    if args.prompts * args.random_directions_per_prompt < MIN_RANDOM_DIRECTIONS:
        raise InputError(f"--prompts {args.prompts} x --random-directions-per-prompt "
                         f"{args.random_directions_per_prompt} random directions in all: the baseline needs at least "
                         f"{MIN_RANDOM_DIRECTIONS} — raise either")
    if not 0 < args.alpha < 1 or not np.isfinite(args.strength) or args.strength == 0:
        raise InputError("--alpha must lie in (0, 1) and --strength be a non-zero number — fix the option")
    if args.kind not in ("x0", "xt"):
        raise InputError(f"--kind {args.kind!r}: choose x0 or xt")
    if args.probe not in probe_families.FAMILIES:
        raise InputError(f"--probe '{args.probe}' is unknown — choose from {', '.join(probe_families.FAMILIES)}")
    repeated = sorted({concept for concept in args.concept if args.concept.count(concept) > 1})
    if repeated:
        raise InputError(f"--concept {repeated[0]} is given twice — name each concept once")
    unknown = [concept for concept in args.concept if concept not in BY_NAME]
    if unknown:
        raise InputError(f"--concept {unknown[0]!r} is not a concept of data/concepts.py — choose from "
                         f"{', '.join(BY_NAME)}")


def study_generator(args, stored):
    """The generator stage 2 used: built from the same options, refused (one line) unless its generation.json
    record is the stored one; and the study's settings (seed, length) with the search's samples."""
    options = parse_generator_options(args.generator_option)
    if args.generator not in GENERATORS:
        raise InputError(f"--generator {args.generator!r}: choose one of {', '.join(GENERATORS)}")
    generator = load_generator(args.generator, model=args.generator_model, preset=args.preset, steps=args.steps,
                               **({"options": options} if options else {}))
    record = stored.record
    study = TrajectorySettings(tuple(record["capture_steps"]), tuple(record["kinds"]),
                               int(record["samples_per_prompt"]), float(record["seconds_total"]), int(record["seed"]),
                               1, 1)
    mine = generation_record(generator, study, str(record.get("annotated_sha256")))
    different = next((key for key in mine if mine[key] != record.get(key)), None)
    if different is not None:
        raise InputError(f"{stored.path}: stage 2 ran with another {different} than these options give — pass the "
                         "generator options of stage 2 (--generator, --generator-model, --preset, --steps, "
                         "--generator-option)")
    if args.kind not in record["kinds"]:
        raise InputError(f"{stored.path}: stage 2 saved no {args.kind} clips — pass --kind {record['kinds'][0]}")
    last = generator.axis.positions[-1]
    settings = TrajectorySettings((last,), (args.kind,), args.samples, study.seconds, study.seed, args.samples, 8)
    return generator, settings


def steering_setting(args, generator, concept: str) -> SteeringSetting:
    where = args.where or (PRIOR if generator.intervention_site == PRIOR else None)
    if where is None:
        raise InputError(f"--where: the {generator.name} generator steers blocks — pass e.g. --where 0,5 and "
                         "--direction FILE")
    if where != PRIOR:
        try:
            where = tuple(sorted({int(part) for part in where.split(",") if part.strip()}))
        except ValueError:
            raise InputError(f"--where {args.where!r}: 'prior' or comma-separated block numbers, e.g. 0,5") from None
    if args.mode not in MODES or args.rows not in ROWS:
        raise InputError(f"--mode {args.mode} / --rows {args.rows}: choose from {', '.join(MODES)} / {', '.join(ROWS)}")
    if (where == PRIOR) == (args.direction is not None):
        raise InputError("--direction: block steering needs the concept's direction file (interp/directions.py), and "
                         "the prior takes none — pass --where BLOCKS with --direction FILE, or neither")
    direction = None
    if args.direction is not None:
        direction = str(Path(args.direction).expanduser().resolve())
        if not Path(direction).is_file():
            raise InputError(f"--direction {args.direction}: no such file — write one with interp/directions.py")
    return SteeringSetting(concept, float(args.strength), where, args.mode, args.rows, direction)


def search_prompts(annotated, concept: str, strength: float, count: int, data: Path) -> list[str]:
    """The first `count` prompts (prompt_id order) whose annotation leaves room to move: they do not ask for the
    concept when steering towards it, and do when steering away."""
    wanted = [row.prompt_id for row in annotated.sort_values("prompt_id").itertuples()
              if BY_NAME[concept].prompt_has(tuple(row.labels)) == (strength < 0)]
    if len(wanted) < count:
        side = "ask for" if strength < 0 else "do not ask for"
        raise InputError(f"{annotated_csv(data)}: only {len(wanted)} prompts {side} '{concept}' — pass --prompts "
                         f"{len(wanted)} or fewer")
    return wanted[:count]


def check_probe_notes(data: Path, stem: str, embedder, concepts) -> None:
    """Before anything is written (--force clears the results folder): stage 5's embeddings are whole, stage 4's
    notes and sets agree with them, they come from this embedder, and each concept has a stage-4 train split with
    both classes (what its probe is fitted on)."""
    npy = concepts_dir(data) / "embeddings" / f"{stem}.npy"
    sets = load_concept_notes(data, stem, None, required=True).sets
    stage5 = read_json(npy.with_suffix(".json"))
    identity = embedder.provenance()
    different = next((key for key in ("embedder", "model", "checkpoint_sha256", "window_policy", "dim")
                      if identity.get(key) != stage5.get(key)), None)
    if different is not None:
        raise InputError(f"{npy}: stage 5 embedded the notes with another {different} than --embedder gives — pass "
                         "the embedder options of stages 3 and 5")
    for concept in concepts:
        train = sets[(sets["concept"] == concept) & (sets["split"] == "train")]
        if train.empty or train["label"].nunique() < 2:
            raise InputError(f"{concepts_dir(data) / 'sets.csv'}: concept '{concept}' has no train notes of both "
                             "classes, so it has no probe — choose a concept stage 6 can probe")


def main(args) -> None:
    check_numbers(args)
    if not args.embedder:
        raise InputError("--embedder is required — pass the embedder of stages 3 and 5")
    data = Path(args.data)
    stem = embedding_stem(args.embedder, args.model)
    out = results_folder(data, stem, args.probe, args.kind)
    annotated = read_annotated(data)
    stored = read_generation(data)
    generator, settings = study_generator(args, stored)
    if generator.intervention_site is None:
        raise InputError(f"the {generator.name} generator takes no steering — use one that declares an "
                         "intervention site (ideal, stable-audio-open, musicgen)")
    setups = {concept: steering_setting(args, generator, concept) for concept in args.concept}
    prompt_ids = {concept: search_prompts(annotated, concept, args.strength, args.prompts, data)
                  for concept in args.concept}
    chosen = sorted(set().union(*prompt_ids.values()))
    # The generator checks what it can steer (place, clock, rows, direction file) before anything is written.
    labels = dict(zip(annotated["prompt_id"], map(tuple, annotated["labels"])))
    spec = InterventionSpec(out, "", tuple(setup.steering(direction, 0) for setup in setups.values()
                                           for direction in ("concept", "random")), tuple(chosen), args.samples)
    check_spec(spec, generator, settings.seconds, args.samples, chosen, labels)
    embedder = embedder_from_args(args)
    check_probe_notes(data, stem, embedder, args.concept)
    prov = Provenance(sidecar=out / SIDECAR, record=record_of(args, data, stored, setups, prompt_ids, settings),
                      outputs=[out / name for name in OUTPUT_FILES])
    if decide(prov, args.force, "pass --force to redo the search with these settings"):
        print(f"{out}: up to date with its inputs; pass --force to redo")
        return
    if args.force:
        begin(prov)
        shutil.rmtree(out, ignore_errors=True)
    started, cpu_started = time.perf_counter(), time.process_time()
    runs = SearchRuns(out, generator, annotated[annotated["prompt_id"].isin(chosen)].reset_index(drop=True),
                      settings, sha256_file(annotated_csv(data)), embedder,
                      {"batch_size": args.batch_size or getattr(embedder, "batch_size", 16), "workers": args.workers},
                      progress=not args.no_progress)
    options = SearchOptions(args.samples, args.random_directions_per_prompt, args.bootstrap, args.alpha, args.seed,
                            not args.no_progress)
    with threadpool_limits(limits=1):
        reference = runs.reference()
        probes = fit_probes(data, stem, args.probe, args.seed, args.concept, reference_clips(data, runs, reference))
        results = [search_concept(runs, setups[concept], prompt_ids[concept], probes[concept], reference, options)
                   for concept in args.concept]
    begin(prov)
    commitment_report.write_outputs(out, results, generator.intervention_clock, stored.record)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    commit(prov, {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "outputs": list(OUTPUT_FILES)})
    for line in commitment_report.headlines(results):
        print(f"{out}: {line}")
    print(f"{out}: {seconds:.1f} s wall, {cpu:.1f} s CPU (this process)")


def reference_clips(data: Path, runs: SearchRuns, reference) -> GeneratedClips:
    """The search's reference run as stage 6's record of generated clips (what the notes' embedder is checked
    against, and what the text family's probes read)."""
    embeddings = runs.embed(reference, "reference")
    npy = runs.folder / "embeddings" / "reference.npy"
    return GeneratedClips(read_annotated(data), reference, reference, embeddings, read_json(npy.with_suffix(".json")),
                          npy, runs.runs / "generation.json", read_generation(data).axis, None,
                          (reference[:0], embeddings[:0]))


def fit_probes(data: Path, stem: str, probe: str, seed: int, concepts, clips: GeneratedClips) -> dict:
    """Each concept's stage-6 probe, fitted exactly as stage 6 fits it (interp/fitting.py's loop, for these
    concepts: the concept's NSynth train split, the family seeded with --seed and the concept's number):
    concept -> (fitted probe, outputs(probe, X) -> (score, decision))."""
    nsynth = load_concept_notes(data, stem, clips, required=True)
    family_type = probe_families.FAMILIES[probe]
    family = family_type(seed=seed, text_vectors=text_embeddings(clips) if family_type.needs_text else None)
    splits = concept_splits(nsynth)
    names = [concept.name for concept in CONCEPTS]
    probes = {}
    for concept in concepts:
        split = splits[concept]
        fitted = family.concept_probe(names.index(concept), nsynth.training_set(split.train_rows, split.train_labels))
        probes[concept] = (fitted.model, family.outputs)
    return probes


def record_of(args, data: Path, stored, setups: dict, prompt_ids: dict, settings: TrajectorySettings) -> dict:
    stem = embedding_stem(args.embedder, args.model)
    npy = concepts_dir(data) / "embeddings" / f"{stem}.npy"
    return {"inputs": {"generation_sha256": stored.sha256, "annotated_sha256": sha256_file(annotated_csv(data)),
                       "notes_sha256": sha256_file(concepts_dir(data) / "notes.csv"),
                       "sets_sha256": sha256_file(concepts_dir(data) / "sets.csv"),
                       "concept_embeddings_sha256": sha256_file(npy)},
            "settings": {"settings": [setup.record() for setup in setups.values()], "prompts": prompt_ids,
                         "samples": args.samples, "random_directions_per_prompt": args.random_directions_per_prompt,
                         "probe": args.probe, "kind": args.kind,
                         "bootstrap": args.bootstrap, "inner_resamples": INNER_RESAMPLES, "alpha": args.alpha,
                         "seed": args.seed, "captured": list(settings.capture_steps)}}


def lock_name(args) -> str:
    return f"commitment-{embedding_stem(args.embedder, args.model) if args.embedder else 'none'}-{args.probe}-{args.kind}"


if __name__ == "__main__":
    main_exit(main, build_parser(), lock=lock_name)
