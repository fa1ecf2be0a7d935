"""Stage 2 --intervene: each intervention of a spec is a run of its own beside the reference run.

The spec and records are diffusion/interventions/, the hooks belong to the backends, and where the runs live is
data/interventions.py; this module is the runner's side: it plans the intervened runs (one provenance record
each), generates them per prompt with the reference run's code (diffusion/trajectory.py) and seeds, and batches an
interchange's (component, block) sites of one prompt into one generation.
"""
from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.concepts import BY_NAME
from data.contract import read_npy
from data.files import read_json, sha256_file, sha256_json, write_npy
from data.interventions import intervention_dir, means_dir
from data.parts import INTERVENTION_JSON, RunRecord
from data.provenance import Provenance, begin, commit, decide
from data.truth import TRUTH_DIR
from diffusion.base import Conditioning, TrajectoryObserver
from diffusion.interventions.records import Interchange, Intervention, Steering
from diffusion.interventions.spec import InterventionSpec
from diffusion.trajectory import WAV_WRITERS, Shard, generate_prompt, part_is_complete, prompt_seed


@dataclass
class InterventionPlan:
    """What stage 2 --intervene will do, decided before anything is written (see plan_interventions)."""
    spec: InterventionSpec
    settings: object                     # diffusion.trajectory.TrajectorySettings of the intervened runs
    provenances: dict                    # id -> (folder, Provenance of its intervention.json)
    generated: Path | None = None        # where interchange means are cached


def plan_interventions(generated: Path, settings, spec: InterventionSpec, generation_record: dict,
                       force: bool = False) -> InterventionPlan:
    """Each intervention is a run of its own in generated/interventions/<id>/ with the reference run's generator,
    seeds and settings (so sample s of a prompt starts from the same noise as its reference). Its
    intervention.json (the intervention, its direction file's hash, the reference run's generation.json hash)
    follows the one provenance rule (data/provenance.py): other settings are refused here, before the reference run
    or any intervened run writes anything, unless --force (which clears that intervention's clips)."""
    settings = replace(settings, samples=spec.samples or settings.samples,
                       batch_size=min(settings.batch_size, spec.samples or settings.samples),
                       capture_steps=tuple(spec.capture_steps or settings.capture_steps))
    # generation.json will hold exactly this record (diffusion/trajectory.py commits it without extras).
    generation_sha256 = sha256_json(generation_record)
    provenances = {}
    for intervention in spec.interventions:
        folder = intervention_dir(generated, intervention.id)
        record = {"intervention": intervention.record(), **direction_hashes(intervention),
                  "generation_sha256": generation_sha256, "samples": settings.samples,
                  "capture_steps": list(settings.capture_steps), "kinds": list(settings.kinds)}
        prov = Provenance(sidecar=folder / INTERVENTION_JSON, record=record)
        decide(prov, force, "pass --force to redo it, or give the changed intervention another id")
        provenances[intervention.id] = (folder, prov)
    return InterventionPlan(spec, settings, provenances, Path(generated))


def run_interventions(generator, prompts, plan: InterventionPlan, shard=None, force: bool = False,
                      progress: bool = True) -> tuple[int, int]:
    """Generate the planned interventions for this shard's prompts, per prompt and resumable like the reference
    run (the same diffusion/trajectory.py code); returns (prompt runs made, prompt runs already done)."""
    shard = shard or Shard(0, 1)
    spec, settings = plan.spec, plan.settings
    by_id = {row.prompt_id: row for row in prompts.itertuples(index=False)}
    chosen = [p for p in shard.select(list(by_id)) if spec.prompts is None or p in spec.prompts]
    labels_of = {p: tuple(by_id[p].labels) for p in chosen}
    generates = {intervention.id: prompts_of(intervention, labels_of) for intervention in spec.interventions}
    expected = settings.expected_rows()
    content_labels = tuple(generator.content_labels)
    made_under = {identifier: RunRecord.of(INTERVENTION_JSON, prov.record)
                  for identifier, (_, prov) in plan.provenances.items()}
    todo = [(intervention, prompt_id) for intervention in spec.interventions for prompt_id in chosen
            if prompt_id in generates[intervention.id]
            and (force or not part_is_complete(plan.provenances[intervention.id][0], prompt_id, expected,
                                               content_labels, generator.truth_concepts, made_under[intervention.id]))]
    skipped = sum(len(prompt_ids) for prompt_ids in generates.values()) - len(todo)
    if not todo:
        return 0, skipped
    # Loaded and checked before any folder is cleared or any intervention.json written.
    generator.prepare([intervention for intervention, _ in todo])
    renewing = {intervention.id for intervention, _ in todo}
    folders = [plan.provenances[i][0] for i in sorted(renewing)]
    created = [folder for folder in [folders[0].parent, *folders] if not folder.exists()]
    try:
        _renew(plan, renewing, force)
        _generate(generator, prompts, plan, todo, made_under, shard, progress)
    except BaseException:
        # A refused (or interrupted) run leaves no folder it created with nothing in it but an intervention.json.
        for folder in reversed(created):
            if not any(folder.rglob("index/*.csv")):
                shutil.rmtree(folder, ignore_errors=True)
        raise
    return len(todo), skipped


