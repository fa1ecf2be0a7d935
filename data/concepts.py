"""The 28 concepts of the study, each a name plus two rules over the same vocabulary:

- on an NSynth-format example (a single note, or a mix of several instruments' parts): is it a positive,
  or "like" a positive and so excluded from the negatives (brass's negatives must not contain reed or flute
  notes, which share its timbre);
- on a prompt's annotation (a set of vocabulary labels): is the concept asked for.

An example's labels are what a prompt describing it would carry: every part's family ("drum" for a drum
part) and source, and the example's qualities. Concepts about which instruments play (plucked, blown, the
ensembles) also read each part's GM program, through named instrument groups (INSTRUMENT_GROUPS); the
vocabulary has no word for a program, so an example these rules reject but whose labels the prompt rule asks
for (a synth brass note for `blown`, a violin over an accordion for `orchestral`) is "like": neither side.
Where the program is unknown (real NSynth metadata), a group rule holds for a part when every GM program of
the part's family and source is in the group, fails when none is, and otherwise cannot be decided: the
example is "like" too.

The groupings of qualities and the higher-level concepts follow the reference study's names; the exact
rules are defined once, here, and written out in data/ARTIFACTS.md ("Concepts"; tests/test_concepts.py checks
that the page and this table agree). Each name means what it says, and no two concepts ask for the same
prompts: tests/test_concepts.py checks that on the embedded demo prompts.
"""
from dataclasses import dataclass, field

from data.soundfont import BLOWN, BY_PROGRAM, GM_KITS, GM_PROGRAMS, PLAYED, PLUCKED
from data.vocabulary import DRUM, FAMILIES, SOURCES


@dataclass(frozen=True)
class Part:
    family: str                 # an NSynth family, or "drum"
    source: str | None = None   # an NSynth source; None for a drum part (the vocabulary's "drum" has none)
    program: int | None = None  # GM program (a drum part: its kit, GM_KITS); None where unknown (real NSynth)


@dataclass(frozen=True)
class Note:
    """One example: a single note (family, source, program) or a mix (`parts`, the first being the note's own
    family, source and program)."""
    family: str
    source: str
    qualities: frozenset = field(default_factory=frozenset)
    program: int | None = None
    parts: tuple = ()

    def all_parts(self) -> tuple:
        return self.parts or (Part(self.family, self.source, self.program),)

    def attributes(self) -> frozenset:
        """The example's labels: every part's family and source, and its qualities."""
        terms = set(self.qualities)
        for part in self.all_parts():
            terms.update(term for term in (part.family, part.source) if term)
        return frozenset(terms)


@dataclass(frozen=True)
class Instruments:
    """A named group of instruments and how an example's parts must relate to it."""
    name: str
    programs: frozenset             # GM programs of melodic parts that belong to the group
    kits: frozenset = frozenset()   # drum kits that belong to it
    ensemble: int = 0               # 0: some part belongs; n: every part belongs, from at least n families ...
    needs_drum: bool = False        # ... one of which is a drum part
    description: str = ""

    def belongs(self, part: Part) -> bool | None:
        """Whether the part is one of the group's instruments; None when its program is unknown and the GM
        programs of its family and source are partly in the group."""
        if part.family == DRUM:
            return part.program in self.kits if part.program is not None else (None if self.kits else False)
        if part.program is not None:
            return part.program in self.programs
        candidates = {entry.program for entry in GM_PROGRAMS
                      if (entry.family, entry.source) == (part.family, part.source)}
        inside = candidates & self.programs
        return False if not inside else (True if inside == candidates else None)

    def holds(self, note: Note) -> bool | None:
        parts = note.all_parts()
        verdicts = [self.belongs(part) for part in parts]
        if not self.ensemble:
            return True if True in verdicts else (None if None in verdicts else False)
        families = {part.family for part in parts}
        if False in verdicts or len(families) < self.ensemble or (self.needs_drum and DRUM not in families):
            return False
        return None if None in verdicts else True


