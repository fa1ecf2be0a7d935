"""MusicGen's hook points, its position clock, and its recorders and interchange as `Hooks` (diffusion/interventions/
hooks.py): every one is (name, fn) lists applied by `hooks_applied`, which always takes them off.

Hook points of the decoder (b 0-based: block b is `decoder.layers[b]`; MusicGen's trajectory layer ℓ = block ℓ - 1):
`blocks.{b}.hook_resid_post` (the block's output), `blocks.{b}.attn.hook_out` (self-attention out_proj),
`blocks.{b}.cross_attn.hook_out` (cross-attention out_proj), `blocks.{b}.mlp.hook_out` (fc2), and `decoder.hook_in`
(the decoder's inputs, which the position clock reads).

Pitfalls handled: generate() runs the prefill forward twice (the second replaces the first: positions are keyed by
where they sit, not counted — the published steering code's bug); the CFG batch is [cond×B, uncond×B]; a 5.x decoder
layer returns a tensor, not a tuple; melody models prepend their conditioning to the decoder input, so only the last
`count` columns of a forward are audio positions.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from diffusion.interventions.hooks import COMPONENTS, Hooks, component_out, resid_post
from diffusion.interventions.records import INTERCHANGE_OPS, INTERCHANGE_ROWS

DECODER_IN = "decoder.hook_in"
# The submodule of a decoder layer whose output is each component's output (all nn.Linear in transformers).
COMPONENT_MODULES = {"self_attn": "self_attn.out_proj", "cross_attn": "encoder_attn.out_proj", "mlp": "fc2"}
BRANCHES = ("cond", "uncond")


def hook_points(decoder) -> dict[str, torch.nn.Module]:
    """The decoder's hook points by name (module docstring); `decoder` is …ForCausalLM.model.decoder. MusicGen
    Melody's blocks have no cross-attention (its conditioning is prepended to the decoder input): no such point."""
    points = {DECODER_IN: decoder}
    for block, layer in enumerate(decoder.layers):
        points[resid_post(block)] = layer
        for component in COMPONENTS:
            try:
                points[component_out(block, component)] = layer.get_submodule(COMPONENT_MODULES[component])
            except AttributeError:
                continue
    return points


