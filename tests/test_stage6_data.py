"""Synthetic stage 1-5 artifacts with known answers for the stage-6 tests, notebook test and benchmark.

Every vocabulary term has a random direction in a `dim`-dimensional embedding space. An NSynth note's
embedding is noise plus its family, source and qualities' directions, so stage 4's real concept rules
(data/concepts.py) define learnable sets. A generated clip's embedding is its trajectory's noise, shrinking
towards the final step, plus — only for the terms in `inject` and only from the given step on — the
directions of its prompt's labels. So a concept built on an injected term emerges exactly at that step and
every other concept's probe sees no signal in the clips.

Realised content (generated/content/, the second yardstick): a prompt label's mass grows from 0.7 to 1 at the
final step (from `committed_from` on it stays at 1: the generator has committed); other labels have mass 0.
With `unrealised` > 0 that fraction of prompts does not realise the injected terms: their clips carry no
direction, and their content gives those terms mass 0. So against the realised content an injected concept is
read perfectly, against the prompts only as well as the prompts were followed.

Truth (generated/truth/ and truth_tables/, `truth=True`; data/truth.py): at every position of the axis, each
trajectory's content and, per concept a clip's labels can realise, a probability that the finished clip carries
it: the final answer blended with noise, the answer's share rising linearly over PLANTED_RAMP steps from the
concept's planted start (`planted`, default PLANTED_DEFAULT; 1 at the final step). The truth tables derive the
planted emergence step from it as they do for the ideal model.
"""
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from stage_runs import stamp_parts

from data.concepts import BY_NAME, CONCEPTS, INSTRUMENT_GROUPS
from data.contract import read_generated_index, read_notes, table_sha256
from data.files import write_csv, write_json, write_npy, write_text
from data.realised_content import content_part_path, format_content_part
from data.soundfont import GM_PROGRAMS
from data.truth import content_concepts, format_truth_part, truth_part_path, write_truth_tables
from data.vocabulary import FAMILIES, QUALITIES, SOURCES, VOCABULARY, format_labels
from interp.nsynth import note_of

# Stage 6 finds embedding files by the stem of --embedder/--model (embeddings.embedding_stem): the synthetic
# vectors are filed under the spectral embedder's stem; the sidecar's model says what they are.
EMBEDDER = "spectral"
IDENTITY = {"embedder": EMBEDDER, "model": "synthetic-gaussian-directions", "checkpoint_sha256": "0" * 64,
            "window_policy": "whole clip", "dim": None}


def term_directions(dim: int, seed: int) -> dict[str, np.ndarray]:
    """The unit direction of every vocabulary term (what a text tower would map the term to)."""
    directions = np.random.default_rng([seed, 7]).standard_normal((len(VOCABULARY), dim))
    return dict(zip(VOCABULARY, directions / np.linalg.norm(directions, axis=1, keepdims=True)))


def _program(family: str, source: str) -> int | None:
    """A GM program of this family and source, one an instrument group holds where there is one."""
    programs = [entry.program for entry in GM_PROGRAMS if (entry.family, entry.source) == (family, source)]
    grouped = [program for group in INSTRUMENT_GROUPS for program in programs if program in group.programs]
    return (grouped or programs or [None])[0]


# Drum kits heard only in mixes, an acoustic and an electronic one per side (GM_KITS numbers).
PLANTED_RAMP = 25
PLANTED_DEFAULT = 60
_KITS = {"train": (("drum_256", 0), ("drum_281", 25)), "test": (("drum_296", 40), ("drum_280", 24))}


