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


def parse_generator_options(pairs: list[str]) -> dict[str, str]:
    """--generator-option KEY=VALUE pairs as a dict of strings; the backend parses and checks the values. A key
    given twice is refused (one of the two values would be dropped without a word)."""
    options = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key.strip():
            raise InputError(f"--generator-option {pair!r} is not KEY=VALUE — e.g. --generator-option lens=regenerate")
        if key.strip() in options:
            raise InputError(f"--generator-option {key.strip()} is given twice — pass each KEY once")
        options[key.strip()] = value.strip()
    return options
