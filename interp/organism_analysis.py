"""Activation-level known answers on the model organism: where and when a concept becomes linearly readable inside
the trained network, against when its output and the exact posterior reveal it, and until which step steering its
blocks still changes what it makes.

    python interp/organism_analysis.py --data data [--checkpoint DIR] [--samples 256] [--steer is_brass ...]

The organism (diffusion/organism/, `--generator organism`) is sampled unconditionally (`condition=none`, as the
planted preset: the sampler's noise decides every concept) for --samples trajectories; every block's output
(`blocks.{b}.hook_resid_post`, mean over tokens, interp/directions.py's recorder), the clean estimate x0 and the
closed-form content and truth are kept at every step. The known answer is the FINAL REALISED CONTENT of each
trajectory (data/truth.py's rule on the closed-form content at the last step: what the organism made). Outputs in
<data>/results/organism/ (data/ARTIFACTS.md, "Model organism analysis"):

- probes.csv: per concept, site (block b, or `x0`: the network's clean estimate, a linear image of the decoded
  audio) and step, the out-of-fold AUROC of a linear probe (standardised ridge regression, 5 folds over
  trajectories, one fit for every concept at once) against the final content, with a percentile bootstrap
  interval over trajectories; `truth` rows are the oracle curve (the exact posterior's AUROC, data/truth.py).
- readable.csv: per concept, the step from which each reader stays at or above EMERGENCE_AUROC (data/truth.py's
  planted-emergence level) with a bootstrap interval (the same resamples): the activations (the earliest block),
  the output (x0), the oracle on the organism's own trajectories and the planted timing (the ideal planted model's
  oracle on the same seeds). `recovered` / `recovered_planted`: stage 6's known-answer rule (interp/known_answers.py
  recovery: the target step inside the interval, or within one step of the estimate) against the organism's oracle
  and against the planted step.
- recovery.csv: per reader (activations, output; the organism's own oracle against the planted timing as the
  ceiling) and target, the share of concepts recovered with a Clopper-Pearson interval, and Spearman's rank
  correlation between target and recovered steps with a bootstrap interval (interp/known_answers.py order_recovery).
- directions/<method>/<concept>.npy: per (step, block), the difference of means of the block outputs between
  trajectories that end with and without the concept (mean_difference), and the ridge probe's weights mapped back
  to the activations and rescaled to the difference of means' norm (probe), so both push equally hard and share one
  random baseline (data/directions.py).
- commitment_search.csv / commitment_curve.csv / commitment.csv: for each --steer concept, the commitment search of
  interp/organism_commitment.py (bisection to one step, random directions per group, bootstrap interval): steering
  every block along each --directions file at --strength, read by the realised content (truth) and by a probe on
  the final latent (probe); and the ideal planted model with its prior tilted by --prior-strength nats, read by its
  truth. commitment.csv puts them side by side with the natural commitment of the unsteered runs
  (content_commitment.csv: when the trajectories that end with the concept settle on it) and says whether the
  probe-read step lies within two steps of the truth (interp/known_answers.py's commitment rule).
- report.html (interp/organism_report.py) and organism_analysis.json: provenance, written last; a rerun with the
  same inputs skips, --force redoes. The analysis is one in-memory run: a killed run starts again from the top.
"""
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd
from scipy import stats
from threadpoolctl import threadpool_limits

from data.concepts import BY_NAME
from data.directions import Direction
from data.files import write_csv
from data.provenance import Provenance, begin, commit, decide
from data.stage import InputError, main_exit, stage_parser
from data.truth import EMERGENCE_AUROC, first_step_from_which, oracle_aurocs, realised_concepts
from diffusion import load_generator
from diffusion.base import Conditioning, TrajectoryObserver
from diffusion.interventions.hooks import hooks_applied
from interp import commitment_report, organism_report
from interp.commitment_statistics import MIN_RANDOM_DIRECTIONS
from interp.directions import block_recorder, mean_difference
from interp.known_answers import known_commitment, order_recovery, recovery
from interp.organism_commitment import (PROMPT, Design, Searcher, block_setting, content_commitment, output_probe,
                                        prior_setting)

OUTPUT_FILES = ("probes.csv", "readable.csv", "recovery.csv", "content_commitment.csv", "commitment.csv",
                "commitment_search.csv", "commitment_curve.csv", "report.html")
