"""The intervention spec file: one format for every backend, read into `Steering` and `Interchange` records.

A spec (JSON, or YAML when pyyaml is installed) lists interventions; list-valued fields of a steering entry expand
as a grid, so "3 concepts x 3 start steps x {concept, 2 random}" is one entry:

    {"format": 2,
     "prompts": ["p003", "p017"],      # optional: prompt ids to intervene on (default: every prompt of the run)
     "samples": 1,                      # optional: the first N samples of each prompt (paired by seed with the run)
     "capture_steps": [49],             # optional: trajectory positions to save (default: the run's)
     "interventions": [
       {"concept": ["is_brass", "is_string"],     # target concept (data/concepts.py): what the scoring reads
        "direction": ["concept", "random:0", "random:1"],
        "where": "prior",                         # ideal: its concept prior; else 0-based blocks, e.g. [0, 5]
        "strength": 8.0, "mode": "add",           # add: h + s v;  norm_relative: (h + s |h| v/|v|) / (1 + s)
        "from_step": [5, 25, 45], "to_step": null, # ticks [from_step, to_step) of the generator's intervention clock
        "every": 1,                               # optional: only ticks from_step + k * every (default 1: all)
        "rows": "conditional"},                   # conditional | unconditional | both (CFG batches)
       {"concept": "is_brass", "direction": "dirs/is_brass.npy", "where": [6], "from_step": 0,
        "preset": "published"},                   # the published steering: norm_relative, every 25, strength 0.5
       {"kind": "interchange",                    # generators that support it (MusicGen)
        "concept_a": "is_brass", "concept_b": "is_keyboard",
        "op": "replace",                          # replace: output <- mean_B;  adjust: output + mean_B - mean_A
        "components": ["self_attn", "cross_attn", "mlp"],   # optional (default: all three)
        "blocks": [0, 1, 2, 3],                   # 0-based blocks whose components are swapped
        "rows": "conditional",                    # optional: conditional (as published) or both CFG rows
        "id": "brass-keys"}]}                     # optional name (default: <concept_a>-<concept_b>)

Format 2 names blocks 0-based everywhere, as the hook points do (`blocks.{b}.hook_resid_post`); format 1 named
MusicGen decoder layers 1-based and is refused with the conversion. An interchange entry is one intervention per
(component, block) site, id <name>-<op>-<component>-B<block>, each generating concept A's prompts.

Directions: "concept" is the backend's own direction for the concept (the ideal model's prior tilt towards the bank
clips that carry it); a path names a direction file (data/directions.py, relative paths from the spec's folder);
"random" / "random:<seed>" is the baseline drawn with the norm of the entry's direction (per block). An
intervention's id names it in the index, the audio folder and every table; the unintervened run is the reference.
"""
from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from data.concepts import BY_NAME
from data.files import read_json, read_yaml
from data.identifiers import name_problem
from data.stage import InputError
from diffusion.interventions.hooks import COMPONENTS, blocks_of
from diffusion.interventions.records import (INTERCHANGE_OPS, INTERCHANGE_ROWS, MODES, PRIOR, ROWS, Interchange,
                                             Intervention, Site, Steering)
from diffusion.interventions.steering import steering_direction

SPEC_FORMAT = 2
SPEC_KEYS = {"format", "prompts", "samples", "capture_steps", "interventions"}
STEER_KEYS = {"id", "kind", "concept", "direction", "where", "strength", "mode", "from_step", "to_step", "rows",
              "every", "preset"}
# The published steering code (Panda et al. 2025, "MusicGen Interpretation"): the norm-relative update on the
# conditional row every 25th generated position, strength 0.5 by default (their experiments: 0.3-0.7). Keys an entry
# gives itself win over the preset's.
PRESETS = {"published": {"mode": "norm_relative", "every": 25, "strength": 0.5, "rows": "conditional"}}
GRID_KEYS = ("concept", "direction", "strength", "from_step")
INTERCHANGE_KEYS = {"id", "kind", "concept_a", "concept_b", "op", "components", "blocks", "rows"}
SPEC_FIX = "fix the spec (format: diffusion/interventions/spec.py, data/ARTIFACTS.md)"
FORMAT_1 = ('format 1 (or no "format") is no longer read: it named MusicGen decoder layers 1-based (layer l = '
            'block l - 1); format 2 names 0-based blocks everywhere — set "format": 2, subtract 1 from a MusicGen '
            "entry's where, and rename an interchange's layers to blocks, each minus 1 (prior and Stable Audio "
            "blocks stay as they are)")


