"""The offline annotator: a documented lexicon of words and phrases → vocabulary labels, plus stated BPM.

It needs no key and no network and gives the same answer every time, so `make demo` and the tests run on it.
It labels what a prompt says, not what its genre implies ("heavy metal" alone gets no guitar): genre knowledge
is the LLM annotator's job. Rules, each chosen so that a label is a claim the prompt itself makes:

- Matching is on whole words, case-insensitive; a phrase's words may be joined by spaces or hyphens
  ("synth lead" = "synth-lead") and a plural "s"/"es" is accepted ("trumpets").
- The longest phrase wins where phrases overlap: "bass drum" is a drum, "bass clarinet" a reed, "synth bass"
  a synthetic bass (not a synth lead), "soprano sax" a reed (not a voice), "steel drums" a mallet instrument.
- Negation: a match is dropped when it follows "no", "without", "minus", "lacking", "free of", "devoid of",
  "not", "never", "neither"/"nor" within the same clause ("no drums or bass", "without any vocals"), or when it
  is suffixed "-free"/"-less" ("vocal-free"). A clause ends at punctuation or at a word that starts a new
  phrase ("but", "with", "just", ...); "and" continues a negation only when an instrument follows it directly
  ("no drums and bass" drops both, "no vocals and a warm piano" keeps the piano).
- Instruments that are acoustic by construction (trumpet, violin, marimba, ...) also get `acoustic`; electric
  ones (electric guitar, Rhodes, Hammond) `electronic`; synthesizers `synthetic`. A bare "guitar", "bass",
  "organ" or "drums" gets no source: the prompt does not say which.
- Instruments NSynth has no family for are mapped to its nearest family and documented here: plucked lutes and
  zithers (banjo, ukulele, mandolin, sitar, koto) → guitar; harp → string; free reeds (accordion, harmonica,
  melodica) and bagpipes → reed; tuned percussion (steel drums, kalimba, handpan, bells, music box) → mallet.
- BPM: only a tempo stated as a number ("at 120 BPM", "92 beats per minute", "bpm: 140") sets `bpm`, and it
  is copied exactly. A range ("90-110 BPM") or two different stated tempos leave it empty, as does a value
  outside 20–400. Tempo words ("fast", "slow", "andante") are not mapped to numbers: any number chosen for them
  would be an invention, and stage 6 compares stated tempos only.
"""
import re

from data.files import sha256_json
from data.vocabulary import format_labels

