"""Stage-6 artifacts as pandas DataFrames, for notebooks: `from interp import artifacts` (the Makefile installs the
checkout's packages editable, so no sys.path edit is needed; data/ARTIFACTS.md describes every column).

    study = artifacts.Results.of("data", embedder="spectral")       # results/spectral/logreg/x0/
    study.emergence("prompt"), study.emergence("content")           # both yardsticks (None: every row)
    study.emergence_steps(), study.probe_quality(), study.known_answers(), study.drift()
    study.interventions(), study.commitment(), study.interchange()  # stage 6 --compare (compare/)
    study.commitment_search(), study.commitment_curve()             # interp/commitment_search.py (commitment/)
    layers = artifacts.Results.activations("data", branch="cond", pool="mean")
    layers.emergence(), layers.directions()                          # stage 6 --space activations
    artifacts.analyses("data")                                       # every analysis under results/, one row each

Settings other than the defaults (--alpha, --baseline, --seed) name their own folders (interp/result_folder.py):
pass them as keywords, e.g. Results.of("data", embedder="spectral", seed=1). A table that the stage has not written
raises data.stage.InputError naming the stage to run."""
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd

from data.contract import generated_dir
from data.files import read_json
from data.stage import InputError
from embeddings import embedding_stem
from interp import result_folder

SIDECAR = "stage6.json"
COMPARE_DIR, COMMITMENT_DIR = "compare", "commitment"


def _read(path: Path, fix: str) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(f"{path}: missing — {fix}")
    return pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"prompt_id": str})


