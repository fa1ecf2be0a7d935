"""Embedders by name: `load_embedder("spectral")`, `load_embedder("clap", model="laion/larger_clap_general")`."""
import importlib

# name -> "module:Class"; a new embedder is one new file and one line here.
EMBEDDERS = {
    "spectral": "embeddings.spectral:SpectralEmbedder",
    "clap": "embeddings.clap:ClapEmbedder",
}


def load_embedder(name: str, **options):
    if name not in EMBEDDERS:
        raise KeyError(f"unknown embedder {name!r}; choose from {sorted(EMBEDDERS)}")
    module_name, class_name = EMBEDDERS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)(**options)
