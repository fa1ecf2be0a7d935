"""Interventions (issue 11): one spec format for every backend, the directions it names, and the hooks that apply it.

A spec file (JSON, or YAML when pyyaml is installed) lists interventions; list-valued fields of an entry expand
as a grid, so "3 concepts x 3 start steps x {concept, 2 random}" is one entry:

    {"format": 1,
     "prompts": ["p003", "p017"],      # optional: prompt ids to intervene on (default: every prompt of the run)
     "samples": 1,                      # optional: the first N samples of each prompt (paired by seed with the run)
     "capture_steps": [49],             # optional: steps to save (default: the run's)
     "interventions": [
       {"concept": ["is_brass", "is_string"],     # target concept (data/concepts.py): what the scoring reads
        "direction": ["concept", "random:0", "random:1"],
        "where": "prior",                         # ideal: its concept prior; stable-audio-open: DiT blocks [0, 5];
                                                  # musicgen: decoder layers [1..L] (1 = the first block's output)
        "strength": 8.0, "mode": "add",           # add: h + s v;  norm_relative: (h + s |h| v/|v|) / (1 + s)
        "from_step": [5, 25, 45], "to_step": null, # steps [from_step, to_step) of the sampler's own step counter
        "rows": "conditional"},                   # conditional | unconditional | both (CFG batches)
       {"kind": "interchange",                    # MusicGen only (Velez Vasquez et al., ISMIR 2024)
        "concept_a": "is_brass", "concept_b": "is_keyboard",
        "op": "replace",                          # replace: output <- mean_B;  adjust: output + mean_B - mean_A
        "components": ["self_attn", "cross_attn", "mlp"],   # optional (default: all three)
        "layers": [1, 2, 3, 4],                   # decoder layers 1..L whose components are swapped
        "id": "brass-keys"}]}                     # optional name (default: <concept_a>-<concept_b>)

An interchange entry is one intervention run per (component, layer) site, id <name>-<op>-<component>-L<layer>,
each generating concept A's prompts; stage 2 makes all sites of one prompt in ONE batched generation (one site
per batch row). The means of A and B (per component, layer, generated position, CFG branch) come from a generation
pass over the run's prompts that carry the concept, cached in generated/interventions/component-means/.

Directions: "concept" is the backend's own direction for the concept (the ideal model's prior tilt towards the bank
clips that carry it); a path names a direction file (`interp/directions.py`: .npy [positions, dim] or
[steps, positions, dim] + .json sidecar); "random" / "random:<seed>" is the baseline: a random direction of the same
norm as the concept's (per position), so the scoring (interp/compare.py) can ask whether the concept's direction moves
the concept more than any direction of its size would. An intervention's id names it in the index, the audio folder
and every table; the unintervened run is the reference.

"When" is the sampler's step counter (the ideal loop's step, the diffusers scheduler's step_index, MusicGen's
generated-frame position from cache_position), never a count of hook calls: a model that runs a block twice per step
(the prefill of generate(), a second CFG pass) would shift a counter of calls.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from data.stage import InputError

SPEC_FORMAT = 1
INTERVENTION_KINDS = ("steer", "interchange")
MODES = ("add", "norm_relative")
ROWS = ("conditional", "unconditional", "both")
PRIOR = "prior"
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.+-]+$")
ENTRY_KEYS = {"id", "kind", "concept", "direction", "where", "strength", "mode", "from_step", "to_step", "rows"}
GRID_KEYS = ("concept", "direction", "strength", "from_step")
INTERCHANGE_KEYS = {"id", "kind", "concept_a", "concept_b", "op", "components", "layers"}
SPEC_KEYS = {"format", "prompts", "samples", "capture_steps", "interventions"}
SPEC_FIX = "fix the spec (format: diffusion/interventions.py, data/ARTIFACTS.md)"


@dataclass(frozen=True)
class Intervention:
    id: str
    concept: str                      # the target concept (data/concepts.py name)
    direction: str                    # "concept" (the prior's own tilt), "file" or "random"
    where: tuple[int, ...] | str      # PRIOR, or layer / block positions
    strength: float
    mode: str = "add"
    from_step: int = 0
    to_step: int | None = None        # exclusive; None = to the end of the trajectory
    rows: str = "conditional"
    seed: int = 0                     # of a random direction
    kind: str = "steer"
    # Absolute path of the direction .npy: the one steered along ("file"), or whose norms a random one matches.
    direction_file: str | None = None
    # Interchange only: `concept` is B (the concept swapped in), concept_a the prompts' own; component and op.
    concept_a: str | None = None
    component: str | None = None
    op: str | None = None

    @property
    def is_baseline(self) -> bool:
        return self.direction == "random"

    def active(self, step: int) -> bool:
        return self.strength != 0 and step >= self.from_step and (self.to_step is None or step < self.to_step)

    def record(self) -> dict:
        """What the run's provenance keeps (JSON types)."""
        record = asdict(self)
        record["where"] = self.where if isinstance(self.where, str) else list(self.where)
        if self.kind == "steer":   # steering records stay as they were before interchange existed
            for key in ("concept_a", "component", "op"):
                record.pop(key)
        return record

    def group(self) -> tuple:
        """Interventions that differ only in direction (concept vs random seeds) and start step form one group:
        the random ones are the concept one's baseline, the start steps its commitment curve."""
        return (self.kind, self.concept, json.dumps(self.record()["where"]), self.strength, self.mode,
                self.to_step, self.rows)


