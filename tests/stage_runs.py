"""Steps that several stage-2 backend tests share: writing annotated prompts, stamping hand-written index parts, and
running stages 3-6 on the clips."""
from pathlib import Path

import pandas as pd

from data.contract import ANNOTATED_COLUMNS, annotated_csv
from data.files import read_json, write_csv
from data.parts import GENERATION_JSON, RunRecord, parts_on_disk, write_part_sidecar
from data.stage import run_stage


def write_annotated(data, prompts) -> None:
    """prompts: (prompt_id, prompt, labels 'a;b') triples -> <data>/prompts/annotated.csv."""
    rows = [{"prompt_id": pid, "prompt": text, "labels": labels, "bpm": None, "annotator": "offline"}
            for pid, text, labels in prompts]
    write_csv(annotated_csv(data), pd.DataFrame(rows, columns=list(ANNOTATED_COLUMNS)))


def stamp_parts(generated) -> None:
    """Index parts a test wrote by hand get the sidecar stage 2 writes beside each part it makes (data/parts.py):
    made under the generation.json now on disk."""
    generated = Path(generated)
    made_under = RunRecord.of(GENERATION_JSON, read_json(generated / GENERATION_JSON))
    for prompt_id in parts_on_disk(generated):
        write_part_sidecar(generated, prompt_id, made_under)


def assert_outside_the_clock_is_refused(folder, generator, seconds: float, entry: dict) -> None:
    """Every backend refuses, before generating, a spec whose steps, capture positions or blocks lie outside what it
    makes for a `seconds`-long clip (diffusion/interventions/spec.py check_spec). `entry`: a valid steering entry of
    this backend (concept, direction, where, strength)."""
    import json

    import pytest

    from data.stage import InputError
    from diffusion.interventions.spec import check_spec, load_spec

    ticks, positions = generator.clock_ticks(seconds), generator.axis.positions
    outside = [({"from_step": ticks - 1, "to_step": ticks}, {}, None),   # the last tick, to the end: fine
               ({"from_step": ticks}, {}, f"from_step {ticks} is past the last"),
               ({"from_step": 0, "to_step": ticks + 1}, {}, f"to_step {ticks + 1} is past the end"),
               ({"from_step": 0}, {"capture_steps": [max(positions) + 1]}, f"capture_steps {max(positions) + 1} is "
                                                                          "not a position")]
    if entry["where"] != "prior":
        blocks = len([name for name in generator.hook_points() if name.endswith("hook_resid_post")])
        outside.append(({"from_step": 0, "where": [blocks]}, {}, f"block {blocks} does not exist"))
    for change, top, message in outside:
        path = folder / "out-of-range.json"
        path.write_text(json.dumps({"format": 2, **top, "interventions": [{**entry, **change}]}))
        spec = load_spec(path)
        if message is None:
            check_spec(spec, generator, seconds, 1, ["p1"])
            continue
        with pytest.raises(InputError, match=message) as error:
            check_spec(spec, generator, seconds, 1, ["p1"])
        assert "\n" not in str(error.value)


def run_judge(data, *extra: str) -> None:
    """The judge (musicnn-tags on MTT_musicnn) on each trajectory's final clip, as the demo runs it."""
    from embeddings import judge_generated

    assert run_stage(judge_generated.main, judge_generated.build_parser(),
                     ["--data", str(data), "--positions", "final", "--workers", "1", "--no-progress", *extra]) == 0


def run_stages_3_to_6(data, *stage6_extra: str, judge: bool = False) -> None:
    """Stages 3-6 in process on a stage-2 output: spectral embeddings, a small rendered note set, logreg probes;
    with judge=True the judge tags the final clips before stage 6 (the judged-content yardstick)."""
    from data.nsynth import render_soundfont
    from embeddings import stage3_embed_generated as stage3
    from interp import stage4_concept_sets as stage4
    from interp import stage5_embed_nsynth as stage5
    from interp import stage6_probe as stage6

    assert run_stage(stage3.main, stage3.build_parser(),
                     ["--data", str(data), "--embedder", "spectral", "--workers", "1"]) == 0
    if judge:
        run_judge(data)
    assert run_stage(render_soundfont.main, render_soundfont.build_parser(),
                     ["--data", str(data), "--programs", "0,4,56,57,40,42", "--pitch-step", "12",
                      "--velocities", "75,127"]) == 0
    assert run_stage(stage4.main, stage4.build_parser(),
                     ["--data", str(data), "--nsynth-dir", str(render_soundfont.output_dir(data))]) == 0
    assert run_stage(stage5.main, stage5.build_parser(),
                     ["--data", str(data), "--embedder", "spectral", "--workers", "1"]) == 0
    assert run_stage(stage6.main, stage6.build_parser(),
                     ["--data", str(data), "--embedder", "spectral", "--bootstrap", "20", *stage6_extra]) == 0


def run_notebook(name: str, monkeypatch, **environment: str) -> list[dict]:
    """Execute examples/<name> as a user's Jupyter does (the kernel starts in examples/) and return its outputs; an
    error in any cell fails the test. The kernel imports the project from this checkout (PYTHONPATH), as the tests
    do (tests/conftest.py): the venv's editable install may point at another checkout of the same venv."""
    import nbformat
    from nbclient import NotebookClient

    root = Path(__file__).resolve().parent.parent
    monkeypatch.setenv("PYTHONPATH", str(root))
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(root / "examples" / name, as_version=4)
    sources = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert "sys.path" not in sources, f"{name} edits sys.path: import the installed packages instead"
    NotebookClient(notebook, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(root / "examples")}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output.get("output_type") == "error"]
    return outputs
