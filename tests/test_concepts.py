"""The concepts are defined once (data/concepts.py, written out in data/ARTIFACTS.md), are distinct on the
demo prompts, and mean what their names say, on notes and on prompts."""
from itertools import combinations
from pathlib import Path

from data.concepts import BY_NAME, CONCEPTS, Note, Part, rules_markdown
from data.nsynth import render_soundfont as renderer
from data.prompts.offline_annotator import offline_labels
from data.prompts.prompt_list import embedded_prompts
from data.vocabulary import QUALITIES

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


def mix(*parts, qualities=("multiphonic",)) -> Note:
    """A mix of (family, source, program) parts; a drum part is ("drum", None, kit)."""
    parts = tuple(Part(*part) for part in parts)
    return Note(parts[0].family, parts[0].source, frozenset(qualities), parts[0].program, parts)


def test_techno_is_synthesizers_over_a_drum_machine_not_a_source_probe():
    techno = BY_NAME["techno"]
    lead, bass, tr808, standard = ("synth_lead", "synthetic", 80), ("bass", "synthetic", 38), ("drum", None, 25), \
        ("drum", None, 0)
    assert techno.label_note(mix(lead, tr808, qualities=("percussive",))) == 1
    assert techno.label_note(mix(bass, lead, tr808, qualities=("percussive", "multiphonic"))) == 1
    # A lone synth lead is not techno (the prompt rule asks for drums too): a negative, as is a synth pair.
    assert techno.label_note(Note("synth_lead", "synthetic", program=80)) == 0
    assert techno.label_note(mix(bass, lead)) == 0
    # Over an acoustic kit the vocabulary cannot tell it from techno: left out.
    assert techno.label_note(mix(lead, standard, qualities=("percussive",))) is None
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
    # A held piano decays on its own: neither staccato nor a negative; played staccato it is both.
    assert BY_NAME["staccato"].label_note(Note("keyboard", "acoustic", frozenset({"percussive"}))) is None
    assert BY_NAME["staccato"].label_note(Note("flute", "acoustic")) == 0
    assert BY_NAME["hit"].label_note(Note("keyboard", "acoustic", frozenset({"percussive", "fast_decay"}))) == 1
    assert BY_NAME["hit"].label_note(Note("flute", "acoustic", frozenset({"fast_decay"}))) is None
    # Plucked is the playing style: plucked basses, pizzicato and harp too, not a bowed violin nor a synth bass.
    plucked = BY_NAME["plucked"]
    assert plucked.label_note(Note("bass", "acoustic", frozenset({"percussive"}), program=32)) == 1
    assert plucked.label_note(Note("string", "acoustic", frozenset({"percussive"}), program=45)) == 1
    assert plucked.label_note(Note("string", "acoustic", program=40)) is None
    assert plucked.label_note(Note("bass", "synthetic", program=38)) is None
    assert plucked.label_note(Note("keyboard", "acoustic", frozenset({"percussive"}), program=6)) is None
    assert plucked.label_note(Note("brass", "acoustic", program=56)) == 0
    # Percussion is drums and mallets; a struck piano is not percussion.
    assert BY_NAME["percussion"].label_note(mix(("guitar", "acoustic", 24), ("drum", None, 0))) == 1
    assert BY_NAME["percussion"].label_note(Note("keyboard", "acoustic", frozenset({"percussive"}), program=0)) == 0