def _mixes(note_rows: list[dict], direction: dict, note_strength: float, rng, avoid) -> tuple[list[dict], list]:
    """Two-part mixes within each side, so that the ensemble concepts have positives: every pair of instruments
    of different families whose programs an ensemble group holds, each such instrument over each kit of its
    side, and 40 random pairs of other instruments. Families in `avoid` (the injected terms) are in no mix, so
    their notes and instruments stay the known answers the tests read."""
    instruments = {row["instrument_str"]: row for row in note_rows}
    ensemble = set().union(*(group.programs for group in INSTRUMENT_GROUPS if group.ensemble))
    rows, vectors = [], []
    for side in ("train", "test"):
        members = sorted(name for name, row in instruments.items()
                         if row["split"] == side and row["family"] not in avoid)
        # The lead (whose instrument_str the row carries) is the part whose family comes first, as rendered.
        members.sort(key=lambda name: (FAMILIES.index(instruments[name]["family"]), name))
        chosen = [name for name in members if instruments[name]["program"] in ensemble]
        pairs = [(a, b) for i, a in enumerate(chosen) for b in chosen[i + 1:]
                 if instruments[a]["family"] != instruments[b]["family"]]
        pairs += [(a, kit) for a in chosen for kit in _KITS[side]]
        others = [(a, b) for i, a in enumerate(members) for b in members[i + 1:]
                  if instruments[a]["family"] != instruments[b]["family"]]
        pairs += [others[k] for k in rng.choice(len(others), size=min(40, len(others)), replace=False)]
        for lead, other in dict.fromkeys(pairs):
            first = instruments[lead]
            drum = isinstance(other, tuple)
            second_name, second_program = other if drum else (other, instruments[other]["program"])
            attributes = [first["family"], first["source"]] + (["drum", "percussive"] if drum else
                                                               [instruments[other]["family"],
                                                                instruments[other]["source"], "multiphonic"])
            note_str = f"{lead}-060-100+{second_name}" + ("" if drum else "-048")
            vectors.append(rng.standard_normal(len(direction["drum"])) + note_strength * sum(
                direction[a] for a in dict.fromkeys(attributes)))
            rows.append({"note_str": note_str, "instrument_str": lead, "family": first["family"],
                         "source": first["source"], "qualities": "percussive" if drum else "multiphonic",
                         "pitch": 60, "velocity": 100, "split": side, "path": f"audio/{note_str}.wav",
                         "program": first["program"],
                         "parts": f"{lead}:{first['program'] if first['program'] is not None else ''};"
                                  f"{second_name}:{second_program if second_program is not None else ''}"})
    return rows, vectors


