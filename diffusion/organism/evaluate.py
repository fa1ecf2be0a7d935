"""How good the organism is, measured against its closed form (diffusion/organism/conditioning.py).

- `denoising_error`: per noise level of the sampler's schedule, the relative error ||x0_net − x0_ideal|| /
  ||x0_ideal|| of the clean estimate on fresh draws x = c_i + sigma · noise (pooled over draws; the median of
  the per-draw ratios beside it), beside the best linear denoiser's error (the baseline) and how far the ideal
  estimate itself is from the drawn clip (how much there is to average at that level).
- `sample`: 50-step trajectories with the ideal model's sampler loop (CosineDPMSolverMultistepScheduler,
  per-sample noise), for the network or the closed form on the same seeds; every step's closed-form posterior
  weights over the bank at the trajectory's current latent come back with the final latents.
- `prompt_shares`, `unconditional_spread`, `commitment_steps`: sample quality (does the final sample's nearest
  clip carry the prompt's labels; does the unconditional distribution over clips follow the base measure) and the commitment
  timing of each concept along the trajectory, organism beside closed form.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

if __package__ in (None, ""):
    # Run as a script: make the repository root importable without an installed package.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import torch

from data.provenance import Provenance, commit, decide
from data.stage import InputError, main_exit, stage_parser
from diffusion.ideal import PRESETS, SIGMA_DATA, PerSampleGaussianNoise
from diffusion.organism.banks import OrganismBank, load_bank
from diffusion.organism.checkpoint import RECORD, load_checkpoint
from diffusion.organism.conditioning import draw_shown, log_prior, posterior_mean
from diffusion.organism.model import Organism, preconditioning

PRESET = PRESETS["reference"]
EVALUATION = "evaluation.json"
COMMIT_MASS = 0.5     # a label is committed from the step after which its posterior mass never falls below this


def scheduler():
    from diffusers import CosineDPMSolverMultistepScheduler

    return CosineDPMSolverMultistepScheduler(sigma_min=PRESET.sigma_min, sigma_max=PRESET.sigma_max,
                                             sigma_data=SIGMA_DATA, sigma_schedule="exponential", solver_order=2,
                                             prediction_type="v_prediction", final_sigmas_type="zero")


def schedule_sigmas(steps: int = PRESET.steps) -> np.ndarray:
    """The noise levels at which the sampler calls the model (float32 values, as the scheduler holds them)."""
    sampler = scheduler()
    sampler.set_timesteps(steps)
    return sampler.sigmas[:steps].numpy().astype(np.float64)


def network_x0(model: Organism, x: np.ndarray, sigma: np.ndarray, shown: Sequence[Sequence[str]]) -> np.ndarray:
    with torch.no_grad():
        x0 = model.denoise(torch.from_numpy(x).float(), torch.from_numpy(sigma).float(),
                           model.encoder.present(shown))
    return x0.double().numpy()


def denoising_error(model: Organism, bank: OrganismBank, keep_probability: float, sigmas: np.ndarray,
                    draws: int = 256, seed: int = 1, conditional: bool = False) -> list[dict]:
    """Per sigma: the relative error of the network's clean estimate against the closed form (module docstring)."""
    rng = np.random.default_rng(seed)
    linear_x0 = linear_denoiser(bank)
    rows = []
    for sigma in sigmas:
        clips = rng.choice(len(bank.labels), size=draws, p=np.exp(bank.log_base))
        x = bank.latents[clips] + sigma * rng.standard_normal((draws, bank.dim))
        shown = (draw_shown(bank.labels, clips, rng, keep_probability, 0.0) if conditional
                 else [()] * draws)
        priors = np.stack([log_prior(labels, bank.labels, keep_probability, bank.log_base) for labels in shown])
        ideal, _ = posterior_mean(x, sigma, bank.latents, priors)
        net = network_x0(model, x, np.full(draws, sigma), shown)
        norm = np.linalg.norm(ideal, axis=1)
        error, linear = np.linalg.norm(net - ideal, axis=1), np.linalg.norm(linear_x0(x, sigma) - ideal, axis=1)
        spread = np.linalg.norm(ideal - bank.latents[clips], axis=1)
        # Pooled over the draws (root-mean-square error over root-mean-square norm): the ideal estimate of a
        # draw can be near zero (a blend of clips on opposite sides), where a per-draw ratio says little.
        def pooled(values):
            return float(np.sqrt(np.mean(values ** 2) / np.mean(norm ** 2)))

        rows.append({"sigma": float(sigma), "conditional": conditional, "relative_error": pooled(error),
                     "median_draw_error": float(np.median(error / norm)), "linear_error": pooled(linear),
                     "ideal_vs_clip": pooled(spread)})
    return rows


