"""Activation steering as hooks: add a direction (data/directions.py) to the output of the steered blocks, on the
rows and clock ticks a `Steering` asks for. Any backend that declares hook points, a clock and its CFG row layout
(diffusion/base.py) gets it with `hooks_applied(generator.hook_points(), steering_hooks(generator, steering, n))`.

The random baseline is `Direction.random_like`: a Gaussian direction with the norm of the concept's file in every
(step,) block, so the scoring (interp/compare.py) can ask whether the concept's direction moves the concept more
than any direction of its size would.
"""
from __future__ import annotations

from typing import Callable

from data.directions import Direction
from data.stage import InputError
from diffusion.interventions.hooks import Hooks, resid_post
from diffusion.interventions.records import Steering

CFG_LAYOUTS = ("uncond_first", "cond_first")


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


def steering_direction(steering: Steering) -> Direction:
    """The direction a steering adds: its file's, or the matched-norm random one; every steered block must be in
    the file."""
    direction = Direction.load(steering.direction_file)
    missing = [block for block in steering.site.where if block not in direction.blocks]
    if missing:
        raise InputError(f"{steering.direction_file}: has no direction for block {missing[0]} (it has "
                         f"{list(direction.blocks)}) — steer those blocks or recompute the direction")
    return direction.random_like(steering.seed) if steering.is_baseline else direction


def steering_hooks(generator, steering: Steering | None, samples: int) -> Hooks:
    """The hooks that steer `generator`'s blocks for a sampler call of `samples` samples (none without a
    steering, or at strength 0)."""
    if steering is None or steering.strength == 0:
        return Hooks()
    direction = steering_direction(steering)
    clock = generator.hook_clock()

    def rows_of(batch: int) -> slice:
        return cfg_rows(batch, samples, steering.rows, generator.cfg_layout)

    return clock.hooks + Hooks([(resid_post(block), block_hook(steering, direction, block, clock, rows_of))
                                for block in steering.site.where])


def block_hook(steering: Steering, direction: Direction, block: int, clock, rows_of: Callable[[int], slice]):
    """A forward hook steering one block's output at the ticks where the steering is active.

    The output may be a tensor (a transformers 5.x decoder layer, a diffusers DiT block) or a tuple whose first
    item is the hidden states (older transformers); both are handled, unlike published code that indexed
    output[0] of a tensor.
    """
    import torch

    cache: dict = {}

    def vector(tick: int, hidden):
        key = (None if direction.steps is None else tick, hidden.dtype, hidden.device)
        if key not in cache:
            cache.clear()
            cache[key] = torch.as_tensor(direction.at(block, tick)).to(device=hidden.device, dtype=hidden.dtype)
        return cache[key]

    def hook(module, inputs, output):
        hidden = output if isinstance(output, torch.Tensor) else output[0]
        if hidden.shape[-1] != direction.dim:
            raise InputError(f"{steering.direction_file}: direction dim {direction.dim} but block {block}'s width is "
                             f"{hidden.shape[-1]} — compute the direction on this model")
        spots = [(tick, column) for tick, column in clock.ticks(hidden.shape[1]) if steering.active(tick)]
        rows = rows_of(hidden.shape[0])
        if not spots or rows.stop <= rows.start:
            return None
        steered = hidden.clone()
        for tick, column in spots:
            steered[rows, column] = steer(hidden[rows, column], vector(tick, hidden), steering.strength,
                                          steering.mode)
        return steered if isinstance(output, torch.Tensor) else (steered, *output[1:])

    return hook
