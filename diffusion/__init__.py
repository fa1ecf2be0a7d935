"""Generators by name: `load_generator("ideal")`, `load_generator("stable-audio-open", model=...)`."""
import importlib

from data.stage import InputError

# name -> "module:Class"; a new backend is one new file and one line here.
GENERATORS = {
    "ideal": "diffusion.ideal:IdealGenerator",
    "stable-audio-open": "diffusion.stable_audio:StableAudioGenerator",
    "musicgen": "diffusion.musicgen:MusicgenGenerator",
    "organism": "diffusion.organism.generator:OrganismGenerator",
}


def generator_class(name: str):
    """The backend class registered under `name` (its declared capabilities are readable before it loads)."""
    if name not in GENERATORS:
        raise KeyError(f"unknown generator {name!r}; choose from {sorted(GENERATORS)}")
    module_name, class_name = GENERATORS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def load_generator(name: str, **options):
    backend = generator_class(name)
    if "options" in options and not backend.options:
        raise InputError(f"the {name} generator has no --generator-option settings — drop them")
    return backend(**options)
