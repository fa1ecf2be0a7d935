"""Stage 1's LLM path: the real openai SDK against a local server on 127.0.0.1 that speaks chat.completions.

The server answers annotation requests with the offline annotator's labels (so a correct LLM run must equal the
offline one) and generate requests with numbered prompts; a per-test script injects faults: 429, 500, a
timeout, malformed JSON, a missing item, an extra item, an out-of-vocabulary label, a hang (to kill a run).
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from data.contract import read_annotated, read_prompts
from data.prompts.llm_annotator import check_answer
from data.prompts.offline_annotator import annotate_offline, offline_labels, stated_bpm
from data.prompts.prompt_list import embedded_prompts, prompt_id
from data.prompts.stage1_prompts import build_parser, main
from data.stage import run_stage
from data.vocabulary import VOCABULARY

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "data" / "prompts" / "stage1_prompts.py"
API_KEY = "sk-test-Musicologist-SECRET-7f3a9c"
FAST_RETRIES = ["--retry-base", "0.01", "--max-retries", "3"]


class FakeOpenAI:
    """Scripted OpenAI-compatible server. `script` holds one action per request, in arrival order; when it is
    empty every request is answered correctly."""

    def __init__(self):
        self.script: list = []
        self.requests: list[dict] = []
        self.authorizations: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.release = threading.Event()
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append(body)
                    fake.authorizations.append(self.headers.get("Authorization", ""))
                    action = fake.script.pop(0) if fake.script else "ok"
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    status, payload = fake.respond(self.path, body, action)
                    data = json.dumps(payload).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (timeout or killed): nothing to answer
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    # --- answers -------------------------------------------------------------------------------------------
    def respond(self, path, body, action):
        if path != "/v1/chat/completions":
            return 404, {"error": {"message": f"no route {path}", "type": "invalid_request_error"}}
        if isinstance(action, tuple) and action[0] == "status":
            return action[1], {"error": {"message": action[2] if len(action) > 2 else "scripted failure",
                                         "type": "server_error", "code": None}}
        if isinstance(action, tuple) and action[0] == "sleep":
            time.sleep(action[1])
        if action == "hang":
            self.release.wait(timeout=60)
        schema_name = body["response_format"]["json_schema"]["name"]
        user = body["messages"][-1]["content"]
        if schema_name == "music_prompts":
            content = json.dumps({"prompts": self.numbered_prompts(user)})
        else:
            content = self.annotation_content(json.loads(user)["prompts"], action)
        return 200, {"id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": 0,
                     "model": body["model"], "system_fingerprint": None,
                     "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                  "message": {"role": "assistant", "content": content, "refusal": None}}],
                     "usage": {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200}}

    @staticmethod
    def annotation_content(items, action):
        if action == "malformed":
            return '{"annotations": [{"id": "p1", "labels": ["brass"'
        answers = [{"id": item["id"], "labels": offline_labels(item["prompt"]), "bpm": stated_bpm(item["prompt"])}
                   for item in items]
        if action == "missing":
            answers = answers[:-1]
        elif action == "extra":
            answers.append({"id": "p_not_asked", "labels": ["vocal"], "bpm": None})
        elif action == "oov":
            answers[0]["labels"] = answers[0]["labels"] + ["accordion"]
        elif action == "duplicate":
            answers.append(dict(answers[0], labels=["vocal"]))
        return json.dumps({"annotations": answers})

    @staticmethod
    def numbered_prompts(user_text):
        number, count = map(int, re.match(r"Request (\d+): write (\d+) prompts", user_text).groups())
        # Requests overlap by 3 prompts, so de-duplication has work to do and a shortfall request follows.
        start = (number - 1) * 9
        return [f"Prompt {index}: a {VOCABULARY[index % 11]} melody" for index in range(start, start + count)]

    def annotated_ids(self):
        return [[item["id"] for item in json.loads(request["messages"][-1]["content"])["prompts"]]
                for request in self.requests]


@pytest.fixture
def fake_openai():
    server = FakeOpenAI()
    yield server
    server.close()


@pytest.fixture
def llm_data(tmp_path, monkeypatch):
    """A data root with a hand-written prompts.csv of 12 embedded prompts (3 batches of 5, 5, 2)."""
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    data = tmp_path / "data"
    (data / "prompts").mkdir(parents=True)
    embedded_prompts().head(12).to_csv(data / "prompts" / "prompts.csv", index=False)
    return data


def annotate_llm(data, server, *extra) -> int:
    argv = ["--data", str(data), "annotate", "--annotator", "llm", "--base-url", server.base_url,
            "--concurrency", "1", *FAST_RETRIES, *extra]
    return run_stage(main, build_parser(), argv)


def assert_matches_offline(data):
    annotated = read_annotated(data)
    expected = [annotate_offline(text) for text in read_prompts(data)["prompt"]]
    assert [";".join(labels) for labels in annotated["labels"]] == [labels for labels, _ in expected]
    assert [None if pd.isna(bpm) else int(bpm) for bpm in annotated["bpm"]] == [bpm for _, bpm in expected]
    assert set(annotated["annotator"]) == {"llm:gpt-4.1-mini"}


def cache_files(data, step="annotate"):
    return sorted((data / "prompts" / "cache" / step).glob("*.json"))


def test_success_uses_strict_schema_batches_and_key(llm_data, fake_openai, caplog):
    with caplog.at_level("INFO", logger="stage1"):
        assert annotate_llm(llm_data, fake_openai) == 0
    assert_matches_offline(llm_data)
    assert [len(ids) for ids in fake_openai.annotated_ids()] == [5, 5, 2]
    request = fake_openai.requests[0]
    assert request["model"] == "gpt-4.1-mini"
    schema = request["response_format"]["json_schema"]
    assert request["response_format"]["type"] == "json_schema" and schema["strict"] is True
    item = schema["schema"]["properties"]["annotations"]["items"]
    assert item["properties"]["labels"]["items"]["enum"] == list(VOCABULARY)
    assert item["properties"]["bpm"]["type"] == ["integer", "null"]
    assert set(fake_openai.authorizations) == {f"Bearer {API_KEY}"}
    assert len(cache_files(llm_data)) == 12
    assert "3 requests" in caplog.text and "3,000 input + 600 output tokens" in caplog.text
    assert "estimated $0.0022" in caplog.text  # 3000 * 0.40 / 1e6 + 600 * 1.60 / 1e6
    sidecar = json.loads((llm_data / "prompts" / "annotated.json").read_text())
    annotator = sidecar["settings"]["annotator"]
    assert annotator["name"] == "llm" and annotator["model"] == "gpt-4.1-mini"
    assert annotator["server"] == fake_openai.base_url

    # A rerun with --force rewrites the outputs from the cache alone.
    assert annotate_llm(llm_data, fake_openai, "--force") == 0
    assert len(fake_openai.requests) == 3
    assert_matches_offline(llm_data)


def test_another_server_is_another_model(llm_data, fake_openai, capsys):
    """One model name on two servers: the second server's answers are asked for, never taken from the cache."""
    assert annotate_llm(llm_data, fake_openai) == 0
    capsys.readouterr()
    other = FakeOpenAI()
    try:
        assert annotate_llm(llm_data, other) == 2
        error = capsys.readouterr().err.strip()
        assert "\n" not in error and "annotated.json" in error and "settings.annotator.server=" in error
        assert other.requests == []
        assert annotate_llm(llm_data, other, "--force") == 0
        assert len(other.requests) == 3  # a cache keyed without the server would have answered all 12 prompts
    finally:
        other.close()
    assert_matches_offline(llm_data)