@dataclass(frozen=True)
class Concept:
    name: str
    group: str                      # family | quality | source | higher
    positive: frozenset             # a note is positive if its attributes meet this (any-of; empty: no condition) ...
    require: frozenset = frozenset()  # ... and also have every one of these
    like: frozenset = frozenset()   # notes with any of these attributes (or of `positive`) are neither side
    exclude: frozenset = frozenset()  # a note with any of these is never positive
    instruments: Instruments | None = None  # ... and its parts meet this group rule
    prompt_any: frozenset = frozenset()  # a prompt asks for the concept if it has any of these labels
    prompt_min_any: int = 1              # ... (at least this many of them)
    prompt_or_all: tuple = ()            # ... or all labels of one of these sets
    prompt_all: frozenset = frozenset()  # ... and all of these
    prompt_none: frozenset = frozenset()  # ... and none of these
    description: str = ""           # for zero-shot text probes: "the sound of ..."

    def verdict(self, note: Note) -> bool | None:
        """True positive, False not, None undecidable (a part's program is unknown and matters)."""
        attributes = note.attributes()
        if (self.positive and not attributes & self.positive) or not self.require <= attributes \
                or attributes & self.exclude:
            return False
        return self.instruments.holds(note) if self.instruments else True

    def is_positive(self, note: Note) -> bool:
        return self.verdict(note) is True

    def is_like(self, note: Note) -> bool:
        """Excluded from negatives: shares the concept's sound without being a positive, or cannot be told
        from a positive (by its labels, or for want of its instrument)."""
        return self.label_note(note) is None

    def label_note(self, note: Note) -> int | None:
        """1 positive, 0 negative, None excluded."""
        verdict = self.verdict(note)
        if verdict:
            return 1
        attributes = note.attributes()
        if verdict is None or attributes & (self.like | self.positive) or self.prompt_has(attributes):
            return None
        return 0

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
    "reed": "a reed instrument such as a saxophone or clarinet",
    "string": "a string instrument such as a violin or cello",
    "synth_lead": "a synthesizer lead", "vocal": "a singing voice",
}


def _programs(*spans) -> frozenset:
    """GM programs from numbers and inclusive (first, last) ranges."""
    return frozenset(number for span in spans
                     for number in (range(span[0], span[1] + 1) if isinstance(span, tuple) else (span,)))


def _kits(kind: str) -> frozenset:
    return frozenset(kit for kit, (_, sound) in GM_KITS.items() if sound == kind)


# The instruments the ensemble and playing-style concepts name, by GM program (data/soundfont.py).
ORCHESTRA = Instruments(
    "orchestral", _programs((40, 46), 48, 49, (56, 61), (68, 73)), ensemble=2,
    description="orchestral strings (violin to contrabass, tremolo, pizzicato, harp, string ensembles), brass "
                "(trumpet, trombone, tuba, muted trumpet, French horn, brass section) and orchestral woodwinds "
                "(oboe, English horn, bassoon, clarinet, piccolo, flute); not saxophones, free reeds, folk "
                "flutes or synthesizers")
ACOUSTIC_BAND = Instruments(
    "acoustic_band", _programs(0, 1, 3, 24, 25, 105, 32), kits=_kits("acoustic"), ensemble=2,
    description="acoustic pianos, acoustic guitars and banjo, acoustic bass, acoustic drum kits; not "
                "harpsichord, sitar or any electric or synthesized instrument")
TECHNO = Instruments(
    "techno", _programs(38, 39, (80, 87)), kits=_kits("electronic"), ensemble=2, needs_drum=True,
    description="synth leads and synth basses over an electronic drum kit")
PLUCKED_STRINGS = Instruments(
    "plucked", frozenset(program for program, how in PLAYED.items()
                         if how == PLUCKED and BY_PROGRAM[program].family in ("guitar", "bass", "string")),
    description="string instruments played by plucking: guitars, sitar, banjo, shamisen, koto, plucked and "
                "slapped basses, pizzicato strings, harp (a harpsichord plucks too, but is a keyboard)")
WIND = Instruments(
    "blown", frozenset(program for program, how in PLAYED.items() if how == BLOWN),
    description="wind instruments blown by the player: brass, saxophones, orchestral and folk woodwinds, "
                "harmonica, bagpipe; not accordions (bellows) or synth brass")
