"""The 28 concepts of the study, each a name plus two rules over the same vocabulary:

- on an NSynth note (its family, source and qualities): is it a positive, or "like" a positive and so
  excluded from the negatives (brass's negatives must not contain reed or flute notes, which share its timbre);
- on a prompt's annotation (a set of vocabulary labels): is the concept asked for.

The groupings of qualities and the higher-level concepts follow the reference study's names; the exact
rules are defined once, here, and written out in data/ARTIFACTS.md ("Concepts"; tests/test_concepts.py checks
that the page and this table agree). Each name means what it says, and no two concepts ask for the same
prompts: tests/test_concepts.py checks that on the embedded demo prompts.
"""
from dataclasses import dataclass, field

from data.vocabulary import FAMILIES, SOURCES


@dataclass(frozen=True)
class Note:
    family: str
    source: str
    qualities: frozenset = field(default_factory=frozenset)

    def attributes(self) -> frozenset:
        return frozenset({self.family, self.source}) | self.qualities


@dataclass(frozen=True)
class Concept:
    name: str
    group: str                      # family | quality | source | higher
    positive: frozenset             # a note is positive if its attributes meet this (any-of) ...
    require: frozenset = frozenset()  # ... and also have every one of these
    like: frozenset = frozenset()   # notes with any of these attributes are neither positive nor negative
    exclude: frozenset = frozenset()  # a note with any of these is never positive (it counts as "like")
    prompt_any: frozenset = frozenset()  # a prompt asks for the concept if it has any of these labels
    prompt_min_any: int = 1              # ... (at least this many of them)
    prompt_or_all: tuple = ()            # ... or all labels of one of these sets
    prompt_all: frozenset = frozenset()  # ... and all of these
    prompt_none: frozenset = frozenset()  # ... and none of these
    description: str = ""           # for zero-shot text probes: "the sound of ..."

    def is_positive(self, note: Note) -> bool:
        attributes = note.attributes()
        return bool(attributes & self.positive) and self.require <= attributes and not attributes & self.exclude

    def is_like(self, note: Note) -> bool:
        """Excluded from negatives: shares the concept's sound without being a positive."""
        return not self.is_positive(note) and bool(note.attributes() & (self.like | self.positive))

    def label_note(self, note: Note) -> int | None:
        """1 positive, 0 negative, None excluded."""
        if self.is_positive(note):
            return 1
        return None if self.is_like(note) else 0

    def prompt_has(self, labels) -> bool:
        labels = frozenset(labels)
        asked = (len(labels & self.prompt_any) >= self.prompt_min_any
                 or any(alternative <= labels for alternative in self.prompt_or_all))
        return asked and self.prompt_all <= labels and not labels & self.prompt_none


def _f(*terms):
    return frozenset(terms)


# Timbral neighbours: their notes are dropped from a family's negatives.
_FAMILY_LIKE = {
    "bass": _f("guitar"), "brass": _f("reed", "flute"), "flute": _f("reed", "brass"),
    "guitar": _f("bass", "string"), "keyboard": _f("mallet", "organ"), "mallet": _f("keyboard"),
    "organ": _f("keyboard", "synth_lead"), "reed": _f("brass", "flute"), "string": _f("guitar"),
    "synth_lead": _f("organ", "keyboard"), "vocal": _f(),
}
_FAMILY_TEXT = {
    "bass": "a bass", "brass": "a brass instrument", "flute": "a flute", "guitar": "a guitar",
    "keyboard": "a piano or keyboard", "mallet": "a mallet percussion instrument", "organ": "an organ",
    "reed": "a reed instrument such as a saxophone or clarinet", "string": "a bowed string instrument",
    "synth_lead": "a synthesizer lead", "vocal": "a singing voice",
}

