import os
import sys
import tempfile
from pathlib import Path

# A hub lookup without this retries for minutes before failing; every test is offline.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The checkpoint-digest cache (data/hub.py) lives under XDG_CACHE_HOME: keep the tests' tiny models out of the user's.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="musicologist-tests-cache-")

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