@dataclass(frozen=True)
class Results:
    """One stage-6 result folder (either space) and the folders stage 6 --compare and the commitment search add."""
    folder: Path
    data: Path

    @classmethod
    def of(cls, data, embedder: str = "spectral", model: str | None = None, probe: str = "logreg", kind: str = "x0",
           **settings) -> "Results":
        """The embedding-space analysis stage 6 wrote for these options (as given to stage 6)."""
        folder = Path(data) / "results" / embedding_stem(embedder, model) / probe / kind
        return cls._checked(result_folder.keyed(folder, settings), data,
                            f"run interp/stage6_probe.py --data {data} --embedder {embedder} first")

    @classmethod
    def activations(cls, data, branch: str = "cond", pool: str = "mean", **settings) -> "Results":
        """The activation-space analysis (stage 6 --space activations) of these rows and pooling."""
        folder = Path(data) / "results" / "activations" / f"{branch}-{pool}" / "logreg"
        return cls._checked(result_folder.keyed(folder, settings, "activations"), data,
                            f"run interp/stage6_probe.py --data {data} --space activations first")

    @classmethod
    def _checked(cls, folder: Path, data, fix: str) -> "Results":
        if not (folder / SIDECAR).is_file():
            raise InputError(f"{folder / SIDECAR}: missing — {fix}")
        return cls(folder, Path(data))

    # ---- what the analysis was --------------------------------------------------------------------------------
    @cached_property
    def record(self) -> dict:
        """stage6.json: inputs, settings, trajectory axis, number of tests."""
        return read_json(self.folder / SIDECAR)

    @property
    def settings(self) -> dict:
        return self.record.get("settings", {})

    @property
    def unit(self) -> str:
        """What a position is: 'step' or 'layer'."""
        return self.record.get("trajectory_axis", {}).get("unit", "step")

    @cached_property
    def generation(self) -> dict:
        """generated/generation.json of the study: generator, model, preset, lens, trajectory axis."""
        return read_json(generated_dir(self.data) / "generation.json")

    def summary(self) -> dict:
        """summary.json: the headline numbers (interp/summary.py)."""
        path = self.folder / "summary.json"
        if not path.is_file():
            raise InputError(f"{path}: missing — an embedding-space stage-6 analysis writes it")
        return read_json(path)

    # ---- the analysis' tables ---------------------------------------------------------------------------------
    def table(self, name: str) -> pd.DataFrame:
        """Any CSV of the result folder by file name, e.g. 'drift_summary.csv'."""
        return _read(self.folder / name, f"rerun stage 6 on --data {self.data}")

    def emergence(self, yardstick: str | None = None) -> pd.DataFrame:
        """emergence.csv: one row per yardstick x concept x position (AUROC with CI, p-values, secondary metrics)."""
        table = self.table("emergence.csv")
        return table if yardstick is None else table[table["yardstick"] == yardstick].reset_index(drop=True)

    def emergence_steps(self, yardstick: str | None = None) -> pd.DataFrame:
        """emergence_steps.csv: per yardstick and concept the status, emergence step and interval, final value."""
        table = self.table("emergence_steps.csv")
        return table if yardstick is None else table[table["yardstick"] == yardstick].reset_index(drop=True)

    def yardsticks(self) -> list[str]:
        """The yardsticks of this analysis, e.g. ['prompt', 'content']."""
        return list(dict.fromkeys(self.table("emergence_steps.csv")["yardstick"]))

    def probe_quality(self) -> pd.DataFrame:
        return self.table("probe_quality.csv")

    def probabilities(self) -> pd.DataFrame:
        """Per clip (prompt, sample, position) every concept probe's score."""
        return self.table("probabilities.csv")

    def known_answers(self) -> pd.DataFrame:
        return self.table("known_answers.csv")

    def known_order(self) -> pd.DataFrame:
        return self.table("known_order.csv")

    def known_commitment(self) -> pd.DataFrame:
        return self.table("known_commitment.csv")

    def drift(self) -> pd.DataFrame:
        return self.table("drift_summary.csv")

    def directions(self) -> pd.DataFrame:
        """Activation space: the probe directions stage 6 wrote, one row per concept (file, layers, AUROC per layer)."""
        folder = self.folder / "directions"
        if not folder.is_dir():
            raise InputError(f"{folder}: missing — directions come from stage 6 --space activations")
        rows = []
        for sidecar in sorted(folder.glob("*.json")):
            record = read_json(sidecar)
            rows.append({"concept": sidecar.stem, "path": str(sidecar.with_suffix(".npy")), "method": record.get("method"),
                         "branch": record.get("branch"), "blocks": record.get("blocks"),
                         "auroc": record.get("auroc")})
        return pd.DataFrame(rows)

    # ---- stage 6 --compare and the commitment search ---------------------------------------------------------
    def _compare(self, name: str) -> pd.DataFrame:
        return _read(self.folder / COMPARE_DIR / name, "run stage 6 with --compare on a study with stage 2 "
                                                       "--intervene runs")

    def interventions(self) -> pd.DataFrame:
        """compare/interventions.csv: per intervention the effect beyond random directions, KL, guards."""
        return self._compare("interventions.csv")

    def effects(self) -> pd.DataFrame:
        return self._compare("effects.csv")

    def commitment(self) -> pd.DataFrame:
        """compare/commitment.csv: per steering group the last start step still beyond the baseline."""
        return self._compare("commitment.csv")

    def pairs(self) -> pd.DataFrame:
        return self._compare("pairs.csv")

    def interchange(self) -> pd.DataFrame:
        """compare/interchange.csv: per interchange site (component, layer) the log-odds shift with its CI."""
        return self._compare("interchange.csv")

    def _search(self, name: str) -> pd.DataFrame:
        return _read(self.folder / COMMITMENT_DIR / name, "run interp/commitment_search.py (the demo runs it)")

    def commitment_search(self) -> pd.DataFrame:
        """commitment/commitment_search.csv: per concept and reader the searched commitment step and interval."""
        return self._search("commitment_search.csv")

    def commitment_curve(self) -> pd.DataFrame:
        return self._search("commitment_curve.csv")


def analyses(data) -> pd.DataFrame:
    """Every stage-6 analysis under <data>/results/: its folder, space, embedder, probe, kind and settings."""
    rows = []
    for sidecar in sorted((Path(data) / "results").glob("**/" + SIDECAR)):
        folder = sidecar.parent
        settings = read_json(sidecar).get("settings", {})
        space = settings.get("space", "embeddings")
        relative = folder.relative_to(Path(data) / "results").parts
        rows.append({"folder": str(folder), "space": space, "embedder": None if space == "activations" else relative[0],
                     **{key: value for key, value in settings.items() if not isinstance(value, (dict, list))}})
    return pd.DataFrame(rows)
