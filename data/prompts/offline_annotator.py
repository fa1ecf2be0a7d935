"""The offline annotator: a documented lexicon of words and phrases → vocabulary labels, plus stated BPM.

It needs no key and no network and gives the same answer every time, so `make demo` and the tests run on it.
It labels what a prompt says and what its words imply by the rules below (the LLM annotator, with its own
instructions, is the reference it is measured against: tests/test_annotator_gold.py). Rules:

- Words: the prompt is lower-cased, accents are dropped ("bodhrán" = "bodhran"), "&" and "'n'" read "and".
  A phrase's words may be joined by spaces or hyphens ("synth lead" = "synth-lead") but not by punctuation;
  the last word may carry a plural ("trumpets", "brushes", "melodies") or a possessive ("drummer's").
- Longest match: every lexicon phrase that starts at any word is a candidate; where candidates overlap, the
  longest (in characters) wins, then the leftmost. "bass drum" is a drum, "bass clarinet" a reed, "synth bass"
  a synthetic bass, "soprano sax" a reed (not a voice), "steel drums" a mallet instrument, "blues harp" a
  harmonica, and "double bass drums" a drum kit's kick drums (the lexicon holds "double bass drum").
- Negation: a match is dropped when it follows "no", "without", "minus", "lacking", "free of", "devoid of",
  "not", "never", "neither"/"nor" within the same clause ("no drums or bass", "without any vocals"), or when it
  is suffixed "-free"/"-less" ("vocal-free"). A clause ends at punctuation or at a word that starts a new
  phrase ("but", "with", "just", ...); "and" continues a negation only when a lexicon phrase follows it directly
  ("no drums and bass" drops both, "no vocals and a warm piano" keeps the piano). "not just/only" negates nothing.
- Instruments that are acoustic by construction (trumpet, violin, marimba, ...) also get `acoustic`; electric
  ones (electric guitar, Rhodes, Hammond) `electronic`; synthesizers `synthetic`. A bare "guitar", "bass",
  "organ" or "drums" gets no source: the prompt does not say which.
- Instruments NSynth has no family for are mapped to its nearest family: plucked lutes and zithers (banjo,
  ukulele, mandolin, sitar, koto) → guitar; harp → string; free reeds (accordion, harmonica, melodica) and
  bagpipes → reed; tuned percussion (steel drums, kalimba, handpan, bells, music box) → mallet; any unpitched
  percussion (congas, gongs, claps) → drum.
- Ensembles name their instruments: "rhythm section" → bass, drum; "string quartet" → string; "orchestra",
  "orchestral" → string, brass; "full orchestra(tion)", "symphony", "symphonic" → string, brass, flute, reed;
  "big band" → brass, reed, bass, drum; "jazz trio" → keyboard, bass, drum; "rock band" → guitar, bass, drum;
  "riffs", "strumming", "fingerpicked" → guitar; "808s" → drum and bass (see LEXICON).
- Genres imply the instrumentation that defines them (GENRES: "reggae" → guitar, bass, drum; "techno" → drum,
  bass, synthetic, electronic; "metal" → guitar, bass, drum, distortion), but their instrument labels count
  only when the prompt names no instrument itself ("classical piano sonata" is a piano piece), and a genre
  never brings back what the prompt excludes ("techno without drums").
- Qualities follow NSynth's definitions (timbre and envelope, not mood): `dark` is NSynth's "muted and bassy
  sound, also sometimes described as warm", so warm timbre words (warm, mellow, muffled, bassy) map to it and
  mood words (ominous, sombre) to nothing; sustain words → `long_release`; staccato/plucky/pizzicato →
  `fast_decay`; reverberant, ambient, ethereal, echoing → `reverb`; swells, tremolo, wobble, wah → `nonlinear_env`;
  punchy, pounding, slapped → `percussive`; sidechain pumping, synced delays → `tempo-synced`.
- Linear time: one pass over the words (each candidate phrase is at most a few words long) and one sort of the
  candidates; a prompt is at most 2,000 characters anyway (data/contract.py MAX_PROMPT_CHARACTERS).
- BPM: only a tempo stated as a number ("at 120 BPM", "92 beats per minute", "bpm: 140") sets `bpm`, and it
  is copied exactly. A range ("90-110 BPM") or two different stated tempos leave it empty, as does a value
  outside 20–400. Tempo words ("fast", "slow", "andante") are not mapped to numbers: any number chosen for them
  would be an invention, and stage 6 compares stated tempos only.
"""
import re
import unicodedata