SIDECAR = "organism_analysis.json"
FOLDS = 5
MIN_CLASS = 10           # trajectories of each final class a concept needs to be probed
LEVEL = 0.95
# reversed_mean_difference: the difference of means negated, for concepts whose difference of means moves them the
# opposite way when added (the organism's late group, README); searched only when asked for.
DIRECTION_METHODS = ("mean_difference", "probe", "reversed_mean_difference")
DEFAULT_DIRECTIONS = ("mean_difference", "probe")


def build_parser():
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="organism checkpoint (unset: the committed one)")
    parser.add_argument("--samples", type=int, default=256, help="trajectories for the probes and directions")
    parser.add_argument("--seed", type=int, default=0, help="seed of trajectory 0 (trajectory r: seed + r); folds")
    parser.add_argument("--bootstrap", type=int, default=200, help="resamples for every interval")
    parser.add_argument("--steer", action="append", default=None,
                        help="concept whose commitment step is searched (repeat; default: every probed concept)")
    parser.add_argument("--directions", default=",".join(DEFAULT_DIRECTIONS),
                        help=f"block steering directions, comma-separated: {', '.join(DIRECTION_METHODS)}")
    parser.add_argument("--strength", type=float, default=1.0,
                        help="block steering strength (multiples of the difference of means' norm)")
    parser.add_argument("--prior-strength", type=float, default=8.0, help="the ideal model's prior tilt, nats")
    parser.add_argument("--groups", type=int, default=12,
                        help="commitment search: groups of trajectories, each with its own random direction "
                             "(the bootstrap's units; at least 10)")
    parser.add_argument("--per-group", type=int, default=6, help="commitment search: trajectories per group")
    parser.add_argument("--no-progress", action="store_true", help="no progress output")
    return parser


def record(generator, samples: int, seed: int) -> dict:
    """One unconditional sampler call: block outputs [steps, blocks, samples, dim], x0 [steps, samples, dim],
    the final latent [samples, dim], content [samples, steps, labels] and truth [samples, steps, concepts]."""
    recorder = block_recorder(generator, samples)
    observer = TrajectoryObserver(generator.axis.positions, ["x0"])
    with hooks_applied(generator.hook_points(), recorder.hooks):
        final = generator.sample(Conditioning(PROMPT), seed, samples, generator.default_seconds, observer)
    steps, blocks = recorder.means()
    return {"steps": np.array(steps), "blocks": blocks, "block_ids": recorder.blocks,
            "x0": np.stack([c.latent.double().numpy() for c in observer.captured]),
            "final": final.double().numpy().reshape(samples, -1), **trace_arrays(observer, generator)}


def trace_arrays(observer, generator) -> dict:
    content = np.stack([[entry[2][label] for label in generator.content_labels] for entry in observer.trace])
    truth = np.stack([[entry[3][name] for name in generator.truth_concepts] for entry in observer.trace])
    return {"content": content.transpose(2, 0, 1), "truth": truth.transpose(2, 0, 1)}


