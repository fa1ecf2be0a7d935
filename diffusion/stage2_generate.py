"""Stage 2: generate audio and save decoded intermediate steps of each trajectory (data/ARTIFACTS.md, stage 2).

  <data>/prompts/annotated.csv → <data>/generated/generation.json, index/<prompt_id>.csv, audio/<prompt_id>/*.wav

Generators: "ideal" (embedded; a reference model, not a trained one: the closed-form denoiser of
diffusion/ideal.py over a bank of soundfont clips, no weights or network needed), "stable-audio-open"
(Stable Audio Open 1.0 through diffusers; --model a hub id or a save_pretrained directory) and "musicgen"
(transformers' MusicGen; a trajectory over decoder layers, settings by --generator-option: diffusion/musicgen/).

Runs resume: prompts whose index part exists are skipped, so a killed run continues where it stopped; --force
redoes this shard's prompts. Shards (--shard i/n, or a SLURM array's task id and count) split the prompts by
position in sorted prompt_id order; run them side by side on the same --data. One generation.json describes
every clip: --force with new settings and --limit-prompts is refused while other prompts' clips would remain
(rerun without --limit-prompts, or use a fresh --data); a --force shard with new settings removes the other
shards' old clips, and those shards remake them.
"""
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the repository root importable without an installed package.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.contract import annotated_csv, generated_dir, read_annotated
from data.files import sha256_file
from data.interventions import INTERVENTIONS_DIR
from data.requested import write_request
from data.stage import InputError, add_progress_argument, main_exit, parse_shard, stage_parser
from data.truth import write_truth_tables
from diffusion import GENERATORS, intervened_runs, load_generator, parse_generator_options
from diffusion.interventions.spec import check_spec, load_spec
from diffusion.trajectory import (TrajectorySettings, check_force, check_generation, parse_capture_steps, parse_kinds,
                                  pending_prompts, run_trajectories)

DEFAULT_SAMPLES = 2
DEFAULT_DECODE_BATCH = 8