from data.files import sha256_json
from data.vocabulary import DRUM, FAMILIES, format_labels

# Bump when a matching rule (not the lexicon, which is hashed itself) changes meaning.
RULES_VERSION = 2

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
    "reese bass": ("bass", "synthetic"),
    "basslines": ("bass",),
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
    "sousaphone": ("brass", "acoustic"),
    "bugle": ("brass", "acoustic"),
    "horns": ("brass", "acoustic"),
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
    "guitars": ("guitar",),
    "riff": ("guitar",),
    "guitar riff": ("guitar",),
    "strumming": ("guitar",),
    "strummed": ("guitar",),
    "fingerpicked": ("guitar",),
    "fingerpicking": ("guitar",),
    "fingerstyle": ("guitar",),
    "telecaster": ("guitar", "electronic"),
    "stratocaster": ("guitar", "electronic"),
    "les paul": ("guitar", "electronic"),
    "guitarron": ("bass", "acoustic"),
    "charango": ("guitar", "acoustic"),
    "balalaika": ("guitar", "acoustic"),
    "lute": ("guitar", "acoustic"),
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
    "keys": ("keyboard",),
    "mellotron": ("keyboard", "electronic"),
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
    "metallophone": ("mallet", "acoustic"),
    "singing bowl": ("mallet", "acoustic"),
    "wind chimes": ("mallet", "acoustic"),
    "celeste": ("keyboard", "acoustic"),
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
    "string": ("string",),
    # a "blues harp" is a harmonica, not a harp
    "blues harp": ("reed", "acoustic"),
    "mouth harp": ("reed", "acoustic"),
    "strings section": ("string", "acoustic"),
    "bowed": ("string",),
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
    "theremin": ("synth_lead", "electronic"),
    "synth leads": ("synth_lead", "synthetic"),
    "square wave": ("synth_lead", "synthetic"),
    "sawtooth": ("synth_lead", "synthetic"),
    "synth arpeggios": ("synth_lead", "synthetic"),
    "synth pads": ("synthetic", "long_release"),
    "pads": ("long_release",),
    "synth plucks": ("synthetic", "fast_decay"),
    "synth stabs": ("synthetic", "fast_decay"),
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
    "sings": ("vocal",),
    "sang": ("vocal",),
    "vocal harmonies": ("vocal",),
    "chorus": ("vocal",),
    "lyrics": ("vocal",),
    "vocalizing": ("vocal",),
    "vocalising": ("vocal",),
    "scat": ("vocal",),
    "opera singer": ("vocal", "acoustic"),
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
    "909": ("drum", "electronic"),
    "beat": ("drum",),
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
    "kick": ("drum",),
    "toms": ("drum",),
    "tom": ("drum",),
    "claps": ("drum",),
    "hand claps": ("drum",),
    "handclaps": ("drum",),
    "finger snaps": ("drum",),
    "cowbell": ("drum",),
    "gong": ("drum",),
    "castanets": ("drum", "acoustic"),
    "backbeat": ("drum",),
    "four on the floor": ("drum",),
    "breakbeats": ("drum",),
    "drumbeat": ("drum",),
    "hi hats": ("drum",),
    "ride cymbal": ("drum",),
    "brushed snare": ("drum", "acoustic"),
    "brushes": ("drum",),
    # "double bass drums" is a drum kit's two kick drums, not an upright bass (longest match)
    "double bass drum": ("drum",),
    "double kick": ("drum",),
    # "808s" in trap are the kick and the long sub bass it is tuned to; an "808 drum machine" is the drums only
    "808": ("drum", "bass", "electronic"),
    "808 drum": ("drum", "electronic"),
    "808 drum machine": ("drum", "electronic"),
    "tr 808": ("drum", "electronic"),
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
    "jangly": ("bright",),
    "jangling": ("bright",),
    "tinkling": ("bright",),
    "chiming": ("bright",),
    "tinny": ("bright",),
    "bell like": ("bright",),
    # NSynth's dark: "a distinct lack of high frequency content, giving a muted and bassy sound. Also
    # sometimes described as 'Warm'". Timbre words only: a mood ("ominous", "sombre") is not a spectrum.
    "dark": ("dark",),
    "murky": ("dark",),
    "muffled": ("dark",),
    "warm": ("dark",),
    "warmth": ("dark",),
    "mellow": ("dark",),
    "mellowed": ("dark",),
    "dull": ("dark",),
    "bassy": ("dark",),
    "velvety": ("dark",),
    "round": ("dark",),
    "low pass": ("dark",),
    "lowpass": ("dark",),
    "low pass filtered": ("dark",),
    "subdued": ("dark",),
    "muddy": ("dark",),
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
    "bitcrushing": ("distortion",),
    "fuzzed": ("distortion",),
    "fuzzed out": ("distortion",),
    "grungy": ("distortion",),
    "crunch": ("distortion",),
    "clipping": ("distortion",),
    "shredding": ("guitar", "distortion"),
    "staccato": ("fast_decay",),
    "plucky": ("fast_decay",),
    "plucked": ("fast_decay",),
    "pizzicato": ("fast_decay",),
    "palm muted": ("fast_decay",),
    "choppy": ("fast_decay",),
    "stab": ("fast_decay",),
    "short notes": ("fast_decay",),
    "pluck": ("fast_decay",),
    "spiccato": ("fast_decay",),
    "staccato notes": ("fast_decay",),
    "fast decay": ("fast_decay",),
    "quick decay": ("fast_decay",),
    "short decay": ("fast_decay",),
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
    "long notes": ("long_release",),
    "ringing": ("long_release",),
    "sustained notes": ("long_release",),
    "slow release": ("long_release",),
    "long decay": ("long_release",),
    "slowly fading": ("long_release",),
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
    "wah": ("nonlinear_env",),
    "wah wah": ("nonlinear_env",),
    "wobbling": ("nonlinear_env",),
    "filter sweeps": ("nonlinear_env",),
    "sweeping filter": ("nonlinear_env",),
    "volume swells": ("nonlinear_env",),
    "pulsating": ("nonlinear_env",),
    "vibrato": ("nonlinear_env",),
    "glitchy": ("nonlinear_env",),
    "glitch": ("nonlinear_env",),
    "percussive": ("percussive",),
    "punchy": ("percussive",),
    "hammered": ("percussive",),
    "struck": ("percussive",),
    "slapped": ("percussive",),
    "snappy": ("percussive",),
    "pounding": ("percussive",),
    "thumping": ("percussive",),
    "sharp attack": ("percussive",),
    "hard hitting": ("percussive",),
    "reverb": ("reverb",),
    "reverberant": ("reverb",),
    "ambient": ("reverb",),
    "spacious": ("reverb",),
    "cavernous": ("reverb",),
    "cathedral": ("reverb",),
    "echoing": ("reverb",),
    "atmospheric": ("reverb",),
    "washed out": ("reverb",),
    "echo": ("reverb",),
    "echoes": ("reverb",),
    "echoey": ("reverb",),
    "spacey": ("reverb",),
    "spacy": ("reverb",),
    "distant": ("reverb",),
    "ethereal": ("reverb",),
    "expansive": ("reverb",),
    "vast": ("reverb",),
    "concert hall": ("reverb",),
    "reverb tails": ("reverb", "long_release"),
    "tempo synced": ("tempo-synced",),
    "synced delay": ("tempo-synced",),
    "ping pong delay": ("tempo-synced",),
    "dotted eighth delay": ("tempo-synced",),
    "sidechain": ("tempo-synced",),
    "side chain": ("tempo-synced",),
    "sidechain compression": ("tempo-synced",),
    "synced": ("tempo-synced",),
    "beat synced": ("tempo-synced",),
    "sidechained": ("tempo-synced",),
    "side chained": ("tempo-synced",),
    "pumping": ("tempo-synced",),
    "trance gate": ("tempo-synced",),
    "rhythmic gating": ("tempo-synced",),
    # a gate cuts a sound's tail off abruptly: an envelope that is not a plain decay
    "gated": ("nonlinear_env",),
    "gated reverb": ("reverb", "nonlinear_env"),
    # --- ensembles: the instruments the ensemble is made of
    "rhythm section": ("bass", "drum"),
    "orchestra": ("string", "brass", "acoustic"),
    "orchestral": ("string", "brass", "acoustic"),
    "orchestration": ("string", "brass", "acoustic"),
    "full orchestra": ("string", "brass", "flute", "reed", "acoustic"),
    "full orchestration": ("string", "brass", "flute", "reed", "acoustic"),
    "symphony orchestra": ("string", "brass", "flute", "reed", "acoustic"),
    "symphony": ("string", "brass", "flute", "reed", "acoustic"),
    "symphonic": ("string", "brass", "flute", "reed", "acoustic"),
    "philharmonic": ("string", "brass", "flute", "reed", "acoustic"),
    "chamber orchestra": ("string", "flute", "reed", "acoustic"),
    "string quintet": ("string", "acoustic"),
    "brass choir": ("brass", "acoustic"),
    "piano trio": ("keyboard", "string", "acoustic"),
    "piano quintet": ("keyboard", "string", "acoustic"),
    "wind quintet": ("flute", "reed", "brass", "acoustic"),
    "woodwind": ("reed", "flute", "acoustic"),
    "woodwind quintet": ("flute", "reed", "brass", "acoustic"),
    "brass band": ("brass", "acoustic"),
    "brass quintet": ("brass", "acoustic"),
    "brass ensemble": ("brass", "acoustic"),
    "big band": ("brass", "reed", "bass", "drum", "acoustic"),
    "jazz band": ("brass", "reed", "bass", "drum"),
    "jazz trio": ("keyboard", "bass", "drum"),
    "piano jazz trio": ("keyboard", "bass", "drum", "acoustic"),
    "jazz combo": ("keyboard", "bass", "drum"),
    "jazz quartet": ("reed", "keyboard", "bass", "drum"),
    "jazz quintet": ("reed", "brass", "keyboard", "bass", "drum"),
    "marching band": ("brass", "reed", "drum", "acoustic"),
    "drumline": ("drum", "acoustic"),
    "drum circle": ("drum", "acoustic"),
    "mariachi": ("brass", "string", "guitar", "acoustic"),
    "steel band": ("mallet", "acoustic"),
    "rock band": ("guitar", "bass", "drum", "electronic"),
    "power trio": ("guitar", "bass", "drum", "electronic"),
    "garage band": ("guitar", "bass", "drum", "electronic"),
    "boy band": ("vocal",),
    "girl group": ("vocal",),
    # --- sources
    "acoustic": ("acoustic",),
    "unplugged": ("acoustic",),
    "electric": ("electronic",),
    "electronic": ("electronic",),
    "electronica": ("electronic",),
    "synthetic": ("synthetic",),
    "synthwave": ("synth_lead", "synthetic", "electronic"),
    "fm synthesis": ("synthetic",),
}