@pytest.mark.parametrize("fault", [("status", 429), ("status", 500), ("status", 503)],
                         ids=["429", "500", "503"])
def test_retryable_status_then_success(llm_data, fake_openai, caplog, fault):
    fake_openai.script = [fault, fault]
    with caplog.at_level("INFO", logger="stage1"):
        assert annotate_llm(llm_data, fake_openai) == 0
    assert len(fake_openai.requests) == 3 + 2
    assert f"HTTP {fault[1]}; retry 2/3" in caplog.text
    assert_matches_offline(llm_data)


def test_timeout_is_retried(llm_data, fake_openai, caplog):
    fake_openai.script = [("sleep", 6.0)]
    started = time.monotonic()
    with caplog.at_level("INFO", logger="stage1"):
        assert annotate_llm(llm_data, fake_openai, "--timeout", "1") == 0
    # The client gave up on the sleeping server instead of waiting for it.
    assert time.monotonic() - started < 5.5
    assert "no answer within 1 s; retry 1/3" in caplog.text
    assert fake_openai.annotated_ids()[0] == fake_openai.annotated_ids()[1]
    assert_matches_offline(llm_data)


def test_persistent_500_fails_with_one_line(llm_data, fake_openai, capsys):
    fake_openai.script = [("status", 500)] * 10
    assert annotate_llm(llm_data, fake_openai, "--max-retries", "2") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: http://127.0.0.1:") and "failed 3 times (last: HTTP 500)" in lines[-1]
    assert "Traceback" not in "\n".join(lines)
    # The queued batches are dropped once one batch has failed: no request is spent on them.
    assert len(fake_openai.requests) == 3
    assert not (llm_data / "prompts" / "annotated.csv").exists()


