"""Train the organism from nothing, deterministically: a `Recipe` in, EMA weights and a loss log out.

Objective. The v-loss of the ideal model's preconditioning: ||F(c_in x) − v*||², v* = (x0 − c_skip x) / c_out,
which is EDM's weighted x0-loss λ(sigma) ||D(x) − x0||² with λ = (sigma² + sigma_data²) / (sigma sigma_data)²
(Karras et al. 2022). Its minimiser is the posterior mean of x0 given (x, sigma, labels): the ideal model's
answer (diffusion/organism/conditioning.py). With `target="posterior"` the regression target x0 is replaced by
that posterior mean over the whole bank — the same minimiser with the target's variance removed (the "stable
target field" of Xu et al. 2023, with the whole bank as its reference batch). Noise levels are drawn
log-uniformly over the sampler's range, widened by `sigma_margin` on each side in log space (the sampler's
schedule is exponential, so every one of its steps gets the same share).

Determinism: numpy draws the data (clips, noise levels, noise, shown labels) from one seeded generator; torch
runs with deterministic algorithms on a fixed number of threads. `python -m diffusion.organism.train --help`.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the repository root importable without an installed package.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import torch

from data.provenance import decide
from data.stage import InputError, main_exit, stage_parser
from data.vocabulary import DRUM, FAMILIES, SOURCES
from diffusion.organism.banks import SOURCES_BY_NAME, OrganismBank, load_bank
from diffusion.organism.checkpoint import checkpoint_provenance, save_checkpoint
from diffusion.organism.conditioning import draw_shown, log_prior, posterior_mean
from diffusion.organism.model import NetworkConfig, Organism, eigen_basis, layout_for

SIGMA_MIN, SIGMA_MAX = 0.01, 100.0     # the ideal model's reference preset (diffusion/ideal.py)


@dataclass(frozen=True)
class Recipe:
    bank: str = "planted"
    bank_seed: int = 0
    network: NetworkConfig = field(default_factory=NetworkConfig)
    seed: int = 0
    steps: int = 4000
    batch: int = 64
    learning_rate: float = 1e-3
    warmup: int = 100
    final_lr_fraction: float = 0.02        # cosine decay to this fraction of the peak
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    target: str = "posterior"              # "posterior" (exact posterior mean) or "sample" (denoising)
    sigma_margin: float = 1.0              # log-uniform sigma over [SIGMA_MIN / e^m, SIGMA_MAX · e^m]
    low_sigma_floor: float = 0.0           # F-loss weight sigma² / (sigma² + floor²): below the floor, less weight
    keep_probability: float = 0.5
    unconditional_probability: float = 0.2
    threads: int = 1
    layout: str = "eigen"                  # frames hold the latent in the bank's "eigen" basis, or "identity"
    data_scale: str = "bank"               # the transformer's sigma_data: "bank" (its rms coordinate) or "one"

    def with_changes(self, **changes) -> "Recipe":
        network = {k: changes.pop(k) for k in list(changes) if k in NetworkConfig.__dataclass_fields__}
        return replace(self, network=replace(self.network, **network), **changes)


@dataclass
class Trained:
    model: Organism            # the EMA weights
    log: list[dict]            # one row per logged step
    seconds: float


def sized_network(recipe: Recipe, dim: int) -> Recipe:
    """The recipe with `frames` set to hold a `dim` latent at its `channels`."""
    channels, frames = layout_for(dim, recipe.network.channels)
    return recipe.with_changes(channels=channels, frames=frames)


def learning_rate(recipe: Recipe, step: int) -> float:
    if step < recipe.warmup:
        return recipe.learning_rate * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    floor = recipe.final_lr_fraction
    return recipe.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def draw_batch(recipe: Recipe, bank: OrganismBank, rng: np.random.Generator, priors: dict):
    """(x0 target, x, sigma, shown labels) of one batch, float64 numpy, from `rng` only."""
    clips = rng.choice(len(bank.labels), size=recipe.batch, p=np.exp(bank.log_base))
    low, high = math.log(SIGMA_MIN) - recipe.sigma_margin, math.log(SIGMA_MAX) + recipe.sigma_margin
    sigma = np.exp(rng.uniform(low, high, recipe.batch))
    x0 = bank.latents[clips]
    x = x0 + sigma[:, None] * rng.standard_normal(x0.shape)
    shown = draw_shown(bank.labels, clips, rng, recipe.keep_probability, recipe.unconditional_probability)
    if recipe.target == "posterior":
        rows = []
        for labels in shown:
            key = frozenset(labels)
            if key not in priors:
                priors[key] = log_prior(labels, bank.labels, recipe.keep_probability, bank.log_base)
            rows.append(priors[key])
        x0, _ = posterior_mean(x, sigma, bank.latents, np.stack(rows))
    elif recipe.target != "sample":
        raise ValueError(f"unknown target {recipe.target!r}")
    return x0, x, sigma, shown


def train(recipe: Recipe, bank: OrganismBank, progress: bool = True, log_every: int = 25) -> Trained:
    from tqdm import tqdm

    torch.set_num_threads(recipe.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(recipe.seed)
    recipe = sized_network(recipe, bank.dim)
    data_scale = float(np.sqrt(np.mean(np.square(bank.latents)))) if recipe.data_scale == "bank" else 1.0
    basis = eigen_basis(bank.latents) if recipe.layout == "eigen" else None
    model = Organism(recipe.network, labels_of(bank), bank.dim, data_scale, basis)
    ema = Organism(recipe.network, labels_of(bank), bank.dim, data_scale, basis)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    rng = np.random.default_rng(recipe.seed)
    priors, log, running = {}, [], []
    started = time.perf_counter()
    bar = tqdm(range(recipe.steps), desc="organism", unit="step", disable=not progress, mininterval=2)
    for step in bar:
        x0, x, sigma, shown = draw_batch(recipe, bank, rng, priors)
        x0, x, sigma = (torch.from_numpy(a).to(torch.float32) for a in (x0, x, sigma))
        output = model.network(x, sigma, model.encoder.present(shown))
        weight = sigma ** 2 / (sigma ** 2 + recipe.low_sigma_floor ** 2)
        loss = torch.mean(weight[:, None] * (output - model.target(x0, x, sigma)) ** 2)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(recipe, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.grad_clip:
            torch.nn.utils.clip_grad_norm_(parameters, recipe.grad_clip)
        optimizer.step()
        decay = min(recipe.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for averaged, current in zip(ema.parameters(), model.parameters()):
                averaged.lerp_(current, 1 - decay)
        running.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == recipe.steps:
            log.append({"step": step + 1, "loss": float(np.mean(running)), "lr": learning_rate(recipe, step),
                        "seconds": round(time.perf_counter() - started, 3)})
            bar.set_postfix(loss=f"{log[-1]['loss']:.4f}")
            running = []
    return Trained(ema.eval(), log, time.perf_counter() - started)


def labels_of(bank: OrganismBank) -> tuple[str, ...]:
    """The label vocabulary of the conditioning tokens: every label a bank clip carries, in the project's order."""
    present = {label for labels in bank.labels for label in labels}
    known = FAMILIES + (DRUM,) + SOURCES
    return tuple(label for label in known if label in present) + tuple(sorted(present - set(known)))


