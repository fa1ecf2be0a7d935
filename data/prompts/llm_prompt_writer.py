"""The LLM prompt writer: N original text-to-music prompts, asked for in requests of up to 250.

Each request has a fixed text (its number and a focus that varies the musical ground it covers), so the same
run always sends the same requests and each answer is cached under (model, request text, vocabulary,
instructions): a killed run resumes, a rerun spends nothing. Prompts are de-duplicated on normalised text
(prompt_list.normalise_prompt) and keep their first-seen order; their ids come from their text. When the
planned requests yield too few distinct prompts, further requests (with new numbers, hence new cache keys)
ask for the shortfall, up to a bound.
"""
import logging
import math
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
from tqdm import tqdm

from data.prompts.llm_requests import ChatJSON, LLMRequestError, ResponseCache, describe_base_url, parse_json_object
from data.prompts.prompt_list import normalise_prompt, prompts_table
from data.vocabulary import FAMILIES, QUALITIES, SOURCES, VOCABULARY

log = logging.getLogger("stage1")

DEFAULT_PROMPT_COUNT = 1000
DEFAULT_REQUEST_SIZE = 250
MAX_REQUEST_SIZE = 250
TEMPERATURE = 1.0
# Each request leans on one of these so that requests do not all return the same popular prompts.
FOCI = (
    "acoustic and orchestral music",
    "electronic and synthesizer-based music",
    "jazz, blues, soul and funk",
    "folk and traditional music from around the world",
    "rock, metal and punk",
    "ambient, cinematic and experimental music",
    "hip hop, R&B and pop",
    "solo instruments and small ensembles",
)

INSTRUCTIONS = f"""You write prompts for a text-to-music model. Each prompt is one sentence of at most 25 words
describing a short piece of music. Vary genre, mood, tempo and instrumentation across prompts; state a tempo
as a number ("at 120 BPM") in about a quarter of them. Most prompts should name one or two lead instruments.
Across the list, every instrument family should appear in some prompts and be absent from many others:
{", ".join(FAMILIES)}, and drums. Mention the sound sources ({", ".join(SOURCES)}) and sound qualities
({", ".join(QUALITIES)}) in plain words where they fit. Sometimes exclude an instrument ("no drums").
Every prompt must be original and different from the others."""


def response_format() -> dict:
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "music_prompts",
            "strict": True,
            "schema": {
                "type": "object",
                "additionalProperties": False,
                "required": ["prompts"],
                "properties": {"prompts": {"type": "array", "items": {"type": "string"}}},
            },
        },
    }


def instructions_identity() -> dict:
    return {"instructions": INSTRUCTIONS, "response_format": response_format(), "temperature": TEMPERATURE}


def request_text(number: int, count: int) -> str:
    focus = FOCI[number % len(FOCI)]
    return f"Request {number + 1}: write {count} prompts, leaning towards {focus}."


class LLMPromptWriter:
    def __init__(self, chat: ChatJSON, cache: ResponseCache, request_size: int = DEFAULT_REQUEST_SIZE):
        if not 1 <= request_size <= MAX_REQUEST_SIZE:
            raise ValueError(f"request_size must be 1–{MAX_REQUEST_SIZE}")
        self.chat = chat
        self.cache = cache
        self.request_size = request_size

    def _prompts_for(self, number: int, count: int) -> list[str]:
        text = request_text(number, count)
        # The server is part of the key: one model name on two servers is two models.
        key = ResponseCache.key(model=self.chat.settings.model,
                                server=describe_base_url(self.chat.settings.base_url), request=text,
                                vocabulary=list(VOCABULARY), **instructions_identity())
        cached = self.cache.get(key)
        if cached is not None and isinstance(cached.get("prompts"), list):
            self.chat.usage.add_cache_hits(1)
            return [prompt for prompt in cached["prompts"] if isinstance(prompt, str)]
        messages = [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": text}]
        reply = parse_json_object(self.chat.complete(messages, response_format(), TEMPERATURE,
                                                     what=f"prompt request {number + 1}"))
        prompts = reply.get("prompts") if reply else None
        if not isinstance(prompts, list):
            # Not cached: the next run asks again instead of remembering a broken answer.
            log.warning("prompt request %d: the answer was not the requested JSON; skipping it", number + 1)
            return []
        prompts = [prompt for prompt in prompts if isinstance(prompt, str)]
        self.cache.put(key, {"model": self.chat.settings.model, "request": text, "prompts": prompts})
        return prompts

    def write(self, prompt_count: int, concurrency: int, progress: bool = True) -> pd.DataFrame:
        """prompt_id, prompt, origin for exactly `prompt_count` distinct prompts."""
        planned = math.ceil(prompt_count / self.request_size)
        # Room for shortfall rounds (duplicates, short answers), but a model that cannot deliver stops the run.
        max_requests = 2 * planned + 2
        texts, seen, number = [], set(), 0
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool, \
                tqdm(total=prompt_count, desc="generate (llm)", unit="prompt", disable=not progress) as bar:
            while len(seen) < prompt_count and number < max_requests:
                shortfall = prompt_count - len(seen)
                round_requests = min(math.ceil(shortfall / self.request_size), max_requests - number)
                counts = [min(self.request_size, shortfall - index * self.request_size)
                          for index in range(round_requests)]
                numbers = range(number, number + round_requests)
                # map keeps request order, so the kept prompts do not depend on which answer came first
                for answer in pool.map(self._prompts_for, numbers, counts):
                    for text in answer:
                        normalised = normalise_prompt(text)
                        if normalised and normalised not in seen and len(seen) < prompt_count:
                            seen.add(normalised)
                            texts.append(text)
                            bar.update(1)
                number += round_requests
        if len(seen) < prompt_count:
            raise LLMRequestError(
                f"{self.chat.settings.model} gave {len(seen)} distinct prompts of the {prompt_count} asked for in "
                f"{number} requests — lower --prompt-count or try another --model")
        return prompts_table(texts, origin=f"llm:{self.chat.settings.model}")