INSTRUMENT_GROUPS = (ORCHESTRA, ACOUSTIC_BAND, TECHNO, PLUCKED_STRINGS, WIND)

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
    Concept("staccato", "quality", _f("fast_decay"), like=_f("percussive"), prompt_any=_f("fast_decay"),
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
    # Higher-level concepts: ensembles (mixes of parts), playing styles, and combinations of qualities.
    Concept("orchestral", "higher", _f(), instruments=ORCHESTRA,
            prompt_any=_f("string", "brass", "flute", "reed"), prompt_min_any=2, prompt_all=_f("acoustic"),
            description="an orchestra of acoustic strings, brass and woodwinds"),
    Concept("acoustic_band", "higher", _f(), instruments=ACOUSTIC_BAND,
            prompt_any=_f("guitar", "bass", "keyboard", "drum"), prompt_min_any=2, prompt_all=_f("acoustic"),
            prompt_none=_f("synthetic"), description="an acoustic band with guitar, bass, piano and drums"),
    Concept("percussion", "higher", _f("mallet", "drum"), prompt_any=_f("drum", "mallet"),
            description="drums and mallet percussion"),
    Concept("techno", "higher", _f(), instruments=TECHNO,
            prompt_any=_f("synth_lead", "bass"), prompt_all=_f("synthetic", "drum"),
            description="electronic techno with synthesizers and a drum machine"),
    Concept("plucked", "higher", _f("guitar", "bass", "string"), instruments=PLUCKED_STRINGS, like=_f("keyboard"),
            prompt_any=_f("guitar"), prompt_or_all=(_f("bass", "percussive"), _f("bass", "fast_decay"),
                                                    _f("string", "percussive"), _f("string", "fast_decay")),
            description="a plucked string instrument"),
    Concept("blown", "higher", _f("brass", "reed", "flute"), instruments=WIND, like=_f("organ", "vocal"),
            prompt_any=_f("brass", "reed", "flute"), description="a wind instrument being blown"),
    Concept("hit", "higher", _f("percussive"), require=_f("fast_decay"), like=_f("fast_decay"),
            prompt_any=_f("percussive"),
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


def instruments_rule_text(group: Instruments) -> str:
    if not group.ensemble:
        return f"a part is one of the `{group.name}` instruments"
    text = f"a mix whose every part is one of the `{group.name}` instruments, from at least {group.ensemble} families"
    return text + (", one a drum kit" if group.needs_drum else "")


def note_rule_text(concept: Concept) -> str:
    clauses = [_any_of(concept.positive)] if concept.positive else []
    if concept.require:
        clauses.append(_all_of(concept.require))
    if concept.exclude:
        clauses.append(f"none of {_terms(concept.exclude)}")
    if concept.instruments:
        clauses.append(instruments_rule_text(concept.instruments))
    return ", and ".join(clauses)


def like_rule_text(concept: Concept) -> str:
    """The attribute part of Concept.is_like (examples the prompt rule asks for, and undecidable ones, are like
    for every concept: see the prose above the table)."""
    if not (concept.like or concept.positive) or not (concept.like or concept.require or concept.exclude
                                                      or concept.instruments):
        return "none by attribute"
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
    """The concept and instrument-group tables of data/ARTIFACTS.md, generated from CONCEPTS and
    INSTRUMENT_GROUPS (a test keeps the page in step)."""
    lines = ["| concept | group | example is positive when it has | \"like\": left out of the negatives | "
             "prompt asks for it when its labels have |", "|---|---|---|---|---|"]
    for concept in CONCEPTS:
        lines.append(f"| `{concept.name}` | {concept.group} | {note_rule_text(concept)} | {like_rule_text(concept)} "
                     f"| {prompt_rule_text(concept)} |")
    lines += ["", "| instrument group | what it holds | GM programs | drum kits |", "|---|---|---|---|"]
    for group in INSTRUMENT_GROUPS:
        kits = ", ".join(f"{kit} {GM_KITS[kit][0]}" for kit in sorted(group.kits)) or "none"
        lines.append(f"| `{group.name}` | {group.description} | {', '.join(map(str, sorted(group.programs)))} "
                     f"| {kits} |")
    return "\n".join(lines) + "\n"
