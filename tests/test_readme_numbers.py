"""The demo's numbers quoted in README.md are the ones its artifacts give (interp/summary.py).

The demo's artifacts are the demo's own: the fixture runs `make stages` on the demo's data folder (the
repository's data/, or MUSICOLOGIST_DEMO_DATA). Every stage skips work that is up to date, so after `make demo`
this costs seconds; on a fresh checkout it makes the demo's artifacts once, at the demo's settings, and the
later `make demo` skips them. The suite never runs the demo twice.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from data.files import read_json
from interp import summary

DEMO_DATA = Path(os.environ.get("MUSICOLOGIST_DEMO_DATA", REPO_ROOT / "data"))
RESULTS = DEMO_DATA / "results" / "spectral" / "logreg" / "x0"
START, END = "<!-- demo-numbers:start -->", "<!-- demo-numbers:end -->"


@pytest.fixture(scope="module")
def demo_results() -> Path:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(["make", "--no-print-directory", "stages", f"DATA={DEMO_DATA}", f"PY={sys.executable}"],
                               cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert completed.returncode == 0, f"make stages failed:\n{completed.stderr[-3000:]}"
    return RESULTS


def test_summary_files_are_what_the_csvs_give(demo_results):
    expected = summary.summarise(demo_results)
    assert read_json(demo_results / summary.SUMMARY_JSON) == json.loads(json.dumps(expected))
    assert (demo_results / summary.SUMMARY_MD).read_text(encoding="utf-8") == summary.markdown(expected)


def test_readme_quotes_the_demo_numbers(demo_results):
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert START in readme and END in readme, f"README.md lacks the {START} ... {END} block"
    quoted = readme.split(START, 1)[1].split(END, 1)[0].strip()
    expected = summary.markdown(summary.summarise(demo_results)).strip()
    assert quoted == expected, ("README.md's demo numbers are not what the artifacts give; paste the output of "
                                f"`python interp/summary.py {demo_results}` between the markers")