# phrase → labels. Keys are lower-case; spaces inside a phrase also match hyphens.
LEXICON: dict[str, tuple[str, ...]] = {
    # --- bass
    "bass": ("bass",),
    "bassline": ("bass",),
    "bass line": ("bass",),
    "walking bass": ("bass",),
    "bass guitar": ("bass", "electronic"),
    "electric bass": ("bass", "electronic"),
    "electric bass guitar": ("bass", "electronic"),
    "fretless bass": ("bass", "electronic"),
    "slap bass": ("bass", "electronic", "percussive"),
    "upright bass": ("bass", "acoustic"),
    "double bass": ("bass", "acoustic"),
    "acoustic bass": ("bass", "acoustic"),
    "contrabass": ("bass", "acoustic"),
    "synth bass": ("bass", "synthetic"),
    "sub bass": ("bass", "synthetic"),
    "808 bass": ("bass", "electronic"),
    "wobble bass": ("bass", "synthetic", "nonlinear_env"),
    "acid bass": ("bass", "synthetic"),
    "drum and bass": ("drum", "bass", "electronic"),
    # --- brass
    "brass": ("brass", "acoustic"),
    "brass section": ("brass", "acoustic"),
    "trumpet": ("brass", "acoustic"),
    "muted trumpet": ("brass", "acoustic"),
    "trombone": ("brass", "acoustic"),
    "french horn": ("brass", "acoustic"),
    "horn": ("brass", "acoustic"),
    "horn section": ("brass", "acoustic"),
    "tuba": ("brass", "acoustic"),
    "flugelhorn": ("brass", "acoustic"),
    "cornet": ("brass", "acoustic"),
    "euphonium": ("brass", "acoustic"),
    "synth brass": ("brass", "synthetic"),
    # --- flute
    "flute": ("flute", "acoustic"),
    "alto flute": ("flute", "acoustic"),
    "piccolo": ("flute", "acoustic"),
    "pan flute": ("flute", "acoustic"),
    "panpipes": ("flute", "acoustic"),
    "recorder": ("flute", "acoustic"),
    "shakuhachi": ("flute", "acoustic"),
    "bansuri": ("flute", "acoustic"),
    "tin whistle": ("flute", "acoustic"),
    "penny whistle": ("flute", "acoustic"),
    "fife": ("flute", "acoustic"),
    "ocarina": ("flute", "acoustic"),
    # --- guitar (plucked lutes and zithers too)
    "guitar": ("guitar",),
    "acoustic guitar": ("guitar", "acoustic"),
    "classical guitar": ("guitar", "acoustic"),
    "nylon string guitar": ("guitar", "acoustic"),
    "steel string guitar": ("guitar", "acoustic"),
    "flamenco guitar": ("guitar", "acoustic"),
    "twelve string guitar": ("guitar", "acoustic"),
    "12 string guitar": ("guitar", "acoustic"),
    "electric guitar": ("guitar", "electronic"),
    "slide guitar": ("guitar",),
    "pedal steel": ("guitar", "electronic"),
    "lap steel": ("guitar", "electronic"),
    "power chords": ("guitar", "distortion"),
    "banjo": ("guitar", "acoustic"),
    "ukulele": ("guitar", "acoustic"),
    "mandolin": ("guitar", "acoustic"),
    "sitar": ("guitar", "acoustic"),
    "oud": ("guitar", "acoustic"),
    "bouzouki": ("guitar", "acoustic"),
    "koto": ("guitar", "acoustic"),
    # --- keyboard
    "piano": ("keyboard", "acoustic"),
    "grand piano": ("keyboard", "acoustic"),
    "upright piano": ("keyboard", "acoustic"),
    "toy piano": ("keyboard", "acoustic"),
    "honky tonk piano": ("keyboard", "acoustic"),
    "electric piano": ("keyboard", "electronic"),
    "e piano": ("keyboard", "electronic"),
    "rhodes": ("keyboard", "electronic"),
    "wurlitzer": ("keyboard", "electronic"),
    "clavinet": ("keyboard", "electronic"),
    "harpsichord": ("keyboard", "acoustic"),
    "celesta": ("keyboard", "acoustic"),
    "keyboard": ("keyboard",),
    # --- mallet (tuned percussion)
    "mallet": ("mallet",),
    "marimba": ("mallet", "acoustic"),
    "vibraphone": ("mallet", "acoustic"),
    "xylophone": ("mallet", "acoustic"),
    "glockenspiel": ("mallet", "acoustic"),
    "kalimba": ("mallet", "acoustic"),
    "mbira": ("mallet", "acoustic"),
    "steel drum": ("mallet", "acoustic"),
    "steelpan": ("mallet", "acoustic"),
    "handpan": ("mallet", "acoustic"),
    "hang drum": ("mallet", "acoustic"),
    "gamelan": ("mallet", "acoustic"),
    "tubular bells": ("mallet", "acoustic"),
    "bells": ("mallet",),
    "chimes": ("mallet",),
    "music box": ("mallet", "acoustic"),
    # --- organ
    "organ": ("organ",),
    "hammond": ("organ", "electronic"),
    "hammond organ": ("organ", "electronic"),
    "b3 organ": ("organ", "electronic"),
    "farfisa": ("organ", "electronic"),
    "combo organ": ("organ", "electronic"),
    "church organ": ("organ", "acoustic"),
    "pipe organ": ("organ", "acoustic"),
    "harmonium": ("organ", "acoustic"),
    # --- reed (free reeds and bagpipes too)
    "saxophone": ("reed", "acoustic"),
    "sax": ("reed", "acoustic"),
    "alto sax": ("reed", "acoustic"),
    "tenor sax": ("reed", "acoustic"),
    "soprano sax": ("reed", "acoustic"),
    "baritone sax": ("reed", "acoustic"),
    "alto saxophone": ("reed", "acoustic"),
    "tenor saxophone": ("reed", "acoustic"),
    "soprano saxophone": ("reed", "acoustic"),
    "baritone saxophone": ("reed", "acoustic"),
    "clarinet": ("reed", "acoustic"),
    "bass clarinet": ("reed", "acoustic"),
    "oboe": ("reed", "acoustic"),
    "bassoon": ("reed", "acoustic"),
    "english horn": ("reed", "acoustic"),
    "cor anglais": ("reed", "acoustic"),
    "duduk": ("reed", "acoustic"),
    "accordion": ("reed", "acoustic"),
    "bandoneon": ("reed", "acoustic"),
    "harmonica": ("reed", "acoustic"),
    "melodica": ("reed", "acoustic"),
    "bagpipes": ("reed", "acoustic"),
    "woodwinds": ("reed", "flute", "acoustic"),
    # --- string (bowed strings and harp)
    "strings": ("string", "acoustic"),
    "string section": ("string", "acoustic"),
    "string quartet": ("string", "acoustic"),
    "string ensemble": ("string", "acoustic"),
    "string orchestra": ("string", "acoustic"),
    "string trio": ("string", "acoustic"),
    "synth strings": ("string", "synthetic"),
    "string pad": ("string", "long_release"),
    "violin": ("string", "acoustic"),
    "viola": ("string", "acoustic"),
    "cello": ("string", "acoustic"),
    "fiddle": ("string", "acoustic"),
    "erhu": ("string", "acoustic"),
    "harp": ("string", "acoustic"),
    # --- synth lead
    "synth": ("synth_lead", "synthetic"),
    "synths": ("synth_lead", "synthetic"),
    "synthesizer": ("synth_lead", "synthetic"),
    "synthesiser": ("synth_lead", "synthetic"),
    "synth lead": ("synth_lead", "synthetic"),
    "lead synth": ("synth_lead", "synthetic"),
    "analog synth": ("synth_lead", "synthetic"),
    "modular synth": ("synth_lead", "synthetic"),
    "synth arpeggio": ("synth_lead", "synthetic"),
    "arpeggiator": ("synth_lead", "synthetic"),
    "supersaw": ("synth_lead", "synthetic"),
    "saw lead": ("synth_lead", "synthetic"),
    "square lead": ("synth_lead", "synthetic"),
    "moog": ("synth_lead", "synthetic"),
    "chiptune": ("synth_lead", "synthetic"),
    "8 bit": ("synth_lead", "synthetic"),
    "theremin": ("synth_lead", "electronic"),
    # a pad is a synthesizer playing a held texture, not a lead line
    "synth pad": ("synthetic", "long_release"),
    "synth stab": ("synthetic", "fast_decay"),
    # --- vocal
    "vocal": ("vocal",),
    "vocals": ("vocal",),
    "vocalist": ("vocal",),
    "voice": ("vocal",),
    "singer": ("vocal",),
    "singing": ("vocal",),
    "sung": ("vocal",),
    "choir": ("vocal", "acoustic"),
    "choral": ("vocal", "acoustic"),
    "chant": ("vocal",),
    "chanting": ("vocal",),
    "humming": ("vocal",),
    "a cappella": ("vocal", "acoustic"),
    "acapella": ("vocal", "acoustic"),
    "falsetto": ("vocal",),
    "soprano": ("vocal",),
    "tenor": ("vocal",),
    "baritone": ("vocal",),
    "crooner": ("vocal",),
    "crooning": ("vocal",),
    "rap": ("vocal",),
    "rapper": ("vocal",),
    "rapping": ("vocal",),
    "yodel": ("vocal",),
    "yodeling": ("vocal",),
    "vocal chops": ("vocal",),
    "vocoder": ("vocal", "synthetic"),
    "spoken word": ("vocal",),
    "throat singing": ("vocal", "multiphonic"),
    "overtone singing": ("vocal", "multiphonic"),
    # --- drums and percussion (NSynth has no drum family; the label is for higher-level concepts)
    "drum": ("drum",),
    "drums": ("drum",),
    "drumming": ("drum",),
    "drummer": ("drum",),
    "drum kit": ("drum",),
    "drum machine": ("drum", "electronic"),
    "808": ("drum", "electronic"),
    "909": ("drum", "electronic"),
    "breakbeat": ("drum",),
    "beat": ("drum",),
    "boom bap": ("drum",),
    "percussion": ("drum",),
    "snare": ("drum",),
    "kick drum": ("drum",),
    "bass drum": ("drum",),
    "hi hat": ("drum",),
    "hihat": ("drum",),
    "cymbal": ("drum",),
    "rimshot": ("drum",),
    "handclap": ("drum",),
    "tambourine": ("drum", "acoustic"),
    "shaker": ("drum", "acoustic"),
    "congas": ("drum", "acoustic"),
    "bongos": ("drum", "acoustic"),
    "djembe": ("drum", "acoustic"),
    "cajon": ("drum", "acoustic"),
    "tabla": ("drum", "acoustic"),
    "taiko": ("drum", "acoustic"),
    "timpani": ("drum", "acoustic"),
    "frame drum": ("drum", "acoustic"),
    "bodhran": ("drum", "acoustic"),
    # "beats per minute" must not read as a drum beat; it maps to nothing (the BPM rule reads it).
    "beats per minute": (),
    "beat per minute": (),
    # players name their instrument
    "bassist": ("bass",),
    "trumpeter": ("brass", "acoustic"),
    "flautist": ("flute", "acoustic"),
    "flutist": ("flute", "acoustic"),
    "guitarist": ("guitar",),
    "pianist": ("keyboard", "acoustic"),
    "organist": ("organ",),
    "saxophonist": ("reed", "acoustic"),
    "tenor saxophonist": ("reed", "acoustic"),
    "clarinetist": ("reed", "acoustic"),
    "violinist": ("string", "acoustic"),
    "cellist": ("string", "acoustic"),
    "harpist": ("string", "acoustic"),
    # --- qualities (NSynth's definitions: timbre and envelope, not mood)
    "bright": ("bright",),
    "brilliant": ("bright",),
    "sparkling": ("bright",),
    "sparkly": ("bright",),
    "shimmering": ("bright",),
    "glassy": ("bright",),
    "crisp": ("bright",),
    "twinkling": ("bright",),
    "glistening": ("bright",),
    "dark": ("dark",),
    "murky": ("dark",),
    "brooding": ("dark",),
    "gloomy": ("dark",),
    "ominous": ("dark",),
    "sombre": ("dark",),
    "somber": ("dark",),
    "shadowy": ("dark",),
    "muffled": ("dark",),
    "distorted": ("distortion",),
    "distortion": ("distortion",),
    "overdriven": ("distortion",),
    "overdrive": ("distortion",),
    "fuzz": ("distortion",),
    "fuzzy": ("distortion",),
    "gritty": ("distortion",),
    "crunchy": ("distortion",),
    "saturated": ("distortion",),
    "bitcrushed": ("distortion",),
    "staccato": ("fast_decay",),
    "plucky": ("fast_decay",),
    "plucked": ("fast_decay",),
    "pizzicato": ("fast_decay",),
    "palm muted": ("fast_decay",),
    "choppy": ("fast_decay",),
    "stab": ("fast_decay",),
    "short decay": ("fast_decay",),
    "short notes": ("fast_decay",),
    "pad": ("long_release",),
    "sustained": ("long_release",),
    "sustain": ("long_release",),
    "drone": ("long_release",),
    "droning": ("long_release",),
    "legato": ("long_release",),
    "lingering": ("long_release",),
    "long release": ("long_release",),
    "long tails": ("long_release",),
    "held notes": ("long_release",),
    "multiphonic": ("multiphonic",),
    "multiphonics": ("multiphonic",),
    "double stops": ("multiphonic",),
    "tone clusters": ("multiphonic",),
    "split tones": ("multiphonic",),
    "swell": ("nonlinear_env",),
    "swelling": ("nonlinear_env",),
    "tremolo": ("nonlinear_env",),
    "wobble": ("nonlinear_env",),
    "wobbly": ("nonlinear_env",),
    "filter sweep": ("nonlinear_env",),
    "stutter": ("nonlinear_env",),
    "stuttering": ("nonlinear_env",),
    "reversed": ("nonlinear_env",),
    "auto wah": ("nonlinear_env",),
    "envelope filter": ("nonlinear_env",),
    "percussive": ("percussive",),
    "punchy": ("percussive",),
    "hammered": ("percussive",),
    "struck": ("percussive",),
    "slapped": ("percussive",),
    "reverb": ("reverb",),
    "reverberant": ("reverb",),
    "ambient": ("reverb",),
    "spacious": ("reverb",),
    "cavernous": ("reverb",),
    "cathedral": ("reverb",),
    "echoing": ("reverb",),
    "atmospheric": ("reverb",),
    "washed out": ("reverb",),
    "tempo synced": ("tempo-synced",),
    "synced delay": ("tempo-synced",),
    "ping pong delay": ("tempo-synced",),
    "dotted eighth delay": ("tempo-synced",),
    "sidechain": ("tempo-synced",),
    "sidechained": ("tempo-synced",),
    "side chained": ("tempo-synced",),
    "pumping": ("tempo-synced",),
    "trance gate": ("tempo-synced",),
    "rhythmic gating": ("tempo-synced",),
    # a gate cuts a sound's tail off abruptly: an envelope that is not a plain decay
    "gated": ("nonlinear_env",),
    "gated reverb": ("reverb", "nonlinear_env"),
    # --- sources
    "acoustic": ("acoustic",),
    "unplugged": ("acoustic",),
    "electric": ("electronic",),
    "electronic": ("electronic",),
    "electronica": ("electronic",),
    "edm": ("electronic",),
    "synthetic": ("synthetic",),
    "synthwave": ("synthetic",),
    "fm synthesis": ("synthetic",),
}