def test_orchestral_and_acoustic_band_need_an_ensemble():
    for prompt in ("An accordion waltz", "Harmonica blues", "Djembe and congas", "A solo classical guitar piece"):
        assert not asks("orchestral", prompt) and not asks("acoustic_band", prompt), prompt
    assert asks("orchestral", "A full orchestration of the theme")
    assert asks("orchestral", "Strings and woodwinds")
    assert asks("acoustic_band", "Acoustic guitar, upright bass and brushed drums")
    assert not asks("acoustic_band", "Synth bass and acoustic guitar")
    orchestral, band = BY_NAME["orchestral"], BY_NAME["acoustic_band"]
    violin, trumpet, oboe = ("string", "acoustic", 40), ("brass", "acoustic", 56), ("reed", "acoustic", 68)
    assert orchestral.label_note(mix(trumpet, violin)) == 1 and orchestral.label_note(mix(oboe, violin)) == 1
    assert orchestral.label_note(Note(violin[0], violin[1], program=violin[2])) == 0  # a solo violin is no orchestra
    for outsider in (("reed", "acoustic", 21), ("reed", "acoustic", 65), ("flute", "acoustic", 75),
                     ("brass", "synthetic", 62)):  # accordion, saxophone, pan flute, synth brass
        assert orchestral.label_note(mix(outsider, violin)) is None, outsider
    guitar, bass, piano, brushes = ("guitar", "acoustic", 24), ("bass", "acoustic", 32), ("keyboard", "acoustic", 0), \
        ("drum", None, 40)
    assert band.label_note(mix(bass, guitar)) == 1 and band.label_note(mix(piano, brushes)) == 1
    assert band.label_note(mix(guitar, bass, brushes)) == 1
    assert band.label_note(mix(("guitar", "acoustic", 104), bass)) is None  # sitar
    assert band.label_note(mix(("keyboard", "acoustic", 6), guitar)) is None  # harpsichord
    assert band.label_note(Note(guitar[0], guitar[1], program=guitar[2])) == 0
    # Blown is acoustic wind played by breath: not an accordion, not synth brass.
    blown = BY_NAME["blown"]
    assert blown.label_note(Note("reed", "acoustic", program=22)) == 1  # harmonica
    assert blown.label_note(Note("reed", "acoustic", program=21)) is None  # accordion
    assert blown.label_note(Note("brass", "synthetic", program=62)) is None
    assert blown.label_note(Note("string", "acoustic", program=40)) == 0


def test_program_unknown_rules_degrade_to_what_every_gm_program_of_the_family_and_source_agrees_on():
    blown, plucked = BY_NAME["blown"], BY_NAME["plucked"]
    assert blown.label_note(Note("brass", "acoustic")) == 1         # every acoustic GM brass is blown
    assert blown.label_note(Note("reed", "acoustic")) is None       # accordion or saxophone: cannot say
    assert blown.label_note(Note("flute", "synthetic")) is None     # a flute label, no blown program
    assert plucked.label_note(Note("guitar", "electronic")) == 1
    assert plucked.label_note(Note("string", "acoustic")) is None   # bowed or pizzicato
    assert BY_NAME["orchestral"].label_note(Note("string", "acoustic")) == 0  # a single note is no ensemble


def _plan_notes():
    """The default render's examples as the concepts see them, straight from the plan (no audio needed)."""
    plan = renderer.planned_examples(renderer.chosen_programs(None), renderer.DEFAULT_PITCH_STEP,
                                     renderer.DEFAULT_VELOCITIES, renderer.DEFAULT_DYAD_VELOCITY)
    notes = []
    for example in plan:
        qualities = frozenset(q for q, bit in zip(QUALITIES, example.qualities()) if bit)
        parts = tuple(Part(p.instrument.family, p.instrument.source, p.instrument.program) for p in example.parts)
        lead = example.lead.instrument
        notes.append(Note(lead.family, lead.source, qualities, lead.program, parts if len(parts) > 1 else ()))
    return notes


def test_rendered_examples_follow_the_prompt_rules_and_concepts_are_distinct_on_them():
    notes = _plan_notes()
    positives = {concept.name: set() for concept in CONCEPTS}
    for index, note in enumerate(notes):
        labels = note.attributes()
        for concept in CONCEPTS:
            label = concept.label_note(note)
            # A positive's labels make the prompt rule ask for the concept; a negative's never do.
            assert label is None or label == int(concept.prompt_has(labels)), (concept.name, note)
            if label == 1:
                positives[concept.name].add(index)
    for name, chosen in positives.items():
        assert len(chosen) >= 30, name
    jaccard = {(a, b): len(positives[a] & positives[b]) / len(positives[a] | positives[b])
               for a, b in combinations(positives, 2)}
    assert jaccard[("percussion", "hit")] < 0.1 and jaccard[("is_guitar", "plucked")] < 0.7
    assert max(jaccard.values()) < 0.75, max(jaccard, key=jaccard.get)


def test_stage4_sends_two_instruments_of_a_four_instrument_family_to_test():
    import numpy as np
    import pandas as pd

    from interp.instrument_split import split_instruments
    families = {"vocal": 4, "brass": 6, "flute": 3}
    rows = [{"instrument_str": f"{family}_acoustic_{family[:1]}{i:02d}", "family": family}
            for family, count in families.items() for i in range(count) for _ in range(2)]
    notes = pd.DataFrame(rows)
    test = split_instruments(notes, np.zeros((len(notes), 1), dtype=np.int8), 0.25, seed=0)
    per_family = {family: sum(name.startswith(family) for name in test) for family in families}
    assert per_family == {"vocal": 2, "brass": 2, "flute": 1}
