"""Stage 6 in activation space for a denoising backend's blocks (the model organism): where, block by block, and
when, step by step, a concept becomes linearly readable inside the network, against the exact realised content.

Run by interp/stage6_activations.py (`python interp/stage6_probe.py --space activations`) when stage 2 captured
block outputs (`--generator organism --generator-option residuals=blocks`): generated/activations/ then holds per
(sample, block, step) the block's output pooled (mean) over its tokens. The yardstick is the final realised content
(interp/yardsticks.py `content`: the concept's rule on the labels the trajectory ends on), so each probe answers
"is what this sample becomes readable at this block and step?". Probes, folds and the permuted-label baseline are
interp/activations.py's, with the trajectory as the group: without a prompt term in the prior each trajectory is its
own noise draw, and it is what carries the label. Emergence is interp/emergence.py's, per block over the steps, and
one Holm family over every (block, step, concept) AUROC p-value.

Outputs in results/activations/blocks-mean/logreg/: emergence.csv and emergence_steps.csv (stage 6's columns plus
`block`), probabilities.csv, plots/heatmap_auroc_content_blocks.png (AUROC per (concept, block) and step)
and report.html (unless --no-report), and
stage6.json (provenance, written last).
"""
import time
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from data.concepts import CONCEPTS
from data.contract import generated_dir, read_npy, read_table, table_sha256
from data.files import sha256_file, write_csv
from data.provenance import Provenance, begin, commit, decide
from data.realised_content import read_realised_content
from data.stage import InputError
from interp import activations, plots, report, result_folder
from interp.emergence import emergence, emergence_steps, multiple_testing
from interp.records import Yardstick
from interp.yardsticks import kind_of, realised_concepts

COLUMNS = ("prompt_id", "sample", "seed", "block", "step", "pool", "row")
STAGE2_FIX = "rerun stage 2 with --generator organism --generator-option residuals=blocks"
OUTPUT_FILES = ("emergence.csv", "emergence_steps.csv", "probabilities.csv")
SIDECAR = "stage6.json"
HEATMAP = "plots/heatmap_auroc_content_blocks.png"
YARDSTICK = "content"


def results_dir(data: Path) -> Path:
    return Path(data) / "results" / "activations" / "blocks-mean" / "logreg"


def read_blocks(data: Path, prompt_ids):
    """(samples frame [prompt_id, sample, seed], {(block, step): float32 [n_samples, dim]}, index sha256)."""
    folder = generated_dir(data) / "activations"
    frames, blocks = [], []
    for prompt_id in sorted(prompt_ids):
        csv_path, npy_path = folder / f"{prompt_id}.csv", folder / f"{prompt_id}.npy"
        if not npy_path.is_file():
            raise InputError(f"{npy_path}: missing for a generated prompt — {STAGE2_FIX} and --force")
        table = read_table(csv_path, COLUMNS, f"{STAGE2_FIX} and --force", dtype={"prompt_id": str, "pool": str})
        vectors = read_npy(npy_path, f"{STAGE2_FIX} and --force")
        if vectors.ndim != 2 or len(vectors) != len(table) or list(table["row"]) != list(range(len(table))):
            raise InputError(f"{csv_path}: its rows do not match {npy_path.name} — {STAGE2_FIX} and --force")
        frames.append(table)
        blocks.append(vectors.astype(np.float32))
    table = pd.concat(frames, ignore_index=True)
    vectors = np.concatenate(blocks)
    if not np.isfinite(vectors).all():
        raise InputError(f"{folder}: a capture holds NaN or infinite values — {STAGE2_FIX} and --force")
    samples = table[["prompt_id", "sample", "seed"]].drop_duplicates().reset_index(drop=True)
    by_site = {}
    for (block, step), rows in table.groupby(["block", "step"]):
        keyed = rows[["prompt_id", "sample"]].reset_index(drop=True)
        if not keyed.equals(samples[["prompt_id", "sample"]]):
            raise InputError(f"{folder}: block {block} at step {step} is not captured for every sample — "
                             f"{STAGE2_FIX} and --force")
        by_site[(int(block), int(step))] = vectors[rows.index.to_numpy()]
    return samples, by_site, table_sha256(table)


def final_content(data: Path, index: pd.DataFrame, samples: pd.DataFrame) -> np.ndarray:
    """bool [n_samples, n_concepts]: the concepts the content of each sample's last captured position carries."""
    content = read_realised_content(data, index)
    if content is None:
        raise InputError(f"{generated_dir(data) / 'generation.json'}: the generator recorded no realised content — "
                         "block probes are scored against it; use --generator organism")
    labels = [column.removeprefix("content_") for column in content.columns]
    reference = (index["intervention"] == "").to_numpy() & (index["kind"] == "x0").to_numpy()
    rows = index[reference].assign(row=np.flatnonzero(reference)).sort_values("step")
    last = rows.groupby(["prompt_id", "sample"]).tail(1).set_index(["prompt_id", "sample"])["row"]
    chosen = last.reindex(pd.MultiIndex.from_frame(samples[["prompt_id", "sample"]])).to_numpy()
    return realised_concepts(content.to_numpy(np.float64)[chosen], labels)


