"""report.html links every captured clip, embeds its figures, renders in headless Chromium; the example
notebook runs against the same results."""
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest
from stage_runs import run_notebook
from test_stage6_data import EMBEDDER, analysed_data

from interp import artifacts, export_report, page, stage6_probe, summary


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


# Loads the first players' metadata once the page is up and writes their durations (-1: failed) into the DOM,
# which `chromium --dump-dom` prints.
AUDIO_CHECK = """<script>
window.addEventListener('load', async () => {
  const players = [...document.querySelectorAll('audio')].slice(0, 6);
  const durations = await Promise.all(players.map(player => new Promise(resolve => {
    player.addEventListener('loadedmetadata', () => resolve(player.duration), {once: true});
    player.addEventListener('error', () => resolve(-1), {once: true});
    player.preload = 'metadata';
    player.load();
  })));
  const out = document.createElement('pre');
  out.id = 'audio-check';
  out.textContent = JSON.stringify(durations);
  document.body.appendChild(out);
});
</script>"""


def _durations_in_chromium(path: Path) -> list[float]:
    """The durations Chromium reads for the first players of the page at `path` (a copy with AUDIO_CHECK added)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("chromium is not installed — run `make browser` (the report test needs it)")
    checked = path.with_name("checked.html")
    checked.write_text(path.read_text(encoding="utf-8").replace("</body>", AUDIO_CHECK + "</body>"), encoding="utf-8")
    # Audio metadata loads by real I/O, outside Chromium's virtual time: on a loaded machine the DOM can be dumped
    # before every player has answered, and the check's <pre> is then absent. That is a slow load, not an answer,
    # so it is asked again (at most three times); the durations, once read, are asserted as they are.
    for _ in range(3):
        dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                              "--virtual-time-budget=10000", checked.resolve().as_uri()],
                             check=True, capture_output=True, text=True, timeout=120).stdout
        found = re.search(r'<pre id="audio-check">([^<]*)</pre>', dom)
        if found:
            return json.loads(found.group(1))
    pytest.fail(f"Chromium never reported the players' durations for {checked}")


def test_an_exported_report_plays_its_audio_from_another_folder(report, tmp_path):
    _, path = report
    export_report.export(path.parent, tmp_path / "export", max_prompts=3)
    moved = tmp_path / "elsewhere" / "shared"
    shutil.copytree(tmp_path / "export", moved)
    shutil.rmtree(tmp_path / "export")
    page_text = (moved / "report.html").read_text(encoding="utf-8")
    links = export_report.audio_links(page_text)
    assert len(links) == 3 * 2 * 6 and all(link.startswith("audio/") for link in links)
    assert all((moved / link).is_file() for link in links)
    # The figures and tables stay whole: only the players of the prompts left out go.
    assert page_text.count("<img") == path.read_text(encoding="utf-8").count("<img")
    durations = _durations_in_chromium(moved / "report.html")
    assert len(durations) == 6 and all(duration > 0 for duration in durations), durations
    # The report itself, copied elsewhere alone, plays nothing: what the export is for.
    alone = tmp_path / "alone" / "report.html"
    alone.parent.mkdir()
    shutil.copyfile(path, alone)
    assert all(duration == -1 for duration in _durations_in_chromium(alone))


def test_the_readme_export_command_runs_as_written(report, tmp_path):
    """README's export command, run as a user runs it (the script in a subprocess from the checkout); only the
    paths are this test's: the result folder of the fixture and an export folder under tmp_path."""
    _, path = report
    root = Path(__file__).resolve().parent.parent
    line = next(line for line in (root / "README.md").read_text(encoding="utf-8").replace("`", "\n").splitlines()
                if line.startswith(".venv/bin/python interp/export_report.py"))
    words = line.split()
    assert words[2:] == ["data/results/spectral/logreg/x0", "--to", "report-export"], words
    completed = subprocess.run([sys.executable, words[1], str(path.parent), "--to", str(tmp_path / "report-export")],
                               cwd=root, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "the folder plays wherever it is copied" in completed.stdout
    links = export_report.audio_links((tmp_path / "report-export" / "report.html").read_text(encoding="utf-8"))
    assert len(links) == 40 * 2 * 6 and all((tmp_path / "report-export" / link).is_file() for link in links)


def test_an_export_refuses_a_missing_clip_and_a_foreign_report(report, tmp_path):
    root, path = report
    target = tmp_path / "export"
    target.mkdir()
    (target / "report.html").write_text("someone else's page")
    with pytest.raises(export_report.InputError, match="not an export of"):
        export_report.export(path.parent, target, max_prompts=1)
    assert (target / "report.html").read_text() == "someone else's page"
    # A rerun of the same export is no foreign report; it copies nothing twice.
    first = export_report.export(path.parent, tmp_path / "again", max_prompts=1)
    assert export_report.export(path.parent, tmp_path / "again", max_prompts=1) == {**first, "copied": 0}
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("*.wav"))
    with pytest.raises(export_report.InputError, match="missing"):
        export_report.export(stage6_probe.results_dir(copy, EMBEDDER, "logreg", "x0"), tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_example_notebook_reproduces_an_emergence_curve(report, monkeypatch):
    root, _ = report
    outputs = run_notebook("explore.ipynb", monkeypatch, MUSICOLOGIST_DATA=str(root), MUSICOLOGIST_EMBEDDER=EMBEDDER,
                           MUSICOLOGIST_CONCEPT="is_brass")
    assert any("image/png" in output.get("data", {}) for output in outputs)
    printed = "".join(output.get("text", "") for output in outputs)
    assert "yardsticks: ['prompt', 'content']" in printed and "generator synthetic" in printed


def test_the_api_loads_every_table_of_an_analysis(report):
    root, path = report
    study = artifacts.Results.of(root, embedder=EMBEDDER)
    assert study.folder == path.parent and study.unit == "step" and study.generation["generator"] == "synthetic"
    assert study.yardsticks() == ["prompt", "content"]
    for yardstick in study.yardsticks():
        table = study.emergence(yardstick)
        assert set(table["yardstick"]) == {yardstick} and len(table) == 28 * 6
        assert set(study.emergence_steps(yardstick)["yardstick"]) == {yardstick}
    assert len(study.emergence()) == 2 * 28 * 6
    pd.testing.assert_frame_equal(study.probe_quality(), pd.read_csv(path.parent / "probe_quality.csv",
                                                                      keep_default_na=False, na_values=[""]))
    brass = study.known_answers().set_index("concept").loc["is_brass"]
    assert brass["status"] == "emerged"
    assert len(study.probabilities()) == 40 * 2 * 6 and study.probabilities()["prompt_id"].iloc[0] == "p000"
    assert study.summary()["run"]["prompts"] == 40 and len(study.drift()) == 6
    listed = artifacts.analyses(root)
    assert listed["folder"].tolist() == [str(path.parent)] and listed.loc[0, "space"] == "embeddings"
    # What the stage has not written is named, with the stage to run.
    with pytest.raises(artifacts.InputError, match="--compare"):
        study.interventions()
    with pytest.raises(artifacts.InputError, match="commitment_search.py"):
        study.commitment_search()
    with pytest.raises(artifacts.InputError, match="x0_seed-1/stage6.json: missing"):
        artifacts.Results.of(root, embedder=EMBEDDER, seed=1)