@dataclass(frozen=True)
class InterventionSpec:
    path: Path
    sha256: str
    interventions: tuple[Intervention, ...]
    prompts: tuple[str, ...] | None = None
    samples: int | None = None
    capture_steps: tuple[int, ...] | None = None


def read_spec_file(path) -> dict:
    """The spec file parsed by the project's one JSON loader (or its YAML twin, data/files.py): a key given twice in
    one object, text that is not UTF-8 and nesting too deep are one-line errors like any other."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such intervention spec — pass a JSON (or YAML) file, format in "
                         "diffusion/interventions/spec.py")
    yaml_file = path.suffix.lower() in (".yaml", ".yml")
    try:
        payload = read_yaml(path) if yaml_file else read_json(path)
    except ImportError:
        raise InputError(f"{path}: reading YAML needs pyyaml (pip install pyyaml) — or write the spec as "
                         "JSON") from None
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}) — {SPEC_FIX}") from None
    except ValueError as error:
        kind = "YAML" if yaml_file else "JSON"
        raise InputError(f"{path}: not a valid {kind} spec ({' '.join(str(error).split())}) — {SPEC_FIX}") from None
    if not isinstance(payload, dict):
        raise InputError(f"{path}: the spec must be an object with an 'interventions' list — {SPEC_FIX}")
    return payload


def load_spec(path) -> InterventionSpec:
    """Read and validate a spec without a model: names, types, ranges that need no backend (see check_spec)."""
    path = Path(path).expanduser().resolve()
    payload = read_spec_file(path)

    def fail(where: str, rule: str) -> InputError:
        return InputError(f"{path}: {where}: {rule} — {SPEC_FIX}")

    if payload.get("format") in (None, 1):
        raise InputError(f"{path}: {FORMAT_1}")
    if payload["format"] != SPEC_FORMAT:
        raise fail("format", f"{payload['format']!r} is not a known spec format (this version reads {SPEC_FORMAT})")
    unknown = sorted(set(payload) - SPEC_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key (allowed: {', '.join(sorted(SPEC_KEYS))})")
    prompts = payload.get("prompts")
    if prompts is not None and (not isinstance(prompts, list) or not prompts):
        raise fail("prompts", "must be a non-empty list of prompt ids")
    for position, prompt_id in enumerate(prompts or []):
        if name_problem(prompt_id, "prompt_id"):
            raise fail("prompts", name_problem(prompt_id, "prompt_id"))
        if prompt_id in prompts[:position]:
            raise fail("prompts", f"{prompt_id!r} is given twice — name each prompt once")
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
        kind = entry.get("kind", Steering.kind)
        if kind == Interchange.kind:
            interventions.extend(interchange_entry(entry, fail, where_text))
        elif kind == Steering.kind:
            interventions.extend(steering_entry(entry, path, fail, where_text))
        else:
            raise fail(f"{where_text}.kind", f"{kind!r} is not one of {Steering.kind}, {Interchange.kind}")
    seen: set[str] = set()
    for intervention in interventions:
        if intervention.id in seen:
            raise fail("interventions", f"id '{intervention.id}' is given twice — give distinct ids")
        seen.add(intervention.id)
    return InterventionSpec(path=path, sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                            interventions=tuple(interventions), prompts=None if prompts is None else tuple(prompts),
                            samples=samples, capture_steps=None if capture is None else tuple(sorted(set(capture))))


def steering_entry(entry: dict, path: Path, fail, where_text: str) -> list[Steering]:
    """The grid of one steering entry, one Steering per (concept, direction, strength, start step)."""
    unknown = sorted(set(entry) - STEER_KEYS)
    if unknown:
        raise fail(f"{where_text}.{unknown[0]}", f"unknown key (allowed: {', '.join(sorted(STEER_KEYS))})")
    if "preset" in entry:
        if entry["preset"] not in PRESETS:
            raise fail(f"{where_text}.preset", f"{entry['preset']!r} is not one of {', '.join(PRESETS)}")
        entry = {**PRESETS[entry["preset"]], **entry}
    for key in ("concept", "direction", "where", "strength", "from_step"):
        if key not in entry:
            raise fail(where_text, f"'{key}' is required")
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
    elif (isinstance(where, list) and where and all(_is_int(b) and b >= 0 for b in where)
          and len(set(where)) == len(where)):
        where = tuple(sorted(int(b) for b in where))
    else:
        raise fail(f"{where_text}.where", f"{where!r} must be 'prior' or a list of distinct 0-based block indices")
    to_step = entry.get("to_step")
    if to_step is not None and (not _is_int(to_step) or to_step < 1):
        raise fail(f"{where_text}.to_step", f"{to_step!r} must be a positive step number or null")
    every = entry.get("every", 1)
    if not _is_int(every) or every < 1:
        raise fail(f"{where_text}.every", f"{every!r} must be a positive number of ticks (1: every tick)")
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
    directions = [parse_direction(value, path, fail, f"{where_text}.direction") for value in grid["direction"]]
    files = sorted({file for _, _, file in directions if file is not None})
    if where == PRIOR and files:
        raise fail(f"{where_text}.direction", "the ideal model's prior takes 'concept' or 'random[:seed]'")
    if where != PRIOR:
        if any(direction == "concept" for direction, _, _ in directions):
            raise fail(f"{where_text}.direction", "'concept' is the ideal model's prior tilt; for blocks name a "
                                                  "direction file (data/directions.py)")
        if len(files) != 1:
            raise fail(f"{where_text}.direction", "name exactly one direction file per entry (random directions "
                                                  "match its norms); use one entry per file")
    combos = list(itertools.product(grid["concept"], directions, grid["strength"], grid["from_step"]))
    if "id" in entry and len(combos) != 1:
        raise fail(f"{where_text}.id", "an explicit id names one intervention; drop it for a grid")
    steerings = []
    for concept, (direction, seed, _), strength, from_step in combos:
        site = Site(where, int(from_step), None if to_step is None else int(to_step), int(every))
        steering = Steering("", concept, direction, site, float(strength), mode, rows, seed,
                            files[0] if files else None)
        identifier = entry["id"] if "id" in entry else default_id(steering)
        check_id(identifier, fail, f"{where_text}.id" if "id" in entry else where_text)
        steerings.append(replace(steering, id=identifier))
    return steerings


def interchange_entry(entry: dict, fail, where_text: str) -> list[Interchange]:
    """The (component, block) sites of one interchange entry, one Interchange each."""
    unknown = sorted(set(entry) - INTERCHANGE_KEYS)
    if unknown:
        hint = " (format 2 names 0-based 'blocks')" if unknown[0] == "layers" else ""
        raise fail(f"{where_text}.{unknown[0]}", f"unknown key of an interchange{hint} (allowed: "
                                                 f"{', '.join(sorted(INTERCHANGE_KEYS))})")
    for key in ("concept_a", "concept_b", "op", "blocks"):
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
    blocks = entry["blocks"]
    if (not isinstance(blocks, list) or not blocks or not all(_is_int(b) and b >= 0 for b in blocks)
            or len(set(blocks)) != len(blocks)):
        raise fail(f"{where_text}.blocks", f"{blocks!r} must be a non-empty list of distinct 0-based block indices")
    rows = entry.get("rows", "conditional")
    if rows not in INTERCHANGE_ROWS:
        raise fail(f"{where_text}.rows", f"{rows!r} is not one of {', '.join(INTERCHANGE_ROWS)} (the conditional "
                                         "row, as published, or both CFG rows)")
    name = entry.get("id", f"{entry['concept_a']}-{entry['concept_b']}")
    check_id(name, fail, f"{where_text}.id")
    suffix = "" if rows == "conditional" else f"-{rows}"
    sites = [Interchange(f"{name}-{op}-{component}-B{block}{suffix}", entry["concept_b"], entry["concept_a"], op,
                         component, Site((int(block),)), rows)
             for block in sorted(blocks) for component in components]
    for site in sites:
        check_id(site.id, fail, f"{where_text}.id")
    return sites


def check_id(identifier, fail, where: str) -> None:
    """An intervention id names its run's folder, generated/interventions/<id>/ (data/identifiers.py's rule)."""
    problem = name_problem(identifier, "intervention id")
    if problem:
        raise fail(where, f"{problem} (it names the run's folder; a grid's default id is "
                          "<concept>_<direction>_<where>_s<strength>_k<from_step>)")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_direction(value, spec_path: Path, fail, where: str) -> tuple[str, int, str | None]:
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


def default_id(steering: Steering) -> str:
    """Readable and unique over everything that changes the audio."""
    if steering.direction == "random":
        name = f"random{steering.seed}"
    elif steering.direction == "concept":
        name = "concept"
    else:
        name = Path(steering.direction_file).stem
    where = steering.site.where
    place = PRIOR if where == PRIOR else "B" + "-".join(str(b) for b in where)
    parts = [steering.concept, name, place, f"s{steering.strength:g}", f"k{steering.site.from_step}"]
    if steering.site.to_step is not None:
        parts.append(f"to{steering.site.to_step}")
    if steering.site.every != 1:
        parts.append(f"every{steering.site.every}")
    if steering.mode != "add":
        parts.append("norm")
    if steering.rows != "conditional":
        parts.append(steering.rows)
    return "_".join(parts).replace("/", "-")


def check_spec(spec: InterventionSpec, generator, seconds: float, run_samples: int, run_prompt_ids: Sequence[str],
               prompt_labels: dict | None = None) -> None:
    """What needs the model (its declared capabilities, diffusion/base.py): sites exist, steps fall on the clock of
    a `seconds`-long clip, rows exist, direction files cover the steered blocks, prompts and samples are in the
    run; an interchange's concepts each have prompts among the run's (prompt_labels: prompt id -> labels)."""
    site = generator.intervention_site
    if site is None:
        raise InputError(f"{spec.path}: the {generator.name} generator takes no interventions — use one that "
                         "declares an intervention site (ideal, stable-audio-open, musicgen)")
    blocks = blocks_of(generator.hook_points()) if site != PRIOR else []
    ticks = generator.clock_ticks(seconds)
    clock = generator.intervention_clock.replace("_", " ")
    for intervention in spec.interventions:
        head = f"{spec.path}: intervention '{intervention.id}'"
        if isinstance(intervention, Interchange):
            if not generator.supports_interchange:
                raise InputError(f"{head}: interchange swaps the output of block components ({', '.join(COMPONENTS)}"
                                 f"); the {generator.name} generator supports none — use --generator musicgen or "
                                 "steer instead")
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
        where = intervention.site.where
        if (where == PRIOR) != (site == PRIOR):
            valid = "its prior" if site == PRIOR else f"blocks {blocks[0]}..{blocks[-1]}" if blocks else "no blocks"
            raise InputError(f"{head}: where {intervention.site.record()['where']!r} — the {generator.name} "
                             f"generator intervenes on {valid} — {SPEC_FIX}")
        if site != PRIOR:
            outside = [b for b in where if b not in blocks]
            if outside:
                valid = f"{blocks[0]}..{blocks[-1]}, 0-based" if blocks else "the generator names none"
                raise InputError(f"{head}: block {outside[0]} does not exist (valid: {valid}) — {SPEC_FIX}")
        if intervention.site.from_step >= ticks:
            raise InputError(f"{head}: from_step {intervention.site.from_step} is past the last {clock} "
                             f"{ticks - 1} of a {seconds:g} s clip — {SPEC_FIX}")
        if intervention.site.to_step is not None and intervention.site.to_step > ticks:
            raise InputError(f"{head}: to_step {intervention.site.to_step} is past the end of a {seconds:g} s clip "
                             f"({ticks} {clock}s: to_step at most {ticks}, or null for the end) — {SPEC_FIX}")
        if isinstance(intervention, Steering):
            if intervention.rows != "conditional" and not generator.has_unconditional_rows:
                raise InputError(f"{head}: rows '{intervention.rows}' — the {generator.name} generator runs no "
                                 f"unconditional (CFG) rows — {SPEC_FIX}")
            if intervention.direction_file is not None:
                direction = steering_direction(intervention)
                width = generator.block_width()
                if width is not None and direction.dim != width:
                    raise InputError(f"{intervention.direction_file}: direction dim {direction.dim} but the "
                                     f"{generator.name} generator's blocks are {width} wide — compute the direction "
                                     "on this model")
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