# Genre names → the instrumentation (and sound) the genre is defined by, only what nearly every track of it has.
# Their instrument labels (families, drum) count only when the prompt names no instrument itself: "reggae" alone
# is guitar, bass and drums, but "classical piano sonata" is a piano piece and "a rock drummer" a drummer.
GENRES: dict[str, tuple[str, ...]] = {
    "rock": ("guitar", "bass", "drum", "electronic"),
    "rock and roll": ("guitar", "bass", "drum", "electronic"),
    "rockabilly": ("guitar", "bass", "drum"),
    "metal": ("guitar", "bass", "drum", "distortion", "electronic"),
    "heavy metal": ("guitar", "bass", "drum", "distortion", "electronic"),
    "metalcore": ("guitar", "bass", "drum", "distortion", "electronic", "vocal"),
    "thrash": ("guitar", "bass", "drum", "distortion", "electronic"),
    "punk": ("guitar", "bass", "drum", "distortion", "electronic"),
    "grunge": ("guitar", "bass", "drum", "distortion", "electronic"),
    "shoegaze": ("guitar", "distortion", "reverb", "electronic"),
    "surf rock": ("guitar", "bass", "drum", "reverb", "electronic"),
    "blues": ("guitar",),
    "reggae": ("guitar", "bass", "drum"),
    "dub": ("bass", "drum", "reverb"),
    "ska": ("guitar", "brass", "bass", "drum"),
    "funk": ("bass", "guitar", "drum"),
    "disco": ("drum", "bass"),
    "country": ("guitar",),
    "bluegrass": ("guitar", "string", "acoustic"),
    "folk": ("guitar", "acoustic"),
    "bossa nova": ("guitar", "acoustic"),
    "flamenco": ("guitar", "acoustic"),
    "samba": ("drum", "percussive"),
    "salsa": ("brass", "drum", "keyboard"),
    "tango": ("reed", "string", "acoustic"),
    "polka": ("reed", "brass", "acoustic"),
    "gospel": ("vocal",),
    "opera": ("vocal", "string", "acoustic"),
    "operatic": ("vocal", "acoustic"),
    "classical": ("string", "acoustic"),
    "hip hop": ("drum", "electronic"),
    "trap": ("drum", "bass", "electronic"),
    "boom bap": ("drum", "electronic"),
    "techno": ("drum", "bass", "synthetic", "electronic"),
    "house": ("drum", "synthetic", "electronic"),
    "deep house": ("drum", "bass", "synthetic", "electronic"),
    "trance": ("synth_lead", "drum", "synthetic", "electronic"),
    "dubstep": ("bass", "drum", "synthetic", "electronic"),
    "drum and bass": ("drum", "bass", "electronic"),
    "dnb": ("drum", "bass", "electronic"),
    "jungle": ("drum", "bass", "electronic"),
    "breakbeat": ("drum", "electronic"),
    "idm": ("synthetic", "electronic"),
    "synthpop": ("synth_lead", "synthetic", "electronic"),
    "synth pop": ("synth_lead", "synthetic", "electronic"),
    "retrowave": ("synth_lead", "synthetic", "electronic"),
    "vaporwave": ("synthetic", "electronic"),
    "chiptune": ("synth_lead", "synthetic"),
    "8 bit": ("synth_lead", "synthetic"),
    "electro": ("synthetic", "electronic"),
    "edm": ("drum", "synthetic", "electronic"),
    # compound names whose parts would imply the wrong thing
    "indian classical": (),
    "hindustani": (),
    "carnatic": (),
}