def main(args, generation, annotated, index) -> None:
    """Called by stage6_activations.main once the run's inputs are read and checked."""
    data = Path(args.data)
    samples, by_site, sha256 = read_blocks(data, index["prompt_id"].unique())
    out = result_folder.keyed(results_dir(data), vars(args), "activations")
    provenance = Provenance(out / SIDECAR, {
        "inputs": {"annotated": sha256_file(data / "prompts" / "annotated.csv"),
                   "generation": generation.sha256, "activations": sha256},
        "settings": {"space": "activations", "sites": "blocks", "pool": "mean", "probe": "logreg",
                     "yardstick": YARDSTICK, "probe_settings": activations.PROBE_SETTINGS,
                     "max_folds": activations.MAX_FOLDS, "bootstrap": args.bootstrap,
                     "random_baselines": args.random_baselines, "alpha": args.alpha, "seed": args.seed,
                     "report": not args.no_report}},
        [out / name for name in OUTPUT_FILES] + ([] if args.no_report else [out / "report.html"]))
    if decide(provenance, args.force, "rerun with --force to replace them"):
        print(f"{out}: up to date with its inputs; pass --force to redo")
        return
    started = time.perf_counter()
    labels = final_content(data, index, samples)
    names = [concept.name for concept in CONCEPTS]
    trajectory = np.arange(len(samples))
    blocks = sorted({block for block, _ in by_site})
    tables, curves, probabilities = [], {}, []
    with threadpool_limits(limits=1):
        for block in blocks:
            steps = sorted(step for b, step in by_site if b == block)
            probe_scores, _ = activations.score_layers({step: by_site[(block, step)] for step in steps}, trajectory,
                                                       labels, args.random_baselines, args.seed,
                                                       progress=not args.no_progress)
            clip_prompt, clip_step = np.tile(trajectory, len(steps)), np.repeat(steps, len(samples))
            yardstick = Yardstick(YARDSTICK, labels[clip_prompt], kind_of(YARDSTICK).verb,
                                  kind_of(YARDSTICK).subject)
            table, _, resampled = emergence(probe_scores, [yardstick], clip_prompt, clip_step, names,
                                            "denoising_step", args.bootstrap, args.alpha, args.seed, progress=False)
            tables.append(table.assign(block=block))
            curves[block] = resampled
            probabilities.append(pd.concat([pd.DataFrame({
                "prompt_id": samples["prompt_id"].to_numpy()[clip_prompt],
                "sample": samples["sample"].to_numpy()[clip_prompt], "block": block, "step": clip_step}),
                pd.DataFrame(probe_scores.scores, columns=names)], axis=1))
    # One Holm family over every block, step and concept.
    table, n_tests = multiple_testing(pd.concat(tables, ignore_index=True), args.alpha)
    steps_table = pd.concat([emergence_steps(table[table["block"] == block].drop(columns="block"), None,
                                             curves[block], 1.0 - args.alpha).assign(block=block)
                             for block in blocks], ignore_index=True)

    begin(provenance)
    for name, frame in (("emergence.csv", table), ("emergence_steps.csv", steps_table),
                        ("probabilities.csv", pd.concat(probabilities, ignore_index=True))):
        write_csv(out / name, frame)
    if not args.no_report:
        # One heatmap, rows (concept, block) for the concepts with a probe, columns the captured steps.
        probed = table[table["auroc"].notna()].assign(order=lambda rows: rows["concept"].map(names.index))
        probed = probed.sort_values(["order", "block", "step"], kind="stable")   # each concept's blocks together
        plots.plot_heatmap(probed.assign(concept=probed["concept"] + " · block " + probed["block"].astype(str)),
                           out / HEATMAP, "denoising step")
        report.write_block_report(out, steps_table, generation.record, HEATMAP)
    commit(provenance, {"seconds": round(time.perf_counter() - started, 2), "n_tests": n_tests,
                        "blocks": blocks, "steps": sorted({step for _, step in by_site})})
    emerged = steps_table[steps_table["status"] == "emerged"]
    print(f"{out}: {emerged['concept'].nunique()} of {len(names)} concepts linearly readable in some block "
          f"(AUROC against the final realised content significantly above chance from some step on) over "
          f"{len(blocks)} blocks of {len(samples)} trajectories (Holm over {n_tests} tests)")