def _renew(plan: InterventionPlan, identifiers: set, force: bool) -> None:
    """Clear the parts of the interventions whose intervention.json changes (or all, with --force) and write it."""
    for identifier in sorted(identifiers):
        folder, prov = plan.provenances[identifier]
        try:
            stored = read_json(prov.sidecar)
        except (OSError, ValueError):
            stored = None   # missing or unreadable: --force got this far (decide refuses it otherwise)
        if stored != prov.record or force:
            begin(prov)
            for part in ("index", "audio", "content", TRUTH_DIR, "activations"):
                shutil.rmtree(folder / part, ignore_errors=True)
            commit(prov)


def _generate(generator, prompts, plan: InterventionPlan, todo: list, made_under: dict, shard, progress: bool) -> None:
    """The todo list's (intervention, prompt) runs, an interchange's sites of one prompt in one batch."""
    settings = plan.settings
    by_id = {row.prompt_id: row for row in prompts.itertuples(index=False)}
    # An interchange's unfinished sites of one prompt share one batch: (prompt, A, B, op) -> InterchangeBatch.
    batches, means = {}, {}
    for intervention, prompt_id in todo:
        if isinstance(intervention, Interchange):
            batches.setdefault(batch_key(prompt_id, intervention), []).append(site_of(intervention))
    with ThreadPoolExecutor(max_workers=WAV_WRITERS) as writers, \
            tqdm(total=len(todo), unit="run", desc=f"stage 2 interventions shard {shard}",
                 disable=not progress or not todo, dynamic_ncols=True) as bar:
        for intervention, prompt_id in todo:
            row = by_id[prompt_id]
            conditioning = Conditioning(prompt=row.prompt, labels=tuple(row.labels))
            sample = None
            if isinstance(intervention, Steering):
                conditioning = replace(conditioning, steering=intervention)
            else:
                for concept in (intervention.concept_a, intervention.concept):
                    if concept not in means:   # over all the run's prompts, not this shard's: shards agree
                        means[concept] = concept_means(generator, plan.generated, concept, prompts, settings)
                key = batch_key(prompt_id, intervention)
                if not isinstance(batches[key], InterchangeBatch):
                    batches[key] = InterchangeBatch(generator, means[intervention.concept_a],
                                                    means[intervention.concept], intervention.op, batches[key],
                                                    intervention.rows)
                sample = batches[key].sampler(site_of(intervention))
            generate_prompt(generator, prompt_id, conditioning, plan.provenances[intervention.id][0], settings,
                            writers, sample, made_under=made_under[intervention.id])
            bar.update(1)


def requested_prompts(spec: InterventionSpec, prompts) -> dict[str, list[str]]:
    """id -> the prompts each intervention generates over the whole run (every shard), as run_interventions picks
    them: the spec's prompts among the run's, and for an interchange those carrying concept A."""
    labels_of = {row.prompt_id: tuple(row.labels) for row in prompts.itertuples(index=False)
                 if spec.prompts is None or row.prompt_id in spec.prompts}
    return {intervention.id: sorted(prompts_of(intervention, labels_of)) for intervention in spec.interventions}