# A stated tempo: "<n> bpm", "<n>bpm", "<n> beats per minute", "bpm: <n>", "bpm of <n>", "tempo of <n> bpm".
_BPM_UNIT = r"(?:bpm|b\.p\.m\.?|beats?\s+per\s+minute)"
BPM_RANGE = re.compile(rf"\b\d{{2,3}}\s*(?:-|–|—|to)\s*\d{{2,3}}\s*{_BPM_UNIT}", re.IGNORECASE)
BPM_STATED = re.compile(rf"\b(\d{{2,3}})[\s-]*{_BPM_UNIT}|\bbpm\s*(?:[:=]|of)?\s*(\d{{2,3}})\b", re.IGNORECASE)
BPM_RANGE_ALLOWED = (20, 400)

# Negation cues (single words; "free of" and "devoid of" are read as two), the words that end a negation's
# reach besides punctuation, and the words after "not" that make it no negation ("not just drums").
NEGATION_WORDS = frozenset({"no", "without", "minus", "lacking", "sans", "never", "neither", "nor", "not"})
NEGATION_BEFORE_OF = frozenset({"free", "devoid"})
NOT_A_NEGATION_AFTER_NOT = frozenset({"just", "only", "merely"})
CLAUSE_BREAK_WORDS = frozenset({
    "but", "with", "featuring", "feat", "plus", "just", "only", "instead", "while", "over", "under", "then", "yet",
    "except", "until", "into", "alongside", "against", "backed", "layered", "where", "whose", "which", "that"})
