"""What an intervention is: a `Site` (where and when) and one record per kind (after pyvene, where is kept apart from
what). A record holds only fields its kind reads; `record()` is what a run's intervention.json keeps and
`from_record` reads it back.

- where: "prior" (the ideal model's concept prior) or 0-based block indices (hook points `blocks.{b}....`,
  diffusion/interventions/hooks.py).
- when: ticks [from_step, to_step) of the generator's intervention clock (`Generator.intervention_clock`: the
  sampler's own step for a denoising backend, the generated position for MusicGen), never a count of hook calls;
  with `every` N > 1 only the ticks from_step, from_step + N, ... (the published steering code's periodic schedule).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

PRIOR = "prior"
MODES = ("add", "norm_relative")
ROWS = ("conditional", "unconditional", "both")
INTERCHANGE_ROWS = ("conditional", "both")
DIRECTIONS = ("concept", "file", "random")
INTERCHANGE_OPS = ("replace", "adjust")


@dataclass(frozen=True)
class Site:
    where: str | tuple[int, ...]       # PRIOR, or 0-based block indices
    from_step: int = 0
    to_step: int | None = None         # exclusive; None = to the end of the generation
    every: int = 1                     # act on every N-th tick from from_step on (1: every tick)

    def active(self, tick: int) -> bool:
        return (tick >= self.from_step and (self.to_step is None or tick < self.to_step)
                and (tick - self.from_step) % self.every == 0)

    def record(self) -> dict:
        return {"where": self.where if isinstance(self.where, str) else list(self.where),
                "from_step": self.from_step, "to_step": self.to_step}


@dataclass(frozen=True)
class Steering:
    """Add a concept direction to the activations at a site (or tilt the ideal model's prior towards the concept)."""
    kind: ClassVar[str] = "steer"
    id: str
    concept: str                       # the target concept (data/concepts.py): what the scoring reads
    direction: str                     # "concept" (the prior's own tilt), "file" or "random"
    site: Site
    strength: float
    mode: str = "add"                  # add: h + s v;  norm_relative: (h + s |h| v/|v|) / (1 + s)
    rows: str = "conditional"          # which rows of a classifier-free-guidance batch
    seed: int = 0                      # of a random direction
    # Absolute path of the direction file (data/directions.py): the one steered along ("file"), or whose norms a
    # random one matches.
    direction_file: str | None = None

    @property
    def is_baseline(self) -> bool:
        return self.direction == "random"

    def active(self, tick: int) -> bool:
        return self.strength != 0 and self.site.active(tick)

    def group_key(self) -> tuple:
        """Steerings that differ only in direction (the concept's, or random ones matched to its file) and start
        step form one group: the random ones are the concept one's baseline, the start steps its commitment
        curve (interp/compare.py)."""
        return (self.kind, self.concept, self.site.where, self.strength, self.mode, self.site.to_step, self.rows,
                self.direction_file, self.site.every)

    def record(self) -> dict:
        site = self.site.record()
        # `every` only when periodic: a contiguous steering keeps the record it had before the option existed.
        return {"id": self.id, "concept": self.concept, "direction": self.direction, "where": site["where"],
                "strength": self.strength, "mode": self.mode, "from_step": site["from_step"],
                "to_step": site["to_step"], "rows": self.rows, "seed": self.seed, "kind": self.kind,
                "direction_file": self.direction_file, **({"every": self.site.every} if self.site.every != 1 else {})}


@dataclass(frozen=True)
class Interchange:
    """Swap one component's output at one block for concept B's mean activation (replace) or shift it by
    mean_B - mean_A (adjust), on the prompts that carry concept A (Vélez Vásquez et al., ISMIR 2024)."""
    kind: ClassVar[str] = "interchange"
    id: str
    concept: str                       # B, the concept swapped in: what the scoring reads
    concept_a: str                     # the prompts' own concept
    op: str                            # one of INTERCHANGE_OPS
    component: str                     # one of hooks.COMPONENTS
    site: Site                         # where: (block,)
    rows: str = "conditional"          # CFG rows swapped: the conditional one (as published) or both

    @property
    def block(self) -> int:
        return self.site.where[0]

    def group_key(self) -> tuple:
        """Each interchange site is a group of its own: it has no random baseline."""
        return (self.kind, self.id)

    def record(self) -> dict:
        site = self.site.record()
        return {"id": self.id, "kind": self.kind, "concept": self.concept, "concept_a": self.concept_a,
                "op": self.op, "component": self.component, "where": site["where"], "from_step": site["from_step"],
                "to_step": site["to_step"], "rows": self.rows}


Intervention = Steering | Interchange


def from_record(record: dict) -> Intervention:
    """The record an intervention.json keeps, as the intervention again."""
    where = record["where"] if isinstance(record["where"], str) else tuple(int(b) for b in record["where"])
    site = Site(where, int(record["from_step"]), None if record.get("to_step") is None else int(record["to_step"]),
                int(record.get("every", 1)))
    if record.get("kind", Steering.kind) == Interchange.kind:
        # A record without `rows` was made when interchange swapped both CFG rows.
        return Interchange(record["id"], record["concept"], record["concept_a"], record["op"], record["component"],
                           site, record.get("rows", "both"))
    return Steering(record["id"], record["concept"], record["direction"], site, float(record["strength"]),
                    record["mode"], record["rows"], int(record.get("seed", 0)), record.get("direction_file"))


def group_key(record: dict) -> tuple:
    """The group of a stored intervention record (Steering.group_key / Interchange.group_key)."""
    return from_record(record).group_key()