def direction_hashes(intervention: Intervention) -> dict:
    """Hash of a steering's direction file and its sidecar, so a changed file is a changed intervention."""
    if not isinstance(intervention, Steering) or intervention.direction_file is None:
        return {}
    path = Path(intervention.direction_file)
    return {"direction_sha256": sha256_file(path), "direction_sidecar_sha256": sha256_file(path.with_suffix(".json"))}


# -- interchange runs, batched over their (component, block) sites ---------------------------------------------------

def prompts_of(intervention: Intervention, labels_of: dict) -> set[str]:
    """The prompts an intervention generates: all for steering, concept A's for an interchange."""
    if isinstance(intervention, Steering):
        return set(labels_of)
    return {p for p, labels in labels_of.items() if BY_NAME[intervention.concept_a].prompt_has(labels)}


def batch_key(prompt_id: str, interchange: Interchange) -> tuple:
    return prompt_id, interchange.concept_a, interchange.concept, interchange.op, interchange.rows


def site_of(interchange: Interchange) -> tuple[str, int]:
    return interchange.component, interchange.block


def concept_means(generator, generated: Path, concept: str, prompts, settings) -> np.ndarray:
    """Per-(component, layer, position, branch) mean activation over the run's prompts that carry `concept`
    (every sample, the run's seeds and length), cached as generated/interventions/component-means/
    <concept>-<hash>.npy + .json; the hash covers everything the means depend on, so a rerun reads them back and
    other settings make another file."""
    chosen = [(row.prompt_id, row.prompt) for row in prompts.itertuples(index=False)
              if BY_NAME[concept].prompt_has(tuple(row.labels))]
    record = {"concept": concept, "generator": generator.provenance(), "prompt_ids": [p for p, _ in chosen],
              "prompt_texts_sha256": sha256_json([text for _, text in chosen]), "seed": int(settings.seed),
              "samples": int(settings.samples), "seconds": float(settings.seconds),
              "layout": "float32 [components (self_attn, cross_attn, mlp), blocks 0..L-1, generated positions, "
                        "branches (cond, uncond), dim]"}
    path = means_dir(generated) / f"{concept}-{sha256_json(record)[:16]}.npy"
    prov = Provenance(sidecar=path.with_suffix(".json"), record=json.loads(json.dumps(record)), outputs=[path])
    if decide(prov, False, f"delete {path.parent} to recompute the means"):
        return read_npy(path, f"delete {path.parent} to recompute the means")
    means = generator.component_means([(text, prompt_seed(settings.seed, p)) for p, text in chosen],
                                      settings.samples, settings.seconds)
    write_npy(path, means)
    commit(prov)   # last: the sidecar says the array is complete
    return means


class InterchangeBatch:
    """The batched generations of one interchange (A, B, op) on one prompt: the first site asking for a sampler
    call (seed, count) runs every site of `sites` at once (Generator.sample_sites); the others read their rows
    back. Stage 2 then writes each site's run with the ordinary generate_prompt, sampling through `sampler(site)`."""

    def __init__(self, generator, means_a: np.ndarray, means_b: np.ndarray, op: str, sites: list[tuple[str, int]],
                 rows: str = "conditional"):
        self.generator, self.means_a, self.means_b, self.op, self.sites = generator, means_a, means_b, op, sites
        self.rows = rows
        self.results: dict[tuple, list] = {}   # (seed, count, seconds) -> per site: its observer

    def sample(self, site: tuple[str, int], seed: int, num_samples: int, seconds: float, observer, prompt: str):
        key = (seed, num_samples, seconds)
        if key not in self.results:
            observers = [TrajectoryObserver(observer.capture, observer.kinds) for _ in self.sites]
            self.generator.sample_sites(prompt, seed, num_samples, seconds, observers, self.means_a, self.means_b,
                                        self.sites, self.op, self.rows)
            self.results[key] = observers
        observers = self.results[key]
        made, observers[self.sites.index(site)] = observers[self.sites.index(site)], None
        if all(other is None for other in observers):   # every site has its rows: free the batch's codes
            del self.results[key]
        observer.captured.extend(made.captured)
        observer.activations.extend(made.activations)

    def sampler(self, site: tuple[str, int]):
        """generate_prompt's `sample` for one site: its rows of the batched generation."""
        def sample(conditioning, seed: int, num_samples: int, seconds: float, observer):
            self.sample(site, seed, num_samples, seconds, observer, conditioning.prompt)
        return sample
