"""Interventions on a generator's sampler, one small module per idea:

- records.py  what an intervention is: a `Site` (where: "prior" or 0-based blocks; when: ticks of the generator's
              intervention clock) and one record per kind, `Steering` and `Interchange`;
- spec.py     the spec file stage 2 `--intervene` reads (format 2), and its checks against a generator;
- hooks.py    the one hook toolkit: hook-point names, `Hooks` ((name, fn) lists) and `hooks_applied`;
- steering.py activation steering as hooks, for any backend that declares hook points (diffusion/base.py).

Backend-specific parts live with their backend: the ideal model's prior tilt (diffusion/ideal.py), MusicGen's
position clock, recorders and interchange (diffusion/musicgen/hooks.py). Directions are data/directions.py; where
intervened runs live on disk is data/interventions.py; the runner is diffusion/intervened_runs.py.
"""
