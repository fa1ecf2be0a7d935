"""Stage 1 without a network: the offline annotator against hand-written labels, the embedded list's coverage,
and prompt ids that survive edits to the list."""
import pytest

from data.prompts.offline_annotator import LEXICON, annotate_offline, offline_labels, stated_bpm
from data.prompts.prompt_list import embedded_prompts, normalise_prompt, prompt_id, prompts_table, read_embedded_texts
from data.vocabulary import FAMILIES, QUALITIES, SOURCES, VOCABULARY

# Hand-written expectations: (prompt, labels, bpm).
EXPECTED = [
    ("A solo trumpet in a reverberant hall", {"brass", "acoustic", "reverb"}, None),
    ("Smooth saxophone and clarinet duet", {"reed", "acoustic"}, None),
    ("Gentle piano ballad at 72 BPM", {"keyboard", "acoustic"}, 72),
    ("Searing synth lead over an 808 drum machine", {"synth_lead", "synthetic", "drum", "electronic"}, None),
    ("A synthesizer melody, 128bpm", {"synth_lead", "synthetic"}, 128),
    ("Ambient, spacious textures with a distorted, overdriven guitar", {"reverb", "distortion", "guitar"}, None),
    ("Staccato strings and plucky marimba", {"fast_decay", "string", "acoustic", "mallet"}, None),
    ("Warm pad with sustained organ chords", {"dark", "long_release", "organ"}, None),
    # longest phrase wins
    ("A booming bass drum and a bass clarinet", {"drum", "reed", "acoustic"}, None),
    ("Deep synth bass groove", {"bass", "synthetic"}, None),
    ("Tenor sax solo", {"reed", "acoustic"}, None),
    ("Tenor voice solo", {"vocal"}, None),
    ("Steel drums by the sea", {"mallet", "acoustic"}, None),
    ("Electric guitar and electric bass", {"guitar", "bass", "electronic"}, None),
    ("Dreamy synth pads", {"synthetic", "long_release"}, None),
    # plurals and hyphens
    ("Three trumpets and two trombones", {"brass", "acoustic"}, None),
    ("A synth-lead hook with hi-hats", {"synth_lead", "synthetic", "drum"}, None),
    # negation
    ("Piano solo, no drums", {"keyboard", "acoustic"}, None),
    ("Acoustic guitar without vocals", {"guitar", "acoustic"}, None),
    ("A flute melody with no drums or bass", {"flute", "acoustic"}, None),
    ("No drums and bass, just a cello", {"string", "acoustic"}, None),
    ("No vocals and a warm piano", {"keyboard", "acoustic", "dark"}, None),
    ("Without any heavy drums but with a bright trumpet", {"bright", "brass", "acoustic"}, None),
    ("A vocal-free organ drone", {"organ", "long_release"}, None),
    ("Neither drums nor vocals, only a harp", {"string", "acoustic"}, None),
    ("A no-frills piano tune", {"keyboard", "acoustic"}, None),
    ("Not just drums: a marimba too", {"drum", "mallet", "acoustic"}, None),
    # words that contain lexicon words are not matches
    ("A bassoon over a techno groove", {"reed", "acoustic", "synthetic", "electronic"}, None),
    ("A heartbeat pulse in a pianissimo passage", set(), None),
    # longest match over all candidates, plurals on the last word
    ("Double bass drums and shredding guitars", {"drum", "guitar", "distortion"}, None),
    ("A double bass and a bass drum", {"bass", "acoustic", "drum"}, None),
    ("Blues harp wailing over a shuffle", {"reed", "acoustic"}, None),
    ("A synth bass line and two basslines", {"bass", "synthetic"}, None),
    ("Melodies on glockenspiels", {"mallet", "acoustic"}, None),
    ("Bodhrán and fiddles", {"drum", "string", "acoustic"}, None),
    # ensembles name their instruments
    ("A tight rhythm section", {"bass", "drum"}, None),
    ("A full orchestration of the theme", {"string", "brass", "flute", "reed", "acoustic"}, None),
    ("A string quartet", {"string", "acoustic"}, None),
    ("Big band swing", {"brass", "reed", "bass", "drum", "acoustic"}, None),
    ("Crunchy riffs", {"guitar", "distortion"}, None),
    # a genre's instruments count only when the prompt names none
    ("Reggae", {"guitar", "bass", "drum"}, None),
    ("Classical piano sonata", {"keyboard", "acoustic"}, None),
    ("A rock drummer's solo", {"drum", "electronic"}, None),
    ("Techno without drums", {"bass", "synthetic", "electronic"}, None),
    # NSynth's dark is "also sometimes described as warm"; moods are not timbres
    ("A warm, mellow Rhodes", {"dark", "keyboard", "electronic"}, None),
    ("An ominous, brooding cello", {"string", "acoustic"}, None),
    # tempo: exact numbers only
    ("Drums at 120 beats per minute", {"drum"}, 120),
    ("Jazz at 90-110 BPM", set(), None),
    ("Starts at 80 BPM and ends at 160 BPM", set(), None),
    ("Very fast bebop", set(), None),
    ("bpm: 140, acid house", {"drum", "synthetic", "electronic"}, 140),
    ("A drone at 10 BPM", {"long_release"}, None),
]


