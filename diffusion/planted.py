"""The planted geometry of the ideal reference model: concept groups decided at known, different noise levels.

Why. In the bank's own latent space (diffusion/ideal.py) every pair of clips is ~sqrt(2) apart, so the sigma
schedule decides every concept in the same window, and nothing concept-specific about *when* can be recovered.
Here the clips get designed latents instead, with the separation of each concept group set by the user:

    c_i = sum over groups g of scale_g * u(label of clip i in g)  +  leaf_scale * v_i

u(label) and v_i orthonormal (a seeded random rotation of the axes), so two clips that differ in group g are
scale_g * sqrt(2) apart along that group's directions. Under the reverse sampler x_t ~ x_0 + sigma_t * noise,
and the posterior tells clips apart along a direction once sigma_t falls to about the separation there: a group
with a large scale is decided early, one with a small scale late. Along one group's directions the exact
posterior's AUROC for "this label" is about Phi(scale / (sigma * sqrt(2))) — from 0.6 to 0.95 while sigma falls
6.5-fold, ~10 of the reference schedule's 50 steps (sigma 100 -> 0.01, a factor 1.21 per step).

Clips. A group is a set of instrument labels (families and "drum"); a clip holds at most one instrument of each
group — none at all, with the group's `absent` probability — so the clips are the cells of a product. Each clip
is made from the bank's own solo clips (held notes, arpeggios, grooves: the bank's audio), one per instrument
it holds, summed with the bank's mix rule (each part at the clip loudness, a groove DRUM_MIX_GAIN below) and
loudness-normalised like every bank clip; an instrument's solo clips are used in turn, so its programs (and
sources) vary across cells. The empty cell (silence) is left out. The bank's rendered two-part mixes are not
used: a cell holds up to one instrument per group, three for the default geometry, and cells built from
different material would differ in how they were made, a cue a probe could read.

The base measure (the prior with no prompt) weighs a cell by the product of its groups' probabilities: uniform
over a group's labels, `absent` for none. Why a product, and why not simply the bank with per-family scales:
labels of different groups are then independent, so when an early group is decided it says nothing about a late
group's labels, and each family's information arrives at one time. On the bank as it is, with a uniform prior
and per-family scales, a family decided late is already 60-80% readable by exclusion (a trajectory that has
committed to a brass clip will not be a mallet clip) long before its own time; and the bank's clips hold at most
two families, so no reweighting of them can make three groups independent. With a required group (absent 0)
the product is exact; when every group may be absent, the empty cell's removal couples them slightly.

Concepts that read one group (a family, `blown` = brass|reed|flute when those share a group, `percussion` =
drum|mallet likewise, `plucked` = guitar) are decided at that group's time. Concepts that combine groups
(`orchestral`, `acoustic_band`, `techno`) are decided at the later of their groups, with partial information
from the earlier one; sources follow the programs of every part, so they arrive in stages. The truth
(data/truth.py) measures every concept as it is; nothing here assumes a time.

Decoder. The latents are linearly independent (the leaves), so the linear decoder D = C^+ A (least squares,
C the clips' latents, A their audio) gives D c_i = audio_i exactly, and the clean estimate sum_i w_i c_i
decodes to the posterior-weighted blend of the clips' audio, as in the bank's own space. Noisy latents (xt) are
not in the clips' span and D is not an isometry: their audio is not meaningful.

A geometry file (JSON; the default is diffusion/specs/planted_geometry.json):

    {"format": 1, "seed": 0, "leaf_scale": 0.025,
     "groups": [{"name": "early", "labels": ["brass", "reed", "flute", "vocal"], "scale": 8.0, "absent": 0.5},
                ...]}
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.files import read_json
from data.stage import InputError
from data.vocabulary import DRUM, FAMILIES
from diffusion.bank import DRUM_MIX_GAIN, ReferenceBank, family_labels, normalise

GEOMETRY_FORMAT = 1
DEFAULT_GEOMETRY = Path(__file__).resolve().parent / "specs" / "planted_geometry.json"
INSTRUMENTS = FAMILIES + (DRUM,)
# The ideal generator's --generator-option keys (diffusion/ideal.py declares them as its `options`): name -> help.
OPTIONS = {
    "geometry": "a planted geometry JSON (format in diffusion/planted.py; default "
                "diffusion/specs/planted_geometry.json); planted preset only",
    "scales": "comma-separated latent scale of each group of the planted geometry, in its order (e.g. 8,0.8,0.08): "
              "a group is decided around sigma ~ scale; planted preset only",
    "prior_sharpness": "weight of the prompt's labels in the prior (reference presets: 4; planted: 0, the prompt "
                       "has no effect)",
}


@dataclass(frozen=True)
class Group:
    name: str
    labels: tuple[str, ...]   # instrument labels (families, "drum"); a clip holds at most one of them
    scale: float              # latent separation of the group's instruments: decided around sigma ~ scale
    absent: float             # probability that a clip holds none of them (0: every clip holds one)


@dataclass(frozen=True)
class Geometry:
    groups: tuple[Group, ...]
    leaf_scale: float         # every clip's own direction: keeps the latents independent, decided last
    seed: int                 # of the random rotation that places the directions

    def record(self) -> dict:
        """The geometry as its file would hold it (what provenance records)."""
        return {"format": GEOMETRY_FORMAT, "seed": self.seed, "leaf_scale": self.leaf_scale,
                "groups": [{"name": group.name, "labels": list(group.labels), "scale": group.scale,
                            "absent": group.absent} for group in self.groups]}

    def cells(self) -> list[tuple]:
        """Every clip's label in each group (None: absent), in product order; the empty cell (silence) left out."""
        choices = [((None,) if group.absent > 0 else ()) + group.labels for group in self.groups]
        return [cell for cell in itertools.product(*choices) if any(label is not None for label in cell)]

    def with_scales(self, scales) -> Geometry:
        scales = [float(scale) for scale in scales]
        if len(scales) != len(self.groups):
            raise InputError(f"--generator-option scales: {len(scales)} values for {len(self.groups)} groups "
                             f"({', '.join(group.name for group in self.groups)}) — give one scale per group")
        record = self.record()
        for group, scale in zip(record["groups"], scales):
            group["scale"] = scale
        return parse_geometry(record, "--generator-option scales")


