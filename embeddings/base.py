"""The embedder interface shared by stage 3 (generated clips) and stage 5 (NSynth notes).

An embedder turns a batch of mono waveforms at its own sample rate into a batch of float32 vectors, and says
its rate, window policy and dimension. Reading, resampling, batching, streaming and the chunked, resumable
.npy output are shared (embeddings/run.py), so a new embedder is one new file registered in
embeddings/__init__.py.
"""
from abc import ABC, abstractmethod

import numpy as np


class Embedder(ABC):
    name: str            # artifact stem: <...>/embeddings/<name>.npy
    sample_rate: int     # waveforms passed to embed() are mono at this rate
    dim: int
    window_policy: str   # one sentence: how clips shorter/longer than the window are handled

    @abstractmethod
    def provenance(self) -> dict:
        """embedder name, model id, checkpoint sha256, window policy, dim, any setting that changes vectors."""

    @abstractmethod
    def embed(self, waveforms: list[np.ndarray]) -> np.ndarray:
        """List of mono float32 waveforms (any lengths) -> float32 [len(waveforms), dim]."""