def probe_curves(features: np.ndarray, final: np.ndarray, seed: int, bootstrap: int):
    """features [steps, samples, dim], final bool [samples, concepts] -> (AUROC, low, high [3, steps, concepts],
    the resampled curves [bootstrap, steps, concepts]): out-of-fold ridge scores per step (every concept in one
    fit), AUROC with a percentile bootstrap over trajectories (the same resamples for every site)."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = list(KFold(FOLDS, shuffle=True, random_state=seed).split(final))
    scores = np.zeros((features.shape[0],) + final.shape)
    target = final.astype(np.float64)
    for step, vectors in enumerate(features):
        for train, test in folds:
            probe = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(vectors[train], target[train])
            scores[step, test] = probe.predict(vectors[test])
    return auroc_with_resamples(scores.transpose(1, 0, 2), final, seed, bootstrap)


def auroc_with_resamples(scores: np.ndarray, final: np.ndarray, seed: int, bootstrap: int):
    """scores [samples, steps, concepts] -> (curve, low, high stacked, resampled curves)."""
    curve = oracle_aurocs(scores, final)
    rng = np.random.default_rng([seed, 5])
    resampled = []
    for _ in range(bootstrap):
        rows = rng.integers(0, len(final), len(final))
        resampled.append(oracle_aurocs(scores[rows], final[rows]))
    resampled = np.stack(resampled)
    low, high = np.nanpercentile(resampled, [2.5, 97.5], axis=0)
    return np.stack([curve, low, high]), resampled


def probe_table(run: dict, final: np.ndarray, concepts: list[str], seed: int, bootstrap: int, progress):
    """probes.csv and, per site, the resampled curves [bootstrap, steps, concepts]."""
    sites = {f"block {b}": run["blocks"][:, k] for k, b in enumerate(run["block_ids"])}
    sites["x0"] = run["x0"]
    frames, resampled = [], {}
    for site, features in sites.items():
        progress(f"probes on {site}")
        curves, resampled[site] = probe_curves(features, final, seed, bootstrap)
        frames.append(curve_frame(site, run["steps"], concepts, curves))
    oracle, resampled["truth"] = auroc_with_resamples(run["truth"], final, seed, bootstrap)
    frames.append(curve_frame("truth", run["steps"], concepts, oracle))
    return pd.concat(frames, ignore_index=True), resampled


def curve_frame(site: str, steps: np.ndarray, concepts: list[str], curves: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame([{"concept": name, "site": site, "step": int(step), "auroc": curves[0, i, k],
                          "auroc_low": curves[1, i, k], "auroc_high": curves[2, i, k]}
                         for k, name in enumerate(concepts) for i, step in enumerate(steps)])


def readable_steps(curves: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """curves [..., steps, concepts] -> the readable step [..., concepts] (+inf where never readable)."""
    flat = curves.reshape(-1, *curves.shape[-2:])
    found = [[first_step_from_which(curve[:, k], steps, EMERGENCE_AUROC) for k in range(curve.shape[1])]
             for curve in flat]
    return np.array([[np.inf if step is None else step for step in row] for row in found],
                    np.float64).reshape(curves.shape[:-2] + curves.shape[-1:])


def step_and_interval(point: float, replicates: np.ndarray) -> tuple:
    """(step, low, high) with NaN for never/unbounded; replicates [bootstrap] with +inf for never."""
    tail = (1.0 - LEVEL) / 2.0 * 100.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail], method="inverted_cdf")
    return tuple(np.nan if not np.isfinite(value) else float(value) for value in (point, low, high))


def readable_table(probes: pd.DataFrame, resampled: dict, ideal: dict, steps: np.ndarray,
                   concepts: list[str]) -> tuple[pd.DataFrame, dict]:
    """readable.csv, and per reader the resampled readable steps [concepts, bootstrap] (for the order)."""
    curve = {site: table.pivot(index="step", columns="concept", values="auroc")[concepts].to_numpy()
             for site, table in probes.groupby("site")}
    blocks = sorted(site for site in curve if site.startswith("block"))
    point = {site: readable_steps(curve[site], steps) for site in curve}
    replicate = {site: readable_steps(resampled[site], steps) for site in curve}       # [bootstrap, concepts]
    point["activations"] = np.min([point[site] for site in blocks], axis=0)
    replicate["activations"] = np.min([replicate[site] for site in blocks], axis=0)
    planted = readable_steps(ideal["curve"], steps)
    rows = []
    for k, name in enumerate(concepts):
        row = {"concept": name}
        found = {site: point[site][k] for site in blocks if np.isfinite(point[site][k])}
        row["activation_site"] = min(found, key=lambda site: (found[site], site)) if found else None
        for reader, site in (("activation", "activations"), ("output", "x0"), ("oracle", "truth")):
            row[f"{reader}_step"], row[f"{reader}_low"], row[f"{reader}_high"] = \
                step_and_interval(point[site][k], replicate[site][:, k])
        row.update({f"step_{site.replace(' ', '_')}": (point[site][k] if np.isfinite(point[site][k]) else np.nan)
                    for site in blocks})
        row["planted_step"] = planted[k] if np.isfinite(planted[k]) else np.nan
        for suffix, target in (("", row["oracle_step"]), ("_planted", row["planted_step"])):
            outcome = recovery(target, row["activation_step"], row["activation_low"], row["activation_high"], steps, 0)
            row[f"recovered{suffix}"] = outcome["recovered"]
        rows.append(row)
    return pd.DataFrame(rows), {"activations": replicate["activations"].T, "output": replicate["x0"].T,
                                "oracle": replicate["truth"].T}


def recovery_table(readable: pd.DataFrame, replicates: dict, steps: np.ndarray) -> pd.DataFrame:
    """recovery.csv: per reader and target, the share of concepts recovered and the order (module docstring)."""
    rows = []
    pairs = [("activations", "activation", target) for target in ("oracle", "planted")] + \
        [("output", "output", target) for target in ("oracle", "planted")] + [("oracle", "oracle", "planted")]
    for reader, column, target in pairs:
        planted = readable[f"{target}_step"].to_numpy(float)
        chosen = np.isfinite(planted)
        outcomes = [recovery(planted[i], readable[f"{column}_step"].iloc[i], readable[f"{column}_low"].iloc[i],
                             readable[f"{column}_high"].iloc[i], steps, 0)["recovered"] for i in np.flatnonzero(chosen)]
        hits, total = int(sum(bool(outcome) for outcome in outcomes)), len(outcomes)
        row = {"reader": reader, "target": target, "n_concepts": total, "recovered": hits,
               "share": hits / total if total else np.nan, "share_low": np.nan, "share_high": np.nan}
        if total:
            interval = stats.binomtest(hits, total).proportion_ci(LEVEL, method="exact")
            row.update(share_low=interval.low, share_high=interval.high)
        found = chosen & np.isfinite(readable[f"{column}_step"].to_numpy(float))
        order = order_recovery(reader, planted[found], planted[found], readable[f"{column}_step"].to_numpy(float)[found],
                               replicates[reader][found], LEVEL)
        row.update(order_concepts=order["n_concepts"], spearman=order.get("spearman", np.nan),
                   spearman_low=order.get("spearman_low", np.nan), spearman_high=order.get("spearman_high", np.nan))
        rows.append(row)
    return pd.DataFrame(rows)


def ideal_run(ideal, samples: int, seed: int, concepts: list[str]) -> dict:
    """The ideal planted model on the same seeds: its oracle curve against its own final content [steps,
    concepts] and its realised content per step [samples, steps, all truth concepts]."""
    observer = TrajectoryObserver([], ["x0"])
    ideal.sample(Conditioning(PROMPT), seed, samples, ideal.default_seconds, observer)
    arrays = trace_arrays(observer, ideal)
    chosen = [ideal.truth_concepts.index(name) for name in concepts]
    realised = realised_concepts(arrays["content"], ideal.content_labels, list(ideal.truth_concepts))
    return {"curve": oracle_aurocs(arrays["truth"][:, :, chosen], realised[:, -1][:, chosen]), "realised": realised}


def save_directions(run: dict, final_all: np.ndarray, concepts_all: list[str], probed: list[str], out: Path) -> dict:
    """Per concept with both final classes: the difference-of-means direction; per probed concept also the ridge
    probe's direction at the same norms and the difference of means negated. -> {(method, concept): path}."""
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    steps, blocks = list(run["steps"]), run["block_ids"]
    provenance = {"model": "organism", "split": "final realised content", "trajectories": int(len(final_all))}
    paths, dom = {}, {}
    for k, name in enumerate(concepts_all):
        positive = final_all[:, k]
        if positive.any() and (~positive).any():
            dom[name] = mean_difference(run["blocks"][:, :, positive].transpose(2, 0, 1, 3),
                                        run["blocks"][:, :, ~positive].transpose(2, 0, 1, 3))
            paths[("mean_difference", name)] = Direction(
                dom[name], blocks, name, "mean_difference", steps=steps,
                provenance={**provenance, "positives": int(positive.sum())}).save(out / "mean_difference" / name)
    columns = [concepts_all.index(name) for name in probed]
    weights = np.zeros((len(probed),) + run["blocks"].shape[:2] + run["blocks"].shape[-1:])
    for step in range(run["blocks"].shape[0]):
        for block in range(run["blocks"].shape[1]):
            vectors = run["blocks"][step, block]
            scaler = StandardScaler().fit(vectors)
            ridge = Ridge(alpha=1.0).fit(scaler.transform(vectors), final_all[:, columns].astype(np.float64))
            weights[:, step, block] = ridge.coef_ / scaler.scale_      # the gradient of the score in activations
    for number, name in enumerate(probed):
        paths[("reversed_mean_difference", name)] = Direction(
            -dom[name], blocks, name, "mean_difference", steps=steps,
            provenance={**provenance, "negated": True}).save(out / "reversed_mean_difference" / name)
        norm = np.linalg.norm(dom[name], axis=-1, keepdims=True)
        raw = weights[number]
        scaled = raw / np.maximum(np.linalg.norm(raw, axis=-1, keepdims=True), 1e-12) * norm
        paths[("probe", name)] = Direction(scaled, blocks, name, "probe", steps=steps,
                                           provenance={**provenance, "probe": "standardised ridge, alpha 1",
                                                       "norm": "the difference of means' norm per (step, block)"}
                                           ).save(out / "probe" / name)
    return paths


