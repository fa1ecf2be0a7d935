"""Stage 2's `musicgen` backend: a trajectory over decoder layers (DecoderLens) of EnCodec code sequences, with
residual-stream capture and interventions on the decoder's blocks.

Residual capture (generator option `residuals`): each decoder block's output (the residual stream after block
ℓ − 1 is trajectory layer ℓ) for the conditional rows (`cond`) or both halves of the CFG batch (`both`), mean-pooled
over all generated positions and at the last position, float32 in memory, float16 on disk (data/ARTIFACTS.md,
stage 2 activations). Hidden states are read by hooks (diffusion/musicgen/hooks.py), not by output_hidden_states
(which generate() ignores unless the decoder config sets it).
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict

import numpy as np
import torch

from data.generation import layer_axis
from data.stage import InputError
from diffusion.base import Conditioning, Generator, TrajectoryObserver
from diffusion.interventions.hooks import hooks_applied
from diffusion.interventions.steering import steering_hooks
from diffusion.musicgen.hooks import ComponentMeans, GenerationPosition, ResidualRecorder, interchange_hooks
from diffusion.musicgen.loading import load_melody
from diffusion.musicgen.options import OPTIONS, parse_options
from diffusion.musicgen.runner import Generation, MusicgenRunner

DEFAULT_SECONDS = 10.0
POOLS = ("mean", "last")   # residual summaries: mean over generated positions, and the last position


class MusicgenGenerator(Generator):
    """Stage 2's `musicgen` backend: a layer trajectory (positions 1..L) of EnCodec code sequences.

    Latents are codes [K, frames] (long); x0 at layer ℓ is the lens's codes; there is no noisy latent (no `xt`)."""
    name = "musicgen"
    kinds = ("x0",)
    options = {key: text for key, (_, text) in OPTIONS.items()}
    # Interventions act on the decoder's blocks at generated positions (not on the layer axis of the trajectory);
    # CFG rows exist only with guidance (has_unconditional_rows, set from the sampling settings).
    intervention_site = "blocks"
    intervention_clock = "generated_position"
    cfg_layout = "cond_first"
    supports_interchange = True

    def __init__(self, model=None, preset=None, steps=None, device=None, dtype=None, decode_dtype=None,
                 options: dict | None = None):
        for flag, value in (("--preset", preset), ("--steps", steps), ("--decode-dtype", decode_dtype)):
            if value is not None:
                raise InputError(f"{flag} does not apply to musicgen (its sampling comes from the model's generation "
                                 "config and --generator-option; its trajectory is the decoder's layers) — drop it")
        self.settings = parse_options(options)
        self.lens = self.settings.get("lens", "logit")
        self.residuals = self.settings.get("residuals", "none")
        self.runner = MusicgenRunner(model, device, dtype)
        self.sampling = self.runner.sampling(self.settings)
        if self.residuals == "both" and self.sampling.guidance_scale <= 1:
            raise InputError("--generator-option residuals=both needs classifier-free guidance (guidance_scale > 1): "
                             "without it there are no unconditional rows — use residuals=cond")
        self.melody = load_melody(self.settings["melody"], self.runner.model_dir) if "melody" in self.settings else None
        if self.melody is not None and not self.runner.melody_model:
            raise InputError(f"{self.runner.model_id}: --generator-option melody needs a MusicGen Melody checkpoint "
                             "(e.g. facebook/musicgen-melody)")
        self.has_unconditional_rows = self.sampling.guidance_scale > 1
        self.sample_rate = self.runner.sample_rate
        self.channels = self.runner.channels
        self.max_seconds = self.runner.max_seconds
        self.default_seconds = min(DEFAULT_SECONDS, self.max_seconds)
        self.axis = layer_axis(self.runner.num_layers)
        # Every layer: the logit lens reads them all from one generation; DecoderLens studies every layer.
        self.default_capture = list(self.axis.positions)
        self._provenance = None

    def provenance(self) -> dict:
        if self._provenance is None:
            record = self.runner.provenance()
            record.update({
                "generator": self.name, "preset": "generation-config", "lens": self.lens,
                "residuals": self.residuals, "residual_pools": list(POOLS),
                "sampling": {**asdict(self.sampling), "scheme": "row-seeded inverse CDF after the library's CFG "
                                                                 "and warpers (diffusion/musicgen/sampling.py)"},
                "generator_options": {key: self.settings[key] for key in sorted(self.settings)},
                "melody_sha256": None if self.melody is None else hashlib.sha256(self.melody.tobytes()).hexdigest(),
                "sample_rate": self.sample_rate, "channels": self.channels, "max_seconds": self.max_seconds,
            })
            self._provenance = record
        return dict(self._provenance)

    def sample(self, conditioning: Conditioning, seed: int, num_samples: int, seconds: float,
               observer: TrajectoryObserver | None) -> torch.Tensor:
        if not isinstance(conditioning.prompt, str) or not conditioning.prompt.strip():
            raise InputError("empty prompt — every prompt needs text (fix prompts/annotated.csv or rerun stage 1)")
        if not 0 < seconds <= self.max_seconds + 1e-9:
            raise InputError(f"--seconds {seconds:g} is outside (0, {self.max_seconds:g}] for {self.runner.model_id}")
        if observer is not None and "xt" in observer.kinds:
            raise InputError("musicgen has no noisy latent (xt): its trajectory is over decoder layers — use --kinds x0")
        wanted = self._wanted(observer)
        full, per_layer = self._generate_layers(conditioning.prompt, [seed + row for row in range(num_samples)],
                                                seconds, wanted,
                                                lambda: steering_hooks(self, conditioning.steering, num_samples))
        self._report(observer, wanted, full, per_layer, range(num_samples))
        return full.codes

    def _wanted(self, observer) -> list[int]:
        wanted = sorted(observer.capture) if observer is not None else []
        return [layer for layer in wanted if layer in self.axis.positions]

    def _generate_layers(self, prompt: str, row_seeds: list[int], seconds: float, wanted: list[int], hooks):
        """One generation of len(row_seeds) rows under hooks() (fresh Hooks per generate() call), and each wanted
        layer's codes through the lens."""
        last, rows = self.runner.num_layers, len(row_seeds)
        record = (self.lens == "logit" and any(layer != last for layer in wanted)) or self.residuals != "none"
        with hooks_applied(self.runner.hook_points, hooks()):
            full = self.runner.generate(prompt, row_seeds[0], rows, seconds, self.sampling, record_residuals=record,
                                        melody=self.melody, row_seeds=row_seeds)
        if self.lens == "logit":
            per_layer = self.runner.logit_lens(full, self.sampling, wanted).codes
        else:
            per_layer = {last: full.codes}
            for layer in (layer for layer in wanted if layer != last):
                # The intervention's hooks sit on the block modules, which the truncated decoder keeps.
                with hooks_applied(self.runner.hook_points, hooks()):
                    per_layer[layer] = self.runner.generate(prompt, row_seeds[0], rows, seconds, self.sampling,
                                                            layers=layer, melody=self.melody,
                                                            row_seeds=row_seeds).codes
        return full, per_layer

    def _report(self, observer, wanted: list[int], full: Generation, per_layer: dict, rows: range) -> None:
        """Give the observer the codes (and residual summaries) of batch rows `rows` as its samples 0.."""
        if observer is None:
            return
        for layer in wanted:
            observer(layer, None, None, per_layer[layer][rows.start:rows.stop])
        if self.residuals != "none":
            summaries, array = residual_summaries(full.residuals, full.codes.shape[0], self.residuals == "both")
            chosen = [i for i, row in enumerate(summaries) if row["sample"] in rows]
            observer.keep_activations([{**summaries[i], "sample": summaries[i]["sample"] - rows.start}
                                       for i in chosen], array[chosen])

    def sample_sites(self, prompt: str, seed: int, num_samples: int, seconds: float, observers: list,
                     means_a: np.ndarray, means_b: np.ndarray, sites: list, op: str,
                     rows: str = "conditional") -> None:
        """Interchange: every (component, block) site of `sites` for samples seed .. seed + n - 1 in ONE batched
        generation, site i on rows i*n .. i*n + n - 1 (each with its sample's seed, so it pairs with the
        reference clip); observers[i] gets site i's layers as its samples 0..n-1."""
        assignments = [site for site in sites for _ in range(num_samples)]
        row_seeds = [seed + sample for _ in sites for sample in range(num_samples)]
        wanted = self._wanted(observers[0])
        full, per_layer = self._generate_layers(
            prompt, row_seeds, seconds, wanted,
            lambda: interchange_hooks(self.runner.num_layers, means_a, means_b, assignments, op, rows))
        for i, observer in enumerate(observers):
            self._report(observer, wanted, full, per_layer, range(i * num_samples, (i + 1) * num_samples))

    def component_means(self, prompts: list[tuple[str, int]], num_samples: int, seconds: float) -> np.ndarray:
        """Mean output of every (component, block, generated position, CFG branch) over the samples of `prompts`
        ((text, seed of sample 0) pairs): float32 [components, blocks, positions, branches, dim] (ComponentMeans)."""
        recorder = ComponentMeans(self.runner.num_layers, num_samples)
        with hooks_applied(self.runner.hook_points, recorder.hooks):
            for prompt, seed in prompts:
                self.runner.generate(prompt, seed, num_samples, seconds, self.sampling, melody=self.melody)
        return recorder.means()

    def decode(self, latents: torch.Tensor, seconds: float) -> np.ndarray:
        return self.runner.decode(latents, seconds)

    def clock_ticks(self, seconds: float) -> int:
        """Generated positions of a `seconds`-long clip: its frames plus the delay pattern's tail."""
        return self.runner.frames(seconds) + self.runner.delay

    def hook_points(self) -> dict[str, torch.nn.Module]:
        return self.runner.hook_points

    def hook_clock(self) -> GenerationPosition:
        return GenerationPosition()


def residual_summaries(recorder: ResidualRecorder, num_samples: int, unconditional: bool):
    """Per (sample, branch, layer, pool) one vector: rows (list of dicts) and float32 [n_rows, D].

    branch cond = rows 0..B−1 of the CFG batch, uncond = rows B..2B−1; layer is the trajectory's 1-based layer
    (layer ℓ = the output of block ℓ − 1); pool mean = mean over every generated position, last = the last position.
    """
    branches = [("cond", 0)] + ([("uncond", num_samples)] if unconditional else [])
    per_layer = {index: recorder.stacked(index) for index in recorder.blocks}   # [positions, rows, D]
    rows, vectors = [], []
    for sample in range(num_samples):
        for branch, offset in branches:
            for index in recorder.blocks:
                residual = per_layer[index][:, offset + sample]
                for pool, vector in (("mean", residual.mean(dim=0)), ("last", residual[-1])):
                    rows.append({"sample": sample, "branch": branch, "layer": index + 1, "pool": pool})
                    vectors.append(vector)
    return rows, torch.stack(vectors).cpu().numpy()