CLAUSE_BREAK_CHARACTERS = frozenset(",.;:!?()[]")
NEGATING_SUFFIXES = frozenset({"free", "less"})

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# phrase (tuple of words) -> lexicon key; the longest phrase has this many words
_PHRASE_LABELS = {**LEXICON, **GENRES}
_PHRASE_OF_WORDS = {tuple(phrase.split()): phrase for phrase in _PHRASE_LABELS}
_INSTRUMENT_LABELS = frozenset(FAMILIES) | {DRUM}
_MAX_PHRASE_WORDS = max(len(words) for words in _PHRASE_OF_WORDS)


def lexicon_sha256() -> str:
    """Identifies the lexicon and rules version: annotations made with another lexicon are not mixed."""
    return sha256_json({"lexicon": {phrase: list(labels) for phrase, labels in LEXICON.items()},
                        "genres": {phrase: list(labels) for phrase, labels in GENRES.items()},
                        "negation": sorted(NEGATION_WORDS | NEGATION_BEFORE_OF | NOT_A_NEGATION_AFTER_NOT),
                        "clause_break": sorted(CLAUSE_BREAK_WORDS | CLAUSE_BREAK_CHARACTERS),
                        "suffixes": sorted(NEGATING_SUFFIXES), "rules_version": RULES_VERSION,
                        "bpm": [BPM_STATED.pattern, BPM_RANGE.pattern]})


