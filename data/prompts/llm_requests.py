"""One JSON-answering chat request to an OpenAI-compatible server, done carefully.

Shared by the LLM prompt writer and the LLM annotator: the official openai SDK (chat.completions with a strict
json_schema response_format), our own retry loop with exponential backoff and jitter, a token and cost tally,
and a disk cache whose files are written atomically so that a killed run resumes where it stopped.

The API key is handed to the SDK and to `redact`, and nowhere else: it is not an attribute of anything we
log, cache or write, and it is not part of any cache key.
"""
import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from data.files import read_json, sha256_json, unique_keys, write_json
from data.stage import InputError

log = logging.getLogger("stage1")

DEFAULT_MODEL = "gpt-4.1-mini"
# US$ per million tokens (input, output), from OpenAI's public price list as of 2025; it may be out of date,
# and OpenAI-compatible servers (vLLM, Ollama) usually cost nothing per token. Only the end-of-run estimate
# uses it.
PRICE_PER_MILLION_TOKENS = {
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
}
# Statuses worth another try: the server is busy or broken for now, not refusing this request for good.
RETRY_STATUSES = {408, 409, 429}


class LLMRequestError(InputError):
    """The server could not give a usable answer; reported like bad input: one line with what to do."""


@dataclass
class LLMSettings:
    model: str = DEFAULT_MODEL
    base_url: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 6
    # Backoff before retry n (0-based) is retry_base_s * 2**n, jittered to 50–100%, capped at retry_cap_s.
    retry_base_s: float = 1.0
    retry_cap_s: float = 60.0
    concurrency: int = 4


@dataclass
class Usage:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_hits: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, response) -> None:
        usage = getattr(response, "usage", None)
        with self.lock:
            self.requests += 1
            if usage is not None:
                self.input_tokens += usage.prompt_tokens or 0
                self.output_tokens += usage.completion_tokens or 0

    def add_cache_hits(self, count: int) -> None:
        with self.lock:
            self.cache_hits += count

    def summary(self, model: str) -> str:
        line = (f"llm {model}: {self.requests} requests, {self.cache_hits} answers from cache, "
                f"{self.input_tokens:,} input + {self.output_tokens:,} output tokens")
        price = PRICE_PER_MILLION_TOKENS.get(model)
        if price is None:
            return line + f"; cost not estimated (no price listed for {model!r})"
        cost = (self.input_tokens * price[0] + self.output_tokens * price[1]) / 1e6
        return (line + f", estimated ${cost:.4f} at ${price[0]:.2f}/${price[1]:.2f} per 1M tokens "
                "(price table in data/prompts/llm_requests.py, may be out of date)")


def describe_base_url(base_url: str | None) -> str:
    """The server as recorded in provenance: no user:password and no query string, which could hold secrets."""
    base_url = base_url or os.environ.get("OPENAI_BASE_URL")
    if not base_url:
        return "https://api.openai.com/v1"
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class ChatJSON:
    """Sends chat requests whose answer must be JSON, retrying what is worth retrying."""

    def __init__(self, settings: LLMSettings, api_key: str):
        # Imported here, not at the top: the SDK takes seconds to import and the offline default never needs it.
        import openai
        self._openai = openai
        self.settings = settings
        self.usage = Usage()
        self._secret = api_key
        # The SDK's own retries are off: ours are logged, jittered and configurable for fast tests.
        self._client = openai.OpenAI(api_key=api_key, base_url=settings.base_url,
                                     timeout=settings.timeout_s, max_retries=0)

    def redact(self, text: str) -> str:
        return text.replace(self._secret, "[redacted]") if self._secret else text

    def _backoff(self, retry: int) -> float:
        ceiling = min(self.settings.retry_cap_s, self.settings.retry_base_s * 2 ** retry)
        return ceiling * random.uniform(0.5, 1.0)

    def complete(self, messages: list[dict], response_format: dict, temperature: float, what: str) -> str:
        """The answer's text content. Retries 429/5xx/timeouts; anything else is a one-line LLMRequestError."""
        openai = self._openai
        for attempt in range(self.settings.max_retries + 1):
            try:
                response = self._client.chat.completions.create(
                    model=self.settings.model, messages=messages, response_format=response_format,
                    temperature=temperature)
            except openai.APITimeoutError:
                problem = f"no answer within {self.settings.timeout_s:g} s"
            except openai.APIConnectionError as error:
                problem = f"cannot connect ({self.redact(str(error))})"
            except openai.APIStatusError as error:
                problem = f"HTTP {error.status_code}"
                if error.status_code not in RETRY_STATUSES and error.status_code < 500:
                    raise LLMRequestError(self._refusal_line(error, what)) from None
            else:
                self.usage.add(response)
                return self._content(response, what)
            if attempt == self.settings.max_retries:
                raise LLMRequestError(
                    f"{self._server()}: {what} failed {attempt + 1} times (last: {problem}) — check the server "
                    "and rerun the same command (answers so far are cached), or use --annotator offline")
            delay = self._backoff(attempt)
            log.warning("%s: %s; retry %d/%d in %.1f s", what, problem, attempt + 1, self.settings.max_retries, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _content(self, response, what: str) -> str:
        if not response.choices:
            return ""
        message = response.choices[0].message
        if getattr(message, "refusal", None):
            log.warning("%s: the model refused (%s)", what, self.redact(str(message.refusal))[:200])
            return ""
        return message.content or ""

    def _server(self) -> str:
        return describe_base_url(self.settings.base_url)

    def _refusal_line(self, error, what: str) -> str:
        detail = self.redact(" ".join(str(getattr(error, "message", error)).split()))[:300]
        if error.status_code in (401, 403):
            fix = "check OPENAI_API_KEY (a local server needs any non-empty value), or use --annotator offline"
        elif error.status_code == 404:
            fix = f"check --model ({self.settings.model!r}) and --base-url"
        else:
            fix = "the server does not accept this request: check --model and that it supports json_schema output"
        return f"{self._server()}: {what} was refused with HTTP {error.status_code} ({detail}) — {fix}"


class ResponseCache:
    """One JSON file per cache key under a directory; atomic writes, so a kill never leaves half a file."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    @staticmethod
    def key(**identity) -> str:
        return sha256_json(identity)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return read_json(path)
        except (ValueError, OSError):
            log.warning("%s: unreadable cache entry, asking again", path)
            return None

    def put(self, key: str, payload: dict) -> None:
        write_json(self.path(key), payload)


def parse_json_object(text: str) -> dict | None:
    """The answer as a JSON object, or None when it is not one (truncated, prose, a list)."""
    try:
        # As data/files.read_json reads: a key given twice is not an answer (json.loads would keep the last).
        value = json.loads(text, object_pairs_hook=unique_keys)
    except (ValueError, TypeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
