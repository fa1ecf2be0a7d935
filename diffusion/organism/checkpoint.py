"""The organism on disk: weights, the recipe that made them, and the loss log.

A checkpoint directory holds
- organism.safetensors: the EMA weights of the transformer (`transformer.*`) and the label encoder (`encoder.*`);
- organism.json: the recipe, the network shape, the transformer's diffusers config, the label vocabulary, the
  bank it was trained on (source, description, content hash), the wall time and the weights' sha256;
- loss.csv (step, loss, lr, seconds) and loss.png, the loss curve.
Written atomically (data/files.py) under the provenance rule (data/provenance.py): organism.json is the sidecar,
written last, so a killed run never leaves a checkpoint that looks complete, and a rerun with the same recipe
and bank skips, with another one is refused without --force.
Loading checks what it reads: a record that is not JSON or lacks a field the loaders use, weights that are
missing, cut off, garbled (their sha256 is not the recorded one) or do not fit the recorded network are each one
InputError line naming the file and the fix (retrain), never a traceback.
"""
from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path

from data.contract import first_line, read_sidecar
from data.files import atomic_path, sha256_file, write_text
from data.provenance import Provenance, begin, commit
from data.stage import InputError
from diffusion.organism.banks import SOURCES_BY_NAME, OrganismBank
from diffusion.organism.model import NetworkConfig, Organism, config_of

WEIGHTS, RECORD, LOSS_CSV, LOSS_PNG = "organism.safetensors", "organism.json", "loss.csv", "loss.png"
CHECKPOINT_FORMAT = 1
RETRAIN = "retrain it (`make organism`, or diffusion/organism/train.py --force) or pass another checkpoint"
# What the loaders read from organism.json (dotted: nested), and the JSON type each must have; the rest of the
# record is for people.
RECORD_FIELDS = {"weights_sha256": (str, "text"), "network": (dict, "an object"), "labels": (list, "a list"),
                 "dim": (int, "an integer"), "data_scale": ((int, float), "a number"),
                 "bank.sha256": (str, "text"), "recipe.bank": (str, "text"), "recipe.bank_seed": (int, "an integer"),
                 "recipe.keep_probability": ((int, float), "a number"), "recipe.threads": (int, "an integer")}


def checkpoint_provenance(directory, recipe, bank: OrganismBank) -> Provenance:
    """What makes the weights: the recipe (its network sized for the bank) and the bank's content."""
    directory = Path(directory)
    return Provenance(directory / RECORD, {"checkpoint_format": CHECKPOINT_FORMAT, "recipe": asdict(recipe),
                                           "bank": {**bank.description, "sha256": bank.sha256,
                                                    "clips": len(bank.labels)}},
                      [directory / WEIGHTS, directory / LOSS_CSV, directory / LOSS_PNG])


def save_checkpoint(directory, model: Organism, recipe, bank: OrganismBank, log: list[dict],
                    seconds: float) -> dict:
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    prov = checkpoint_provenance(directory, recipe, bank)
    tensors = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS, before_replace=lambda: begin(prov)) as tmp:
        save_file(tensors, str(tmp))
    table = io.StringIO()
    table.write("step,loss,lr,seconds\n")
    for row in log:
        table.write(f"{row['step']},{row['loss']:.6g},{row['lr']:.6g},{row['seconds']}\n")
    write_text(directory / LOSS_CSV, table.getvalue())
    plot_loss(log, directory / LOSS_PNG)
    extra = {**model.describe(), "transformer_config": config_of(model.transformer),
             "train_seconds": round(seconds, 1), "final_loss": log[-1]["loss"] if log else None,
             "weights_sha256": sha256_file(directory / WEIGHTS)}
    commit(prov, extra)
    return {**prov.record, **extra}


def read_record(directory) -> dict:
    """organism.json, holding every field the loaders read (RECORD_FIELDS); InputError naming it otherwise."""
    path = Path(directory) / RECORD
    record = read_sidecar(path, "run `make organism` (diffusion/organism/train.py) first", RETRAIN)
    for name, (kind, described) in RECORD_FIELDS.items():
        value = record
        for key in name.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, kind) or isinstance(value, bool):
            raise InputError(f"{path}: {name} is missing or not {described} — {RETRAIN}")
    if not all(isinstance(label, str) for label in record["labels"]):
        raise InputError(f"{path}: labels must be a list of text — {RETRAIN}")
    if record["recipe"]["bank"] not in SOURCES_BY_NAME:
        raise InputError(f"{path}: recipe.bank {record['recipe']['bank']!r} is not an organism bank (one of "
                         f"{', '.join(sorted(SOURCES_BY_NAME))}) — {RETRAIN}")
    return record


def load_checkpoint(directory) -> tuple[Organism, dict]:
    """The network with its EMA weights, and its record; every damage is one InputError line (module docstring)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    record = read_record(directory)
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise InputError(f"{weights}: missing — {RETRAIN}")
    if sha256_file(weights) != record["weights_sha256"]:
        raise InputError(f"{weights}: its sha256 is not the one {RECORD} records (cut off, garbled or replaced) — "
                         f"{RETRAIN}")
    try:
        model = Organism(NetworkConfig(**record["network"]), tuple(record["labels"]), record["dim"],
                         record["data_scale"])
    except (TypeError, ValueError, ArithmeticError, RuntimeError) as error:
        raise InputError(f"{directory / RECORD}: its network does not build ({first_line(error)}) — {RETRAIN}") \
            from None
    try:
        # The file matches its recorded sha256, so the record was rewritten to vouch for other weights (or
        # another network): unreadable tensors, or names and shapes the network does not have.
        model.load_state_dict(load_file(str(weights)))
    except (SafetensorError, RuntimeError, ValueError) as error:
        # torch's message is a header line and one line per wrong tensor: the first wrong tensor says enough.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        reason = lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]
        raise InputError(f"{weights}: does not load into the network {RECORD} describes ({reason}) — {RETRAIN}") \
            from None
    return model.eval(), record


def plot_loss(log: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot([row["step"] for row in log], [row["loss"] for row in log])
    axis.set(xlabel="step", ylabel="v-loss (mean of 25 steps)", yscale="log", title="organism training")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(figure)
