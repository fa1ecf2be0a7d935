"""The runs of the commitment search and what its readers make of them (interp/commitment_search.py drives them).

Everything is made by the project's own runners, in the search's folder, so the study's index and embeddings stay
as they are:

    <results>/commitment/runs/          a generated/ folder of the search's own: generation.json, index/, audio/,
                                        content/, truth/ of the unsteered reference run (diffusion/trajectory.py
                                        run_trajectories: the study's generator, seed and length, the search's
                                        prompts and samples, the last position only), and interventions/<id>/ for
                                        each steered run (diffusion/intervened_runs.py: one provenance record
                                        per run, resumed per prompt, paired by seed with the reference)
    <results>/commitment/embeddings/    reference.npy and one matrix per (setting, start step): every steered
                                        run's final clips (embeddings/run.py embed_files, chunked and resumable)

A start step k is evaluated once per setting: the concept direction on every prompt, and each prompt's own random
directions on it (interp/commitment_statistics.py), all from tick k on. Two readers turn a final clip into
a number: "probe", the stage-6 probe's P(concept) on its embedding, and "truth", for a generator that knows what
it made (data/truth.py), the realised concept at the last step (1 or 0).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from data.contract import read_npy, table_sha256
from data.files import read_json, sha256_file
from data.generation import GENERATION_JSON
from data.interventions import intervention_dir
from data.truth import read_truth
from diffusion.intervened_runs import plan_interventions, run_interventions
from diffusion.interventions.records import PRIOR, Site, Steering
from diffusion.interventions.spec import InterventionSpec, default_id
from diffusion.trajectory import TrajectorySettings, run_trajectories
from embeddings.run import embed_files
from interp.commitment_statistics import ConceptSearch, Reading, random_directions_of, search_readers

RUNS_DIR, EMBEDDINGS_DIR = "runs", "embeddings"


@dataclass(frozen=True)
class SteeringSetting:
    """A steering up to its direction and start step: what the search finds the commitment step of."""
    concept: str
    strength: float
    where: str | tuple[int, ...]       # "prior" or 0-based blocks
    mode: str = "add"
    rows: str = "conditional"
    direction_file: str | None = None  # blocks: the concept's direction (data/directions.py); randoms match its norms

    def steering(self, direction: str, from_step: int, seed: int = 0) -> Steering:
        """direction "concept" (the prior's own tilt, or the direction file) or "random" (seeded)."""
        kind = direction if direction == "random" or self.where == PRIOR else "file"
        steering = Steering("", self.concept, kind, Site(self.where, int(from_step)), float(self.strength), self.mode,
                            self.rows, int(seed) if direction == "random" else 0, self.direction_file)
        return replace(steering, id=default_id(steering))

    def record(self) -> dict:
        where = self.where if self.where == PRIOR else list(self.where)
        record = {"concept": self.concept, "strength": self.strength, "where": where, "mode": self.mode,
                  "rows": self.rows, "direction_file": self.direction_file}
        if self.direction_file is not None:
            record["direction_sha256"] = sha256_file(self.direction_file)
        return record


@dataclass
class SearchRuns:
    """The search's runs in `folder` (<results>/commitment) and how one start step is evaluated."""
    folder: Path
    generator: object
    prompts: pd.DataFrame              # prompt_id, prompt, labels: every prompt any setting uses
    settings: TrajectorySettings       # the reference run's: the study's seed and length, the search's samples
    annotated_sha256: str
    embedder: object
    embed_options: dict                # batch_size, workers for embed_files
    progress: bool = True

    @property
    def runs(self) -> Path:
        return self.folder / RUNS_DIR

    @property
    def last(self) -> int:
        return int(self.settings.capture_steps[-1])

    def reference(self) -> pd.DataFrame:
        """The unsteered run of every prompt (made once, resumed per prompt): its final clips."""
        run_trajectories(self.generator, self.prompts, self.runs, self.settings, self.annotated_sha256,
                         progress=self.progress)
        return self.clips(self.runs, "", sorted(self.prompts["prompt_id"]))

    def clips(self, folder: Path, run_id: str, prompt_ids: Sequence[str]) -> pd.DataFrame:
        """The final clips of one run: prompt_id, sample, path (relative to runs/), in (prompt, sample) order."""
        prefix = "" if folder == self.runs else f"{folder.relative_to(self.runs).as_posix()}/"
        frames = []
        for prompt_id in prompt_ids:
            part = pd.read_csv(folder / "index" / f"{prompt_id}.csv", dtype={"prompt_id": str})
            part = part[(part["step"] == self.last) & (part["kind"] == self.settings.kinds[0])]
            frames.append(part.assign(path=prefix + part["path"], run=run_id)[["run", "prompt_id", "sample", "path"]])
        return pd.concat(frames, ignore_index=True).sort_values(["prompt_id", "sample"], kind="stable") \
            .reset_index(drop=True)

    def embed(self, clips: pd.DataFrame, name: str) -> np.ndarray:
        out = self.folder / EMBEDDINGS_DIR / f"{name}.npy"
        rate, frames = self.generator.sample_rate, int(round(self.settings.seconds * self.generator.sample_rate))
        embed_files([self.runs / path for path in clips["path"]], self.embedder, out, rows_key="clips_sha256",
                    rows_sha256=table_sha256(clips),
                    extra={"generation_sha256": sha256_file(self.runs / GENERATION_JSON)}, expect_rate=rate,
                    expect_channels=self.generator.channels, expect_frames=frames, progress=self.progress,
                    **self.embed_options)
        return read_npy(out, f"delete {out} and rerun the search")

    def steered(self, setting: SteeringSetting, from_step: int, prompt_ids: Sequence[str],
                per_prompt: int) -> pd.DataFrame:
        """Every steered run of one start step (generated where not yet made): their final clips. The concept
        direction runs on every prompt, each prompt's own random directions on it alone."""
        prompt_ids = sorted(prompt_ids)
        runs = [(setting.steering("concept", from_step), tuple(prompt_ids))]
        runs += [(setting.steering("random", from_step, seed), (prompt_id,))
                 for number, prompt_id in enumerate(prompt_ids) for seed in random_directions_of(number, per_prompt)]
        # One spec per set of prompts: the intervened-run runner generates each of its interventions on all of them.
        by_prompts: dict[tuple, list] = {}
        for steering, chosen in runs:
            by_prompts.setdefault(chosen, []).append(steering)
        record = self.generation_record()
        for chosen, steerings in by_prompts.items():
            spec = InterventionSpec(self.folder, "", tuple(steerings), chosen, self.settings.samples, (self.last,))
            plan = plan_interventions(self.runs, self.settings, spec, record)
            # The search's own bar tracks the steps; one bar per prompt's random runs would only be noise.
            run_interventions(self.generator, self.prompts, plan, progress=False)
        return pd.concat([self.clips(intervention_dir(self.runs, steering.id), steering.id, chosen)
                          for steering, chosen in runs], ignore_index=True)

    def generation_record(self) -> dict:
        return read_json(self.runs / GENERATION_JSON)


def probe_values(clips_embeddings: np.ndarray, probe, outputs) -> np.ndarray:
    """P(concept) of each clip: the stage-6 probe's score (`outputs(probe, X) -> (score, decision)`)."""
    return np.asarray(outputs(probe, clips_embeddings)[0], np.float64)


def truth_values(runs: Path, clips: pd.DataFrame, concept: str) -> np.ndarray:
    """1.0 where a clip's realised content at the last step carries the concept (data/truth.py), else 0.0."""
    values = np.full(len(clips), np.nan)
    for run_id, rows in clips.groupby("run", sort=False):
        folder = runs if run_id == "" else intervention_dir(runs, run_id)
        truth = read_truth(folder, sorted(rows["prompt_id"].unique()))
        final = truth.final()[:, truth.concepts.index(concept)].astype(np.float64)
        order = {(p, int(s)): i for i, (p, s) in enumerate(zip(truth.trajectories["prompt_id"],
                                                                truth.trajectories["sample"]))}
        values[rows.index] = [final[order[(p, int(s))]] for p, s in zip(rows["prompt_id"], rows["sample"])]
    return values


def reading(reference: pd.DataFrame, reference_values: np.ndarray, clips: pd.DataFrame, values: np.ndarray,
            setting: SteeringSetting, from_step: int, prompt_ids: Sequence[str], per_prompt: int) -> Reading:
    """The changes (steered minus reference, paired by prompt and sample) of one reader at one start step, over
    the trajectories of `prompt_ids` in (prompt, sample) order; random slot j of a trajectory is its prompt's j-th
    own direction."""
    prompt_ids = sorted(prompt_ids)
    base = pd.Series(reference_values, index=pd.MultiIndex.from_frame(reference[["prompt_id", "sample"]]))
    steered = pd.Series(values, index=pd.MultiIndex.from_frame(clips[["run", "prompt_id", "sample"]]))
    chosen = reference[reference["prompt_id"].isin(set(prompt_ids))]
    keys = list(zip(chosen["prompt_id"], chosen["sample"]))
    number = {prompt_id: position for position, prompt_id in enumerate(prompt_ids)}
    concept_run = setting.steering("concept", from_step).id
    concept = np.array([steered[(concept_run, p, s)] - base[(p, s)] for p, s in keys])
    random = np.array([[steered[(setting.steering("random", from_step, seed).id, p, s)] - base[(p, s)]
                        for seed in random_directions_of(number[p], per_prompt)] for p, s in keys])
    return Reading(concept, random.reshape(len(keys), per_prompt))


@dataclass(frozen=True)
class SearchOptions:
    """How much each start step is sampled and resampled (interp/commitment_search.py's options)."""
    samples: int
    random_per_prompt: int
    bootstrap: int
    alpha: float
    seed: int
    progress: bool = True


def search_concept(runs: SearchRuns, setting: SteeringSetting, prompt_ids: list[str], probe, reference: pd.DataFrame,
                   args: SearchOptions) -> ConceptSearch:
    """Bisect the start step for each reader (the probe first, then the truth, which reuses every step the probe
    evaluated), then the bootstrap distribution of each reader's commitment step over all evaluated steps.
    `probe`: (fitted probe, outputs) of the concept's stage-6 probe, or None to search by the truth alone."""
    generator, concept = runs.generator, setting.concept
    readers = tuple(reader for reader, present in (("probe", probe is not None),
                                                   ("truth", concept in generator.truth_concepts)) if present)
    if not readers:
        raise ValueError(f"nothing reads '{concept}': no probe, and the generator does not know its content")
    model, outputs = probe if probe is not None else (None, None)
    base = {}
    if "probe" in readers:
        base["probe"] = probe_values(runs.embed(reference, "reference"), model, outputs)
    if "truth" in readers:
        base["truth"] = truth_values(runs.runs, reference, concept)
    trajectories = reference[reference["prompt_id"].isin(set(prompt_ids))]
    prompt = trajectories["prompt_id"].map({p: number for number, p in enumerate(sorted(prompt_ids))}).to_numpy()

    def evaluate(step: int) -> dict:
        clips = runs.steered(setting, step, prompt_ids, args.random_per_prompt)
        values = {}
        if "probe" in readers:
            values["probe"] = probe_values(runs.embed(clips, setting.steering("concept", step).id), model, outputs)
        if "truth" in readers:
            values["truth"] = truth_values(runs.runs, clips, concept)
        return {reader: reading(reference, base[reader], clips, values[reader], setting, step, prompt_ids,
                                args.random_per_prompt)
                for reader in readers}

    result = ConceptSearch(setting, sorted(prompt_ids), args.samples, args.random_per_prompt, readers)
    return search_readers(result, evaluate, prompt, generator.clock_ticks(runs.settings.seconds), args.bootstrap,
                          args.alpha, args.seed, args.progress)