def recipe_record(recipe: Recipe) -> dict:
    return asdict(recipe)


def parse_settings(items) -> dict:
    """--set key=value pairs -> recipe changes (values parsed as JSON where they are, else strings)."""
    import json

    known = set(Recipe.__dataclass_fields__) | set(NetworkConfig.__dataclass_fields__)
    changes = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or key not in known or key == "network":
            raise InputError(f"--set {item}: expected key=value with a recipe key ({', '.join(sorted(known))})")
        try:
            changes[key] = json.loads(value)
        except ValueError:
            changes[key] = value
    return changes


def build_parser():
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="checkpoint directory (unset: <data>/organism/<bank>/)")
    parser.add_argument("--bank", default=Recipe.bank, help=f"training latents: one of {', '.join(SOURCES_BY_NAME)}")
    parser.add_argument("--seed", type=int, default=Recipe.seed, help="the one seed of weights and data draws")
    parser.add_argument("--steps", type=int, default=Recipe.steps, help="optimiser steps")
    parser.add_argument("--threads", type=int, default=Recipe.threads,
                        help="torch threads (the checkpoint's bytes are checked for one thread)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other recipe setting")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(args) -> None:
    changes = parse_settings(args.set)
    if args.bank not in SOURCES_BY_NAME:
        raise InputError(f"--bank {args.bank}: unknown — choose one of {', '.join(SOURCES_BY_NAME)}")
    if args.steps < 1 or args.threads < 1:
        raise InputError("--steps and --threads must be at least 1")
    out = args.out or Path(args.data) / "organism" / args.bank
    recipe = Recipe(bank=args.bank, seed=args.seed, steps=args.steps, threads=args.threads).with_changes(**changes)
    bank = load_bank(recipe.bank, recipe.bank_seed)
    recipe = sized_network(recipe, bank.dim)
    if decide(checkpoint_provenance(out, recipe, bank), args.force, "pass --force to retrain, or another --out"):
        print(f"{out}: trained with this recipe already — nothing to do (--force retrains)")
        return
    trained = train(recipe, bank, progress=not args.no_progress)
    record = save_checkpoint(out, trained.model, recipe, bank, trained.log, trained.seconds)
    print(f"{out}: {record['parameters']:,} parameters, final loss {record['final_loss']:.4f}, "
          f"{trained.seconds:.0f} s, weights sha256 {record['weights_sha256'][:16]}")


if __name__ == "__main__":
    main_exit(main, build_parser())