def linear_denoiser(bank: OrganismBank) -> Callable:
    """The best linear denoiser of the bank under its base measure (mean and covariance; a Wiener filter):
    the baseline a network must beat. Prompt-free, so for conditional rows it is a weak baseline."""
    weights = np.exp(bank.log_base)
    mean = weights @ bank.latents
    centred = bank.latents - mean
    values, vectors = np.linalg.eigh((centred * weights[:, None]).T @ centred)

    def x0(x: np.ndarray, sigma: float) -> np.ndarray:
        return mean + (((x - mean) @ vectors) * (values / (values + sigma ** 2))) @ vectors.T
    return x0


@dataclass
class Trajectories:
    final: np.ndarray          # float64 [samples, dim]
    weights: np.ndarray        # float64 [steps, samples, clips]: closed-form posterior at each step's latent
    sigmas: np.ndarray         # float64 [steps]


def network_velocity(model: Organism, shown: Sequence[Sequence[str]]) -> Callable:
    present = model.encoder.present(shown)

    def velocity(model_input: torch.Tensor, timestep: torch.Tensor, sigma: float) -> torch.Tensor:
        with torch.no_grad():
            return model.velocity(model_input, torch.full((len(model_input),), sigma), present)
    return velocity


def ideal_velocity(bank: OrganismBank, priors: np.ndarray) -> Callable:
    def velocity(model_input: torch.Tensor, timestep: torch.Tensor, sigma: float) -> torch.Tensor:
        c_in, c_skip, c_out = (float(c) for c in preconditioning(torch.tensor(sigma, dtype=torch.float64)))
        x = model_input.double().numpy() / c_in
        x0, _ = posterior_mean(x, sigma, bank.latents, priors)
        return torch.from_numpy((x0 - c_skip * x) / c_out).to(model_input.dtype)
    return velocity


def sample(velocity: Callable, bank: OrganismBank, priors: np.ndarray, seeds: Sequence[int],
           steps: int = PRESET.steps, progress: str | None = None) -> Trajectories:
    """The ideal model's sampler loop (diffusion/ideal.py) around any velocity(model_input, timestep, sigma);
    sample r starts from, and draws its SDE noise from, torch.Generator seeded with seeds[r]."""
    from tqdm import tqdm

    sampler = scheduler()
    sampler.set_timesteps(steps)
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    latents = torch.stack([torch.randn(bank.dim, generator=g) for g in generators]) * sampler.init_noise_sigma
    sampler.noise_sampler = PerSampleGaussianNoise(generators, (bank.dim,))
    weights, sigmas = [], []
    for timestep in tqdm(sampler.timesteps, desc=progress, disable=progress is None, unit="step", leave=False):
        model_input = sampler.scale_model_input(latents, timestep)
        sigma = float(sampler.sigmas[sampler.step_index])
        sigmas.append(sigma)
        weights.append(posterior_mean(latents.double().numpy(), sigma, bank.latents, priors)[1])
        latents = sampler.step(velocity(model_input, timestep, sigma), timestep, latents).prev_sample
    return Trajectories(latents.double().numpy(), np.stack(weights), np.array(sigmas))


def nearest_clips(bank: OrganismBank, latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest bank clip, distance to it) per row."""
    distances = np.sqrt(np.maximum(np.square(latents).sum(1)[:, None] - 2 * latents @ bank.latents.T
                                   + np.square(bank.latents).sum(1)[None, :], 0))
    nearest = distances.argmin(axis=1)
    return nearest, distances[np.arange(len(latents)), nearest]


def prompt_shares(bank: OrganismBank, prompts: Sequence[tuple[str, ...]], finals: Sequence[np.ndarray]) -> list[dict]:
    """Per prompt: the share of samples whose nearest bank clip carries every prompt label."""
    rows = []
    for labels, final in zip(prompts, finals):
        nearest, distance = nearest_clips(bank, final)
        hits = [set(labels) <= set(bank.labels[clip]) for clip in nearest]
        rows.append({"prompt": ";".join(labels), "share": float(np.mean(hits)), "samples": len(final),
                     "median_distance": float(np.median(distance))})
    return rows


def unconditional_spread(bank: OrganismBank, final: np.ndarray) -> dict:
    """How far the final samples' nearest clips are from the bank's base measure: total variation, a chi-square
    test against the expected counts, and per label the share of samples whose clip carries it beside the
    base measure's probability of that label."""
    from scipy.stats import chisquare

    nearest, distance = nearest_clips(bank, final)
    counts = np.bincount(nearest, minlength=len(bank.labels))
    expected = np.exp(bank.log_base)
    labels = sorted({label for clip in bank.labels for label in clip})
    carries = {label: np.array([label in clip for clip in bank.labels]) for label in labels}
    return {"samples": int(counts.sum()), "distinct_clips": int((counts > 0).sum()),
            "total_variation": float(0.5 * np.abs(counts / counts.sum() - expected).sum()),
            "chi2_p": float(chisquare(counts, expected * counts.sum()).pvalue), "max_count": int(counts.max()),
            "median_distance": float(np.median(distance)),
            "label_shares": {label: {"share": float(carries[label][nearest].mean()),
                                     "base": float(expected[carries[label]].sum())} for label in labels}}