class GenerationPosition:
    """MusicGen's intervention clock: where a decoder forward sits in the audio-code sequence, read from its KV
    cache before the forward, never from counting calls (generate() runs the prefill twice, and a call count would
    be off by one from then on). The last `count` columns of a forward are positions first .. first + count - 1."""

    def __init__(self):
        self.first, self.count, self._next = 0, 0, 0
        self.hooks = Hooks(pre=[(DECODER_IN, self.before_decoder)])

    def before_decoder(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        cached = cache.get_seq_length() if cache is not None else 0
        if cached == 0:   # a prefill: the sequence starts again
            self._next = 0
        self.first, self.count = self._next, int(input_ids.shape[-1])
        self._next += self.count

    def ticks(self, tokens: int) -> list[tuple[int, int]]:
        """(generated position, column) of each audio position among a forward's `tokens` columns."""
        offset = tokens - self.count
        return [(self.first + j, offset + j) for j in range(self.count)]


class ResidualRecorder:
    """Keeps each chosen block's output (`blocks.{b}.hook_resid_post`) at every generated position while its
    `hooks` are applied; `stacked(b)` gives them in position order."""

    def __init__(self, blocks: Sequence[int]):
        self.blocks = list(blocks)
        self.position = GenerationPosition()
        # block -> first position of a forward -> that forward's outputs [rows, n, D]
        self.residuals: dict[int, dict[int, torch.Tensor]] = {block: {} for block in self.blocks}
        self.hooks = self.position.hooks + Hooks([(resid_post(block), self._after_block(block))
                                                  for block in self.blocks])

    def _after_block(self, block: int):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output   # 5.x: a tensor; older: a tuple
            # A reference, not a copy: every forward makes new output tensors (float() copies only half precision).
            self.residuals[block][self.position.first] = hidden[:, -self.position.count:].detach().float()
        return hook

    def stacked(self, block: int) -> torch.Tensor:
        """Block `block`'s residuals [positions, rows, D] in position order."""
        store = self.residuals[block]
        chunks, position = [], 0
        for first in sorted(store):
            if first != position:
                raise RuntimeError(f"block {block}: positions jump from {position} to {first}")
            chunks.append(store[first])
            position += store[first].shape[1]
        return torch.cat(chunks, dim=1).transpose(0, 1)


class ComponentMeans:
    """Mean output of every (component, block) per generated position over the rows of every generate() run while
    its `hooks` are applied, the conditional and unconditional rows of the [cond x B, uncond x B] batch kept apart.

    `means()` -> float32 [components, blocks, positions, branches, dim] (positions from 0 to the shortest run's
    last). The published iterator hooked the last layer only; here every block is hooked.
    """

    def __init__(self, blocks: int, samples: int):
        self.blocks, self.samples = blocks, samples
        self.sums: dict[tuple, torch.Tensor] = {}
        self.counts: dict[tuple, int] = {}
        self.position = GenerationPosition()
        self.hooks = self.position.hooks + Hooks([(component_out(block, name), self._hook(c, block))
                                                  for c, name in enumerate(COMPONENTS) for block in range(blocks)])

    def _hook(self, component: int, block: int):
        def hook(module, inputs, output):
            batch = output.shape[0]
            halves = [(0, slice(0, batch))] if batch == self.samples else \
                [(0, slice(0, self.samples)), (1, slice(self.samples, batch))]
            offset = output.shape[1] - self.position.count
            for branch, rows in halves:
                summed = output[rows, offset:].detach().double().sum(dim=0)
                for j in range(self.position.count):
                    key = (component, block, self.position.first + j, branch)
                    self.sums[key] = summed[j] + self.sums[key] if key in self.sums else summed[j].clone()
                    self.counts[key] = self.counts.get(key, 0) + (rows.stop - rows.start)
        return hook

    def means(self) -> np.ndarray:
        last: dict[tuple, int] = {}
        for (c, b, p, branch) in self.sums:
            last[(c, b, branch)] = max(last.get((c, b, branch), -1), p)
        positions = 1 + min(last.values())
        branches = 1 + max(branch for (_, _, _, branch) in self.sums)
        out = torch.stack([torch.stack([torch.stack([torch.stack([
            self.sums[(c, b, p, branch)] / self.counts[(c, b, p, branch)] for branch in range(branches)])
            for p in range(positions)]) for b in range(self.blocks)]) for c in range(len(COMPONENTS))])
        return out.float().cpu().numpy()


def interchange_hooks(blocks: int, means_a: np.ndarray, means_b: np.ndarray, assignments: Sequence, op: str,
                      rows: str = "conditional") -> Hooks:
    """One (component, block) per sample row: row r of the batch gets assignments[r] = (component name, 0-based
    block) or None (left alone). "replace": that component's output becomes B's mean at the same generated
    position, the conditional mean on the conditional row (the published code's choice); "adjust": it is shifted by
    mean_B - mean_A. With rows="both" the unconditional twin B + r is swapped too, with the unconditional mean.
    Positions past the recorded means are left alone."""
    if op not in INTERCHANGE_OPS:
        raise ValueError(f"interchange op {op!r} is not one of {INTERCHANGE_OPS}")
    if rows not in INTERCHANGE_ROWS:
        raise ValueError(f"interchange rows {rows!r} is not one of {INTERCHANGE_ROWS}")
    samples = len(assignments)
    position = GenerationPosition()
    target = torch.as_tensor(means_b if op == "replace" else means_b - means_a)
    by_site: dict[tuple[int, int], list[int]] = {}
    for row, assignment in enumerate(assignments):
        if assignment is not None:
            component, block = assignment
            if component not in COMPONENTS or not 0 <= block < blocks:
                raise ValueError(f"row {row}: {assignment} is not (one of {list(COMPONENTS)}, block 0..{blocks - 1})")
            by_site.setdefault((COMPONENTS.index(component), block), []).append(row)

    def hook_for(component: int, block: int, site_rows: list[int]):
        def hook(module, inputs, output):
            batch = output.shape[0]
            branches = [(0, site_rows)] + ([(1, [samples + r for r in site_rows])]
                                           if batch == 2 * samples and rows == "both" else [])
            offset = output.shape[1] - position.count
            changed = output.clone()
            for j in range(position.count):
                p = position.first + j
                if p >= target.shape[2]:
                    continue
                for branch, branch_rows in branches:
                    value = target[component, block, p, branch].to(device=output.device, dtype=output.dtype)
                    picked = torch.tensor(branch_rows, device=output.device)
                    changed[picked, offset + j] = value if op == "replace" else changed[picked, offset + j] + value
            return changed
        return hook

    return position.hooks + Hooks([(component_out(block, COMPONENTS[component]), hook_for(component, block, chosen))
                                   for (component, block), chosen in by_site.items()])


def every_site(blocks: int) -> list[tuple[str, int]]:
    """The 3 x L (component, block) pairs of one batched interchange generation."""
    return [(name, block) for block in range(blocks) for name in COMPONENTS]