def test_unauthorised_is_not_retried(llm_data, fake_openai, capsys):
    fake_openai.script = [("status", 401, "Incorrect API key provided")]
    assert annotate_llm(llm_data, fake_openai) == 2
    assert len(fake_openai.requests) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "refused with HTTP 401" in error and "check OPENAI_API_KEY" in error


def test_malformed_json_is_asked_again(llm_data, fake_openai):
    fake_openai.script = ["malformed"]
    assert annotate_llm(llm_data, fake_openai) == 0
    ids = fake_openai.annotated_ids()
    assert len(ids) == 4 and ids[0] == ids[1]
    assert_matches_offline(llm_data)


def test_always_malformed_fails_naming_the_prompt(llm_data, fake_openai, capsys):
    fake_openai.script = ["malformed"] * 10
    assert annotate_llm(llm_data, fake_openai, "--max-reasks", "2") == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    first_id = read_prompts(llm_data)["prompt_id"][0]
    assert f"prompt {first_id}" in error and "not the requested JSON after 3 requests" in error
    assert len(fake_openai.requests) == 3


def test_missing_item_is_asked_again_alone(llm_data, fake_openai):
    fake_openai.script = ["missing"]
    assert annotate_llm(llm_data, fake_openai) == 0
    ids = fake_openai.annotated_ids()
    assert ids[1] == [ids[0][-1]]
    assert sorted(sum(ids[1:], [])) == sorted(read_prompts(llm_data)["prompt_id"][4:])
    assert_matches_offline(llm_data)


def test_extra_item_is_ignored(llm_data, fake_openai):
    fake_openai.script = ["extra", "extra", "extra"]
    assert annotate_llm(llm_data, fake_openai) == 0
    assert len(fake_openai.requests) == 3
    annotated = read_annotated(llm_data)
    assert "p_not_asked" not in set(annotated["prompt_id"])
    assert_matches_offline(llm_data)


def test_duplicated_item_is_asked_again(llm_data, fake_openai):
    fake_openai.script = ["duplicate"]
    assert annotate_llm(llm_data, fake_openai) == 0
    ids = fake_openai.annotated_ids()
    assert ids[1] == [ids[0][0]]
    assert_matches_offline(llm_data)


