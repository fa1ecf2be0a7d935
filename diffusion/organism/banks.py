"""Where the organism's training latents come from: a pluggable bank source.

A source is a function `(seed) -> OrganismBank`: clip latents C (float64 [clips, dim]) in the reference model's
latent coordinates, each clip's labels, and the base measure over clips (the ideal model's prompt-free prior).
The organism learns to denoise exactly these latents, drawn with that measure, so the ideal model on the same
latents is its known answer.
- `planted`: the ideal model's planted preset (diffusion/planted.py): the default bank's solo clips combined
  into the cells of the default geometry's product of concept groups, its designed latents and base measure.
- `standin`: an imitation of a planted geometry on a stand-in label set (~320 clips, five group scales from 10
  down to 0.05, uniform measure), for trying recipes on a second, differently shaped geometry.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from data.files import sha256_json
from data.vocabulary import DRUM, FAMILIES, SOURCES
from diffusion import bank as reference_bank
from diffusion import planted

# (family, source, programs) of the stand-in's solo instruments: the default soundfont bank's mix of families.
STANDIN_PROGRAMS = (("reed", "acoustic", 7), ("string", "acoustic", 5), ("mallet", "acoustic", 5),
                    ("synth_lead", "synthetic", 4), ("flute", "acoustic", 4), ("guitar", "electronic", 3),
                    ("guitar", "acoustic", 3), ("brass", "acoustic", 3), ("bass", "electronic", 3),
                    ("keyboard", "electronic", 2), ("vocal", "acoustic", 1), ("string", "synthetic", 1),
                    ("organ", "electronic", 1), ("organ", "acoustic", 1), ("keyboard", "acoustic", 1),
                    ("brass", "synthetic", 1), ("bass", "synthetic", 1))
# Scale of each group's directions, coarse to fine (a clip's distance to a clip that differs in the group is
# about scale · sqrt(2)). Spread like the planted geometry's: families at 10, single clips at 0.05.
STANDIN_SCALES = {"family": 10.0, "source": 3.0, "instrument": 1.0, "variant": 0.3, "leaf": 0.05}
SOLO_VARIANTS = 4      # held notes in three registers and an arpeggio, as the soundfont bank
MIX_VARIANTS = 2
DRUM_GROOVES = 4


@dataclass
class OrganismBank:
    latents: np.ndarray                    # float64 [clips, dim]
    labels: list[tuple[str, ...]]          # each clip's labels (families, "drum", sources)
    clip_ids: list[str]
    description: dict = field(default_factory=dict)
    log_base: np.ndarray | None = None     # float64 [clips], normalised log base measure (None: uniform)

    def __post_init__(self):
        self.latents = np.ascontiguousarray(self.latents, dtype=np.float64)
        if self.latents.ndim != 2 or len(self.labels) != len(self.latents) or len(self.clip_ids) != len(self.labels):
            raise ValueError("an organism bank needs latents [clips, dim] and one label set and id per clip")
        base = np.zeros(len(self.labels)) if self.log_base is None else np.asarray(self.log_base, dtype=np.float64)
        if base.shape != (len(self.labels),):
            raise ValueError("an organism bank's base measure needs one value per clip")
        self.log_base = base - np.logaddexp.reduce(base)

    @property
    def dim(self) -> int:
        return self.latents.shape[1]

    @property
    def sha256(self) -> str:
        """Content hash of what training reads: the latents' bytes, the ids and the labels."""
        digest = hashlib.sha256(np.ascontiguousarray(self.latents, dtype="<f8").tobytes())
        digest.update(np.ascontiguousarray(self.log_base, dtype="<f8").tobytes())
        digest.update(sha256_json({"clip_ids": self.clip_ids, "labels": [list(l) for l in self.labels]}).encode())
        return digest.hexdigest()