def check_arguments(args) -> list[str]:
    """The direction methods; every number and name checked before anything runs."""
    unknown = [name for name in args.steer or () if name not in BY_NAME]
    if unknown:
        raise InputError(f"--steer {unknown[0]}: not a concept of data/concepts.py")
    methods = [part.strip() for part in args.directions.split(",") if part.strip()]
    wrong = [method for method in methods if method not in DIRECTION_METHODS]
    if wrong or not methods:
        raise InputError(f"--directions {args.directions!r}: comma-separated, from {', '.join(DIRECTION_METHODS)}")
    for flag, value, least in (("--samples", args.samples, 2 * FOLDS), ("--bootstrap", args.bootstrap, 1),
                               ("--groups", args.groups, MIN_RANDOM_DIRECTIONS), ("--per-group", args.per_group, 1),
                               ("--seed", args.seed, 0)):
        if value < least:
            raise InputError(f"{flag} {value} must be at least {least}")
    return methods


def agreement(search, truth_step, probe_step, within_two):
    """Do the truth and the probe-read search agree: both find no step, or the truth lies within two steps of the
    probe's interval (interp/known_answers.py); one finding a step and the other none is a disagreement. None for
    a search without a probe reader (the ideal model's)."""
    if "probe" not in search.readers:
        return None
    if pd.isna(probe_step) or pd.isna(truth_step):
        return bool(pd.isna(probe_step) and pd.isna(truth_step))
    return bool(within_two)