def commitment_steps(bank: OrganismBank, trajectories: Trajectories) -> dict[str, np.ndarray]:
    """Per label and sample (of the final sample's nearest clip): the first step from which the closed-form
    posterior mass of that label stays at or above COMMIT_MASS; label -> int array [samples carrying it].
    "clip" is the mass of the nearest clip itself."""
    nearest, _ = nearest_clips(bank, trajectories.final)
    out: dict[str, list[int]] = {}
    labels = sorted({label for clip in bank.labels for label in clip})
    masks = {label: np.array([label in clip for clip in bank.labels], dtype=np.float64) for label in labels}
    for sample, clip in enumerate(nearest):
        groups = {label: masks[label] for label in bank.labels[clip]}
        groups["clip"] = np.eye(len(bank.labels))[clip]
        for name, mask in groups.items():
            mass = trajectories.weights[:, sample, :] @ mask
            below = np.nonzero(mass < COMMIT_MASS)[0]
            out.setdefault(name, []).append(int(below[-1] + 1) if len(below) else 0)
    return {name: np.array(values) for name, values in out.items()}


def evaluation_prompts(bank: OrganismBank) -> list[tuple[str, ...]]:
    """Every single label, every label set of a one-family clip, and every seventh two-family set."""
    singles = sorted({(label,) for labels in bank.labels for label in labels})
    solo = sorted({tuple(labels) for labels in bank.labels if len(labels) == 2 and len(set(labels)) == 2})
    families = sorted({tuple(label for label in labels if label not in ("acoustic", "electronic", "synthetic"))
                       for labels in bank.labels})
    pairs = [labels for labels in families if len(labels) == 2][::7]
    return singles + [labels for labels in solo if labels not in pairs] + pairs


def evaluate(model: Organism, bank: OrganismBank, keep_probability: float, unconditional_samples: int = 640,
             prompt_samples: int = 16, draws: int = 256, seed: int = 1, progress: bool = True) -> dict:
    """Everything above for one organism beside its closed form, as one record (evaluation.json)."""
    sigmas = schedule_sigmas()
    errors = [row for conditional in (False, True)
              for row in denoising_error(model, bank, keep_probability, sigmas, draws, seed, conditional)]
    base = bank.log_base[None, :]
    seeds = [seed * 1_000_003 + r for r in range(unconditional_samples)]
    show = (lambda name: name) if progress else (lambda name: None)
    runs = {"organism": sample(network_velocity(model, [()] * len(seeds)), bank, base, seeds,
                               progress=show("organism, unconditional")),
            "ideal": sample(ideal_velocity(bank, base), bank, base, seeds, progress=show("ideal, unconditional"))}
    spread = {name: unconditional_spread(bank, run.final) for name, run in runs.items()}
    commitment = {name: commitment_steps(bank, run) for name, run in runs.items()}
    timing = [{"label": label, "samples_organism": len(commitment["organism"].get(label, [])),
               "median_organism": _median(commitment["organism"].get(label)),
               "median_ideal": _median(commitment["ideal"].get(label)),
               "samples_ideal": len(commitment["ideal"].get(label, []))}
              for label in sorted(set(commitment["organism"]) | set(commitment["ideal"]))]
    # All prompts' trajectories in one batch: rows carry their own labels and prior.
    prompts = evaluation_prompts(bank)
    rows = [labels for labels in prompts for _ in range(prompt_samples)]
    priors = np.stack([log_prior(labels, bank.labels, keep_probability, bank.log_base) for labels in rows])
    prompt_seeds = [seed * 1_000_003 + 500_000 + r for r in range(len(rows))]
    finals = {"organism": sample(network_velocity(model, rows), bank, priors, prompt_seeds,
                                 progress=show("organism, prompts")).final,
              "ideal": sample(ideal_velocity(bank, priors), bank, priors, prompt_seeds,
                              progress=show("ideal, prompts")).final}
    shares = [{"generator": name, **share}
              for name, final in finals.items()
              for share in prompt_shares(bank, prompts, np.split(final, len(prompts)))]
    summary = {name: float(np.mean([row["share"] for row in shares if row["generator"] == name]))
               for name in ("organism", "ideal")}
    return {"denoising_error": errors, "unconditional": spread, "commitment": timing,
            "prompt_shares": shares, "prompt_share_mean": summary,
            "settings": {"draws": draws, "unconditional_samples": unconditional_samples,
                         "prompt_samples": prompt_samples, "seed": seed, "commit_mass": COMMIT_MASS,
                         "steps": PRESET.steps, "sigma_min": PRESET.sigma_min, "sigma_max": PRESET.sigma_max}}