def write_synthetic_data(root, n_prompts=30, samples=2, steps=tuple(range(0, 101, 10)), dim=64,
                         inject=None, strength=4.0, note_strength=3.0, n_instruments=48, notes_per_instrument=8, seed=0,
                         write_audio=True, kinds=("x0",), unrealised=0.0, content=True, committed_from=None,
                         axis=("denoising_step", "step"), truth=False, planted=None) -> Path:
    """Write prompts/annotated.csv, generated/{generation.json,index,content,audio,embeddings},
    concepts/{notes,sets,embeddings}. content=False: a generator that records no realised content; truth=True:
    also generated/truth/ and truth_tables/ (`planted`: concept -> the step its truth starts rising)."""
    root = Path(root)
    inject = {"brass": 40} if inject is None else inject
    rng = np.random.default_rng(seed)
    direction = term_directions(dim, seed)
    identity = dict(IDENTITY, dim=dim)

    # Prompts: brass in ~40% so the injected family has enough positive prompts; reverb independent of it.
    families = [f for f in FAMILIES if f != "brass"]
    rows = []
    for p in range(n_prompts):
        labels = ["brass" if rng.random() < 0.4 else str(rng.choice(families)), str(rng.choice(SOURCES))]
        if rng.random() < 0.4:
            labels.append("reverb")
        rows.append({"prompt_id": f"p{p:03d}", "prompt": f"synthetic prompt {p} with {' and '.join(labels)}",
                     "labels": format_labels(labels), "bpm": "", "annotator": "offline"})
    annotated = pd.DataFrame(rows)
    write_csv(root / "prompts" / "annotated.csv", annotated)

    # Drawn from their own generator so that unrealised=0 leaves every other draw as it was.
    unrealised_prompts = set(np.flatnonzero(np.random.default_rng([seed, 11]).random(n_prompts) < unrealised))
    content_labels = [*FAMILIES, "drum", *SOURCES] if content else []
    write_json(root / "generated" / "generation.json",
               {"generator": "synthetic", "seed": seed, "capture_steps": list(steps), "kinds": list(kinds),
                "trajectory_axis": {"name": axis[0], "unit": axis[1], "positions": list(range(max(steps) + 1))},
                "content_labels": content_labels})

    index_rows, vectors, content_rows = [], [], []
    rate = 8000
    silence = (0.01 * np.sin(np.linspace(0, 200, rate // 20))).astype(np.float32)
    final_step = max(steps)
    for p, row in enumerate(rows):
        labels = row["labels"].split(";")
        realised = p not in unrealised_prompts
        for sample in range(samples):
            base = rng.standard_normal(dim)
            for kind in kinds:
                for step in steps:
                    noise_scale = 1.2 - step / final_step if final_step else 0.2
                    vector = base + noise_scale * rng.standard_normal(dim)
                    committed = committed_from is not None and step >= committed_from
                    growth = 1.0 if committed else 0.7 + 0.3 * step / max(final_step, 1)
                    mass = {label: growth * (label in labels) for label in content_labels}
                    for term, from_step in inject.items():
                        if term in labels and step >= from_step and realised:
                            vector = vector + strength * direction[term]
                        if term in mass and not realised:
                            mass[term] = 0.0
                    vectors.append(vector)
                    content_rows.append({"prompt_id": row["prompt_id"], "sample": sample, "kind": kind,
                                         "step": step, "content": mass})
                    path = f"audio/{row['prompt_id']}/s{sample}-{kind}-{step:03d}.wav"
                    index_rows.append({"prompt_id": row["prompt_id"], "sample": sample, "step": step,
                                       "sigma": 1.0 - step / (final_step + 1), "kind": kind, "seed": sample,
                                       "seconds_total": 0.05, "sample_rate": rate, "path": path})
                    if write_audio:
                        wav = root / "generated" / path
                        wav.parent.mkdir(parents=True, exist_ok=True)
                        sf.write(wav, silence, rate, subtype="PCM_16")
    index = pd.DataFrame(index_rows)
    for prompt_id, part in index.groupby("prompt_id"):
        write_csv(root / "generated" / "index" / f"{prompt_id}.csv", part)
        if content_labels:
            # The same rows in the same order as the index part (data/realised_content.py).
            keyed = {(r["sample"], r["kind"], r["step"]): r for r in content_rows if r["prompt_id"] == prompt_id}
            ordered = [keyed[key] for key in zip(part["sample"], part["kind"], part["step"])]
            write_text(content_part_path(root / "generated", prompt_id), format_content_part(ordered, content_labels))
    stamp_parts(root / "generated")  # before the truth: its tables are derived only from parts made under the record
    if truth:
        _write_truth(root, rows, samples, steps, content_labels, unrealised_prompts, inject, planted or {}, seed)
    index = read_generated_index(root)
    # The index reader sorts rows; keep embeddings aligned with the sorted order.
    position = {key: i for i, key in enumerate(zip(*(pd.DataFrame(index_rows)[c] for c in
                                                     ("prompt_id", "sample", "kind", "step"))))}
    order = [position[key] for key in zip(index["prompt_id"], index["sample"], index["kind"], index["step"])]
    matrix = np.asarray(vectors, np.float32)[order]
    write_npy(root / "generated" / "embeddings" / f"{EMBEDDER}.npy", matrix)
    write_json(root / "generated" / "embeddings" / f"{EMBEDDER}.json",
               dict(identity, index_sha256=table_sha256(index), n_rows=len(index), generation_sha256="0" * 64))

    # NSynth-like notes: instruments with one family and source, notes with 0-2 qualities.
    note_rows, note_vectors = [], []
    all_families = FAMILIES
    for i in range(n_instruments):
        family, source = all_families[i % len(all_families)], SOURCES[(i // len(all_families)) % len(SOURCES)]
        split = "test" if i % 4 == 3 else "train"
        for n in range(notes_per_instrument):
            qualities = sorted(set(rng.choice(QUALITIES, size=int(rng.integers(0, 3)), replace=False)))
            attributes = [family, source, *qualities]
            note_vectors.append(rng.standard_normal(dim) + note_strength * sum(direction[a] for a in attributes))
            note_rows.append({"note_str": f"{family}_{source}_{i:03d}-{60 + n:03d}-100",
                              "instrument_str": f"{family}_{source}_{i:03d}", "family": family, "source": source,
                              "qualities": ";".join(qualities), "pitch": 60 + n, "velocity": 100, "split": split,
                              "path": f"audio/{family}_{source}_{i:03d}-{60 + n:03d}-100.wav",
                              "program": _program(family, source), "parts": ""})
    mix_rows, mix_vectors = _mixes(note_rows, direction, note_strength, np.random.default_rng([seed, 13]),
                                   set(inject))
    note_rows, note_vectors = note_rows + mix_rows, note_vectors + mix_vectors
    notes = pd.DataFrame(note_rows)
    write_csv(root / "concepts" / "notes.csv", notes)
    set_rows = []
    for concept in CONCEPTS:
        for note in note_rows:
            label = concept.label_note(note_of(note["family"], note["source"], note["qualities"], note["program"],
                                               note["parts"]))
            if label is not None:
                set_rows.append({"concept": concept.name, "note_str": note["note_str"], "label": label,
                                 "split": note["split"]})
    write_csv(root / "concepts" / "sets.csv", pd.DataFrame(set_rows))
    notes = read_notes(root)
    write_npy(root / "concepts" / "embeddings" / f"{EMBEDDER}.npy", np.asarray(note_vectors, np.float32))
    write_json(root / "concepts" / "embeddings" / f"{EMBEDDER}.json",
               dict(identity, notes_sha256=table_sha256(notes), n_rows=len(notes)))
    return root


def _write_truth(root: Path, prompts: list[dict], samples: int, steps, labels: list[str], unrealised: set,
                 inject: dict, planted: dict, seed: int) -> None:
    """The truth parts at every axis position and the tables (module docstring)."""
    final_step = max(steps)
    concepts = content_concepts(labels)
    rng = np.random.default_rng([seed, 17])
    for p, prompt in enumerate(prompts):
        own = prompt["labels"].split(";")
        rows = []
        # The content as write_synthetic_data records it: the prompt's labels, less unrealised injected terms.
        held = [label for label in labels if label in own and not (label in inject and p in unrealised)]
        finals = {name: BY_NAME[name].prompt_has(held) for name in concepts}
        for sample in range(samples):
            noise = rng.standard_normal((final_step + 1, len(concepts)))
            for step in range(final_step + 1):
                committed = step == final_step
                growth = 1.0 if committed else 0.7 + 0.3 * step / max(final_step, 1)
                mass = {label: growth * (label in held) for label in labels}
                probability = {}
                for k, name in enumerate(concepts):
                    share = 1.0 if committed else float(np.clip((step - planted.get(name, PLANTED_DEFAULT)) /
                                                                PLANTED_RAMP, 0.0, 1.0))
                    value = share * finals[name] + (1 - share) * (0.5 + 0.25 * noise[step, k])
                    probability[name] = float(np.clip(value, 0.0, 1.0))
                rows.append({"prompt_id": prompt["prompt_id"], "sample": sample, "step": step, "sigma": None,
                             "content": mass, "truth": probability})
        write_text(truth_part_path(root / "generated", prompt["prompt_id"]), format_truth_part(rows, labels, concepts))
    write_truth_tables(root / "generated", [prompt["prompt_id"] for prompt in prompts], list(steps))


def test_synthetic_data_passes_the_contract(tmp_path):
    from data.contract import check_same_embedder, read_annotated, read_embeddings, read_sets
    root = write_synthetic_data(tmp_path, n_prompts=6, samples=1, steps=(0, 5), write_audio=False)
    annotated = read_annotated(root)
    index = read_generated_index(root)
    notes = read_notes(root)
    sets = read_sets(root)
    generated, generated_sidecar = read_embeddings(root / "generated/embeddings" / f"{EMBEDDER}.npy", len(index),
                                                   table_sha256(index), "index_sha256", "fix")
    _, note_sidecar = read_embeddings(root / "concepts/embeddings" / f"{EMBEDDER}.npy", len(notes), table_sha256(notes),
                                      "notes_sha256", "fix")
    check_same_embedder(generated_sidecar, "a", note_sidecar, "b")
    assert len(annotated) == 6 and generated.shape == (12, 64)
    assert set(sets["concept"]) == {concept.name for concept in CONCEPTS}
    assert set(notes.groupby("instrument_str")["split"].nunique()) == {1}


_ANALYSED = {}
STAGE6_ARGS = ["--embedder", EMBEDDER, "--bootstrap", "300", "--random-baselines", "10", "--resplits", "3"]


def analysed_data(tmp_path_factory) -> Path:
    """One synthetic data folder with brass injected from step 40, analysed by stage 6 once per session and
    shared by the stage-6, report and notebook tests."""
    if "root" not in _ANALYSED:
        from data.stage import run_stage
        from interp import stage6_probe
        root = write_synthetic_data(tmp_path_factory.mktemp("stage6"), n_prompts=40, samples=2,
                                    steps=tuple(range(0, 101, 20)), inject={"brass": 40}, truth=True,
                                    planted={"is_brass": 20})
        assert run_stage(stage6_probe.main, stage6_probe.build_parser(), ["--data", str(root), *STAGE6_ARGS]) == 0
        _ANALYSED["root"] = root
    return _ANALYSED["root"]