NEGATION_CUES = re.compile(
    r"\b(?:no(?![-'])|without|minus|lacking|sans|free of|devoid of|never|neither|nor"
    r"|not(?!\s+(?:just|only|merely)\b))\b")
# Where a negation's reach ends: punctuation, or a word that starts a new phrase of the description.
CLAUSE_BREAK = re.compile(
    r"[,.;:!?()\[\]]|\b(?:but|with|featuring|feat|plus|just|only|instead|while|over|under|then|yet|except"
    r"|until|into|alongside|against|backed|layered|where|whose|which|that)\b")
AND_WORD = re.compile(r"\band\b")
NEGATING_SUFFIX = re.compile(r"-(?:free|less)\b")

# A stated tempo: "<n> bpm", "<n>bpm", "<n> beats per minute", "bpm: <n>", "bpm of <n>", "tempo of <n> bpm".
_BPM_UNIT = r"(?:bpm|b\.p\.m\.?|beats?\s+per\s+minute)"
BPM_RANGE = re.compile(rf"\b\d{{2,3}}\s*(?:-|–|—|to)\s*\d{{2,3}}\s*{_BPM_UNIT}", re.IGNORECASE)
BPM_STATED = re.compile(rf"\b(\d{{2,3}})[\s-]*{_BPM_UNIT}|\bbpm\s*(?:[:=]|of)?\s*(\d{{2,3}})\b", re.IGNORECASE)
BPM_RANGE_ALLOWED = (20, 400)


