"""What every backend that takes `--model` (a local directory or a hub id) shares: telling the two apart, and one
actionable line for a failed Hugging Face hub load."""
import os
import re
from pathlib import Path

from data.stage import InputError

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def local_model_dir(model: str, example_hub_id: str) -> Path | None:
    """The directory `model` names, or None when it is a hub id to fetch; one-line errors for anything else."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(f"{model}: is a file, not a model directory — pass the directory save_pretrained wrote "
                             f"or a hub id such as {example_hub_id}")
        return path
    if not REPO_ID.match(model) or model.startswith((".", "/", "~")):
        raise InputError(f"{model}: no such directory — pass an existing model directory or a hub id such as "
                         f"{example_hub_id}")
    return None


def hub_error_message(model: str, error: BaseException) -> str | None:
    """One actionable line for a hub failure anywhere in the exception chain, or None if it is not one."""
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError)

    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    if any(isinstance(item, GatedRepoError) for item in chain):
        return (f"{model}: access to this gated repository was denied — accept its licence at "
                f"https://huggingface.co/{model} and set HF_TOKEN (or run `hf auth login`)")
    if any(isinstance(item, RepositoryNotFoundError) for item in chain):
        return (f"{model}: no such repository on the Hugging Face hub, or it is private — check the id, "
                "set HF_TOKEN, or pass a local directory")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if offline or any(isinstance(item, (OfflineModeIsEnabled, LocalEntryNotFoundError)) for item in chain):
        from huggingface_hub.constants import HF_HUB_CACHE

        why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
        return (f"{model}: not in the Hugging Face cache ({HF_HUB_CACHE}) and {why} — download it once online "
                f"(`hf download {model}`, with HF_TOKEN for gated repos) or pass a local directory")
    if any(isinstance(item, (ConnectionError, TimeoutError)) or "connect" in type(item).__name__.lower()
           for item in chain):
        return f"{model}: cannot reach the Hugging Face hub ({chain[-1]}) — check the network or pass a local directory"
    return None
