"""report.html links every captured clip, embeds its figures, renders in headless Chromium; the example
notebook runs against the same results."""
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import nbformat
import pytest
from nbclient import NotebookClient
from test_stage6_data import EMBEDDER, analysed_data

from interp import page, stage6_probe, summary

REPO_ROOT = Path(__file__).resolve().parent.parent


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.audio, self.images, self.details = [], [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "audio":
            self.audio.append(attrs)
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "details":
            self.details += 1


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = analysed_data(tmp_path_factory)
    out = stage6_probe.results_dir(root, EMBEDDER, "logreg", "x0")
    return root, out / "report.html"


def test_every_audio_player_links_an_existing_wav(report):
    root, path = report
    collector = _Collector()
    collector.feed(path.read_text(encoding="utf-8"))
    assert len(collector.audio) == 40 * 2 * 6  # every captured step of every sample of every prompt
    for attrs in collector.audio:
        assert not os.path.isabs(attrs["src"]) and attrs["preload"] == "none"
        assert (path.parent / attrs["src"]).resolve().is_file(), attrs["src"]
    # Figures are embedded, so the page needs nothing but the wavs: overview figures plus one per concept.
    # families, a heatmap per yardstick (prompt, content), PCA, drift + one per concept
    assert len(collector.images) == 5 + 28
    assert all(src.startswith("data:image/png;base64,") for src in collector.images)
    assert collector.details >= 28 + 40


def test_overview_shows_both_yardsticks_side_by_side(report):
    _, path = report
    page = path.read_text(encoding="utf-8")
    overview = page[page.index("<h2>Overview</h2>"):page.index("<h2>Known answers</h2>")]
    assert "emergence vs prompts" in overview and "emergence vs final content" in overview
    brass = next(line for line in overview.splitlines() if "#concept-is_brass'" in line)
    # Brass emerges at step 40 [40, 40] against both yardsticks; its probe quality has no CI (one test instrument).
    assert brass.count("<b>emerged</b> at step 40 <span class='muted'>[40, 40]") == 2
    assert "come from one instrument" in brass
    assert "transient" in overview or "never" in overview
    # The known answers: planted against recovered, per concept, with the oracle beside.
    known = page[page.index("<h2>Known answers</h2>"):page.index("<h2>Figures</h2>")]
    brass = next(line for line in known.splitlines() if ">is_brass<" in line)
    assert "inside" in brass and "Recovered" in known


def test_headline_box_carries_the_summary_and_names_the_generator(report):
    _, path = report
    text = path.read_text(encoding="utf-8")
    headline = text[text.index("<div class=\"headline\">"):text.index("<h2>Overview</h2>")]
    # Every finding of summary.md, in the order the README quotes them, is in the box (bold kept).
    findings = (path.parent / summary.SUMMARY_MD).read_text(encoding="utf-8").splitlines()
    assert len(findings) >= 8
    for line in findings:
        label = line[2:line.index("**", 4) + 2].strip("*")
        assert f"<li><b>{label}</b>" in headline, label
    assert "Generator <b>synthetic</b>" in headline and "decoded clean estimate x0" in headline
    assert "Embedder <b>spectral</b>" in headline and "probe <b>logreg</b>" in headline
    assert "class='warning'" not in headline  # a generator that declares no model_kind gets no warning


@pytest.mark.parametrize("generation, kind, lens, warned", [
    ({"generator": "ideal", "model": "soundfont bank", "model_kind": "reference model, not a trained one",
      "preset": "planted"}, "x0", "decoded clean estimate x0", "reference (\"ideal\") model"),
    ({"generator": "organism", "model": "tiny DiT", "model_kind": "untrained"}, "x0", "clean estimate x0",
     "model organism"),
    ({"generator": "stable_audio", "model": "stabilityai/stable-audio-open-1.0"}, "xt", "noisy latent xt", None),
    ({"generator": "musicgen", "model": "facebook/musicgen-small", "lens": "logit"}, "x0", "logit lens", None),
    ({"generator": "musicgen", "model": "facebook/musicgen-small", "lens": "regenerate"}, "x0",
     "DecoderLens regeneration", None),
])
def test_made_by_names_generator_model_and_lens_and_warns(generation, kind, lens, warned):
    line = page.made_by(generation, kind)
    assert f"Generator <b>{generation['generator']}</b>" in line and page.escape(generation["model"]) in line
    assert lens in line
    if warned is None:
        assert "class='warning'" not in line
    else:
        assert "class='warning'" in line and page.escape(warned) in line


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("chromium is not installed — run `make browser` (the report test needs it)")
    _, path = report
    screenshot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={screenshot}", "--window-size=1280,1600", path.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    pixels = matplotlib.image.imread(screenshot)
    assert pixels.shape[:2] == (1600, 1280)
    # A page that failed to render is one flat colour; the tables, text and figures are not.
    assert pixels[..., :3].std() > 0.05


def test_example_notebook_reproduces_an_emergence_curve(report, monkeypatch):
    root, _ = report
    monkeypatch.setenv("MUSICOLOGIST_DATA", str(root))
    monkeypatch.setenv("MUSICOLOGIST_EMBEDDER", EMBEDDER)
    monkeypatch.setenv("MUSICOLOGIST_CONCEPT", "is_brass")
    notebook = nbformat.read(REPO_ROOT / "examples" / "explore.ipynb", as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO_ROOT / "examples")}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output.get("output_type") == "error"]
    assert any("image/png" in output.get("data", {}) for output in outputs)