@dataclass(frozen=True)
class InterventionSpec:
    path: Path
    sha256: str
    interventions: tuple[Intervention, ...]
    prompts: tuple[str, ...] | None = None
    samples: int | None = None
    capture_steps: tuple[int, ...] | None = None

    def record(self) -> dict:
        return {"spec": str(self.path), "spec_sha256": self.sha256,
                "prompts": None if self.prompts is None else list(self.prompts), "samples": self.samples,
                "capture_steps": None if self.capture_steps is None else list(self.capture_steps),
                "interventions": [intervention.record() for intervention in self.interventions]}


# -- the spec file --------------------------------------------------------------------------------------------------

def read_spec_file(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such intervention spec — pass a JSON (or YAML) file, format in "
                         "diffusion/interventions.py")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise InputError(f"{path}: reading YAML needs pyyaml (pip install pyyaml) — or write the spec as "
                             "JSON") from None
        try:
            payload = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise InputError(f"{path}: not valid YAML ({str(error).splitlines()[0]}) — {SPEC_FIX}") from None
    else:
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"{path}: not valid JSON ({error}) — {SPEC_FIX}") from None
    if not isinstance(payload, dict):
        raise InputError(f"{path}: the spec must be an object with an 'interventions' list — {SPEC_FIX}")
    return payload


