"""Embedders by name: `load_embedder("spectral")`, `load_embedder("clap", model="laion/larger_clap_general")`,
and the one rule that turns `--embedder NAME [--model X]` into the artifact stem stages 3, 5 and 6 share."""
import importlib
import re
from pathlib import Path

from data.identifiers import safe_name
from data.stage import InputError

# name -> "module:Class"; a new embedder is one new file and one line here.
EMBEDDERS = {
    "spectral": "embeddings.spectral:SpectralEmbedder",
    "clap": "embeddings.clap:ClapEmbedder",
    "musicnn": "embeddings.musicnn:MusicnnEmbedder",
    "musicnn-tags": "embeddings.musicnn:MusicnnTagger",
}
# The checkpoint an embedder with weights loads when --model is not given; embedders absent here take no model.
DEFAULT_MODELS = {
    "clap": "laion/larger_clap_general",
    "musicnn": "MTT_musicnn",
    "musicnn-tags": "MTT_musicnn",
}


def load_embedder(name: str, **options):
    if name not in EMBEDDERS:
        raise KeyError(f"unknown embedder {name!r}; choose from {sorted(EMBEDDERS)}")
    module_name, class_name = EMBEDDERS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)(**options)


def embedding_stem(embedder: str, model: str | None = None) -> str:
    """The file stem of `--embedder NAME [--model X]`: <data>/.../embeddings/<stem>.npy.

    NAME alone for embedders without weights ("spectral"); NAME-<checkpoint> otherwise, where the checkpoint
    is a local directory's name or a hub id's last part ("clap-larger_clap_general"). Needs no model loaded,
    so stage 6 finds the files stages 3 and 5 wrote from the same two options.
    """
    if embedder not in EMBEDDERS:
        raise InputError(f"--embedder {embedder!r} is not an embedder — choose from {', '.join(sorted(EMBEDDERS))}")
    if model is None:
        model = DEFAULT_MODELS.get(embedder)
        if model is None:
            return embedder
    elif embedder not in DEFAULT_MODELS:
        raise InputError(f"--model is not an option of the {embedder} embedder — leave it out")
    path = Path(model).expanduser()
    checkpoint = path.resolve().name if path.is_dir() else str(model).rstrip("/").split("/")[-1]
    stem = f"{embedder}-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", checkpoint)
    # It names files and folders (data/identifiers.py's rule): a model folder's name can be anything.
    return safe_name(stem, "embedding stem", f"--model {model}", "rename the model folder (the stem is "
                                                                 "<embedder>-<folder name>)")