def test_out_of_vocabulary_label_is_asked_again(llm_data, fake_openai):
    fake_openai.script = ["oov"]
    assert annotate_llm(llm_data, fake_openai) == 0
    ids = fake_openai.annotated_ids()
    assert ids[1] == [ids[0][0]]
    annotated = read_annotated(llm_data)
    assert all(set(labels) <= set(VOCABULARY) for labels in annotated["labels"])
    assert_matches_offline(llm_data)
    cached = [json.loads(path.read_text()) for path in cache_files(llm_data)]
    assert not any("accordion" in entry["answer"]["labels"] for entry in cached)


def test_out_of_vocabulary_label_never_gets_through(llm_data, fake_openai, capsys):
    fake_openai.script = ["oov"] * 10
    assert annotate_llm(llm_data, fake_openai, "--max-reasks", "1") == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: prompt ") and "'accordion', which is not in the vocabulary" in error
    assert "--annotator offline" in error
    assert not (llm_data / "prompts" / "annotated.csv").exists()


def test_concurrency_is_bounded(tmp_path, monkeypatch, fake_openai):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    data = tmp_path / "data"
    (data / "prompts").mkdir(parents=True)
    embedded_prompts().head(30).to_csv(data / "prompts" / "prompts.csv", index=False)
    # The first two requests are held long enough for the second worker to send its own; none may add a third.
    fake_openai.script = [("sleep", 1.0)] * 3
    assert annotate_llm(data, fake_openai, "--concurrency", "2") == 0
    assert fake_openai.max_in_flight == 2
    assert_matches_offline(data)