def load_spec(path) -> InterventionSpec:
    """Read and validate a spec without a model: names, types, ranges that need no backend (see check_spec)."""
    from data.concepts import BY_NAME

    path = Path(path).expanduser().resolve()
    payload = read_spec_file(path)

    def fail(where: str, rule: str) -> InputError:
        return InputError(f"{path}: {where}: {rule} — {SPEC_FIX}")

    unknown = sorted(set(payload) - SPEC_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key (allowed: {', '.join(sorted(SPEC_KEYS))})")
    if payload.get("format", SPEC_FORMAT) != SPEC_FORMAT:
        raise fail("format", f"{payload.get('format')!r} is not a known spec format (this version reads {SPEC_FORMAT})")
    prompts = payload.get("prompts")
    if prompts is not None and (not isinstance(prompts, list) or not prompts
                                or not all(isinstance(p, str) and p for p in prompts)):
        raise fail("prompts", "must be a non-empty list of prompt ids")
    samples = payload.get("samples")
    if samples is not None and (not _is_int(samples) or samples < 1):
        raise fail("samples", f"{samples!r} must be a positive integer")
    capture = payload.get("capture_steps")
    if capture is not None and (not isinstance(capture, list) or not capture
                                or not all(_is_int(step) and step >= 0 for step in capture)):
        raise fail("capture_steps", "must be a non-empty list of non-negative step numbers")
    entries = payload.get("interventions")
    if not isinstance(entries, list) or not entries:
        raise fail("interventions", "must be a non-empty list of intervention entries")

    interventions: list[Intervention] = []
    for number, entry in enumerate(entries):
        where_text = f"interventions[{number}]"
        if not isinstance(entry, dict):
            raise fail(where_text, "must be an object")
        if entry.get("kind") == "interchange":
            interventions.extend(_interchange_entry(entry, fail, where_text))
            continue
        unknown = sorted(set(entry) - ENTRY_KEYS)
        if unknown:
            raise fail(f"{where_text}.{unknown[0]}", f"unknown key (allowed: {', '.join(sorted(ENTRY_KEYS))})")
        for key in ("concept", "direction", "where", "strength", "from_step"):
            if key not in entry:
                raise fail(where_text, f"'{key}' is required")
        kind = entry.get("kind", "steer")
        if kind not in INTERVENTION_KINDS:
            raise fail(f"{where_text}.kind", f"{kind!r} is not one of {', '.join(INTERVENTION_KINDS)}")
        mode, rows = entry.get("mode", "add"), entry.get("rows", "conditional")
        if mode not in MODES:
            raise fail(f"{where_text}.mode", f"{mode!r} is not one of {', '.join(MODES)}")
        if rows not in ROWS:
            raise fail(f"{where_text}.rows", f"{rows!r} is not one of {', '.join(ROWS)}")
        where = entry["where"]
        if where == PRIOR:
            if mode != "add":
                raise fail(f"{where_text}.mode", "the ideal model's prior is tilted additively (log-prior + s d); "
                                                 "norm_relative applies to activations — use mode 'add'")
        elif (isinstance(where, list) and where and all(_is_int(p) and p >= 0 for p in where)
              and len(set(where)) == len(where)):
            where = tuple(sorted(int(p) for p in where))
        else:
            raise fail(f"{where_text}.where", f"{where!r} must be 'prior' or a list of distinct layer/block numbers")
        to_step = entry.get("to_step")
        if to_step is not None and (not _is_int(to_step) or to_step < 1):
            raise fail(f"{where_text}.to_step", f"{to_step!r} must be a positive step number or null")
        grid = {key: entry[key] if isinstance(entry[key], list) else [entry[key]] for key in GRID_KEYS}
        for key, values in grid.items():
            if not values:
                raise fail(f"{where_text}.{key}", "is an empty list")
        for concept in grid["concept"]:
            if concept not in BY_NAME:
                raise fail(f"{where_text}.concept", f"{concept!r} is not a concept of data/concepts.py")
        for strength in grid["strength"]:
            if not isinstance(strength, (int, float)) or isinstance(strength, bool) or not math.isfinite(strength):
                raise fail(f"{where_text}.strength", f"{strength!r} must be a finite number")
            if mode == "norm_relative" and strength <= -1:
                raise fail(f"{where_text}.strength", f"{strength} divides by 1 + s <= 0 in the norm_relative form")
        for step in grid["from_step"]:
            if not _is_int(step) or step < 0:
                raise fail(f"{where_text}.from_step", f"{step!r} must be a non-negative step number")
            if to_step is not None and step >= to_step:
                raise fail(f"{where_text}.from_step", f"{step} is not before to_step {to_step}")
        directions = [_parse_direction(value, path, fail, f"{where_text}.direction") for value in grid["direction"]]
        files = sorted({file for kind_, _, file in directions if file is not None})
        if where == PRIOR and files:
            raise fail(f"{where_text}.direction", "the ideal model's prior takes 'concept' or 'random[:seed]'")
        if where != PRIOR:
            if any(kind_ == "concept" for kind_, _, _ in directions):
                raise fail(f"{where_text}.direction", "'concept' is the ideal model's prior tilt; for layers or "
                                                      "blocks name a direction file (interp/directions.py)")
            if len(files) != 1:
                raise fail(f"{where_text}.direction", "name exactly one direction file per entry (random "
                                                      "directions match its norms); use one entry per file")
        combos = list(itertools.product(grid["concept"], directions, grid["strength"], grid["from_step"]))
        if "id" in entry and len(combos) != 1:
            raise fail(f"{where_text}.id", "an explicit id names one intervention; drop it for a grid")
        for concept, (direction, seed, _), strength, from_step in combos:
            direction_file = files[0] if files else None
            identifier = entry.get("id") or default_id(concept, direction, seed, direction_file, where,
                                                       float(strength), mode, int(from_step), to_step, rows)
            if not isinstance(identifier, str) or not ID_PATTERN.match(identifier):
                raise fail(f"{where_text}.id", f"{identifier!r} must match [A-Za-z0-9_.+-]+")
            interventions.append(Intervention(
                id=identifier, concept=concept, direction=direction, where=where, strength=float(strength),
                mode=mode, from_step=int(from_step), to_step=None if to_step is None else int(to_step), rows=rows,
                seed=seed, kind=kind, direction_file=direction_file))
    seen: dict[str, Intervention] = {}
    for intervention in interventions:
        if intervention.id in seen:
            raise fail("interventions", f"id '{intervention.id}' is given twice — give distinct ids")
        seen[intervention.id] = intervention
    return InterventionSpec(path=path, sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                            interventions=tuple(interventions), prompts=None if prompts is None else tuple(prompts),
                            samples=samples, capture_steps=None if capture is None else tuple(sorted(set(capture))))


def _interchange_entry(entry: dict, fail, where_text: str) -> list[Intervention]:
    """The (component, layer) sites of one interchange entry, one Intervention each."""
    from data.concepts import BY_NAME

    unknown = sorted(set(entry) - INTERCHANGE_KEYS)
    if unknown:
        raise fail(f"{where_text}.{unknown[0]}", f"unknown key of an interchange (allowed: "
                                                 f"{', '.join(sorted(INTERCHANGE_KEYS))})")
    for key in ("concept_a", "concept_b", "op", "layers"):
        if key not in entry:
            raise fail(where_text, f"'{key}' is required for an interchange")
    for key in ("concept_a", "concept_b"):
        if not isinstance(entry[key], str) or entry[key] not in BY_NAME:
            raise fail(f"{where_text}.{key}", f"{entry[key]!r} is not a concept of data/concepts.py")
    op = entry["op"]
    if op not in INTERCHANGE_OPS:
        raise fail(f"{where_text}.op", f"{op!r} is not one of {', '.join(INTERCHANGE_OPS)}")
    components = entry.get("components", list(COMPONENTS))
    if (not isinstance(components, list) or not components or len(set(map(str, components))) != len(components)
            or not all(c in COMPONENTS for c in components)):
        raise fail(f"{where_text}.components", f"{components!r} must be a non-empty list of distinct names from "
                                               f"{', '.join(COMPONENTS)}")
    layers = entry["layers"]
    if (not isinstance(layers, list) or not layers or not all(_is_int(p) and p >= 1 for p in layers)
            or len(set(layers)) != len(layers)):
        raise fail(f"{where_text}.layers", f"{layers!r} must be a non-empty list of distinct decoder layers 1..L")
    name = entry.get("id", f"{entry['concept_a']}-{entry['concept_b']}")
    if not isinstance(name, str) or not ID_PATTERN.match(name):
        raise fail(f"{where_text}.id", f"{name!r} must match [A-Za-z0-9_.+-]+")
    return [Intervention(id=f"{name}-{op}-{component}-L{layer}", concept=entry["concept_b"], direction="interchange",
                         where=(int(layer),), strength=1.0, from_step=0, rows="both", kind="interchange",
                         concept_a=entry["concept_a"], component=component, op=op)
            for layer in sorted(layers) for component in components]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_direction(value, spec_path: Path, fail, where: str) -> tuple[str, int, str | None]:
    """('concept', 0, None), ('random', seed, None) or ('file', 0, absolute .npy path); a relative path is
    read from the spec's folder."""
    if not isinstance(value, str) or not value:
        raise fail(where, f"{value!r} must be 'concept', 'random[:seed]' or a direction file")
    if value == "concept":
        return "concept", 0, None
    if value == "random" or value.startswith("random:"):
        seed_text = value.partition(":")[2] or "0"
        if not seed_text.isdigit():
            raise fail(where, f"{value!r}: the seed after 'random:' must be a non-negative integer")
        return "random", int(seed_text), None
    file = Path(value).expanduser()
    file = file if file.is_absolute() else spec_path.parent / file
    if file.suffix != ".npy" or not file.is_file():
        raise fail(where, f"{value!r} is not 'concept', 'random[:seed]' or an existing direction .npy")
    return "file", 0, str(file.resolve())


def default_id(concept: str, direction: str, seed: int, direction_file: str | None, where, strength: float,
               mode: str, from_step: int, to_step: int | None, rows: str) -> str:
    """Readable and unique over everything that changes the audio."""
    if direction == "random":
        name = f"random{seed}"
    elif direction == "concept":
        name = "concept"
    else:
        name = Path(direction_file).stem
    place = "prior" if where == PRIOR else "L" + "-".join(str(p) for p in where)
    parts = [concept, name, place, f"s{strength:g}", f"k{from_step}"]
    if to_step is not None:
        parts.append(f"to{to_step}")
    if mode != "add":
        parts.append("norm")
    if rows != "conditional":
        parts.append(rows)
    return "_".join(parts).replace("/", "-")


def check_spec(spec: InterventionSpec, generator, run_samples: int, run_prompt_ids: Sequence[str],
               prompt_labels: dict | None = None) -> None:
    """What needs the model: positions exist, steps fall in the trajectory, prompts and samples are in the run;
    an interchange's concepts each have prompts among the run's (prompt_labels: prompt id -> labels)."""
    from data.concepts import BY_NAME

    sites = getattr(generator, "intervention_sites", None)
    if sites is None:
        raise InputError(f"{spec.path}: the {generator.name} generator takes no interventions — use ideal, "
                         "stable-audio-open or musicgen")
    target, positions = sites
    for intervention in spec.interventions:
        head = f"{spec.path}: intervention '{intervention.id}'"
        if intervention.kind == "interchange":
            if generator.name != "musicgen":
                raise InputError(f"{head}: interchange swaps MusicGen decoder components; the {generator.name} "
                                 f"generator has none — use --generator musicgen or steer instead")
            for concept in (intervention.concept_a, intervention.concept):
                if prompt_labels is not None and not any(BY_NAME[concept].prompt_has(labels)
                                                         for labels in prompt_labels.values()):
                    raise InputError(f"{head}: no prompt of the run carries '{concept}', so it has no mean "
                                     f"activation — annotate prompts with it or choose another concept")
            if prompt_labels is not None and spec.prompts is not None and not any(
                    BY_NAME[intervention.concept_a].prompt_has(prompt_labels[p]) for p in spec.prompts
                    if p in prompt_labels):
                raise InputError(f"{head}: none of the spec's prompts carries '{intervention.concept_a}', so the "
                                 f"interchange has nothing to generate — add some of its prompts to 'prompts'")
        if (intervention.where == PRIOR) != (target == PRIOR):
            raise InputError(f"{head}: where {intervention.record()['where']!r} — the {generator.name} generator "
                             f"intervenes on {target}" + ("" if target == PRIOR else f" {positions[0]}..{positions[-1]}")
                             + f" — {SPEC_FIX}")
        if target != PRIOR:
            outside = [p for p in intervention.where if p not in positions]
            if outside:
                raise InputError(f"{head}: {target} {outside[0]} does not exist (valid: {positions[0]}..{positions[-1]})"
                                 f" — {SPEC_FIX}")
        # The sampler's steps (a denoising backend); MusicGen counts generated frames, whose number depends on
        # --seconds, and says so with intervention_steps = None.
        steps = getattr(generator, "intervention_steps", getattr(generator, "steps", None))
        if steps is not None and intervention.from_step >= steps:
            raise InputError(f"{head}: from_step {intervention.from_step} is past the last step "
                             f"{steps - 1} — {SPEC_FIX}")
        if intervention.kind == "steer" and intervention.rows != "conditional" and \
                not getattr(generator, "has_unconditional_rows", False):
            raise InputError(f"{head}: rows '{intervention.rows}' — the {generator.name} generator runs no "
                             f"unconditional (CFG) rows — {SPEC_FIX}")
    if spec.samples is not None and spec.samples > run_samples:
        raise InputError(f"{spec.path}: samples {spec.samples} is more than the run's {run_samples} per prompt "
                         f"(the reference) — {SPEC_FIX}")
    positions = generator.axis.positions
    if spec.capture_steps is not None and not set(spec.capture_steps) <= set(positions):
        outside = sorted(set(spec.capture_steps) - set(positions))[0]
        raise InputError(f"{spec.path}: capture_steps {outside} is not a position of the trajectory "
                         f"({positions[0]}..{positions[-1]}) — {SPEC_FIX}")
    if spec.prompts is not None:
        missing = [p for p in spec.prompts if p not in set(run_prompt_ids)]
        if missing:
            raise InputError(f"{spec.path}: prompt '{missing[0]}' is not among the run's prompts — {SPEC_FIX}")


# -- the ideal model: tilting its concept prior ---------------------------------------------------------------------

def _concept_seed(concept: str, seed: int) -> list[int]:
    return [int(seed), zlib.crc32(concept.encode())]


def prior_direction(intervention: Intervention, clip_labels: Sequence[Sequence[str]]) -> np.ndarray:
    """The tilt d over the bank's clips: 1 on the clips whose labels carry the concept (the concept's prompt
    rule applied to the clip's labels), else 0. The random baseline marks as many clips chosen at random
    (same norm, no meaning)."""
    from data.concepts import BY_NAME

    concept = BY_NAME[intervention.concept]
    carries = np.array([concept.prompt_has(labels) for labels in clip_labels], dtype=np.float64)
    count = int(carries.sum())
    if count == 0:
        raise InputError(f"intervention '{intervention.id}': concept '{intervention.concept}' marks no clip of "
                         "the ideal generator's bank (bank clips carry family, drum and source labels) — steer a "
                         "family, source or higher concept")
    if count == len(carries):
        raise InputError(f"intervention '{intervention.id}': every bank clip carries '{intervention.concept}', "
                         "so tilting the prior towards it changes nothing — steer another concept")
    if not intervention.is_baseline:
        return carries
    rng = np.random.default_rng(_concept_seed(intervention.concept, intervention.seed))
    random = np.zeros(len(carries))
    random[rng.choice(len(carries), count, replace=False)] = 1.0
    return random


class PriorSteering:
    """log pi_i + s d_i (renormalised) at the steps where the intervention is active; the prompt's prior elsewhere."""

    def __init__(self, intervention: Intervention, clip_labels: Sequence[Sequence[str]]):
        self.intervention = intervention
        self.tilt = intervention.strength * prior_direction(intervention, clip_labels)
        self._tilted = None   # (the prompt's log prior, its tilted version): one per sampler call

    def log_prior(self, step: int, log_prior: np.ndarray) -> np.ndarray:
        if not self.intervention.active(step):
            return log_prior
        if self._tilted is None or self._tilted[0] is not log_prior:
            tilted = log_prior + self.tilt
            self._tilted = (log_prior, tilted - np.logaddexp.reduce(tilted))
        return self._tilted[1]


# -- activation steering: named forward hooks -----------------------------------------------------------------------

def load_direction(path) -> tuple[np.ndarray, dict]:
    """A direction file (interp/directions.py): float32 [positions, dim] or [steps, positions, dim] + .json."""
    from data.files import read_json

    path = Path(path)
    sidecar_path = path.with_suffix(".json")
    if not path.is_file() or not sidecar_path.is_file():
        raise InputError(f"{path}: missing (or its .json sidecar is) — write it with interp/directions.py")
    try:
        array = np.load(path, allow_pickle=False)
        sidecar = read_json(sidecar_path)
    except (ValueError, OSError) as error:
        raise InputError(f"{path}: unreadable ({str(error).splitlines()[0]}) — rewrite it with "
                         "interp/directions.py") from None
    positions = sidecar.get("positions")
    if array.ndim not in (2, 3) or not isinstance(positions, list) or array.shape[-2] != len(positions):
        raise InputError(f"{path}: expected [positions, dim] or [steps, positions, dim] with the sidecar's "
                         f"'positions' list, found {list(array.shape)} — rewrite it with interp/directions.py")
    steps = sidecar.get("steps")
    if array.ndim == 3 and (not isinstance(steps, list) or len(steps) != array.shape[0]):
        raise InputError(f"{path}: a per-step direction needs the sidecar's 'steps' list of {array.shape[0]} "
                         "steps — rewrite it with interp/directions.py")
    if not np.isfinite(array).all():
        raise InputError(f"{path}: holds NaN or infinite values — recompute the direction")
    return array.astype(np.float32), sidecar


def random_like(direction: np.ndarray, concept: str, seed: int) -> np.ndarray:
    """Gaussian directions with the norm of `direction` at every (step,) position: the matched-norm baseline."""
    rng = np.random.default_rng(_concept_seed(concept, seed))
    random = rng.standard_normal(direction.shape)
    norms = np.linalg.norm(direction, axis=-1, keepdims=True)
    random *= norms / np.maximum(np.linalg.norm(random, axis=-1, keepdims=True), 1e-30)
    return random.astype(np.float32)


@dataclass
class SteeringVectors:
    """position -> vector [dim], or (for per-step files) position -> {step: vector}; the nearest earlier recorded
    step's vector serves the steps in between."""
    by_position: dict[int, np.ndarray]
    steps: tuple[int, ...] | None = None

    def at(self, position: int, step: int) -> np.ndarray:
        vectors = self.by_position[position]
        if self.steps is None:
            return vectors
        index = max(0, int(np.searchsorted(self.steps, step, side="right")) - 1)
        return vectors[index]


def steering_vectors(intervention: Intervention, dim: int) -> SteeringVectors:
    """The vectors an activation intervention adds, for its positions (checked against the file's)."""
    array, sidecar = load_direction(intervention.direction_file)
    if array.shape[-1] != dim:
        raise InputError(f"{intervention.direction_file}: direction dim {array.shape[-1]} but the model's width is "
                         f"{dim} — compute the direction on this model")
    positions = [int(p) for p in sidecar["positions"]]
    missing = [p for p in intervention.where if p not in positions]
    if missing:
        raise InputError(f"{intervention.direction_file}: has no direction for position {missing[0]} "
                         f"(it has {positions}) — steer those positions or recompute the direction")
    if intervention.is_baseline:
        array = random_like(array, intervention.concept, intervention.seed)
    steps = None if array.ndim == 2 else tuple(int(s) for s in sidecar["steps"])
    by_position = {p: (array[positions.index(p)] if array.ndim == 2 else array[:, positions.index(p)])
                   for p in intervention.where}
    return SteeringVectors(by_position, steps)


def steer(hidden, vector, strength: float, mode: str):
    """One steering update of activations [..., dim] with a vector [dim] (torch tensors)."""
    if mode == "add":
        return hidden + strength * vector
    unit = vector / vector.norm().clamp_min(1e-30)
    return (hidden + strength * hidden.norm(dim=-1, keepdim=True) * unit) / (1.0 + strength)


def cfg_rows(batch: int, samples: int, which: str, layout: str) -> slice:
    """Rows of a batch that are conditional / unconditional. Without CFG (batch == samples) every row is
    conditional. layout: 'uncond_first' (diffusers: [uncond x B, cond x B]) or 'cond_first' (MusicGen)."""
    if which == "both" or batch == samples:
        return slice(0, batch) if which != "unconditional" else slice(0, 0)
    if batch != 2 * samples:
        raise RuntimeError(f"a batch of {batch} rows for {samples} samples is neither plain nor CFG-doubled")
    first, second = slice(0, samples), slice(samples, batch)
    conditional_first = layout == "cond_first"
    if which == "conditional":
        return first if conditional_first else second
    return second if conditional_first else first


class HookSet(contextlib.AbstractContextManager):
    """TransformerLens-style named hooks: `add(name, module, fn)` registers a forward hook; leaving the `with`
    block (or `remove()`) takes every one of them off, also when the run fails."""

    def __init__(self):
        self.handles: dict[str, object] = {}

    def add(self, name: str, module, hook: Callable) -> None:
        if name in self.handles:
            raise ValueError(f"hook {name!r} is registered twice")
        self.handles[name] = module.register_forward_hook(hook)

    def add_pre(self, name: str, module, hook: Callable) -> None:
        """A forward pre-hook that sees the call's keyword arguments (hook(module, args, kwargs))."""
        if name in self.handles:
            raise ValueError(f"hook {name!r} is registered twice")
        self.handles[name] = module.register_forward_pre_hook(hook, with_kwargs=True)

    def remove(self) -> None:
        for handle in self.handles.values():
            handle.remove()
        self.handles.clear()

    def __exit__(self, *exc_info):
        self.remove()
        return False


def steering_hook(intervention: Intervention, vectors: SteeringVectors, position: int, step_of: Callable[[], int],
                  rows_of: Callable[[int], slice]) -> Callable:
    """A forward hook that steers one module's output on the rows and steps the intervention asks for.

    The output may be a tensor (a transformers 5.x decoder layer, a diffusers DiT block) or a tuple whose first
    item is the hidden states (older transformers); both are handled, unlike the published code that indexed
    output[0] of a tensor.
    """
    import torch

    cache: dict = {}

    def hook(module, inputs, output):
        step = int(step_of())
        if not intervention.active(step):
            return None
        hidden = output if isinstance(output, torch.Tensor) else output[0]
        rows = rows_of(hidden.shape[0])
        if rows.stop <= rows.start:
            return None
        key = (step if vectors.steps is not None else None, hidden.dtype, hidden.device)
        if key not in cache:
            cache.clear()
            cache[key] = torch.as_tensor(vectors.at(position, step)).to(device=hidden.device, dtype=hidden.dtype)
        steered = hidden.clone()
        steered[rows] = steer(hidden[rows], cache[key], intervention.strength, intervention.mode)
        return steered if isinstance(output, torch.Tensor) else (steered, *output[1:])

    return hook


# -- Stable Audio: DiT blocks, step from the scheduler ---------------------------------------------------------------

def stable_audio_sites(transformer) -> tuple[str, list[int]]:
    return "blocks", list(range(len(transformer.transformer_blocks)))


def stable_audio_hooks(pipeline, intervention: Intervention | None, samples: int) -> HookSet:
    """Hooks steering `pipeline.transformer`'s DiT blocks (block b = transformer_blocks[b]'s output).

    The step is the scheduler's own step_index (None before its first step() = step 0), read when the block
    runs: the pipeline calls the transformer once per step with [uncond x B, cond x B] rows.
    """
    hooks = HookSet()
    if intervention is None or intervention.strength == 0:
        return hooks
    transformer = pipeline.transformer
    dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    vectors = steering_vectors(intervention, dim)
    scheduler = pipeline.scheduler

    def step_of() -> int:
        return 0 if scheduler.step_index is None else int(scheduler.step_index)

    def rows_of(batch: int) -> slice:
        return cfg_rows(batch, samples, intervention.rows, "uncond_first")

    for block in intervention.where:
        hooks.add(f"blocks.{block}.steer", transformer.transformer_blocks[block],
                  steering_hook(intervention, vectors, block, step_of, rows_of))
    return hooks


def identity_sha256(intervention: Intervention) -> dict:
    """Hash of a direction file (so a changed file is a changed intervention)."""
    if intervention.direction_file is None:
        return {}
    from data.files import sha256_file

    path = Path(intervention.direction_file)
    return {"direction_sha256": sha256_file(path), "direction_sidecar_sha256": sha256_file(path.with_suffix(".json"))}


# -- MusicGen: decoder layers, step = the generated position from the KV cache -------------------------------------

class GenerationPosition:
    """Where a MusicGen decoder forward sits in the audio-code sequence: read from its KV cache before the forward,
    never from counting calls (generate() runs the prefill twice, and a call count would be off by one from then
    on — the published steering code's bug). Melody models prepend their conditioning to the decoder input; the
    last `count` positions of a forward are the audio positions first .. first + count - 1."""

    def __init__(self):
        self.first, self.count, self._next = 0, 0, 0

    def before_decoder(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        cached = cache.get_seq_length() if cache is not None else 0
        if cached == 0:   # a prefill: the sequence starts again
            self._next = 0
        self.first, self.count = self._next, int(input_ids.shape[-1])
        self._next += self.count


def musicgen_layer_hook(intervention: Intervention, vectors: SteeringVectors, layer: int, position: GenerationPosition,
                        rows_of: Callable[[int], slice]) -> Callable:
    """Steer decoder layer `layer`'s output (1-based: the output of block layer - 1) at the generated positions
    where the intervention is active, on the asked rows of the [cond x B, uncond x B] batch.

    A 5.x decoder layer returns a tensor (the published hook indexed output[0] of it, i.e. the first batch row)."""
    import torch

    def hook(module, inputs, output):
        hidden = output if isinstance(output, torch.Tensor) else output[0]
        columns = [j for j in range(position.count) if intervention.active(position.first + j)]
        rows = rows_of(hidden.shape[0])
        if not columns or rows.stop <= rows.start:
            return None
        offset = hidden.shape[1] - position.count
        steered = hidden.clone()
        for j in columns:
            vector = torch.as_tensor(vectors.at(layer, position.first + j)).to(device=hidden.device,
                                                                               dtype=hidden.dtype)
            steered[rows, offset + j] = steer(hidden[rows, offset + j], vector, intervention.strength,
                                              intervention.mode)
        return steered if isinstance(output, torch.Tensor) else (steered, *output[1:])

    return hook


def musicgen_sites(decoder) -> tuple[str, list[int]]:
    return "layers", list(range(1, len(decoder.layers) + 1))


def musicgen_hooks(decoder, intervention: Intervention | None, samples: int) -> HookSet:
    """Hooks steering MusicGen decoder layers; the direction of layer l steers layer l (the published code took
    the probe of one layer and steered another)."""
    hooks = HookSet()
    if intervention is None or intervention.strength == 0:
        return hooks
    if intervention.kind != "steer":
        raise ValueError(f"{intervention.id}: an interchange runs batched through InterchangeBatch, not as steering")
    vectors = steering_vectors(intervention, int(decoder.config.hidden_size) if hasattr(decoder, "config")
                               else decoder.layers[0].self_attn.out_proj.out_features)
    position = GenerationPosition()
    hooks.add_pre("decoder.position", decoder, position.before_decoder)

    def rows_of(batch: int) -> slice:
        return cfg_rows(batch, samples, intervention.rows, "cond_first")

    for layer in intervention.where:
        hooks.add(f"blocks.{layer - 1}.hook_resid_post.steer", decoder.layers[layer - 1],
                  musicgen_layer_hook(intervention, vectors, layer, position, rows_of))
    return hooks


# -- MusicGen interchange interventions (Vélez Vásquez et al., ISMIR 2024) ------------------------------------------

# The three components whose output an interchange replaces, per decoder layer (all nn.Linear in transformers).
COMPONENTS = {
    "self_attn": lambda layer: layer.self_attn.out_proj,
    "cross_attn": lambda layer: layer.encoder_attn.out_proj,
    "mlp": lambda layer: layer.fc2,
}
BRANCHES = ("cond", "uncond")
INTERCHANGE_OPS = ("replace", "adjust")


class ComponentMeans(contextlib.AbstractContextManager):
    """Mean output of every (component, layer) per generated position over the rows of every generate() run inside
    the `with` block, the conditional and unconditional rows of the [cond x B, uncond x B] batch kept apart.

    `means()` -> float32 [components, layers, positions, branches, dim] (layers 1..L in order; positions from 0 to
    the shortest run's last). The published iterator hooked the last layer only; here every layer is hooked.
    """

    def __init__(self, decoder, samples: int):
        self.decoder, self.samples = decoder, samples
        self.sums: dict[tuple, "object"] = {}
        self.counts: dict[tuple, int] = {}
        self.position = GenerationPosition()
        self.hooks = HookSet()
        self.hooks.add_pre("decoder.position", decoder, self.position.before_decoder)
        for c, (name, module_of) in enumerate(COMPONENTS.items()):
            for index, layer in enumerate(decoder.layers):
                self.hooks.add(f"blocks.{index}.{name}.record", module_of(layer), self._hook(c, index))

    def _hook(self, component: int, index: int):
        def hook(module, inputs, output):
            batch = output.shape[0]
            halves = [(0, slice(0, batch))] if batch == self.samples else \
                [(0, slice(0, self.samples)), (1, slice(self.samples, batch))]
            offset = output.shape[1] - self.position.count
            for branch, rows in halves:
                summed = output[rows, offset:].detach().double().sum(dim=0)
                for j in range(self.position.count):
                    key = (component, index, self.position.first + j, branch)
                    self.sums[key] = summed[j] + self.sums[key] if key in self.sums else summed[j].clone()
                    self.counts[key] = self.counts.get(key, 0) + (rows.stop - rows.start)
        return hook

    def __exit__(self, *exc_info):
        self.hooks.remove()
        return False

    def means(self) -> np.ndarray:
        import torch

        last: dict[tuple, int] = {}
        for (c, i, p, b) in self.sums:
            last[(c, i, b)] = max(last.get((c, i, b), -1), p)
        positions = 1 + min(last.values())
        branches = 1 + max(b for (_, _, _, b) in self.sums)
        layers = len(self.decoder.layers)
        out = torch.stack([torch.stack([torch.stack([torch.stack([
            self.sums[(c, i, p, b)] / self.counts[(c, i, p, b)] for b in range(branches)])
            for p in range(positions)]) for i in range(layers)]) for c in range(len(COMPONENTS))])
        return out.float().cpu().numpy()


def interchange_hooks(decoder, means_a: np.ndarray, means_b: np.ndarray, assignments: Sequence, op: str) -> HookSet:
    """One (component, layer) per sample row: row r of the batch (and its unconditional twin B + r) gets
    assignments[r] = (component name, layer 1..L) or None (left alone). "replace": that component's output
    becomes B's mean at the same generated position and branch; "adjust": it is shifted by mean_B - mean_A.
    Positions past the recorded means are left alone."""
    import torch

    if op not in INTERCHANGE_OPS:
        raise ValueError(f"interchange op {op!r} is not one of {INTERCHANGE_OPS}")
    samples = len(assignments)
    names = list(COMPONENTS)
    position = GenerationPosition()
    hooks = HookSet()
    hooks.add_pre("decoder.position", decoder, position.before_decoder)
    target = torch.as_tensor(means_b if op == "replace" else means_b - means_a)
    by_site: dict[tuple[int, int], list[int]] = {}
    for row, assignment in enumerate(assignments):
        if assignment is not None:
            component, layer = assignment
            if component not in COMPONENTS or not 1 <= layer <= len(decoder.layers):
                raise ValueError(f"row {row}: {assignment} is not (one of {names}, layer 1..{len(decoder.layers)})")
            by_site.setdefault((names.index(component), layer - 1), []).append(row)

    def hook_for(component: int, index: int, rows: list[int]):
        def hook(module, inputs, output):
            batch = output.shape[0]
            branches = [(0, rows)] + ([(1, [samples + r for r in rows])] if batch == 2 * samples else [])
            offset = output.shape[1] - position.count
            changed = output.clone()
            for j in range(position.count):
                p = position.first + j
                if p >= target.shape[2]:
                    continue
                for branch, branch_rows in branches:
                    value = target[component, index, p, branch].to(device=output.device, dtype=output.dtype)
                    picked = torch.tensor(branch_rows, device=output.device)
                    changed[picked, offset + j] = value if op == "replace" else changed[picked, offset + j] + value
            return changed
        return hook

    for (component, index), rows in by_site.items():
        hooks.add(f"blocks.{index}.{names[component]}.interchange", COMPONENTS[names[component]](decoder.layers[index]),
                  hook_for(component, index, rows))
    return hooks


def every_site(layers: int) -> list[tuple[str, int]]:
    """The 3 x L (component, layer) pairs of one batched interchange generation."""
    return [(name, layer) for layer in range(1, layers + 1) for name in COMPONENTS]


# -- where intervened runs live (written by diffusion/intervened_runs.py, read by stage 6 --compare) ----------------

INTERVENTIONS_DIR = "interventions"
INTERVENTION_JSON = "intervention.json"


def read_intervention_records(generated: Path) -> dict[str, dict]:
    """id -> Intervention.record() of every intervened run under generated/interventions/."""
    from data.contract import read_sidecar
    from data.files import sha256_json

    root = Path(generated) / INTERVENTIONS_DIR
    generation = read_sidecar(Path(generated) / "generation.json", "run stage 2 first", "rerun stage 2 with --force")
    records = {}
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if (folder / "index").is_dir():
            sidecar = read_sidecar(folder / INTERVENTION_JSON, "rerun stage 2 with --intervene",
                                   "rerun stage 2 with --intervene --force")
            # Pairs are only pairs if both runs came from the same generator settings and seeds.
            if sidecar.get("generation_sha256") != sha256_json(generation):
                raise InputError(f"{folder / INTERVENTION_JSON}: made beside another reference run (generation.json "
                                 "changed since) — rerun stage 2 with --intervene <spec> --force, or delete "
                                 f"{folder}")
            records[folder.name] = sidecar["intervention"]
    return records
