"""The LLM annotator: vocabulary labels and stated BPM for each prompt, asked in small batches.

Batches default to 5 prompts: the reference found that larger batches made the model forget prompts. The
answer's shape is fixed by a strict json_schema whose label items are an enum of the vocabulary and whose bpm is
an integer or null, so a conforming server cannot leave the vocabulary. A server that ignores the schema is
still checked: every prompt of a batch must come back exactly once under its id with known labels and a bpm
in 20–400 or null. Missing, duplicated or invalid answers are asked again (alone, in a smaller batch) up to
`max_reasks` times, then the run stops naming the prompt; answers for ids we did not ask about are ignored.

Every accepted answer is cached in its own file, keyed by (model, prompt text, vocabulary, instructions), so
a rerun or a resumed run asks only for prompts it has no answer for, whatever batches they fall into.
"""
import json
import logging
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass

from tqdm import tqdm

from data.prompts.llm_requests import ChatJSON, LLMRequestError, ResponseCache, describe_base_url, parse_json_object
from data.vocabulary import VOCABULARY, format_labels

log = logging.getLogger("stage1")

DEFAULT_BATCH_SIZE = 5
DEFAULT_MAX_REASKS = 3
BPM_LIMITS = (20, 400)
TEMPERATURE = 0.0

INSTRUCTIONS = """You annotate text-to-music prompts with a fixed vocabulary of musical concepts.
For each prompt, return its id, the labels that apply and its tempo.

Labels (use only these; omit any that the prompt does not state or clearly imply):
- Instrument families (NSynth): bass, brass, flute, guitar (also banjo, ukulele, mandolin, sitar), keyboard
  (piano, electric piano, harpsichord, clavinet), mallet (marimba, vibraphone, xylophone, glockenspiel, steel
  drums, bells), organ, reed (saxophone, clarinet, oboe, bassoon, accordion, harmonica), string (violin, viola,
  cello, harp, string sections), synth_lead (lead synthesizer lines), vocal (singing, choir, rap, humming).
- drum: drums or percussion of any kind.
- Sources: acoustic (acoustic instruments or voices), electronic (electric instruments such as electric guitar,
  electric bass, electric piano, Hammond organ, drum machines), synthetic (synthesizers).
- Qualities of the sound: bright (high-frequency, brilliant), dark (dull, muffled, low), distortion (distorted,
  overdriven, fuzz), fast_decay (staccato, plucked, short notes), long_release (sustained notes, pads, drones),
  multiphonic (several tones at once from one source: multiphonics, throat singing, double stops), nonlinear_env
  (swells, tremolo, wobble, filter sweeps, gating), percussive (sharp attacks), reverb (reverberant, ambient,
  spacious), tempo-synced (effects locked to the beat: sidechain pumping, trance gates, synced delays).

Instruments that the prompt excludes ("no drums", "without vocals") must not be labelled.
bpm: the tempo in beats per minute only when the prompt states it as a number, copied exactly; otherwise null.
Answer every prompt exactly once, using the id it was given."""


def response_format() -> dict:
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "prompt_annotations",
            "strict": True,
            "schema": {
                "type": "object",
                "additionalProperties": False,
                "required": ["annotations"],
                "properties": {"annotations": {"type": "array", "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["id", "labels", "bpm"],
                    "properties": {
                        "id": {"type": "string"},
                        "labels": {"type": "array", "items": {"type": "string", "enum": list(VOCABULARY)}},
                        "bpm": {"type": ["integer", "null"]},
                    },
                }}},
            },
        },
    }


def instructions_identity() -> dict:
    """Everything besides model and prompt that shapes an answer: part of every cache key."""
    return {"instructions": INSTRUCTIONS, "response_format": response_format(), "temperature": TEMPERATURE}


@dataclass(frozen=True)
class Annotation:
    labels: str
    bpm: int | None


def check_answer(entry: dict) -> tuple[Annotation | None, str]:
    """An annotation from one answered item, or None and what was wrong with it."""
    labels = entry.get("labels")
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        return None, "answered without a list of labels"
    unknown = [label for label in labels if label not in VOCABULARY]
    if unknown:
        return None, f"got label {unknown[0]!r}, which is not in the vocabulary"
    bpm = entry.get("bpm")
    if isinstance(bpm, float) and bpm.is_integer():
        bpm = int(bpm)
    if bpm is not None and (isinstance(bpm, bool) or not isinstance(bpm, int)
                            or not BPM_LIMITS[0] <= bpm <= BPM_LIMITS[1]):
        return None, f"got bpm {entry.get('bpm')!r}, not an integer in 20–400 or null"
    return Annotation(format_labels(labels), bpm), ""


