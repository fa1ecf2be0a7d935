"""The organism on disk: weights, the recipe that made them, and the loss log.

A checkpoint directory holds
- organism.safetensors: the EMA weights of the transformer (`transformer.*`) and the label encoder (`encoder.*`);
- organism.json: the recipe, the network shape, the transformer's diffusers config, the label vocabulary, the
  bank it was trained on (source, description, content hash), the wall time and the weights' sha256;
- loss.csv (step, loss, lr, seconds) and loss.png, the loss curve.
Written atomically (data/files.py) under the provenance rule (data/provenance.py): organism.json is the sidecar,
written last, so a killed run never leaves a checkpoint that looks complete, and a rerun with the same recipe
and bank skips, with another one is refused without --force.
"""
from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path

from data.files import atomic_path, read_json, sha256_file, write_text
from data.provenance import Provenance, begin, commit
from diffusion.organism.banks import OrganismBank
from diffusion.organism.model import NetworkConfig, Organism, config_of

WEIGHTS, RECORD, LOSS_CSV, LOSS_PNG = "organism.safetensors", "organism.json", "loss.csv", "loss.png"
CHECKPOINT_FORMAT = 1


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


def load_checkpoint(directory) -> tuple[Organism, dict]:
    from safetensors.torch import load_file

    directory = Path(directory)
    record = read_json(directory / RECORD)
    if sha256_file(directory / WEIGHTS) != record["weights_sha256"]:
        raise ValueError(f"{directory / WEIGHTS}: its sha256 is not the one {RECORD} records — retrain it")
    model = Organism(NetworkConfig(**record["network"]), tuple(record["labels"]), record["dim"], record["data_scale"])
    model.load_state_dict(load_file(str(directory / WEIGHTS)))
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
