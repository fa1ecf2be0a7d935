"""Generators by name: `load_generator("ideal")`, `load_generator("stable-audio-open", model=...)`."""
import importlib

# name -> "module:Class"; a new backend is one new file and one line here.
GENERATORS = {
    "ideal": "diffusion.ideal:IdealGenerator",
    "stable-audio-open": "diffusion.stable_audio:StableAudioGenerator",
    "musicgen": "diffusion.musicgen:MusicgenGenerator",
}


def load_generator(name: str, **options):
    if name not in GENERATORS:
        raise KeyError(f"unknown generator {name!r}; choose from {sorted(GENERATORS)}")
    module_name, class_name = GENERATORS[name].split(":")
    backend = getattr(importlib.import_module(module_name), class_name)
    if "options" in options and not getattr(backend, "options", None):
        from data.stage import InputError

        raise InputError(f"the {name} generator has no --generator-option settings — drop them")
    return backend(**options)