def parse_geometry(record, where: str) -> Geometry:
    """A geometry from its JSON record; InputError names `where` and the rule broken."""
    fix = "fix it (format in diffusion/planted.py)"
    if not isinstance(record, dict) or record.get("format") != GEOMETRY_FORMAT:
        raise InputError(f"{where}: not a planted geometry of format {GEOMETRY_FORMAT} — {fix}")
    unknown = sorted(set(record) - {"format", "seed", "leaf_scale", "groups"})
    if unknown:
        raise InputError(f"{where}: unknown key '{unknown[0]}' — {fix}")
    groups, seen = [], set()
    if not isinstance(record.get("groups"), list) or not record["groups"]:
        raise InputError(f"{where}: 'groups' must be a non-empty list — {fix}")
    for number, entry in enumerate(record["groups"]):
        if not isinstance(entry, dict) or set(entry) != {"name", "labels", "scale", "absent"}:
            raise InputError(f"{where}: group {number} must have exactly name, labels, scale and absent — {fix}")
        labels = entry["labels"]
        if not isinstance(labels, list) or not labels or any(label not in INSTRUMENTS for label in labels):
            raise InputError(f"{where}: group '{entry['name']}' labels must be a non-empty list of families or "
                             f"'drum' ({', '.join(INSTRUMENTS)}) — {fix}")
        repeated = sorted(seen & set(labels)) or sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise InputError(f"{where}: label '{repeated[0]}' is in two groups — a label belongs to one group")
        seen |= set(labels)
        scale, absent = _number(entry["scale"]), _number(entry["absent"])
        if not (scale > 0 and math.isfinite(scale)) or not 0 <= absent < 1:
            raise InputError(f"{where}: group '{entry['name']}' needs scale > 0 and 0 <= absent < 1 — {fix}")
        groups.append(Group(str(entry["name"]), tuple(labels), scale, absent))
    leaf, seed = _number(record.get("leaf_scale")), record.get("seed")
    if not (leaf > 0 and math.isfinite(leaf)) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"{where}: needs leaf_scale > 0 and a non-negative integer seed — {fix}")
    return Geometry(tuple(groups), leaf, seed)


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def load_geometry(path=None) -> Geometry:
    path = Path(path).expanduser() if path is not None else DEFAULT_GEOMETRY
    try:
        record = read_json(path)
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: unreadable planted geometry ({str(error).splitlines()[0]}) — pass a JSON "
                         "file in the format of diffusion/specs/planted_geometry.json") from None
    return parse_geometry(record, str(path))


