"""Sampling, and why it is ours: transformers samples with the global RNG, one draw for the whole batch, so a sample
would depend on the batch it ran in. Stage 2 gives row r the seed seed + r (diffusion/base.py). The last logits
processor (`RowSeededSampler`) therefore applies the library's own warpers (temperature, top-k, top-p from the
generation config), draws one uniform per (row, codebook, position) from that row's torch.Generator, picks the token
by inverse CDF and masks every other token, so generate()'s greedy pick takes it. The logit lens reuses the same
uniforms on each layer's distribution (common random numbers): per-layer codes differ from the model's only where
that layer's distribution differs, and are identical at layer L. With do_sample false, both take the argmax.
"""
from dataclasses import dataclass

import torch

@dataclass(frozen=True)
class Sampling:
    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    guidance_scale: float

    def warpers(self):
        """The warpers transformers' generate() would build for these settings, in its order."""
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        warpers = LogitsProcessorList()
        if not self.do_sample:
            return warpers
        if self.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k:
            warpers.append(TopKLogitsWarper(self.top_k))
        if self.top_p < 1.0:
            warpers.append(TopPLogitsWarper(self.top_p))
        return warpers


def pick_tokens(scores: torch.Tensor, uniforms: torch.Tensor | None) -> torch.Tensor:
    """Inverse-CDF pick per row of warped scores [rows, vocab] with uniforms [rows] in [0, 1); argmax without."""
    if uniforms is None:
        return scores.argmax(dim=-1)
    probs = torch.softmax(scores.float(), dim=-1)
    cdf = probs.cumsum(dim=-1)
    # Smallest index whose cdf exceeds u * total: tokens of zero mass (cut by top-k/top-p) are never picked.
    threshold = (uniforms.to(cdf.device, cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, threshold, right=True).squeeze(-1).clamp_(max=scores.shape[-1] - 1)


class RowSeededSampler:
    """The one logits processor we add: CFG-combine, warp, draw each row's token from its own generator, and leave
    only that token standing.

    generate() appends its ClassifierFreeGuidanceLogitsProcessor *after* processors passed to it, so scores arrive
    here still as the CFG batch [cond rows, uncond rows] × codebooks. We combine them with that same library class,
    warp, pick, and return for both halves the same mask (0 for the pick, a large finite negative elsewhere — finite
    so that generate()'s own CFG step, uncond + g·(cond − uncond), leaves the mask unchanged instead of making NaN).
    Row b of the batch owns score rows b·K … b·K+K−1 and generator b.
    """
    MASKED = -1e9

    def __init__(self, sampling: Sampling, generators: list[torch.Generator], num_codebooks: int):
        from transformers import ClassifierFreeGuidanceLogitsProcessor

        self.guidance = ClassifierFreeGuidanceLogitsProcessor(sampling.guidance_scale) \
            if sampling.guidance_scale > 1 else None
        self.warpers = sampling.warpers()
        self.do_sample = sampling.do_sample
        self.generators = generators
        self.num_codebooks = num_codebooks
        self.uniforms: list[torch.Tensor] = []   # per position: [B*K] float64 on CPU (sampling only)
        self.tokens: list[torch.Tensor] = []     # per position: [B*K] long on CPU

    def draw(self) -> torch.Tensor:
        return torch.cat([torch.rand(self.num_codebooks, generator=g, dtype=torch.float64) for g in self.generators])

    def combine(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        """CFG-combined and warped scores [B*K, vocab] from the model's (or a lens layer's) raw scores."""
        if self.guidance is not None:
            scores = self.guidance(input_ids, scores)
        return self.warpers(input_ids, scores)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        uniforms = self.draw() if self.do_sample else None
        tokens = pick_tokens(self.combine(input_ids, scores), uniforms)
        if uniforms is not None:
            self.uniforms.append(uniforms)
        self.tokens.append(tokens.cpu())
        chosen = torch.full((tokens.shape[0], scores.shape[-1]), self.MASKED, dtype=scores.dtype,
                            device=scores.device)
        chosen.scatter_(1, tokens.unsqueeze(-1), 0.0)
        return chosen.repeat(scores.shape[0] // tokens.shape[0], 1)


def processor_list(sampler: RowSeededSampler):
    from transformers import LogitsProcessorList
    return LogitsProcessorList([sampler])