def search_tables(searches: list) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """commitment_search.csv and commitment_curve.csv (commitment_report's tables, with the generator and the
    direction of every search), and commitment.csv: per search, the truth's and the probe's step side by side."""
    found, curves, summary = [], [], []
    for generator, direction, search in searches:
        table, curve = commitment_report.tables([search])
        found.append(table.assign(generator=generator, direction=direction))
        curves.append(curve.assign(generator=generator, direction=direction))
        row = known_commitment(table).iloc[0].to_dict()
        truth = table[table["method"] == "truth"].iloc[0]
        summary.append({"concept": search.setting.concept, "generator": generator, "direction": direction,
                        "strength": search.setting.strength, "truth_step": truth["commitment_step"],
                        "truth_low": truth["commitment_low"], "truth_high": truth["commitment_high"],
                        "probe_step": row["probe_step"], "probe_low": row["probe_low"],
                        "probe_high": row["probe_high"], "within_two": row["within_two"],
                        "agree": agreement(search, truth["commitment_step"], row["probe_step"], row["within_two"]),
                        "steps_evaluated": truth["steps_evaluated"], "groups": len(search.prompt_ids),
                        "per_group": search.samples})
    front = ["generator", "direction"]
    found, curves = (pd.concat(frames, ignore_index=True) for frames in (found, curves))
    return (found[front + [c for c in found.columns if c not in front]],
            curves[front + [c for c in curves.columns if c not in front]], pd.DataFrame(summary))


