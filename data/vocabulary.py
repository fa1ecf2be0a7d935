"""The fixed concept vocabulary that stage 1 annotates prompts with.

Every label in data/prompts/annotated.csv is one of VOCABULARY; tempo is a separate integer column.
The terms follow NSynth's spelling (instrument_family_str, qualities_str, instrument_source_str) so that a
prompt label and an NSynth note attribute can be compared without a translation table.
"""

FAMILIES = (
    "bass", "brass", "flute", "guitar", "keyboard", "mallet",
    "organ", "reed", "string", "synth_lead", "vocal",
)
# NSynth has no drum family, but drums are in most music prompts; the label lets higher-level concepts use it.
DRUM = "drum"
# NSynth's quality index order (qualities[i] in examples.json).
QUALITIES = (
    "bright", "dark", "distortion", "fast_decay", "long_release",
    "multiphonic", "nonlinear_env", "percussive", "reverb", "tempo-synced",
)
SOURCES = ("acoustic", "electronic", "synthetic")

VOCABULARY = FAMILIES + (DRUM,) + QUALITIES + SOURCES
LABEL_SEPARATOR = ";"


def parse_labels(text) -> list[str]:
    """'brass;reverb' -> ['brass', 'reverb']; empty or missing -> []. Raises ValueError naming an unknown label."""
    if text is None or (isinstance(text, float) and text != text) or str(text).strip() == "":
        return []
    labels = [part.strip() for part in str(text).split(LABEL_SEPARATOR) if part.strip()]
    unknown = [label for label in labels if label not in VOCABULARY]
    if unknown:
        raise ValueError(f"label '{unknown[0]}' is not in the vocabulary")
    return labels


def format_labels(labels) -> str:
    """Canonical form: vocabulary order, no duplicates, ';'-joined."""
    chosen = set(labels)
    unknown = chosen - set(VOCABULARY)
    if unknown:
        raise ValueError(f"label '{sorted(unknown)[0]}' is not in the vocabulary")
    return LABEL_SEPARATOR.join(term for term in VOCABULARY if term in chosen)