def _phrase_pattern(phrase: str) -> str:
    words = [re.escape(word) for word in phrase.split()]
    return r"[\s-]+".join(words)


# Longest phrase first so that the regex alternation prefers "bass drum" over "bass" at the same position.
_PHRASES = sorted(LEXICON, key=lambda phrase: (-len(phrase), phrase))
_LEXICON_PATTERN = re.compile(
    r"\b(?:" + "|".join(f"({_phrase_pattern(phrase)})" for phrase in _PHRASES) + r")(?:e?s)?\b")


def lexicon_sha256() -> str:
    """Identifies the lexicon and rules version: annotations made with another lexicon are not mixed."""
    return sha256_json({"lexicon": {phrase: list(labels) for phrase, labels in LEXICON.items()},
                        "negation": NEGATION_CUES.pattern, "clause_break": CLAUSE_BREAK.pattern,
                        "bpm": [BPM_STATED.pattern, BPM_RANGE.pattern]})


def _normalise(text: str) -> str:
    text = text.lower().replace("’", "'").replace("‘", "'")
    # "drum & bass", "drum 'n' bass", "rock n roll": one spelling for the lexicon
    text = re.sub(r"\s*&\s*|\s+'?n'?\s+", " and ", text)
    return text


def _matches(text: str):
    """Non-overlapping lexicon matches, left to right: (start, end, labels)."""
    for match in _LEXICON_PATTERN.finditer(text):
        phrase = _PHRASES[match.lastindex - 1]
        yield match.start(), match.end(), LEXICON[phrase]