def build_parser():
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--generator", default="ideal", help=f"one of: {', '.join(GENERATORS)}")
    parser.add_argument("--model", default=None,
                        help="ideal: a bank directory (unset: the soundfont bank, rendered once into "
                             "data/bank/); stable-audio-open: hub id or local directory (unset: "
                             "stabilityai/stable-audio-open-1.0); musicgen: hub id or local directory, e.g. "
                             "facebook/musicgen-small, -medium, -large or -melody (unset: facebook/musicgen-small)")
    parser.add_argument("--preset", default=None,
                        help="sampler preset of the generator (unset: its 'reference'); ideal: reference, model-card, "
                             "or planted (concepts decided at known, different steps; diffusion/planted.py)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (unset: the preset's)")
    parser.add_argument("--capture-steps", default=None,
                        help="comma-separated positions on the generator's trajectory axis to save: denoising "
                             "steps 0..N-1 (or decoder layers 1..L) (unset: every tenth position and the last, "
                             "5,10,...,45,49 for 50 steps)")
    parser.add_argument("--kinds", default="x0",
                        help="what to save at each captured step: x0 (clean estimate), xt (noisy latent), or both")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="samples per prompt")
    parser.add_argument("--seconds", type=float, default=None,
                        help="clip length in seconds, at most the generator's maximum (unset: the generator's "
                             "default length)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; each prompt's seed derives from it and its id")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="samples per sampler call (unset: all samples of a prompt in one call); "
                             "the audio does not depend on it")
    parser.add_argument("--decode-batch-size", type=int, default=DEFAULT_DECODE_BATCH,
                        help="captured latents decoded per decoder call; the audio does not depend on it")
    parser.add_argument("--device", default=None, help="cpu or cuda (unset: the generator's choice)")
    parser.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 of the sampler (unset: the generator's, fp32)")
    parser.add_argument("--decode-dtype", default=None,
                        help="fp32, fp16 or bf16 of the decoder that turns latents into audio (unset: fp32, which "
                             "keeps half-precision sampling from degrading the audio; stable-audio-open only)")
    parser.add_argument("--generator-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of the chosen generator only (repeatable); each backend lists its keys in "
                             "its `options` (musicgen: lens=logit|regenerate, residuals=cond|both, guidance_scale, "
                             "top_k, top_p, temperature, do_sample, melody; ideal: geometry=FILE.json, "
                             "scales=S1,S2,..., prior_sharpness=X)")
    parser.add_argument("--lens", default=None,
                        help="how a layer trajectory reads each decoder layer: logit (one generation, every layer's "
                             "readout; cheap) or regenerate (DecoderLens: one generation per layer); the same as "
                             "--generator-option lens=..., for generators whose trajectory is over layers (musicgen)")
    parser.add_argument("--shard", default=None,
                        help="'i/n': this job makes the prompts at positions i, i+n, ... of sorted prompt_id "
                             "(unset: from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT, else all prompts)")
    parser.add_argument("--limit-prompts", type=int, default=None,
                        help="only the first N prompts of annotated.csv (quick looks)")
    parser.add_argument("--intervene", default=None, metavar="SPEC",
                        help="also generate the interventions of this spec file (JSON/YAML, format in "
                             "diffusion/interventions/spec.py) into generated/interventions/<id>/, paired by seed "
                             "with this run (the reference)")
    add_progress_argument(parser)
    return parser


def check_counts(args) -> None:
    for flag, value in (("--samples", args.samples), ("--batch-size", args.batch_size),
                        ("--decode-batch-size", args.decode_batch_size), ("--limit-prompts", args.limit_prompts),
                        ("--steps", args.steps)):
        if value is not None and value < 1:
            raise InputError(f"{flag} {value} must be at least 1")
    if args.seed < 0:
        raise InputError(f"--seed {args.seed} must be non-negative")


def main(args) -> None:
    # Everything a user can get wrong is checked before anything is written.
    if args.generator not in GENERATORS:
        raise InputError(f"unknown generator {args.generator!r} — choose one of {', '.join(GENERATORS)}")
    check_counts(args)
    shard = parse_shard(args.shard)
    kinds = parse_kinds(args.kinds)
    annotated = read_annotated(args.data)
    prompts = annotated.head(args.limit_prompts) if args.limit_prompts else annotated
    spec = load_spec(args.intervene) if args.intervene else None

    started = time.monotonic()
    options = parse_generator_options(args.generator_option)
    if args.lens is not None:
        if options.get("lens", args.lens) != args.lens:
            raise InputError(f"--lens {args.lens} and --generator-option lens={options['lens']} disagree — keep one")
        options["lens"] = args.lens
    generator = load_generator(args.generator, model=args.model, preset=args.preset, steps=args.steps,
                               device=args.device, dtype=args.dtype, decode_dtype=args.decode_dtype,
                               **({"options": options} if options else {}))
    capture_steps = parse_capture_steps(args.capture_steps, generator.axis, generator.default_capture)
    unsupported = [kind for kind in kinds if kind not in generator.kinds]
    if unsupported:
        raise InputError(f"--kinds {unsupported[0]}: the {generator.name} generator gives no {unsupported[0]} "
                         f"(its trajectory is a {generator.axis.name}) — use --kinds {','.join(generator.kinds)}")
    seconds = generator.default_seconds if args.seconds is None else args.seconds
    if not 0 < seconds <= generator.max_seconds + 1e-9:
        raise InputError(f"--seconds {seconds:g} is outside (0, {generator.max_seconds:g}] — the longest clip "
                         f"the {generator.name} generator makes is {generator.max_seconds:g} s")
    settings = TrajectorySettings(capture_steps=tuple(capture_steps), kinds=tuple(kinds), samples=args.samples,
                                  seconds=float(seconds), seed=args.seed,
                                  batch_size=min(args.batch_size or args.samples, args.samples),
                                  decode_batch_size=args.decode_batch_size)

    generated = generated_dir(args.data)
    annotated_sha256 = sha256_file(annotated_csv(args.data))
    provenance = check_generation(generator, settings, annotated_sha256, generated, args.force)
    plan = None
    if spec is not None:
        check_spec(spec, generator, settings.seconds, settings.samples, list(prompts["prompt_id"]),
                   dict(zip(prompts["prompt_id"], map(tuple, prompts["labels"]))))
        plan = intervened_runs.plan_interventions(generated, settings, spec, provenance, args.force)
    if args.force:
        check_force(generated, provenance, prompts, shard, list(annotated["prompt_id"]))
    # What sampling reads (a bank, the steerings) is loaded and checked before anything is written or removed.
    if spec is not None or pending_prompts(generator, shard.select(list(prompts["prompt_id"])), generated, settings,
                                           provenance, args.force):
        generator.prepare(spec.interventions if spec is not None else ())
    kind = f" — {provenance['model_kind']}" if provenance.get("model_kind") else ""
    print(f"stage 2: generator {generator.name}{kind}; model {provenance['model']}, preset {provenance['preset']}, "
          f"a {generator.axis.describe()}, saving {','.join(kinds)} at {generator.axis.unit}s "
          f"{','.join(map(str, capture_steps))}",
          file=sys.stderr)
    # What this run (all its shards) will make: a later stage refuses an index some shard has not finished.
    write_request(generated, prompts["prompt_id"], shard.count,
                  intervened_runs.requested_prompts(spec, prompts) if spec is not None else None)
    summary = run_trajectories(generator, prompts, generated, settings, annotated_sha256,
                               shard=shard, force=args.force, all_prompt_ids=list(annotated["prompt_id"]),
                               progress=not args.no_progress)
    orphans = f"; removed parts of {len(summary.removed_orphans)} prompts no longer annotated" \
        if summary.removed_orphans else ""
    if summary.removed_stale:
        orphans += (f"; removed {len(summary.removed_stale)} other shards' prompts made with the old settings "
                    "(run those shards to remake them)")
    print(f"stage 2: shard {shard}: {summary.prompts} prompts — {summary.skipped} already done, "
          f"{summary.generated} generated ({summary.clips} clips) in {time.monotonic() - started:.1f} s{orphans}; "
          f"outputs in {generated}", file=sys.stderr)
    if generator.truth_concepts:
        # Once every prompt is made (by this shard or the others), the truth tables follow from the truth parts.
        tables = write_truth_tables(generated, list(prompts["prompt_id"]), capture_steps)
        print(f"stage 2: truth tables in {tables}" if tables else
              "stage 2: truth tables wait for the other shards' prompts", file=sys.stderr)
    if plan is not None:
        try:
            done, skipped = intervened_runs.run_interventions(generator, prompts, plan, shard=shard,
                                                            force=args.force, progress=not args.no_progress)
        except BaseException:
            # A refused run removed the run folders it created; the request forgets them again (it keeps the
            # interventions whose folders exist), so a refusal leaves requested.json as it was.
            write_request(generated, prompts["prompt_id"], shard.count)
            raise
        print(f"stage 2: {len(spec.interventions)} interventions of {spec.path.name}: {skipped} prompt runs already "
              f"done, {done} generated; outputs in {generated / INTERVENTIONS_DIR}", file=sys.stderr)


def lock_name(args) -> str:
    """Shards of one array run side by side on one --data; two runs of the same shard must not."""
    shard = parse_shard(args.shard)
    return f"stage2-shard-{shard.index}-of-{shard.count}"


if __name__ == "__main__":
    main_exit(main, build_parser(), lock=lock_name)
