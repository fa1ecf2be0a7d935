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


def run_stages_3_to_6(data, *stage6_extra: str) -> None:
    """Stages 3-6 in process on a stage-2 output: spectral embeddings, a small rendered note set, logreg probes."""
    from data.nsynth import render_soundfont
    from embeddings import stage3_embed_generated as stage3
    from interp import stage4_concept_sets as stage4
    from interp import stage5_embed_nsynth as stage5
    from interp import stage6_probe as stage6

    assert run_stage(stage3.main, stage3.build_parser(),
                     ["--data", str(data), "--embedder", "spectral", "--workers", "1"]) == 0
    assert run_stage(render_soundfont.main, render_soundfont.build_parser(),
                     ["--data", str(data), "--programs", "0,4,56,57,40,42", "--pitch-step", "12",
                      "--velocities", "75,127"]) == 0
    assert run_stage(stage4.main, stage4.build_parser(),
                     ["--data", str(data), "--nsynth-dir", str(render_soundfont.output_dir(data))]) == 0
    assert run_stage(stage5.main, stage5.build_parser(),
                     ["--data", str(data), "--embedder", "spectral", "--workers", "1"]) == 0
    assert run_stage(stage6.main, stage6.build_parser(),
                     ["--data", str(data), "--embedder", "spectral", "--bootstrap", "20", *stage6_extra]) == 0