def summary_lines(result: dict) -> list[str]:
    """The evaluation as the README quotes it (markdown lines; tests/test_organism_generator.py checks that the
    README holds exactly these for the committed checkpoint)."""
    errors = result["denoising_error"]
    by_sigma = {}
    for row in errors:
        by_sigma.setdefault(row["sigma"], {})[row["conditional"]] = row
    lines = ["| sigma | x0 error, no labels | x0 error, labels shown | best linear denoiser (no labels) |",
             "|---|---|---|---|"]
    for sigma in sorted(by_sigma, reverse=True)[::5]:
        rows = by_sigma[sigma]
        lines.append(f"| {sigma:.3g} | {rows[False]['relative_error']:.3f} | {rows[True]['relative_error']:.3f} | "
                     f"{rows[False]['linear_error']:.3f} |")
    shares = result["prompt_share_mean"]
    lines.append(f"- Prompt share (final sample's nearest clip carries the prompt's labels, labels shown): organism "
                 f"{shares['organism']:.2f}, ideal {shares['ideal']:.2f}.")
    for name in ("organism", "ideal"):
        spread = result["unconditional"][name]
        lines.append(f"- Unconditional, {name}: {spread['distinct_clips']} distinct clips of {spread['samples']} "
                     f"samples, total variation from the base measure {spread['total_variation']:.2f}, median "
                     f"distance to the nearest clip {spread['median_distance']:.2g}.")
    timing = ", ".join(f"{row['label']} {row['median_organism']:g}/{row['median_ideal']:g}"
                       for row in result["commitment"] if row["median_organism"] is not None
                       and row["median_ideal"] is not None)
    lines.append(f"- Median commit step per label (organism/ideal): {timing}.")
    return lines


def _median(values) -> float | None:
    return None if values is None or len(values) == 0 else float(np.median(values))


def build_parser():
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="organism checkpoint directory (unset: <data>/organism/<bank>/)")
    parser.add_argument("--bank", default="planted", help="the bank of the default --checkpoint directory")
    parser.add_argument("--seed", type=int, default=1, help="seed of the evaluation's draws and trajectories")
    parser.add_argument("--unconditional-samples", type=int, default=640, help="prompt-free trajectories")
    parser.add_argument("--prompt-samples", type=int, default=16, help="trajectories per evaluation prompt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(args) -> None:
    directory = args.checkpoint or Path(args.data) / "organism" / args.bank
    if not (directory / RECORD).is_file():
        raise InputError(f"{directory / RECORD}: no organism checkpoint — run `make organism` or "
                         "diffusion/organism/train.py first")
    if args.unconditional_samples < 1 or args.prompt_samples < 1:
        raise InputError("--unconditional-samples and --prompt-samples must be at least 1")
    model, record = load_checkpoint(directory)
    recipe = record["recipe"]
    bank = load_bank(recipe["bank"], recipe["bank_seed"])
    if bank.sha256 != record["bank"]["sha256"]:
        raise InputError(f"{directory / RECORD}: trained on another {recipe['bank']} bank than the one built "
                         "now — retrain with --force")
    prov = Provenance(directory / EVALUATION, {
        "weights_sha256": record["weights_sha256"], "bank_sha256": bank.sha256,
        "settings": {"seed": args.seed, "unconditional_samples": args.unconditional_samples,
                     "prompt_samples": args.prompt_samples}})
    if decide(prov, args.force, "pass --force to evaluate again"):
        print(f"{directory / EVALUATION}: evaluated already — nothing to do (--force redoes it)")
        return
    torch.set_num_threads(recipe["threads"])
    result = evaluate(model, bank, recipe["keep_probability"], args.unconditional_samples, args.prompt_samples,
                      seed=args.seed, progress=not args.no_progress)
    commit(prov, {"evaluation": result})
    for row in result["denoising_error"][::5]:
        print(f"sigma {row['sigma']:8.4f} {'cond  ' if row['conditional'] else 'uncond'} error "
              f"{row['relative_error']:.3f} (linear {row['linear_error']:.3f})")
    print("prompt share (organism, ideal):", result["prompt_share_mean"])
    for name, spread in result["unconditional"].items():
        print(f"unconditional {name}: {spread['distinct_clips']} distinct clips, total variation from the base "
              f"measure {spread['total_variation']:.3f}, median distance to the nearest clip "
              f"{spread['median_distance']:.3g}")


if __name__ == "__main__":
    main_exit(main, build_parser())