def test_killed_run_resumes_from_cache(tmp_path, fake_openai, monkeypatch, caplog):
    data = tmp_path / "data"
    (data / "prompts").mkdir(parents=True)
    prompts = embedded_prompts().head(20)
    prompts.to_csv(data / "prompts" / "prompts.csv", index=False)
    fake_openai.script = ["ok", "ok", "hang"]
    command = [sys.executable, str(SCRIPT), "--data", str(data), "annotate", "--annotator", "llm",
               "--base-url", fake_openai.base_url, "--concurrency", "1", *FAST_RETRIES]
    process = subprocess.Popen(command, env=dict(os.environ, OPENAI_API_KEY=API_KEY),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(fake_openai.requests) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(fake_openai.requests) == 3, "the run never reached its third request"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    fake_openai.release.set()
    answered_before_kill = set(sum(fake_openai.annotated_ids()[:2], []))
    assert len(cache_files(data)) == 10
    assert not (data / "prompts" / "annotated.csv").exists()

    fake_openai.requests.clear()
    resume_argv = command[2:]
    with monkeypatch.context() as env:
        env.setenv("OPENAI_API_KEY", API_KEY)
        assert run_stage(main, build_parser(), resume_argv) == 0
        asked_on_resume = set(sum(fake_openai.annotated_ids(), []))
        assert len(fake_openai.requests) == 2
        assert not asked_on_resume & answered_before_kill
        assert asked_on_resume | answered_before_kill == set(prompts["prompt_id"])
        assert_matches_offline(data)

        fake_openai.requests.clear()
        with caplog.at_level("INFO", logger="stage1"):
            assert run_stage(main, build_parser(), resume_argv + ["--force"]) == 0
        assert fake_openai.requests == []
        assert "0 requests, 20 answers from cache" in caplog.text


def test_generate_deduplicates_and_reruns_from_cache(tmp_path, monkeypatch, fake_openai, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    data = tmp_path / "data"
    argv = ["--data", str(data), "generate", "--prompts", "llm", "--base-url", fake_openai.base_url,
            "--prompt-count", "30", "--request-size", "12", "--concurrency", "2", *FAST_RETRIES]
    with caplog.at_level("INFO", logger="stage1"):
        assert run_stage(main, build_parser(), argv) == 0
    counts = [int(re.search(r"write (\d+) prompts", request["messages"][-1]["content"]).group(1))
              for request in fake_openai.requests]
    # 12 + 12 + 6 planned; overlaps leave 24 distinct, so one more request asks for the last 6.
    assert sorted(counts) == [6, 6, 12, 12]
    prompts = read_prompts(data)
    assert len(prompts) == 30 and prompts["prompt"].is_unique
    assert list(prompts["prompt"]) == [f"Prompt {index}: a {VOCABULARY[index % 11]} melody"
                                       for index in list(range(0, 24)) + list(range(27, 33))]
    assert list(prompts["prompt_id"]) == [prompt_id(text) for text in prompts["prompt"]]
    assert set(prompts["origin"]) == {"llm:gpt-4.1-mini"}
    assert "llm gpt-4.1-mini: 4 requests" in caplog.text
    before = (data / "prompts" / "prompts.csv").read_bytes()

    fake_openai.requests.clear()
    assert run_stage(main, build_parser(), argv + ["--force"]) == 0
    assert fake_openai.requests == []
    assert (data / "prompts" / "prompts.csv").read_bytes() == before


def test_api_key_never_written_or_logged(tmp_path, fake_openai, monkeypatch, capsys, caplog):
    """A whole LLM run with faults, then a refused key: the key is in no output, cache file or log line."""
    data = tmp_path / "data"
    fake_openai.script = [("status", 429), ("status", 500), "missing", "oov"]
    argv = ["--data", str(data), "--prompts", "llm", "--annotator", "llm", "--prompt-count", "12",
            "--request-size", "12", "--base-url", fake_openai.base_url, "--debug", *FAST_RETRIES]
    first = subprocess.run([sys.executable, str(SCRIPT), *argv], env=dict(os.environ, OPENAI_API_KEY=API_KEY),
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "retry 1/3" in first.stderr and "re-asking" in first.stderr
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    fake_openai.script = [("status", 401, f"Incorrect API key provided: {API_KEY}")]
    with caplog.at_level("DEBUG"):
        assert run_stage(main, build_parser(), argv + ["--force", "--model", "other-model"]) == 2
    refused = capsys.readouterr()
    assert "HTTP 401" in refused.err and "[redacted]" in refused.err
    assert set(fake_openai.authorizations) == {f"Bearer {API_KEY}"}
    files = [path for path in data.rglob("*") if path.is_file()]
    assert len(cache_files(data)) == 12 and len(cache_files(data, "generate")) == 1
    texts = [first.stdout, first.stderr, refused.out, refused.err, caplog.text] + [p.read_text() for p in files]
    for text in texts:
        assert API_KEY not in text
        assert API_KEY[8:] not in text


@pytest.mark.parametrize("entry, expected", [
    ({"id": "a", "labels": ["reverb", "brass", "brass"], "bpm": 120}, ("brass;reverb", 120)),
    ({"id": "a", "labels": [], "bpm": None}, ("", None)),
    ({"id": "a", "labels": ["vocal"], "bpm": 96.0}, ("vocal", 96)),
    ({"id": "a", "labels": ["Brass"], "bpm": None}, "not in the vocabulary"),
    ({"id": "a", "labels": "brass", "bpm": None}, "without a list of labels"),
    ({"id": "a", "labels": ["brass"], "bpm": 1000}, "not an integer in 20–400"),
    ({"id": "a", "labels": ["brass"], "bpm": True}, "not an integer in 20–400"),
    ({"id": "a", "labels": ["brass"], "bpm": "120"}, "not an integer in 20–400"),
    ({"id": "a", "labels": ["brass"], "bpm": 96.5}, "not an integer in 20–400"),
])
def test_answers_from_a_schema_ignoring_server_are_checked(entry, expected):
    annotation, problem = check_answer(entry)
    if isinstance(expected, tuple):
        assert (annotation.labels, annotation.bpm) == expected and problem == ""
    else:
        assert annotation is None and expected in problem
