"""Stage 6 --compare: what each intervention did to the concepts the probes read (the statistics; the figure and
the report's section are interp/compare_report.py).

Every intervened clip is paired with the unintervened clip of the same (prompt, sample, step) — the same seed, so
the only difference is the intervention — and scored by the same concept probes. Per intervention:

- delta: mean over pairs of P_int(c) - P_ref(c) for the target concept and for every other concept (off-target),
  with a percentile CI that resamples PROMPTS (samples of one prompt share its text and are correlated);
- against the baseline: the random-direction interventions of the same group (same target, place, strength, mode,
  rows and start step; matched norm) are run on the same pairs; effect = delta(concept direction) - mean delta
  (random directions), paired per clip, prompt-bootstrap CI. "Beyond the baseline" = the CI excludes 0 on the side
  the strength pushes (above for s > 0, below for s < 0);
- the published interchange metrics (Vélez Vásquez et al., ISMIR 2024): the log-odds shift of the target concept,
  mean over pairs of logit P_int(c) - logit P_ref(c), and the KL divergence between the clip's distribution over the
  instrument-family concepts (family probe scores normalised to sum to 1), both with CIs. `family_kl` is
  KL(int || ref), the direction the published code computes (torch's kl_div(log p_ref, log p_int, log_target=True));
  `family_kl_reverse` is KL(ref || int);
  for an interchange (A's prompts with one component swapped towards B) the log-odds shift is between the two
  concepts: [logit P(B) - logit P(A)] intervened minus the same for the reference; interchange.csv puts these
  per (component, layer) site, and the report shows them as a components x layers table;
- an audio sanity guard: cosine distance between the intervened clip's embedding and its reference's (beside the
  median distance between references of different prompts, for scale), the loudness change in dB, and the share
  of silent clips. The guard fails on non-finite or silent audio, or a loudness change beyond LOUDNESS_LIMIT_DB.

For step-resolved steering the COMMITMENT STEP of a group is the last start step k at which steering from k on
still moves the target concept beyond the baseline; it sits beside the concept's emergence step. If some earlier
k does not move it, the commitment step is still the last one that does, and `monotone` says so. k counts ticks of
the generator's intervention clock (`commitment_clock`: a denoising step, or MusicGen's generated position), which
is not always the trajectory axis the emergence step lies on (`trajectory_axis`: MusicGen's decoder layer).

Outputs in <results>/compare/: interventions.csv, effects.csv, commitment.csv, pairs.csv, interchange.csv,
commitment.png, section.html (the report's section), compare.json (provenance, written last). compare.json is
decided apart from the analysis' stage6.json: an up-to-date analysis with a stale compare/ redoes compare/ only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data.audio import read_audio
from data.concepts import BY_NAME
from data.contract import generated_dir, table_sha256
from data.files import sha256_file
from data.generation import read_generation
from data.interventions import read_intervention_records
from data.provenance import Provenance
from data.stage import InputError
from diffusion import GENERATORS, generator_class
from diffusion.interventions.records import group_key
from interp import statistics

LOUDNESS_LIMIT_DB = 10.0
SILENCE_DBFS = -60.0
EPSILON = 1e-6
COMPARE_DIR = "compare"
COMPARE_JSON = "compare.json"
OUTPUT_FILES = ("interventions.csv", "effects.csv", "commitment.csv", "pairs.csv", "interchange.csv", "commitment.png",
                "section.html")
INTERCHANGE_COLUMNS = ["intervention", "concept_a", "concept_b", "op", "component", "layer", "rows", "n_pairs",
                       "n_prompts", "log_odds_shift", "log_odds_shift_low", "log_odds_shift_high", "family_kl",
                       "family_kl_low", "family_kl_high", "family_kl_reverse", "family_kl_reverse_low",
                       "family_kl_reverse_high", "target_delta", "target_delta_low", "target_delta_high", "audio_guard"]
COMMITMENT_COLUMNS = ["concept", "direction", "where", "strength", "mode", "rows", "every", "steps_tested",
                      "steps_beyond", "commitment_step", "commitment_clock", "monotone", "emergence_step",
                      "emergence_status", "trajectory_axis"]


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), EPSILON, 1.0 - EPSILON)
    return np.log(p) - np.log1p(-p)


def family_kl(reference: np.ndarray, intervened: np.ndarray, direction: str = "intervened_reference") -> np.ndarray:
    """Per row, the KL divergence between probe scores [rows, families] normalised to distributions: KL(int || ref)
    (direction "intervened_reference", the published code's) or KL(ref || int) ("reference_intervened")."""
    p = np.clip(np.asarray(reference, np.float64), EPSILON, None)
    q = np.clip(np.asarray(intervened, np.float64), EPSILON, None)
    p, q = p / p.sum(axis=1, keepdims=True), q / q.sum(axis=1, keepdims=True)
    if direction == "intervened_reference":
        p, q = q, p
    elif direction != "reference_intervened":
        raise ValueError(f"family_kl direction {direction!r} is not intervened_reference or reference_intervened")
    return np.sum(p * (np.log(p) - np.log(q)), axis=1)


def clock_words(clock: str) -> str:
    """'generated_position' -> 'generated position': for headers, labels and messages."""
    return clock.replace("_", " ")


def loudness_dbfs(audio: np.ndarray) -> float:
    value = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    return 20.0 * np.log10(max(value, 1e-12))


def pair_clips(scores: pd.DataFrame) -> pd.DataFrame:
    """Intervened rows joined to their reference rows on (prompt_id, sample, step).

    scores: one row per clip with prompt_id, sample, step, intervention ("" = reference), row (index into the
    embedding matrix), path, and one column per concept. Returns intervened rows with `ref_` copies.
    """
    reference = scores[scores["intervention"] == ""]
    intervened = scores[scores["intervention"] != ""]
    pairs = intervened.merge(reference, on=["prompt_id", "sample", "step"], suffixes=("", "_ref"), how="left",
                             validate="many_to_one")
    return pairs


def bootstrap_mean(values: np.ndarray, prompt: np.ndarray, weights: np.ndarray, level: float) -> tuple:
    """(mean, low, high) of per-pair values with prompt-resampled weights [resamples, n_prompts]."""
    values = np.asarray(values, np.float64)
    keep = np.isfinite(values)
    if not keep.any():
        return np.nan, np.nan, np.nan
    values, prompt = values[keep], prompt[keep]
    point = float(values.mean())
    low, high = statistics.percentile_interval(statistics.weighted_mean(weights[:, prompt], values), level)
    return point, low, high


def beyond(low: float, high: float, strength: float) -> bool:
    if not np.isfinite(low) or not np.isfinite(high):
        return False
    return bool(low > 0) if strength >= 0 else bool(high < 0)


def compare(scores: pd.DataFrame, records: dict[str, dict], concept_names, family_concepts, embeddings=None,
            loudness: pd.Series | None = None, emergence_steps: pd.DataFrame | None = None, axis_name: str = "step",
            n_resamples: int = 1000, alpha: float = 0.05, seed: int = 0,
            clock: str = "denoising_step") -> dict[str, pd.DataFrame]:
    """The comparison tables (module docstring). `records`: intervention id -> its record (diffusion/
    interventions/records.py `record()`); `embeddings`: matrix indexed by scores' `row`; `loudness`: dBFS per
    scores row (index aligned), or None to skip the loudness guard; `axis_name`: the trajectory axis emergence lies
    on; `clock`: what the interventions' start steps count (Generator.intervention_clock)."""
    level = 1.0 - alpha
    concept_names = list(concept_names)
    last_step = int(scores.loc[scores["intervention"] != "", "step"].max())
    at_last = scores[scores["step"] == last_step].copy()
    if loudness is not None:
        at_last["loudness_db"] = loudness.loc[at_last.index].to_numpy(float)
    pairs = pair_clips(at_last)
    unpaired = pairs["row_ref"].isna() if "row_ref" in pairs else pd.Series(True, index=pairs.index)
    if unpaired.any():
        first = pairs[unpaired].iloc[0]
        raise ValueError(f"intervened clip ({first['prompt_id']}, sample {first['sample']}, step {last_step}, "
                         f"{first['intervention']}) has no unintervened clip")
    prompt_ids = sorted(pairs["prompt_id"].unique())
    prompt_of = {prompt_id: index for index, prompt_id in enumerate(prompt_ids)}
    weights = statistics.cluster_weights(len(prompt_ids), n_resamples, np.random.default_rng([seed, 11]))

    deltas = {c: pairs[c].to_numpy(float) - pairs[f"{c}_ref"].to_numpy(float) for c in concept_names}
    pairs = pairs.assign(prompt_index=pairs["prompt_id"].map(prompt_of))

    # Per-clip delta of each random intervention on its target concept, to be averaged into the baseline.
    by_id = {identifier: pairs.index[pairs["intervention"] == identifier] for identifier in records}
    group_of = {identifier: _group(record) for identifier, record in records.items()}
    reference_distance_scale = np.nan
    if embeddings is not None:
        refs = at_last[at_last["intervention"] == ""].drop_duplicates("prompt_id")
        if len(refs) > 1:
            vectors = _unit(np.asarray(embeddings)[refs["row"].to_numpy(int)])
            cosine = 1.0 - vectors @ vectors.T
            reference_distance_scale = float(np.median(cosine[np.triu_indices(len(refs), 1)]))

    effect_rows, summary_rows, pair_rows = [], [], []
    for identifier, record in records.items():
        rows = by_id[identifier]
        if len(rows) == 0:
            continue
        chosen = pairs.loc[rows]
        prompt = chosen["prompt_index"].to_numpy()
        target = record["concept"]
        strength = record.get("strength")   # steering only; an interchange has no baseline to be beyond
        baseline_ids = [other for other, other_record in records.items()
                        if other_record.get("direction") == "random" and group_of[other] == group_of[identifier]
                        and other_record["from_step"] == record["from_step"] and other != identifier]
        key = chosen[["prompt_id", "sample"]].apply(tuple, axis=1)
        baseline = {}
        if record.get("direction") != "random" and baseline_ids:
            for concept in concept_names:
                stacks = []
                for other in baseline_ids:
                    other_rows = pairs.loc[by_id[other]]
                    values = pd.Series(deltas[concept][pairs.index.get_indexer(other_rows.index)],
                                       index=other_rows[["prompt_id", "sample"]].apply(tuple, axis=1))
                    stacks.append(values.reindex(key).to_numpy(float))
                baseline[concept] = np.nanmean(np.stack(stacks), axis=0) if stacks else None
        positions = pairs.index.get_indexer(rows)
        for concept in concept_names:
            delta = deltas[concept][positions]
            mean, low, high = bootstrap_mean(delta, prompt, weights, level)
            row = {"intervention": identifier, "target_concept": target, "concept": concept,
                   "is_target": concept == target, "n_pairs": int(len(delta)), "n_prompts": int(len(set(prompt))),
                   "delta": mean, "delta_low": low, "delta_high": high}
            if concept in baseline and baseline[concept] is not None:
                effect, effect_low, effect_high = bootstrap_mean(delta - baseline[concept], prompt, weights, level)
                row.update(baseline_delta=float(np.nanmean(baseline[concept])), effect=effect,
                           effect_low=effect_low, effect_high=effect_high,
                           beyond_baseline=beyond(effect_low, effect_high, strength))
            effect_rows.append(row)

        target_delta = deltas[target][positions]
        summary = {**_flat(record), "n_pairs": int(len(positions)), "n_prompts": int(len(set(prompt))),
                   "n_baseline_directions": len(baseline_ids) if record.get("direction") != "random" else 0}
        summary["target_delta"], summary["target_delta_low"], summary["target_delta_high"] = bootstrap_mean(
            target_delta, prompt, weights, level)
        if baseline.get(target) is not None:
            effect, effect_low, effect_high = bootstrap_mean(target_delta - baseline[target], prompt, weights, level)
            summary.update(effect=effect, effect_low=effect_low, effect_high=effect_high,
                           beyond_baseline=beyond(effect_low, effect_high, strength))
        others = [c for c in concept_names if c != target]
        off = np.array([np.nanmean(deltas[c][positions]) for c in others])
        summary["off_target_mean_abs_delta"] = float(np.nanmean(np.abs(off))) if np.isfinite(off).any() else np.nan
        if np.isfinite(off).any():
            worst = int(np.nanargmax(np.abs(off)))
            summary["off_target_largest"] = f"{others[worst]} {off[worst]:+.3f}"
        log_odds = logit(chosen[target].to_numpy(float)) - logit(chosen[f"{target}_ref"].to_numpy(float))
        if record.get("kind") == "interchange":   # between the concepts: logit P(B) - logit P(A), int - ref
            source = record["concept_a"]
            log_odds = log_odds - (logit(chosen[source].to_numpy(float))
                                   - logit(chosen[f"{source}_ref"].to_numpy(float)))
        summary["log_odds_shift"], summary["log_odds_shift_low"], summary["log_odds_shift_high"] = bootstrap_mean(
            log_odds, prompt, weights, level)
        # The families whose probe could be fitted (a family no prompt carries has no scores, not zero mass).
        families = [c for c in family_concepts if c in chosen and np.isfinite(chosen[c].to_numpy(float)).all()
                    and np.isfinite(chosen[f"{c}_ref"].to_numpy(float)).all()]
        for name, direction in (("family_kl", "intervened_reference"), ("family_kl_reverse", "reference_intervened")):
            kl = family_kl(chosen[[f"{c}_ref" for c in families]].to_numpy(float), chosen[families].to_numpy(float),
                           direction) if len(families) >= 2 else np.full(len(chosen), np.nan)
            summary[name], summary[f"{name}_low"], summary[f"{name}_high"] = bootstrap_mean(kl, prompt, weights,
                                                                                           level)
        distance = np.full(len(chosen), np.nan)
        if embeddings is not None:
            a = _unit(np.asarray(embeddings)[chosen["row"].to_numpy(int)])
            b = _unit(np.asarray(embeddings)[chosen["row_ref"].to_numpy(int)])
            distance = 1.0 - np.sum(a * b, axis=1)
        summary["embedding_distance"], summary["embedding_distance_low"], summary["embedding_distance_high"] = \
            bootstrap_mean(distance, prompt, weights, level)
        summary["reference_distance_scale"] = reference_distance_scale
        guard = []
        if loudness is not None:
            change = chosen["loudness_db"].to_numpy(float) - chosen["loudness_db_ref"].to_numpy(float)
            silent = chosen["loudness_db"].to_numpy(float) < SILENCE_DBFS
            summary["loudness_change_db"] = float(np.mean(change)) if np.isfinite(change).all() else np.nan
            summary["silent_fraction"] = float(np.mean(silent))
            if not np.isfinite(change).all():
                guard.append("non-finite audio")
            if silent.any():
                guard.append(f"{int(silent.sum())} silent clip(s)")
            if np.isfinite(change).all() and abs(float(np.mean(change))) > LOUDNESS_LIMIT_DB:
                guard.append(f"loudness moved {float(np.mean(change)):+.1f} dB")
        summary["audio_guard"] = "ok" if not guard else "; ".join(guard)
        summary_rows.append(summary)
        for i, (_, pair) in enumerate(chosen.iterrows()):
            pair_rows.append({"intervention": identifier, "prompt_id": pair["prompt_id"], "sample": int(pair["sample"]),
                              "step": last_step, "path": pair["path"], "path_ref": pair["path_ref"],
                              "target_concept": target, "target_score": float(pair[target]),
                              "target_score_ref": float(pair[f"{target}_ref"]),
                              "embedding_distance": float(distance[i])})

    interventions = pd.DataFrame(summary_rows)
    effects = pd.DataFrame(effect_rows)
    commitment = commitment_table(interventions, emergence_steps, axis_name, clock)
    return {"interventions": interventions, "effects": effects, "commitment": commitment,
            "pairs": pd.DataFrame(pair_rows), "interchange": interchange_table(interventions),
            "scored_step": last_step, "clock": clock, "axis": axis_name}


def interchange_table(interventions: pd.DataFrame) -> pd.DataFrame:
    """One row per interchange site (component, layer): the published metrics with their CIs."""
    if interventions.empty or "kind" not in interventions:
        return pd.DataFrame(columns=INTERCHANGE_COLUMNS)
    chosen = interventions[interventions["kind"] == "interchange"]
    # `layer` stays the decoder layer 1..L of the trajectory axis: block b's components are layer b + 1's.
    table = chosen.rename(columns={"concept": "concept_b"}).assign(layer=chosen["where"].astype(int) + 1)
    table = table.reindex(columns=INTERCHANGE_COLUMNS)
    order = {name: i for i, name in enumerate(("self_attn", "cross_attn", "mlp"))}
    return table.sort_values(["concept_a", "concept_b", "op", "layer", "component"],
                             key=lambda column: column.map(order) if column.name == "component" else column,
                             ).reset_index(drop=True)


def commitment_table(interventions: pd.DataFrame, emergence_steps: pd.DataFrame | None,
                     axis_name: str = "step", clock: str = "denoising_step") -> pd.DataFrame:
    """Per steering group with a baseline: the start steps tried, those that move the target beyond the baseline,
    and the commitment step (the last of them, a tick of `clock`), beside the concept's emergence step (AUROC, a
    position on the trajectory axis `axis_name`)."""
    rows = []
    if interventions.empty or "beyond_baseline" not in interventions:
        return pd.DataFrame(columns=COMMITMENT_COLUMNS)
    steered = interventions[(interventions["direction"] != "random") & interventions["beyond_baseline"].notna()]
    emergence, status = {}, {}
    if emergence_steps is not None and not emergence_steps.empty:
        auroc = emergence_steps[emergence_steps["metric"] == "auroc"]
        emergence = dict(zip(auroc["concept"], auroc["emergence_step"]))
        if "status" in auroc:
            status = dict(zip(auroc["concept"], auroc["status"]))
    for key, group in steered.groupby(["concept", "direction", "where", "strength", "mode", "rows", "every"],
                                      sort=False):
        group = group.sort_values("from_step")
        tested = group["from_step"].astype(int).tolist()
        moved = group.loc[group["beyond_baseline"].astype(bool), "from_step"].astype(int).tolist()
        commitment = max(moved) if moved else None
        monotone = commitment is None or all(step in moved for step in tested if step <= commitment)
        step = emergence.get(key[0], pd.NA)
        rows.append({"concept": key[0], "direction": key[1], "where": key[2], "strength": key[3], "mode": key[4],
                     "rows": key[5], "every": key[6], "steps_tested": ";".join(map(str, tested)),
                     "steps_beyond": ";".join(map(str, moved)),
                     "commitment_step": pd.NA if commitment is None else commitment, "commitment_clock": clock,
                     "monotone": monotone, "emergence_step": pd.NA if pd.isna(step) else int(step),
                     "emergence_status": status.get(key[0], ""), "trajectory_axis": axis_name})
    frame = pd.DataFrame(rows, columns=COMMITMENT_COLUMNS)
    for column in ("commitment_step", "emergence_step"):
        if column in frame:
            frame[column] = frame[column].astype("Int64")
    return frame


def _group(record: dict) -> tuple:
    return group_key(record)


def _flat(record: dict) -> dict:
    keep = ("id", "kind", "concept", "direction", "seed", "where", "strength", "mode", "from_step", "to_step", "rows")
    flat = {key: record.get(key) for key in keep}
    flat["every"] = record.get("every", 1)
    flat["where"] = record["where"] if isinstance(record["where"], str) else ";".join(map(str, record["where"]))
    flat["intervention"] = flat.pop("id")
    flat.update({key: record[key] for key in ("concept_a", "component", "op") if key in record})
    return flat


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float64)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-30)