CONCEPTS: tuple[Concept, ...] = (
    *(Concept(f"is_{family}", "family", _f(family), like=_FAMILY_LIKE[family], prompt_any=_f(family),
              description=f"the sound of {_FAMILY_TEXT[family]}") for family in FAMILIES),
    # Quality groups: each names one perceptual property of the NSynth qualities it reads.
    Concept("long", "quality", _f("long_release"), prompt_any=_f("long_release"),
            description="long sustained notes with a slow release"),
    Concept("harmonic", "quality", _f("multiphonic"), like=_f("nonlinear_env"), prompt_any=_f("multiphonic"),
            description="rich chords with several tones sounding at once"),
    Concept("rhythmic", "quality", _f("tempo-synced", "nonlinear_env"), prompt_any=_f("tempo-synced", "nonlinear_env"),
            description="a rhythmic pulsing sound synced to the tempo"),
    Concept("staccato", "quality", _f("fast_decay"), prompt_any=_f("fast_decay"),
            description="short staccato notes that decay quickly"),
    Concept("distorted", "quality", _f("distortion"), prompt_any=_f("distortion"),
            description="a distorted, overdriven sound"),
    # NSynth's "dark": "a distinct lack of high frequency content, giving a muted and bassy sound. Also
    # sometimes described as 'Warm'". The annotators map warm words to it (data/prompts/offline_annotator.py).
    Concept("warm", "quality", _f("dark"), prompt_any=_f("dark"),
            description="a warm, dark, mellow sound"),
    *(Concept(f"is_{source}", "source", _f(source), prompt_any=_f(source),
              description=f"an {source} instrument" if source[0] in "ae" else f"a {source} instrument")
      for source in SOURCES),
    # Higher-level concepts: combinations of families, sources and qualities.
    Concept("orchestral", "higher", _f("string", "brass", "flute", "reed"), require=_f("acoustic"),
            like=_f("string", "brass", "flute", "reed"), prompt_any=_f("string", "brass", "flute", "reed"),
            prompt_min_any=2, prompt_all=_f("acoustic"),
            description="an orchestra of acoustic strings, brass and woodwinds"),
    Concept("acoustic_band", "higher", _f("guitar", "bass", "keyboard"), require=_f("acoustic"),
            like=_f("guitar", "bass", "keyboard"), prompt_any=_f("guitar", "bass", "keyboard", "drum"),
            prompt_min_any=2, prompt_all=_f("acoustic"), prompt_none=_f("synthetic"),
            description="an acoustic band with guitar, bass and piano"),
    Concept("percussion", "higher", _f("mallet", "percussive"), like=_f("fast_decay"),
            prompt_any=_f("drum", "mallet", "percussive"), description="percussion instruments being struck"),
    Concept("techno", "higher", _f("synth_lead", "bass"), require=_f("synthetic"),
            prompt_any=_f("synth_lead", "bass"), prompt_all=_f("synthetic", "drum"),
            description="electronic techno with synthesizers"),
    Concept("plucked", "higher", _f("guitar"), like=_f("bass", "string", "keyboard"), prompt_any=_f("guitar"),
            prompt_or_all=(_f("string", "fast_decay"), _f("bass", "fast_decay")),
            description="a plucked string instrument"),
    Concept("blown", "higher", _f("brass", "reed", "flute"), like=_f("organ", "vocal"),
            prompt_any=_f("brass", "reed", "flute"), description="a wind instrument being blown"),
    Concept("hit", "higher", _f("percussive", "mallet"), require=_f("fast_decay"),
            like=_f("percussive", "mallet", "fast_decay"), prompt_any=_f("percussive"),
            description="a sharp percussive hit"),
    Concept("atmospheric", "higher", _f("reverb", "long_release"), exclude=_f("percussive", "fast_decay"),
            like=_f("dark"), prompt_any=_f("reverb", "long_release"), prompt_none=_f("drum", "percussive"),
            description="an atmospheric ambient pad with reverb"),
)
CONCEPT_NAMES = tuple(concept.name for concept in CONCEPTS)
BY_NAME = {concept.name: concept for concept in CONCEPTS}
assert len(CONCEPTS) == 28, len(CONCEPTS)


def _terms(terms) -> str:
    return ", ".join(f"`{term}`" for term in sorted(terms))


def _all_of(terms) -> str:
    return f"all of {_terms(terms)}" if len(terms) > 1 else _terms(terms)


def _any_of(terms) -> str:
    return f"any of {_terms(terms)}" if len(terms) > 1 else _terms(terms)


def note_rule_text(concept: Concept) -> str:
    text = _any_of(concept.positive)
    if concept.require:
        text += f", and {_all_of(concept.require)}"
    if concept.exclude:
        text += f", and none of {_terms(concept.exclude)}"
    return text


def like_rule_text(concept: Concept) -> str:
    """Notes that are neither positive nor negative (Concept.is_like)."""
    if not (concept.like or concept.require or concept.exclude):
        return "none: every other note is a negative"
    return f"not positive, with {_any_of(concept.like | concept.positive)}"


def prompt_rule_text(concept: Concept) -> str:
    text = (f"at least {concept.prompt_min_any} of {_terms(concept.prompt_any)}" if concept.prompt_min_any > 1
            else _any_of(concept.prompt_any))
    for alternative in concept.prompt_or_all:
        text += f", or {_all_of(alternative)}"
    if concept.prompt_all:
        text = (f"({text})" if concept.prompt_or_all else text) + f", and {_all_of(concept.prompt_all)}"
    if concept.prompt_none:
        text += f", and none of {_terms(concept.prompt_none)}"
    return text


def rules_markdown() -> str:
    """The concept table of data/ARTIFACTS.md, generated from CONCEPTS (a test keeps the page in step)."""
    lines = ["| concept | group | note is positive when it has | \"like\": left out of the negatives | "
             "prompt asks for it when its labels have |", "|---|---|---|---|---|"]
    for concept in CONCEPTS:
        lines.append(f"| `{concept.name}` | {concept.group} | {note_rule_text(concept)} | {like_rule_text(concept)} "
                     f"| {prompt_rule_text(concept)} |")
    return "\n".join(lines) + "\n"
