"""Where a stage-6 analysis goes: analyses whose choices differ are kept side by side, not written over each other.

The choices that change what an analysis asks are keyed into its folder name: the significance level (--alpha),
the random-concept baseline (--baseline) and the seed of every random draw (--seed). At their defaults the folder
is the one the README, the Makefile and the commitment search use (results/<embedder>/<probe>/<kind>/, or
results/activations/<branch>-<pool>/logreg/); otherwise the values that differ are appended, in this order, e.g.
results/spectral/logreg/x0_seed-1/ or x0_alpha-0.01_baseline-notes/. Each folder's stage6.json holds every setting.

The resampling sizes (--bootstrap, --random-baselines, --resplits) say how precisely the same analysis is
measured, not what it asks: another size in the same folder is refused unless --force, which replaces it. A study
of another generator has its own --data folder (stage 2 keeps one generation per --data), so its results are
another folder too. data/ARTIFACTS.md, "Stage 6", documents the rule."""
from pathlib import Path

# name -> default, for each space. The order is the order in the folder name.
KEYED = {
    "embeddings": {"alpha": 0.05, "baseline": "instruments", "seed": 0},
    "activations": {"alpha": 0.05, "seed": 0},
}


def _value(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def suffix(settings: dict, space: str = "embeddings") -> str:
    """'' at the defaults, else '_<name>-<value>' for each keyed setting that differs (e.g. '_seed-1')."""
    return "".join(f"_{name}-{_value(settings[name])}" for name, default in KEYED[space].items()
                   if name in settings and settings[name] != default)


def keyed(folder: Path, settings: dict, space: str = "embeddings") -> Path:
    """The analysis folder for `settings`: the default folder `folder`, its name extended by suffix()."""
    folder = Path(folder)
    return folder.with_name(folder.name + suffix(settings, space))
