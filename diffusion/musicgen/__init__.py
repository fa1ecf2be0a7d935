"""MusicGen through transformers: a trajectory over decoder layers (DecoderLens), residual-stream capture and
interventions on the decoder's blocks, one module per idea:

- options.py    stage 2 --generator-option keys (lens, residuals, guidance_scale, top_k, top_p, temperature,
                do_sample, melody), parsed and checked;
- loading.py    a hub id or save_pretrained directory, and a melody for MusicGen Melody;
- sampling.py   the library's CFG and warpers with one RNG per row (`RowSeededSampler`), so sample r has seed + r;
- hooks.py      the decoder's hook points, the generated-position clock, the residual and component-mean recorders
                and interchange, all as (name, fn) hook lists;
- runner.py     generation, the two layer lenses (logit, regenerate) and decoding;
- generator.py  the stage 2 Generator (`MusicgenGenerator`).

transformers' `generate()` is called as is; our additions are one logits processor and hooks that come off on exit.
"""
from diffusion.musicgen.generator import MusicgenGenerator
from diffusion.musicgen.runner import MusicgenRunner

__all__ = ["MusicgenGenerator", "MusicgenRunner"]