def _normalise(text: str) -> str:
    # Accents off ("bodhrán" = "bodhran"), one apostrophe, lower case.
    text = unicodedata.normalize("NFKD", text)
    text = "".join(character for character in text if not unicodedata.combining(character))
    text = text.lower().replace("’", "'").replace("‘", "'")
    # "drum & bass", "drum 'n' bass", "rock n roll": one spelling for the lexicon
    return re.sub(r"\s*&\s*|\s+'?n'?\s+", " and ", text)


def _singular_forms(word: str) -> tuple[str, ...]:
    """The word and the singulars a plural or possessive ending may hide: trumpets, brushes, melodies."""
    if word.endswith("'s"):  # a possessive: "the drummer's fills"
        word = word[:-2]
    forms = [word]
    if len(word) > 3 and word.endswith("ies"):
        forms.append(word[:-3] + "y")
    if len(word) > 3 and word.endswith("es"):
        forms.append(word[:-2])
    if len(word) > 2 and word.endswith("s") and not word.endswith("ss"):
        forms.append(word[:-1])
    return tuple(forms)


def _tokens(text: str):
    """Words with their spans, and for each gap before a word whether it breaks a phrase or a clause."""
    words, spans, joins, breaks = [], [], [], []
    previous_end = 0
    for match in _TOKEN.finditer(text):
        gap = text[previous_end:match.start()]
        words.append(match.group())
        spans.append(match.span())
        # Words of one phrase are joined by spaces or hyphens only ("synth-lead", "hi hat").
        joins.append(bool(gap) and all(character.isspace() or character == "-" for character in gap))
        breaks.append(any(character in CLAUSE_BREAK_CHARACTERS for character in gap))
        previous_end = match.end()
    return words, spans, joins, breaks