def _is_negated(text: str, start: int, end: int, match_starts: set[int]) -> bool:
    if NEGATING_SUFFIX.match(text, end):
        return True
    cues = [cue for cue in NEGATION_CUES.finditer(text, 0, start)]
    if not cues:
        return False
    gap_start = cues[-1].end()
    gap = text[gap_start:start]
    if CLAUSE_BREAK.search(gap):
        return False
    for conjunction in AND_WORD.finditer(gap):
        following = gap_start + conjunction.end()
        while following < len(text) and text[following].isspace():
            following += 1
        if following not in match_starts:
            return False
    return True


def stated_bpm(prompt: str) -> int | None:
    """The tempo the prompt states as a number, exactly; None when it states none, a range, or several."""
    if BPM_RANGE.search(prompt):
        return None
    values = {int(first or second) for first, second in BPM_STATED.findall(prompt)}
    if len(values) != 1:
        return None
    (value,) = values
    low, high = BPM_RANGE_ALLOWED
    return value if low <= value <= high else None


def offline_labels(prompt: str) -> list[str]:
    """Vocabulary labels the prompt states, in vocabulary order."""
    text = _normalise(prompt)
    matches = list(_matches(text))
    match_starts = {start for start, _, _ in matches}
    chosen = set()
    for start, end, labels in matches:
        if not _is_negated(text, start, end, match_starts):
            chosen.update(labels)
    # format_labels refuses anything outside the vocabulary, so a lexicon typo fails loudly here
    return format_labels(chosen).split(";") if chosen else []


def annotate_offline(prompt: str) -> tuple[str, int | None]:
    """(';'-joined labels, bpm or None) for one prompt."""
    return format_labels(offline_labels(prompt)), stated_bpm(prompt)
