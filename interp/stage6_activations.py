"""Stage 6 in activation space: where is a concept linearly readable in MusicGen's residual stream, layer by layer?

(A run whose stage 2 captured a denoising backend's blocks, the organism's `residuals=blocks`, goes to
interp/stage6_blocks.py: positions (block, step), scored against the final realised content.)

    python interp/stage6_activations.py --data data [--branch cond|uncond] [--pool mean|last]

(`python interp/stage6_probe.py --space activations ...` runs this same stage.) Inputs: the residual captures of
stage 2 `--generator musicgen --generator-option residuals=cond|both` and the prompt annotations; probes, baseline
and folds: interp/activations.py. The tables are stage 6's: emergence.csv, emergence_steps.csv and probe_quality.csv
have the embedding-space columns and come from the same computation (interp/emergence.py; yardstick `prompt`,
`step` = layer, one Holm family over every AUROC p-value in emergence.csv), so they read alike.

Outputs in results/activations/<branch>-<pool>/logreg/ (another --alpha or --seed appends it, e.g. logreg_seed-1/:
interp/result_folder.py): those three tables, probabilities.csv (out-of-fold
scores), directions/<concept>.npy + .json (per layer the unit probe direction in raw residual space, for steering:
data/directions.py's artifact, method "probe", block = layer − 1), plots/heatmap_auroc.png and report.html (unless
--no-report), stage6.json (provenance, written last). Skipped when up to date (data.provenance's rule).
"""
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from data.concepts import CONCEPTS
from data.contract import generated_dir, read_annotated, read_generated_index
from data.directions import Direction
from data.files import sha256_file, write_csv
from data.generation import TrajectoryAxis, read_generation
from data.identifiers import path_inside
from data.provenance import Provenance, begin, commit, decide
from data.requested import check_complete
from data.stage import InputError, add_progress_argument, main_exit, stage_parser
from interp import activations, plots, report, result_folder, stage6_blocks
from interp.emergence import emergence, emergence_steps
from interp.records import prompt_yardstick

RANDOM_BASELINES = 20
OUTPUT_FILES = ("probe_quality.csv", "emergence.csv", "emergence_steps.csv", "probabilities.csv")
SIDECAR = "stage6.json"


def results_dir(data: Path, branch: str, pool: str) -> Path:
    return Path(data) / "results" / "activations" / f"{branch}-{pool}" / "logreg"


def build_parser():
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--branch", default="cond", help="cond or uncond rows of the classifier-free-guidance batch")
    parser.add_argument("--pool", default="mean", help="mean over the generated positions, or the last one")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for every CI")
    parser.add_argument("--random-baselines", type=int, default=RANDOM_BASELINES,
                        help="probes on permuted prompt labels per layer and concept, giving the baseline")
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="family-wise error rate (Holm over every AUROC p-value in emergence.csv); "
                             "CIs are 1 - alpha")
    parser.add_argument("--seed", type=int, default=0, help="seed for folds, permutations and resamples")
    parser.add_argument("--no-report", action="store_true", help="skip plots/ and report.html")
    add_progress_argument(parser)
    return parser


