"""One hook toolkit for every backend, after TransformerLens' hook points: the name is the address.

A backend names the places a hook can attach, `Generator.hook_points()` -> {name: module}, in one convention
(b is a 0-based block index everywhere):

    blocks.{b}.hook_resid_post       the output of block b: the residual stream after it
    blocks.{b}.attn.hook_out         block b's self-attention output
    blocks.{b}.cross_attn.hook_out   block b's cross-attention output
    blocks.{b}.mlp.hook_out          block b's MLP output

plus any backend-specific input points (MusicGen's `decoder.hook_in`, which its position clock reads). Every
steerer, recorder and interchange is a `Hooks`: (name, fn) forward hooks, fn(module, args, output), which may
return a replacement output, and (name, fn) pre-hooks, fn(module, args, kwargs), which see a module's inputs.
`hooks_applied(points, hooks)` attaches them by name, in list order, and always takes every one off again, also
when the run fails.

A clock says where a forward sits on the generator's intervention clock: `ticks(tokens)` -> [(tick, column)],
the tick of each token column of the hooked output (a slice covering every token when they share one tick), plus
the `hooks` it needs to keep time.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping

# The components of a transformer block that an interchange swaps, by their spec name, and their hook-point name.
COMPONENT_POINTS = {"self_attn": "attn", "cross_attn": "cross_attn", "mlp": "mlp"}
COMPONENTS = tuple(COMPONENT_POINTS)
RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")


def resid_post(block: int) -> str:
    return f"blocks.{int(block)}.hook_resid_post"


def component_out(block: int, component: str) -> str:
    return f"blocks.{int(block)}.{COMPONENT_POINTS[component]}.hook_out"


def blocks_of(points: Mapping[str, object]) -> list[int]:
    """The blocks whose output (`blocks.{b}.hook_resid_post`) is a hook point, in order."""
    return sorted(int(match.group(1)) for name in points if (match := RESID_POST.match(name)))


@dataclass
class Hooks:
    """(name, fn) forward hooks and pre-hooks; `a + b` keeps a's before b's (hooks on one point run in order)."""
    forward: list[tuple[str, Callable]] = field(default_factory=list)
    pre: list[tuple[str, Callable]] = field(default_factory=list)

    def __add__(self, other: Hooks) -> Hooks:
        return Hooks(self.forward + other.forward, self.pre + other.pre)


@contextlib.contextmanager
def hooks_applied(points: Mapping[str, object], hooks: Hooks):
    """Attach `hooks` to the named points for the `with` block; every one comes off when it ends, however."""
    unknown = [name for name, _ in hooks.pre + hooks.forward if name not in points]
    if unknown:
        raise KeyError(f"no hook point {unknown[0]!r} (this backend has {', '.join(sorted(points)) or 'none'})")
    handles = []
    try:
        for name, fn in hooks.pre:
            handles.append(points[name].register_forward_pre_hook(fn, with_kwargs=True))
        for name, fn in hooks.forward:
            handles.append(points[name].register_forward_hook(fn))
        yield
    finally:
        for handle in handles:
            handle.remove()


class StepClock:
    """The clock of a diffusers sampler loop: the scheduler's own step_index, read when a hook runs (None before
    its first step() = step 0). Every forward of the denoiser within a step, and every token of it, sits at that
    step, however many times the model runs per step."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.hooks = Hooks()   # it reads the scheduler, and needs no hook of its own

    def now(self) -> int:
        return 0 if self.scheduler.step_index is None else int(self.scheduler.step_index)

    def ticks(self, tokens: int) -> list[tuple[int, slice]]:
        return [(self.now(), slice(None))]