# -- stage 6 --compare ----------------------------------------------------------------------------------------------

def provenance(out: Path, data: Path, analysis_record: dict, intervened_index: pd.DataFrame) -> Provenance:
    """compare/'s provenance, decided apart from the analysis' own (stage6.json): what it is made from is the
    analysis' record (its inputs and settings), the intervened rows and their specs (data.provenance's rule)."""
    specs = sorted((generated_dir(data) / "interventions").glob("*/intervention.json"))
    record = {"inputs": {"stage6": analysis_record, "intervened_index_sha256": table_sha256(intervened_index),
                         "interventions": {path.parent.name: sha256_file(path) for path in specs}},
              "settings": {"loudness_limit_db": LOUDNESS_LIMIT_DB, "silence_dbfs": SILENCE_DBFS}}
    folder = Path(out) / COMPARE_DIR
    return Provenance(sidecar=folder / COMPARE_JSON, record=record, outputs=[folder / name for name in OUTPUT_FILES])


def score_interventions(data: Path, clips: pd.DataFrame, clip_embeddings: np.ndarray, scores: np.ndarray,
                        intervened: tuple, kind: str, concept_names, models: dict, probe_outputs,
                        emergence_steps: pd.DataFrame, axis_name: str, n_resamples: int, alpha: float,
                        seed: int) -> dict:
    """compare()'s tables for the intervened clips of `kind`, scored with the fitted concept probes (`models`:
    concept -> fitted probe or None; `probe_outputs(probe, X) -> (score, decision)`) against the reference clips'
    `scores`. Writes nothing; an intervened run that does not match the reference run is one InputError."""
    index, matrix = intervened
    chosen = (index["kind"] == kind).to_numpy()
    if not chosen.any():
        raise InputError(f"{generated_dir(data) / 'interventions'}: no intervened clips of kind '{kind}' — run stage 2 "
                         "with --intervene <spec> (and the same --kinds), then stage 3, before --compare")
    index, matrix = index[chosen].reset_index(drop=True), matrix[chosen]
    intervened_scores = np.full((len(index), len(concept_names)), np.nan)
    for k, name in enumerate(concept_names):
        if models.get(name) is not None:
            intervened_scores[:, k], _ = probe_outputs(models[name], matrix)
    columns = ["prompt_id", "sample", "step", "path"]
    reference = clips[columns].assign(intervention="", row=np.arange(len(clips)))
    others = index[columns].assign(intervention=index["intervention"].to_numpy(),
                                   row=len(clips) + np.arange(len(index)))
    frame = pd.concat([reference, others], ignore_index=True)
    frame = pd.concat([frame, pd.DataFrame(np.vstack([scores, intervened_scores]), columns=list(concept_names))],
                      axis=1)
    embeddings = np.vstack([clip_embeddings, matrix])
    generated = generated_dir(data)
    last = int(index["step"].max())
    needed = frame.index[frame["step"] == last]
    loudness = pd.Series(np.nan, index=frame.index)
    for row in needed:
        audio, _ = read_audio(generated / frame.at[row, "path"], allow_silent=True)
        loudness[row] = loudness_dbfs(audio)
    records = read_intervention_records(generated)
    records = {identifier: record for identifier, record in records.items()
               if identifier in set(index["intervention"])}
    families = [c for c in concept_names if BY_NAME[c].group == "family"]
    try:
        return compare(frame, records, concept_names, families, embeddings, loudness, emergence_steps, axis_name,
                       n_resamples, alpha, seed, intervention_clock(data))
    except ValueError as error:
        raise InputError(f"{generated / 'interventions'}: {error} — rerun stage 2 with --intervene and the same "
                         "settings as the reference run, then stage 3") from None


def intervention_clock(data: Path) -> str:
    """What the interventions' from_step counted: the clock the generator named in generation.json declares
    (Generator.intervention_clock: a denoising step, or MusicGen's generated position)."""
    generation = read_generation(data)
    name = generation.record.get("generator")
    try:
        return generator_class(name).intervention_clock
    except KeyError:
        raise InputError(f"{generation.path}: generator {name!r} is not one this checkout knows "
                         f"({', '.join(GENERATORS)}), so what its interventions' steps count is unknown — score them "
                         "with the checkout that made them") from None


def headline(tables: dict, unit: str) -> str:
    """One line for the console: how many interventions were scored, and each concept's commitment and emergence."""
    clock = clock_words(tables.get("clock", "denoising_step"))
    return (f"{len(tables['interventions'])} interventions scored at {unit} {tables['scored_step']}; "
            + ", ".join(f"{row.concept}: commitment {clock} "
                        f"{row.commitment_step if not pd.isna(row.commitment_step) else 'none'} / emergence {unit} "
                        f"{row.emergence_step if not pd.isna(row.emergence_step) else 'never'}"
                        for row in tables["commitment"].itertuples()))