def main(args) -> None:
    """The stage; `args` needs data, force, branch, pool, bootstrap, random_baselines, alpha, seed, no_report."""
    if args.branch not in activations.BRANCHES or args.pool not in activations.POOLS:
        raise InputError(f"--branch {args.branch} / --pool {args.pool}: choose --branch from "
                         f"{', '.join(activations.BRANCHES)} and --pool from {', '.join(activations.POOLS)}")
    if args.bootstrap < 1 or args.random_baselines < 0 or not 0 < args.alpha < 1 or args.seed < 0:
        raise InputError("--bootstrap must be >= 1, --random-baselines and --seed >= 0 and --alpha in (0, 1) — fix "
                         "the option")
    data = Path(args.data)
    generation = read_generation(data, activations.STAGE2_FIX)
    if generation.record.get("residuals", "none") == "none":
        raise InputError(f"{generation.path}: stage 2 captured no residuals (generator "
                         f"{generation.record.get('generator')!r}) — {activations.STAGE2_FIX}")
    annotated = read_annotated(data)
    index = read_generated_index(data)
    unknown = sorted(set(index["prompt_id"]) - set(annotated["prompt_id"]))
    if unknown:
        raise InputError(f"{generated_dir(data) / 'index'}: prompt {unknown[0]} is not in annotated.csv — rerun "
                         "stage 2 with --force")
    check_complete(data, index, generation.record, "stage 6 --space activations")
    if generation.record["residuals"] == "blocks":   # a denoising backend's blocks by step (the organism)
        stage6_blocks.main(args, generation, annotated, index)
        return
    samples, by_layer, activations_sha256 = activations.read_activations(data, index["prompt_id"].unique(),
                                                                         args.branch, args.pool)
    # Another alpha or seed is another analysis, kept beside the default one (interp/result_folder.py).
    out = result_folder.keyed(results_dir(data, args.branch, args.pool), vars(args), "activations")
    provenance = Provenance(out / SIDECAR, {
        "inputs": {"annotated": sha256_file(data / "prompts" / "annotated.csv"),
                   "generation": generation.sha256, "activations": activations_sha256},
        "settings": {"space": "activations", "branch": args.branch, "pool": args.pool, "probe": "logreg",
                     "probe_settings": activations.PROBE_SETTINGS, "max_folds": activations.MAX_FOLDS,
                     "bootstrap": args.bootstrap, "random_baselines": args.random_baselines, "alpha": args.alpha,
                     "seed": args.seed, "report": not args.no_report}},
        [out / name for name in OUTPUT_FILES] + ([] if args.no_report else [out / "report.html"]))
    if decide(provenance, args.force, "rerun with --force to replace them"):
        print(f"{out}: up to date with its inputs; pass --force to redo")
        return
    started = time.perf_counter()
    # Every fit here is small: BLAS/OpenMP threads only add synchronisation on shared cores (see stage6_probe.py).
    with threadpool_limits(limits=1):
        # The position of a (layer, sample) row is its layer: the read-out after block layer − 1.
        axis = TrajectoryAxis("layer", "layer", tuple(sorted(by_layer)))
        prompt_ids, sample_prompt = np.unique(samples["prompt_id"].to_numpy(), return_inverse=True)
        prompt_labels = prompt_yardstick(annotated, np.arange(len(prompt_ids)), prompt_ids).clip_labels
        clip_prompt = np.tile(sample_prompt, len(axis.positions))
        clip_layer = np.repeat(axis.positions, len(samples))
        probe_scores, directions = activations.score_layers(by_layer, sample_prompt, prompt_labels,
                                                            args.random_baselines, args.seed,
                                                            progress=not args.no_progress)
        names = [concept.name for concept in CONCEPTS]
        yardstick = prompt_yardstick(annotated, clip_prompt, prompt_ids)
        table, n_tests, resampled = emergence(probe_scores, [yardstick], clip_prompt, clip_layer, names, axis.name,
                                              args.bootstrap, args.alpha, args.seed, progress=False)
        # Residual layers never repeat one another: every layer is a distinct position.
        steps_table = emergence_steps(table, None, resampled, 1.0 - args.alpha)
        quality = activations.probe_quality(prompt_labels, sample_prompt)
        probabilities = pd.concat([pd.DataFrame({"prompt_id": prompt_ids[clip_prompt],
                                                 "sample": np.tile(samples["sample"].to_numpy(), len(axis.positions)),
                                                 "step": clip_layer}),
                                   pd.DataFrame(probe_scores.scores, columns=names)], axis=1)

    begin(provenance)
    for name, frame in (("probe_quality.csv", quality), ("emergence.csv", table), ("emergence_steps.csv", steps_table),
                        ("probabilities.csv", probabilities)):
        write_csv(out / name, frame)
    for k, name in enumerate(names):
        if activations.fold_count(prompt_labels[:, k]):
            path = path_inside(out / "directions", f"{name}.npy", "direction file", out / "directions",
                               "concept names come from data/concepts.py")
            direction_of(name, directions[k], axis, table, prompt_labels[:, k], len(samples), provenance.record,
                         generation.record).save(path)
    if not args.no_report:
        heatmap = f"plots/{plots.heatmap_file(yardstick.name)}"
        plots.plot_heatmap(table, out / heatmap, axis.unit)
        report.write_activation_report(out, steps_table, args.branch, args.pool, generation.record, axis.unit, heatmap)
    commit(provenance, {"seconds": round(time.perf_counter() - started, 2), "trajectory_axis": axis.record(),
                        "n_tests": n_tests})
    emerged = steps_table[steps_table["status"] == "emerged"]
    print(f"{out}: {len(emerged)} of {len(names)} concepts linearly readable (AUROC significantly above chance from "
          f"some layer on) over {len(axis.positions)} layers of {len(prompt_ids)} prompts (Holm over {n_tests} "
          "tests)")


def direction_of(concept: str, vectors: np.ndarray, axis: TrajectoryAxis, table: pd.DataFrame,
                 prompt_labels: np.ndarray, n_samples: int, record: dict, generation: dict) -> Direction:
    """A concept's probe directions as the one direction artifact: row b = block b, the block whose output is
    layer b + 1, with the probe's per-layer AUROC and where it came from in the sidecar."""
    rows = table[table["concept"] == concept].sort_values("step")
    settings = record["settings"]
    return Direction(vectors, tuple(layer - 1 for layer in axis.positions), concept, "probe", provenance={
        "space": "activations", "branch": settings["branch"], "pool": settings["pool"], "probe": settings["probe"],
        "probe_settings": settings["probe_settings"], "unit_norm": True, "n_prompts": int(len(prompt_labels)),
        "n_positive_prompts": int(prompt_labels.sum()), "n_rows": int(n_samples),
        "auroc": rows["auroc"].tolist(), "auroc_low": rows["auroc_low"].tolist(),
        "auroc_high": rows["auroc_high"].tolist(), "generation_sha256": record["inputs"]["generation"],
        "activations_sha256": record["inputs"]["activations"], "generator": generation.get("generator"),
        "model": generation.get("model"), "checkpoint_sha256": generation.get("checkpoint_sha256"),
        "trained_on": "every sample (final fit after cross-validation)"})


def lock_name(args) -> str:
    """One lock per results folder, named by the folder the run writes: other branches or pools may run side by
    side, and nothing else (no --embedder) splits it."""
    return "stage6-" + results_dir(Path("."), args.branch, args.pool).as_posix()


if __name__ == "__main__":
    main_exit(main, build_parser(), lock=lock_name)