def main(args) -> None:
    methods = check_arguments(args)
    progress = (lambda message: None) if args.no_progress else (lambda message: print(message, file=sys.stderr))
    generator = load_generator("organism", model=args.checkpoint, preset=None, steps=None, device=None, dtype=None,
                               decode_dtype=None)
    out = Path(args.data) / "results" / "organism"
    settings = {key: value for key, value in vars(args).items() if key not in ("data", "force", "no_progress")}
    provenance = Provenance(out / SIDECAR, {"organism": generator.provenance(),
                                            "settings": {**settings, "directions": methods}},
                            [out / name for name in OUTPUT_FILES])
    if decide(provenance, args.force, "pass --force to redo it"):
        print(f"{out}: up to date with its inputs; pass --force to redo")
        return
    started, cpu_started = time.perf_counter(), time.process_time()
    with threadpool_limits(limits=1):
        progress(f"sampling {args.samples} trajectories with block captures")
        run = record(generator, args.samples, args.seed)
        labels, concepts_all = generator.content_labels, list(generator.truth_concepts)
        final_all = realised_concepts(run["content"][:, -1], labels, concepts_all)
        keep = [k for k in range(len(concepts_all))
                if MIN_CLASS <= final_all[:, k].sum() <= len(final_all) - MIN_CLASS]
        concepts = [concepts_all[k] for k in keep]
        steer = list(dict.fromkeys(args.steer or concepts))
        thin = [name for name in steer if name not in concepts]
        if thin:
            raise InputError(f"--steer {thin[0]}: fewer than {MIN_CLASS} of the organism's {args.samples} "
                             "trajectories end with (or without) it, so it has no probe — steer a probed concept "
                             f"({', '.join(concepts)}) or pass more --samples")
        run["truth"] = run["truth"][:, :, keep]
        probes, resampled = probe_table(run, final_all[:, keep], concepts, args.seed, args.bootstrap, progress)
        ideal = load_generator("ideal", model=generator.reference._model, preset="planted", steps=None, device=None,
                               dtype=None, decode_dtype=None)
        ideal_arrays = ideal_run(ideal, args.samples, args.seed, concepts)
        readable, replicates = readable_table(probes, resampled, ideal_arrays, run["steps"], concepts)
        recovered = recovery_table(readable, replicates, run["steps"])
        natural = pd.concat([content_commitment(realised[:, :, [names.index(name) for name in concepts]],
                                                run["steps"], concepts, args.bootstrap, args.seed, LEVEL)
                             .assign(generator=name_of)
                             for name_of, realised, names in (
                                 ("organism", realised_concepts(run["content"], labels, concepts_all), concepts_all),
                                 ("ideal", ideal_arrays["realised"], list(ideal.truth_concepts)))],
                            ignore_index=True)
        begin(provenance)
        paths = save_directions(run, final_all, concepts_all, steer, out / "directions")
        fitted = output_probe(run["final"], final_all[:, [concepts_all.index(name) for name in steer]], args.seed)
        # The search's trajectories follow the analysis's (seeds seed + samples on): fresh noise, none shared.
        design = Design(args.seed + args.samples, args.groups, args.per_group)
        organism = Searcher(generator, design, {name: fitted[i] for i, name in enumerate(steer)}, args.bootstrap,
                            1.0 - LEVEL, args.seed, not args.no_progress)
        prior = Searcher(ideal, design, None, args.bootstrap, 1.0 - LEVEL, args.seed, not args.no_progress)
        searches = []
        for name in steer:
            # Both directions have the difference of means' norms, so its random directions are both baselines.
            baseline = block_setting(name, args.strength, run["block_ids"], paths[("mean_difference", name)])
            for method in methods:
                progress(f"commitment search: {name}, organism blocks along {method}")
                setting = block_setting(name, args.strength, run["block_ids"], paths[(method, name)])
                searches.append(("organism", method, organism.search(setting, baseline)))
            progress(f"commitment search: {name}, ideal model's prior")
            searches.append(("ideal", "prior", prior.search(prior_setting(name, args.prior_strength))))
        search_table, curve_table, commitment = search_tables(searches)
    for file, frame in (("probes.csv", probes), ("readable.csv", readable), ("recovery.csv", recovered),
                        ("content_commitment.csv", natural), ("commitment.csv", commitment),
                        ("commitment_search.csv", search_table), ("commitment_curve.csv", curve_table)):
        write_csv(out / file, frame)
    organism_report.write_report(out, generator.provenance())
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    commit(provenance, {"seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "concepts": concepts})
    for line in organism_report.headlines(out):
        print(f"{out}: {line}")
    print(f"{out}: {seconds:.0f} s wall, {cpu:.0f} s CPU")


if __name__ == "__main__":
    main_exit(main, build_parser())