class LLMAnnotator:
    def __init__(self, chat: ChatJSON, cache: ResponseCache, batch_size: int = DEFAULT_BATCH_SIZE,
                 max_reasks: int = DEFAULT_MAX_REASKS):
        self.chat = chat
        self.cache = cache
        self.batch_size = batch_size
        self.max_reasks = max_reasks

    def cache_key(self, prompt: str) -> str:
        # The server is part of the key: one model name on two servers (vLLM, Ollama, OpenAI) is two models.
        return ResponseCache.key(model=self.chat.settings.model,
                                 server=describe_base_url(self.chat.settings.base_url), prompt=prompt,
                                 vocabulary=list(VOCABULARY), **instructions_identity())

    def cached(self, prompt: str) -> Annotation | None:
        payload = self.cache.get(self.cache_key(prompt))
        if payload is None or payload.get("prompt") != prompt:
            return None
        annotation, problem = check_answer(payload.get("answer", {}))
        if annotation is None:
            log.warning("cached answer for %r %s; asking again", prompt[:60], problem)
        return annotation

    def _ask(self, items: list[tuple[str, str]]) -> dict | None:
        request = {"prompts": [{"id": prompt_id, "prompt": text} for prompt_id, text in items]}
        messages = [{"role": "system", "content": INSTRUCTIONS},
                    {"role": "user", "content": json.dumps(request, ensure_ascii=False)}]
        ids = ", ".join(prompt_id for prompt_id, _ in items)
        content = self.chat.complete(messages, response_format(), TEMPERATURE, what=f"annotating {ids}")
        return parse_json_object(content)

    def annotate_batch(self, items: list[tuple[str, str]]) -> dict[str, Annotation]:
        """Annotations for every (prompt_id, prompt) of the batch, each accepted one cached at once."""
        pending, answers, problems = list(items), {}, {}
        for _ in range(1 + self.max_reasks):
            if not pending:
                break
            reply = self._ask(pending)
            entries = reply.get("annotations") if reply else None
            if not isinstance(entries, list):
                problems.update({prompt_id: "got an answer that is not the requested JSON"
                                 for prompt_id, _ in pending})
                continue
            by_id: dict[str, list[dict]] = {}
            for entry in entries:
                if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                    by_id.setdefault(entry["id"], []).append(entry)
            asked = {prompt_id for prompt_id, _ in pending}
            extras = sorted(set(by_id) - asked)
            if extras:
                log.info("ignoring answers for ids not asked about: %s", ", ".join(extras[:5]))
            still_pending = []
            for prompt_id, text in pending:
                found = by_id.get(prompt_id, [])
                if len(found) != 1:
                    problems[prompt_id] = "was missing from the answer" if not found else "was answered twice"
                    still_pending.append((prompt_id, text))
                    continue
                annotation, problem = check_answer(found[0])
                if annotation is None:
                    problems[prompt_id] = problem
                    still_pending.append((prompt_id, text))
                    continue
                answers[prompt_id] = annotation
                self.cache.put(self.cache_key(text), {
                    "model": self.chat.settings.model, "prompt": text,
                    "answer": {"labels": annotation.labels.split(";") if annotation.labels else [],
                               "bpm": annotation.bpm},
                    "raw": found[0]})
            if still_pending:
                log.warning("re-asking %d prompt(s): %s", len(still_pending),
                            "; ".join(f"{prompt_id} {problems[prompt_id]}" for prompt_id, _ in still_pending))
            pending = still_pending
        if pending:
            prompt_id, text = pending[0]
            raise LLMRequestError(
                f"prompt {prompt_id} ({text[:60]!r}) {problems[prompt_id]} after {1 + self.max_reasks} requests "
                "— use a model/server that supports json_schema structured outputs, raise --max-reasks, "
                "or use --annotator offline")
        return answers

    def annotate(self, prompts: list[tuple[str, str]], concurrency: int, progress: bool = True) -> dict[str, Annotation]:
        """Annotations for every (prompt_id, prompt); cached prompts cost nothing."""
        answers, to_ask = {}, []
        for prompt_id, text in prompts:
            annotation = self.cached(text)
            if annotation is None:
                to_ask.append((prompt_id, text))
            else:
                answers[prompt_id] = annotation
        self.chat.usage.add_cache_hits(len(answers))
        if to_ask:
            log.info("annotating %d prompt(s) with %s (%d from cache)", len(to_ask), self.chat.settings.model,
                     len(answers))
        batches = [to_ask[start:start + self.batch_size] for start in range(0, len(to_ask), self.batch_size)]
        failed = threading.Event()

        def annotate_unless_failed(batch):
            # After one batch fails the run is over: workers must not spend requests on batches queued behind it.
            if failed.is_set():
                return {}
            try:
                return self.annotate_batch(batch)
            except BaseException:
                failed.set()
                raise

        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            futures = {pool.submit(annotate_unless_failed, batch) for batch in batches}
            try:
                with tqdm(total=len(to_ask), desc="annotate (llm)", unit="prompt", disable=not batches or not progress) as bar:
                    while futures:
                        done, futures = wait(futures, return_when=FIRST_EXCEPTION)
                        for future in done:
                            answers.update(future.result())
                            bar.update(len(future.result()))
            except BaseException:
                # A failed batch or Ctrl-C: queued batches are dropped, requests in flight finish and are cached,
                # so a rerun of the same command resumes from there.
                failed.set()
                for future in futures:
                    future.cancel()
                raise
        return answers