def parse_options(options: dict | None, planted: bool, sharpness: float) -> tuple[Geometry | None, float]:
    """(planted geometry or None, prior sharpness) from the ideal generator's --generator-option strings, for a
    preset that is planted or not and has that sharpness; InputError names the bad option."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise InputError(f"--generator-option {unknown[0]}: unknown for ideal — choose from {', '.join(OPTIONS)}")
    if not planted and {"geometry", "scales"} & set(options):
        key = sorted({"geometry", "scales"} & set(options))[0]
        raise InputError(f"--generator-option {key} applies to the planted geometry — add --preset planted")
    if "prior_sharpness" in options:
        sharpness = _option_number(options["prior_sharpness"])
        if not (math.isfinite(sharpness) and sharpness >= 0):
            raise InputError(f"--generator-option prior_sharpness={options['prior_sharpness']}: must be a number >= 0")
    if not planted:
        return None, sharpness
    geometry = load_geometry(options.get("geometry"))
    if "scales" in options:
        scales = [_option_number(part) for part in str(options["scales"]).split(",")]
        if any(math.isnan(scale) for scale in scales):
            raise InputError(f"--generator-option scales={options['scales']}: not comma-separated numbers, "
                             "e.g. scales=8,0.8,0.08")
        geometry = geometry.with_scales(scales)
    return geometry, sharpness


def _option_number(text) -> float:
    """An option's KEY=VALUE text as a number; NaN when it is not one."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


# -- the clips and their latents ---------------------------------------------------------------------------------

@dataclass
class PlantedBank:
    bank: ReferenceBank          # the planted clips: audio, ids (their parts' bank ids), labels
    log_base: np.ndarray         # float64 [clips]: the base measure, log of the product of group probabilities
    coordinates: np.ndarray      # float64 [clips, dim]: the designed latents c_i
    cells: list[tuple]           # per clip, its label in each group (None: absent)


def planted_bank(bank: ReferenceBank, geometry: Geometry) -> PlantedBank:
    """The cells of the geometry's product, each one clip made of the bank's solo clips (module docstring)."""
    solos = {label: [index for index, labels in enumerate(bank.labels) if family_labels(labels) == {label}]
             for group in geometry.groups for label in group.labels}
    missing = [label for label, clips in solos.items() if not clips]
    if missing:
        raise InputError(f"planted geometry: the bank has no solo clip of '{missing[0]}' — drop the label from "
                         "the geometry or use a bank that has one")
    used = {label: 0 for label in solos}
    audio, clip_ids, labels, log_base, cells = [], [], [], [], []
    for cell in geometry.cells():
        parts = []
        for label in cell:
            if label is not None:
                parts.append(solos[label][used[label] % len(solos[label])])
                used[label] += 1
        mix = sum((DRUM_MIX_GAIN if len(parts) > 1 and DRUM in bank.labels[part] else 1.0)
                  * bank.audio[part].astype(np.float64) for part in parts)
        audio.append(normalise(mix))
        clip_ids.append("+".join(bank.clip_ids[part] for part in parts))
        labels.append(tuple(sorted({label for part in parts for label in bank.labels[part]})))
        log_base.append(sum(log_probability(group, label) for group, label in zip(geometry.groups, cell)))
        cells.append(cell)
    log_base = np.array(log_base)
    planted = ReferenceBank(np.stack(audio), clip_ids, labels, bank.sample_rate, {"planted_geometry": geometry.record()})
    return PlantedBank(planted, log_base - np.logaddexp.reduce(log_base), coordinates(geometry, cells), cells)


def log_probability(group: Group, label: str | None) -> float:
    """log P(the group's part of a clip): `absent` for none, the rest shared equally by its instruments."""
    return math.log(group.absent) if label is None else math.log((1 - group.absent) / len(group.labels))


def coordinates(geometry: Geometry, cells: list[tuple]) -> np.ndarray:
    """c_i for each cell: the scaled direction of its label in each group plus its own leaf direction, rotated
    by a seeded random orthogonal matrix (the sampler is isotropic, so only the distances matter; the rotation
    spreads every concept over all latent coordinates)."""
    labels = [label for group in geometry.groups for label in group.labels]
    design = np.zeros((len(cells), len(labels) + len(cells)))
    for row, cell in enumerate(cells):
        for group, label in zip(geometry.groups, cell):
            if label is not None:
                design[row, labels.index(label)] = group.scale
        design[row, len(labels) + row] = geometry.leaf_scale
    gaussian = np.random.default_rng(geometry.seed).standard_normal((design.shape[1], design.shape[1]))
    rotation, triangle = np.linalg.qr(gaussian)
    rotation *= np.sign(np.diag(triangle))   # the unique (Haar) orthogonal factor
    return design @ rotation


def decoder(coordinates: np.ndarray, audio: np.ndarray) -> np.ndarray:
    """D [dim, samples] with coordinates @ D == audio: the least-squares (minimum-norm) linear decoder."""
    return np.linalg.pinv(coordinates) @ np.asarray(audio, dtype=np.float64)
