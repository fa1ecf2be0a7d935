"""A model directory placed where `hf download` would leave it, so a hub id resolves offline."""
import shutil
from pathlib import Path

FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def put_in_hub_cache(model_dir, cache_root, repo_id: str) -> Path:
    """Copy model_dir to <cache_root>/models--owner--name/snapshots/<commit>/ with refs/main pointing at it."""
    repo = Path(cache_root) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / FAKE_COMMIT
    shutil.copytree(model_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(FAKE_COMMIT)
    return snapshot
