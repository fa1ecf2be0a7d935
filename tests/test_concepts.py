"""The concepts are defined once (data/concepts.py, written out in data/ARTIFACTS.md), are distinct on the
demo prompts, and mean what their names say, on notes and on prompts."""
from itertools import combinations
from pathlib import Path

from data.concepts import BY_NAME, CONCEPTS, Note, rules_markdown
from data.prompts.offline_annotator import offline_labels
from data.prompts.prompt_list import embedded_prompts

ARTIFACTS = Path(__file__).resolve().parent.parent / "data" / "ARTIFACTS.md"


def asks(name: str, prompt: str) -> bool:
    return BY_NAME[name].prompt_has(offline_labels(prompt))


def test_artifacts_page_writes_out_every_rule_as_defined():
    assert rules_markdown() in ARTIFACTS.read_text(encoding="utf-8")
    for concept in CONCEPTS:
        assert f"| `{concept.name}` |" in rules_markdown()


def test_no_two_concepts_ask_for_the_same_demo_prompts():
    labels = [offline_labels(prompt) for prompt in embedded_prompts()["prompt"]]
    asked = {concept.name: frozenset(i for i, row in enumerate(labels) if concept.prompt_has(row))
             for concept in CONCEPTS}
    for first, second in combinations(asked, 2):
        assert asked[first] != asked[second], (first, second)
    for name, prompts in asked.items():  # every concept has positives and negatives among the demo prompts
        assert 0 < len(prompts) < len(labels), name


def test_techno_is_not_a_source_probe():
    techno = BY_NAME["techno"]
    assert techno.label_note(Note("synth_lead", "synthetic")) == 1
    assert techno.label_note(Note("bass", "synthetic")) == 1
    # Electronic and other synthetic notes are negatives, so the probe must tell techno sounds from sources.
    for note in (Note("organ", "electronic"), Note("keyboard", "electronic"), Note("guitar", "electronic"),
                 Note("string", "synthetic"), Note("brass", "synthetic"), Note("vocal", "synthetic")):
        assert techno.label_note(note) == 0, note
    assert asks("techno", "Techno")
    assert not asks("techno", "Synth strings over a string quartet")


def test_warm_reads_warm_words_and_long_is_sustain_not_reverb():
    assert asks("warm", "A warm, mellow Rhodes ballad") and asks("warm", "Muffled bassy kick")
    assert not asks("warm", "An ominous cello")
    assert asks("long", "Sustained organ drones") and not asks("long", "A trumpet in a reverberant cathedral")
    assert asks("atmospheric", "A trumpet in a reverberant cathedral")
    assert BY_NAME["long"].label_note(Note("flute", "acoustic", frozenset({"reverb"}))) == 0


def test_plucked_is_not_guitar_and_hit_is_not_staccato():
    assert asks("plucked", "Pizzicato strings") and not asks("is_guitar", "Pizzicato strings")
    assert asks("plucked", "A nylon guitar") and asks("is_guitar", "A nylon guitar")
    assert asks("staccato", "Staccato flute trills") and not asks("hit", "Staccato flute trills")
    assert asks("hit", "Punchy drums") and not asks("staccato", "Punchy drums")
    assert BY_NAME["staccato"].label_note(Note("keyboard", "acoustic", frozenset({"percussive"}))) == 0
    assert BY_NAME["hit"].label_note(Note("keyboard", "acoustic", frozenset({"percussive", "fast_decay"}))) == 1


def test_orchestral_and_acoustic_band_need_an_ensemble():
    for prompt in ("An accordion waltz", "Harmonica blues", "Djembe and congas", "A solo classical guitar piece"):
        assert not asks("orchestral", prompt) and not asks("acoustic_band", prompt), prompt
    assert asks("orchestral", "A full orchestration of the theme")
    assert asks("orchestral", "Strings and woodwinds")
    assert asks("acoustic_band", "Acoustic guitar, upright bass and brushed drums")
    assert not asks("acoustic_band", "Synth bass and acoustic guitar")


def test_stage4_sends_two_instruments_of_a_four_instrument_family_to_test():
    import numpy as np
    import pandas as pd

    from interp.stage4_concept_sets import split_instruments
    families = {"vocal": 4, "brass": 6, "flute": 3}
    rows = [{"instrument_str": f"{family}_acoustic_{family[:1]}{i:02d}", "family": family}
            for family, count in families.items() for i in range(count) for _ in range(2)]
    notes = pd.DataFrame(rows)
    test = split_instruments(notes, np.zeros((len(notes), 1), dtype=np.int8), 0.25, seed=0)
    per_family = {family: sum(name.startswith(family) for name in test) for family in families}
    assert per_family == {"vocal": 2, "brass": 2, "flute": 1}