def standin_bank(seed: int = 0) -> OrganismBank:
    """~320 clips: solo instruments (4 variants each), drum grooves, and two mixes per pair of family labels.

    Each clip's latent is the sum over groups of scale · (the unit mean of the clip's directions in that group):
    family (a mix: both families), source, instrument (a mix: both instruments), variant, and a leaf direction of
    its own. The directions are orthonormal, in a random rotation of the space (so every coordinate mixes
    every group, as an eigenbasis of real clips would)."""
    rng = np.random.default_rng(seed)
    instruments = [(family, source) for family, source, count in STANDIN_PROGRAMS for _ in range(count)]
    instruments.append((DRUM, None))
    family_names = FAMILIES + (DRUM,)
    clips = []    # (id, families, instrument indices, variant, labels)
    for index, (family, source) in enumerate(instruments[:-1]):
        for variant in range(SOLO_VARIANTS):
            clips.append((f"i{index:02d}-{variant}", (family,), (index,), variant, (family, source)))
    for groove in range(DRUM_GROOVES):
        clips.append((f"drum-{groove}", (DRUM,), (len(instruments) - 1,), groove, (DRUM,)))
    by_family = {name: [i for i, (family, _) in enumerate(instruments) if family == name] for name in family_names}
    for first, second in combinations(family_names, 2):
        for variant in range(MIX_VARIANTS):
            parts = (int(rng.choice(by_family[first])), int(rng.choice(by_family[second])))
            sources = tuple(sorted({instruments[part][1] for part in parts} - {None}))
            clips.append((f"mix-{first}-{second}-{variant}", (first, second), parts,
                          SOLO_VARIANTS + variant, (first, second) + sources))

    sizes = {"family": len(family_names), "source": len(SOURCES), "instrument": len(instruments),
             "variant": max(SOLO_VARIANTS, DRUM_GROOVES) + MIX_VARIANTS, "leaf": len(clips)}
    dim = sum(sizes.values())
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    starts = dict(zip(sizes, np.cumsum([0] + list(sizes.values()))[:-1]))

    def direction(group: str, members) -> np.ndarray:
        members = list(members)
        if not members:
            return np.zeros(dim)
        return basis[:, [starts[group] + m for m in members]].sum(axis=1) / np.sqrt(len(members))

    latents = np.zeros((len(clips), dim))
    for row, (_, families, parts, variant, labels) in enumerate(clips):
        sources = [SOURCES.index(label) for label in labels if label in SOURCES]
        latents[row] = (STANDIN_SCALES["family"] * direction("family", [family_names.index(f) for f in families])
                        + STANDIN_SCALES["source"] * direction("source", sources)
                        + STANDIN_SCALES["instrument"] * direction("instrument", parts)
                        + STANDIN_SCALES["variant"] * direction("variant", [variant])
                        + STANDIN_SCALES["leaf"] * direction("leaf", [row]))
    return OrganismBank(latents, [clip[4] for clip in clips], [clip[0] for clip in clips],
                        {"source": "standin", "seed": seed, "scales": STANDIN_SCALES, "group_sizes": sizes})


def planted_source(seed: int = 0, model=None) -> OrganismBank:
    """The ideal model's planted clips: the default geometry on the bank directory `model` (None: the default
    soundfont bank, rendered on first use), exactly as `IdealGenerator(model, preset="planted")` makes them.
    `seed` is unused: the geometry file carries its own."""
    directory, _ = reference_bank.open_bank_dir(model)
    geometry = planted.load_geometry()
    return from_planted(planted.planted_bank(reference_bank.load_bank(directory), geometry), geometry)


def from_planted(clips: planted.PlantedBank, geometry: planted.Geometry) -> OrganismBank:
    """The organism's view of planted clips: their designed latents, labels and base measure."""
    return OrganismBank(clips.coordinates, list(clips.bank.labels), list(clips.bank.clip_ids),
                        {"source": "planted", "geometry": geometry.record(), "audio_sha256": clips.bank.sha256},
                        clips.log_base)


SOURCES_BY_NAME = {"planted": planted_source, "standin": standin_bank}


def load_bank(name: str, seed: int = 0) -> OrganismBank:
    if name not in SOURCES_BY_NAME:
        raise KeyError(f"unknown organism bank {name!r}; choose from {sorted(SOURCES_BY_NAME)}")
    return SOURCES_BY_NAME[name](seed)
