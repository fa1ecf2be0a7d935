"""Export a stage-6 report as a folder that plays anywhere: report.html plus every clip it plays, copied beside it.

    python interp/export_report.py data/results/spectral/logreg/x0 --to report-export [--force]
    python interp/export_report.py data/results/activations/cond-mean/logreg --to export-activations

report.html embeds its figures but links its audio relatively into <data>/generated/, so a report copied off a
cluster on its own plays nothing. The export copies each clip a player links (the prompts' players, the
interventions' pairs) to <to>/audio/ (under its path below the clips' common folder) and writes <to>/report.html
with the players pointing there: the folder can be zipped, copied or served as is. Clips already copied with the
same size are kept, so a rerun after stage 6 added clips copies only those; --force replaces an existing
<to>/report.html that is not an export of this report. A clip missing from --data is refused (one line), nothing
written. Every clip of a large study is large (README, "Sizing a real run": ~35 MB per prompt for Stable Audio at
2 samples x 10 saved steps): --max-prompts N keeps the players of the first N prompts only, to share a selection.
"""
import argparse
import html
import os
import re
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.files import atomic_path, read_json, write_json, write_text
from data.stage import InputError, first_paragraph, run_stage

AUDIO_DIR = "audio"
MARK = "export.json"
# An <audio> element's src as report.py and compare_report.py write it (single quotes, HTML-escaped).
AUDIO_SRC = re.compile(r"(<audio\b[^>]*?\bsrc=')([^']*)(')")
# A prompt's collapsible section (report.py): cut whole when --max-prompts leaves it out.
PROMPT_SECTION = re.compile(r"\n?<details id='prompt-[^']*'>.*?</details>(?=\n<details id='prompt-|\n+</body>|\n*$)",
                            re.S)


def build_parser():
    parser = argparse.ArgumentParser(description=first_paragraph(__doc__))
    parser.add_argument("results", type=Path,
                        help="a stage-6 result folder holding report.html (data/results/<embedder>/<probe>/<kind>)")
    parser.add_argument("--to", type=Path, required=True, help="the export folder (created when missing)")
    parser.add_argument("--max-prompts", type=int, default=None,
                        help="keep the players of the first N prompts only (the tables and figures stay whole)")
    parser.add_argument("--force", action="store_true",
                        help="replace a report.html in --to that is not an export of this report")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser


def audio_links(page: str) -> list[str]:
    """Every <audio> src of a report page, unescaped, in page order."""
    return [html.unescape(match.group(2)) for match in AUDIO_SRC.finditer(page)]


def export(results: Path, to: Path, max_prompts: int | None = None, force: bool = False) -> dict:
    """Write <to>/report.html and <to>/audio/; returns {"clips": n, "copied": n, "bytes": n}."""
    results, to = Path(results), Path(to)
    report = results / "report.html"
    if not report.is_file():
        raise InputError(f"{report}: missing — run stage 6 (interp/stage6_probe.py) without --no-report first")
    if max_prompts is not None and max_prompts < 0:
        raise InputError(f"--max-prompts {max_prompts} must be >= 0")
    if to.resolve() == results.resolve():
        raise InputError(f"--to {to}: is the result folder itself — export to another folder")
    mark = to / MARK
    source = str(results.resolve())
    if (to / "report.html").is_file() and not force and (not mark.is_file() or read_json(mark).get("source") != source):
        raise InputError(f"{to / 'report.html'}: exists and is not an export of {results} — pass --force to replace "
                         "it, or export to another folder")
    page = report.read_text(encoding="utf-8")
    if max_prompts is not None:
        sections = list(PROMPT_SECTION.finditer(page))
        for match in reversed(sections[max_prompts:]):
            page = page[:match.start()] + page[match.end():]
    links = list(dict.fromkeys(audio_links(page)))
    clips = {link: (results / link).resolve() for link in links}
    missing = [link for link, path in clips.items() if not path.is_file()]
    if missing:
        raise InputError(f"{results / missing[0]}: missing ({len(missing)} of {len(clips)} clips the report plays) — "
                         "export from the data folder stage 6 read, or rerun stages 2-6")
    root = Path(os.path.commonpath([str(path.parent) for path in clips.values()])) if clips else results
    targets = {link: Path(AUDIO_DIR) / path.relative_to(root) for link, path in clips.items()}
    copied = size = 0
    for link, path in clips.items():
        target = to / targets[link]
        size += path.stat().st_size
        if target.is_file() and target.stat().st_size == path.stat().st_size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            shutil.copyfile(path, tmp)
        copied += 1
    page = AUDIO_SRC.sub(lambda match: match.group(1) + html.escape(targets[html.unescape(match.group(2))].as_posix())
                         + match.group(3), page)
    write_json(mark, {"source": source, "clips": len(clips), "max_prompts": max_prompts})
    write_text(to / "report.html", page)
    return {"clips": len(clips), "copied": copied, "bytes": size}


def main(args) -> None:
    done = export(args.results, args.to, args.max_prompts, args.force)
    print(f"{args.to / 'report.html'}: {done['clips']} clips ({done['bytes'] / 1e6:.1f} MB) in "
          f"{args.to / AUDIO_DIR}/, {done['copied']} copied now; the folder plays wherever it is copied")


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