@pytest.mark.parametrize("prompt, labels, bpm", EXPECTED, ids=[case[0][:40] for case in EXPECTED])
def test_offline_annotator_matches_hand_labels(prompt, labels, bpm):
    assert set(offline_labels(prompt)) == labels
    assert stated_bpm(prompt) == bpm


def test_offline_labels_are_canonical_vocabulary_strings():
    text, bpm = annotate_offline("Reverb-drenched brass and bright piano at 100 BPM")
    assert text == "brass;keyboard;bright;reverb;acoustic"
    assert bpm == 100
    assert annotate_offline("silence") == ("", None)


def test_lexicon_only_uses_vocabulary_terms():
    from data.prompts.offline_annotator import _TOKEN, GENRES
    for phrase, labels in {**LEXICON, **GENRES}.items():
        assert set(labels) <= set(VOCABULARY), phrase
        # every phrase is a sequence of words the tokenizer produces, so it can match at all
        assert " ".join(_TOKEN.findall(phrase)) == phrase, phrase
    assert not set(LEXICON) & set(GENRES)


def test_offline_annotator_is_deterministic():
    prompts = list(embedded_prompts()["prompt"])
    assert [annotate_offline(text) for text in prompts] == [annotate_offline(text) for text in prompts]


def test_embedded_list_is_large_and_covers_every_concept_both_ways():
    table = embedded_prompts()
    assert len(table) >= 80
    assert table["prompt_id"].is_unique
    labels = [set(offline_labels(text)) for text in table["prompt"]]
    for concept in FAMILIES + ("drum",) + SOURCES:
        positives = sum(concept in row for row in labels)
        assert positives >= 5, f"{concept}: only {positives} prompts"
        assert len(table) - positives >= 5, f"{concept}: absent from only {len(table) - positives} prompts"
    well_covered = [quality for quality in QUALITIES if sum(quality in row for row in labels) >= 4]
    assert len(well_covered) >= 8, f"qualities with >= 4 prompts: {well_covered}"
    stated = [bpm for bpm in (stated_bpm(text) for text in table["prompt"]) if bpm is not None]
    assert len(stated) >= 15 and len(set(stated)) >= 10


def test_embedded_list_has_no_near_duplicates():
    texts = read_embedded_texts()
    assert len({normalise_prompt(text) for text in texts}) == len(texts)


def test_prompt_ids_depend_on_text_only():
    texts = ["Solo cello elegy", "Funky clavinet groove", "Ambient harp"]
    table = prompts_table(texts, origin="embedded")
    grown = prompts_table(["A new first prompt"] + texts[::-1], origin="embedded")
    assert dict(zip(table["prompt"], table["prompt_id"])) == {
        text: identifier for text, identifier in zip(grown["prompt"], grown["prompt_id"]) if text in texts}
    assert prompt_id("Solo cello elegy.") == prompt_id("  solo  CELLO elegy ")
    assert prompt_id("Solo cello elegy") != prompt_id("Solo viola elegy")
    assert table["prompt_id"].str.fullmatch(r"p[0-9a-f]{10}").all()


def test_prompts_table_deduplicates_on_normalised_text_and_skips_blanks():
    table = prompts_table(["Jazz trio.", "jazz  trio", "", "   ", "Jazz\ntrio at night"], origin="llm:m")
    assert list(table["prompt"]) == ["Jazz trio.", "Jazz trio at night"]
    assert set(table["origin"]) == {"llm:m"}


def test_annotation_is_linear_in_prompt_length():
    # The old annotator rescanned the text before every match for negation cues: quadratic, minutes for this.
    prompt = "no drums and bass, " * 20_000 + "a solo trumpet"
    assert set(offline_labels(prompt)) == {"brass", "acoustic"}


def test_stage1_refuses_a_prompt_over_the_length_limit(tmp_path):
    import subprocess
    import sys

    from conftest import REPO_ROOT

    from data.contract import MAX_PROMPT_CHARACTERS

    data = tmp_path / "data"
    (data / "prompts").mkdir(parents=True)
    huge = "drums and bass " * 700_000  # 10.5 MB: one line, refused before any annotation
    (data / "prompts" / "prompts.csv").write_text(f"prompt_id,prompt,origin\np1,Solo cello,embedded\np2,{huge},"
                                                 "embedded\n", encoding="utf-8")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "data" / "prompts" / "stage1_prompts.py"),
                             "--data", str(data)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr
    assert "prompts.csv row 3" in result.stderr and str(MAX_PROMPT_CHARACTERS) in result.stderr.replace(",", "")
    assert not (data / "prompts" / "annotated.csv").exists()
