"""What the organism is trained on, and the closed form of what it should learn from it.

Training pairs. A training example is a bank clip i (drawn from the bank's base measure b_i: the ideal model's
prompt-free prior, uniform unless the bank says otherwise), a noise level, and a set K of the clip's labels L_i
shown to the network (label dropout, so that one network learns the conditional and the
unconditional model):

    with probability p_uncond:  K = {}                               (the unconditional model)
    otherwise:                  each label of L_i kept with probability q, redrawn until K is non-empty.

The posterior over clips given the shown labels (Bayes with the base measure) is then exact:

    pi(i | {})  = b_i                                                      (the ideal model's own prior)
    pi(i | K)   ∝ b_i · 1[K ⊆ L_i] · (1 − q)^|L_i| / (1 − (1 − q)^|L_i|)   for K non-empty

since P(K | i) = (1 − p_uncond) · q^|K| (1 − q)^(|L_i| − |K|) / (1 − (1 − q)^|L_i|) and q^|K| is the same for
every clip. So a network that learned its data perfectly denoises with the closed-form posterior mean of the
bank under this prior (`posterior_mean`, the ideal model's formula with a different prior): its ideal answer.
A clip that carries more labels than K is shown with K less often, hence the (1 − q)^|L_i| factor: given
{"guitar"}, a solo guitar clip (labels guitar, acoustic) outweighs a guitar-and-drum mix (guitar, drum,
acoustic). A label set that no clip carries whole has no posterior (`log_prior` raises).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def log_prior(shown: Sequence[str], clip_labels: Sequence[Sequence[str]], keep_probability: float,
              log_base: np.ndarray | None = None) -> np.ndarray:
    """log pi(i | shown) over the bank's clips (float64 [clips], normalised); `log_base`: the base measure
    (None: uniform)."""
    count = len(clip_labels)
    base = np.full(count, -np.log(count)) if log_base is None else np.asarray(log_base, dtype=np.float64)
    shown = set(shown)
    if not shown:
        return base - np.logaddexp.reduce(base)
    sizes = np.array([len(set(labels)) for labels in clip_labels], dtype=np.float64)
    fits = np.array([shown <= set(labels) for labels in clip_labels])
    if not fits.any():
        raise ValueError(f"no bank clip carries all of {sorted(shown)}")
    drop = np.log1p(-keep_probability)
    logits = np.where(fits, base + sizes * drop - np.log(-np.expm1(sizes * drop)), -np.inf)
    return logits - np.logaddexp.reduce(logits[fits])


def posterior_mean(x: np.ndarray, sigma, latents: np.ndarray, log_prior_rows: np.ndarray) -> tuple[np.ndarray,
                                                                                                    np.ndarray]:
    """The ideal denoiser: x [batch, dim] at sigma (scalar or [batch]) with log priors [batch or 1, clips] ->
    (x0 [batch, dim], posterior weights [batch, clips]), float64, stable softmax (as diffusion/ideal.py)."""
    x = np.asarray(x, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64).reshape(-1, 1)
    logits = log_prior_rows + (x @ latents.T - 0.5 * np.square(latents).sum(axis=1)) / sigma ** 2
    logits = logits - logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    weights /= weights.sum(axis=1, keepdims=True)
    return weights @ latents, weights


def draw_shown(clip_labels: Sequence[Sequence[str]], clips: np.ndarray, rng: np.random.Generator,
               keep_probability: float, unconditional_probability: float) -> list[tuple[str, ...]]:
    """The label sets shown with a batch of clips (the module docstring's dropout), from `rng`."""
    shown = []
    for clip in clips:
        labels = tuple(clip_labels[clip])
        if not labels or rng.random() < unconditional_probability:
            shown.append(())
            continue
        while True:
            kept = tuple(label for label in labels if rng.random() < keep_probability)
            if kept:
                break
        shown.append(kept)
    return shown