def _phrase_at(words, joins, start: int):
    """The longest lexicon phrase starting at word `start` (a plural allowed on its last word): (n_words, key)."""
    for length in range(min(_MAX_PHRASE_WORDS, len(words) - start), 0, -1):
        if not all(joins[start + offset] for offset in range(1, length)):
            continue
        head = tuple(words[start:start + length - 1])
        for last in _singular_forms(words[start + length - 1]):
            key = _PHRASE_OF_WORDS.get(head + (last,))
            if key is not None:
                return length, key
    return None


def _matches(words, spans, joins):
    """Non-overlapping phrase matches as {first word: (n_words, key)}. Candidates start at every word; the
    longest (in characters) wins where two overlap, then the leftmost: "double bass drums" is a drum kit part
    because "double bass drum" is in the lexicon, and "synth bass line" a synth bass. Every candidate spans at
    most _MAX_PHRASE_WORDS words, so this is linear in the prompt's length (plus one sort)."""
    candidates = []
    for start in range(len(words)):
        found = _phrase_at(words, joins, start)
        if found:
            length, key = found
            candidates.append((-(spans[start + length - 1][1] - spans[start][0]), start, length, key))
    candidates.sort()
    taken = bytearray(len(words))
    chosen = {}
    for _, start, length, key in candidates:
        if not any(taken[start:start + length]):
            taken[start:start + length] = b"\x01" * length
            chosen[start] = (length, key)
    return chosen


def _stated_labels(text: str) -> set:
    """Labels of every match that is not negated, in one left-to-right pass.

    A negation cue opens a negated stretch that a clause break closes (punctuation or a CLAUSE_BREAK_WORDS
    word); "and" keeps it open only when a lexicon match follows it directly ("no drums and bass" drops both,
    "no vocals and a warm piano" keeps the piano). A match directly suffixed "-free"/"-less" is negated too."""
    words, spans, joins, breaks = _tokens(text)
    matches = _matches(words, spans, joins)
    chosen, from_genres, negated, negating, index = set(), set(), set(), False, 0
    while index < len(words):
        if breaks[index]:
            negating = False
        if index in matches:
            length, key = matches[index]
            after = index + length
            suffixed = (after < len(words) and words[after] in NEGATING_SUFFIXES
                        and text[spans[after - 1][1]:spans[after][0]] == "-")
            if negating or suffixed:
                negated.update(_PHRASE_LABELS[key])
            else:
                (from_genres if key in GENRES else chosen).update(_PHRASE_LABELS[key])
            index = after
            continue
        word = words[index]
        next_gap = text[spans[index][1]:spans[index + 1][0]] if index + 1 < len(words) else ""
        if word in NEGATION_WORDS and not (word == "no" and next_gap.startswith("-")):
            negating = not (word == "not" and index + 1 < len(words)
                            and words[index + 1] in NOT_A_NEGATION_AFTER_NOT)
        elif word == "of" and index > 0 and words[index - 1] in NEGATION_BEFORE_OF:
            negating = True
        elif word in CLAUSE_BREAK_WORDS:
            negating = False
        elif word == "and" and negating and not (index + 1 in matches and not breaks[index + 1]):
            negating = False
        index += 1
    if chosen & _INSTRUMENT_LABELS:
        from_genres -= _INSTRUMENT_LABELS
    # A genre never brings back what the prompt excludes ("techno without drums").
    return chosen | (from_genres - negated)


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
    """Vocabulary labels the prompt states or implies by the rules above, in vocabulary order."""
    chosen = _stated_labels(_normalise(prompt))
    # format_labels refuses anything outside the vocabulary, so a lexicon typo fails loudly here
    return format_labels(chosen).split(";") if chosen else []


def annotate_offline(prompt: str) -> tuple[str, int | None]:
    """(';'-joined labels, bpm or None) for one prompt."""
    return format_labels(offline_labels(prompt)), stated_bpm(prompt)
