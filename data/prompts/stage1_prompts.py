"""Stage 1: write music prompts and annotate each with the fixed vocabulary (data/ARTIFACTS.md, stage 1).

  generate  → <data>/prompts/prompts.csv (+ prompts.json provenance): the embedded list, or N prompts from an LLM
  annotate  → <data>/prompts/annotated.csv (+ annotated.json): labels and stated BPM per prompt, offline or LLM
With no sub-step both run. The defaults (--prompts embedded --annotator offline) need no key and no network.

A prompts.csv you wrote or edited yourself is kept: generate leaves a prompts.csv without a prompts.json alone,
and annotate validates whatever prompts.csv it finds. Outputs that exist with the same provenance are skipped;
outputs made with other settings (or for another prompts.csv) are refused unless --force. LLM answers are
cached under <data>/prompts/cache/ and reused even with --force; delete that folder to pay for new answers.
"""
import logging
import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the repository root importable without an installed package.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pandas as pd

from data.contract import annotated_csv, prompts_csv, read_annotated, read_prompts
from data.files import sha256_file, write_csv
from data.prompts.llm_annotator import DEFAULT_BATCH_SIZE, DEFAULT_MAX_REASKS, LLMAnnotator
from data.prompts.llm_annotator import instructions_identity as annotate_identity
from data.prompts.llm_prompt_writer import DEFAULT_PROMPT_COUNT, DEFAULT_REQUEST_SIZE, MAX_REQUEST_SIZE, LLMPromptWriter
from data.prompts.llm_prompt_writer import instructions_identity as generate_identity
from data.prompts.llm_requests import DEFAULT_MODEL, ChatJSON, LLMSettings, ResponseCache, describe_base_url
from data.prompts.offline_annotator import annotate_offline, lexicon_sha256
from data.prompts.prompt_list import EMBEDDED_PROMPTS, embedded_prompts, embedded_sha256
from data.provenance import Provenance, begin, commit, decide
from data.stage import InputError, add_progress_argument, main_exit, stage_parser
from data.vocabulary import VOCABULARY

log = logging.getLogger("stage1")
API_KEY_VARIABLE = "OPENAI_API_KEY"
STEPS = ("generate", "annotate", "all")


def prompts_dir(data: Path) -> Path:
    return Path(data) / "prompts"


def build_parser():
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("step", nargs="?", choices=STEPS, default="all",
                        help="generate prompts.csv, annotate it, or both (all)")
    parser.add_argument("--prompts", choices=("embedded", "llm"), default="embedded",
                        help="generate from the embedded list (data/prompts/embedded_prompts.txt) or ask an LLM")
    parser.add_argument("--annotator", choices=("offline", "llm"), default="offline",
                        help="offline lexicon (data/prompts/offline_annotator.py) or an LLM with structured outputs")
    add_progress_argument(parser)
    llm = parser.add_argument_group("LLM (--prompts llm / --annotator llm; key from OPENAI_API_KEY)")
    llm.add_argument("--model", default=DEFAULT_MODEL, help="chat model name on the server")
    llm.add_argument("--base-url", default=None,
                     help="any OpenAI-compatible server, e.g. http://localhost:8000/v1 (vLLM) or "
                          "http://localhost:11434/v1 (Ollama); default: the SDK's (OPENAI_BASE_URL or OpenAI)")
    llm.add_argument("--prompt-count", type=int, default=DEFAULT_PROMPT_COUNT,
                     help="how many distinct prompts --prompts llm writes")
    llm.add_argument("--request-size", type=int, default=DEFAULT_REQUEST_SIZE,
                     help=f"prompts asked for per generate request (at most {MAX_REQUEST_SIZE})")
    llm.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                     help="prompts per annotate request (larger batches make models forget prompts)")
    llm.add_argument("--max-reasks", type=int, default=DEFAULT_MAX_REASKS,
                     help="extra requests for prompts missing from, or invalid in, an answer")
    llm.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    llm.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one answer")
    llm.add_argument("--max-retries", type=int, default=6, help="retries on 429, 5xx, timeouts and lost connections")
    llm.add_argument("--retry-base", type=float, default=1.0,
                     help="backoff before retry n is retry-base * 2**n seconds (jittered, capped at 60 s)")
    return parser


def check_settings(args) -> None:
    rules = [(args.prompt_count >= 1, "--prompt-count must be at least 1"),
             (1 <= args.request_size <= MAX_REQUEST_SIZE, f"--request-size must be 1–{MAX_REQUEST_SIZE}"),
             (args.batch_size >= 1, "--batch-size must be at least 1"),
             (args.max_reasks >= 0, "--max-reasks must be 0 or more"),
             (args.concurrency >= 1, "--concurrency must be at least 1"),
             (args.timeout > 0, "--timeout must be positive"),
             (args.max_retries >= 0, "--max-retries must be 0 or more"),
             (args.retry_base >= 0, "--retry-base must be 0 or more")]
    for holds, rule in rules:
        if not holds:
            raise InputError(f"command line: {rule} — fix the option")


def make_chat(args, fallback: str) -> ChatJSON:
    api_key = os.environ.get(API_KEY_VARIABLE, "").strip()
    if not api_key:
        raise InputError(f"{API_KEY_VARIABLE} is not set — export it (any non-empty value for a local server "
                         f"via --base-url), or use {fallback} (no key, no network)")
    settings = LLMSettings(model=args.model, base_url=args.base_url, timeout_s=args.timeout,
                           max_retries=args.max_retries, retry_base_s=args.retry_base, concurrency=args.concurrency)
    return ChatJSON(settings, api_key)


# --- generate ----------------------------------------------------------------------------------------------

def generate_settings(args) -> dict:
    if args.prompts == "embedded":
        return {"source": "embedded", "embedded_sha256": embedded_sha256()}
    return {"source": "llm", "model": args.model, "server": describe_base_url(args.base_url),
            "prompt_count": args.prompt_count, "request_size": args.request_size,
            "instructions_sha256": ResponseCache.key(**generate_identity())}


def generate(args) -> None:
    out_csv = prompts_csv(args.data)
    prov = Provenance(sidecar=out_csv.with_suffix(".json"), record={"settings": generate_settings(args)},
                      outputs=[out_csv])
    if out_csv.is_file() and not prov.sidecar.exists() and not args.force:
        log.info("generate: keeping %s (no prompts.json: written by hand); --force replaces it", out_csv)
        return
    if decide(prov, args.force, "rerun with --force to replace them, or use another --data"):
        log.info("generate: %s is up to date; skipped (--force redoes it)", out_csv)
        return
    chat = None
    if args.prompts == "embedded":
        table = embedded_prompts()
        log.info("generate: %d embedded prompts from %s", len(table), EMBEDDED_PROMPTS.name)
    else:
        chat = make_chat(args, fallback="--prompts embedded")
        writer = LLMPromptWriter(chat, ResponseCache(prompts_dir(args.data) / "cache" / "generate"),
                                 request_size=args.request_size)
        table = writer.write(args.prompt_count, args.concurrency, progress=not args.no_progress)
    write_csv(out_csv, table, before_replace=lambda: begin(prov))
    if chat is not None:
        log.info(chat.usage.summary(args.model))
    commit(prov, extra={"n_prompts": len(table), "prompts_sha256": sha256_file(out_csv)})
    log.info("generate: wrote %d prompts to %s", len(table), out_csv)


# --- annotate ----------------------------------------------------------------------------------------------

def annotator_config(args) -> dict:
    if args.annotator == "offline":
        return {"name": "offline", "lexicon_sha256": lexicon_sha256()}
    return {"name": "llm", "model": args.model, "server": describe_base_url(args.base_url),
            "batch_size": args.batch_size, "instructions_sha256": ResponseCache.key(**annotate_identity())}


def annotate(args) -> None:
    source = prompts_csv(args.data)
    prompts = read_prompts(args.data, fix="run stage 1 generate (or fix the row in prompts.csv)")
    out_csv = annotated_csv(args.data)
    prov = Provenance(sidecar=out_csv.with_suffix(".json"), outputs=[out_csv], record={
        "inputs": {"prompts.csv": sha256_file(source)},
        "settings": {"vocabulary": list(VOCABULARY), "annotator": annotator_config(args)}})
    if decide(prov, args.force, "prompts.csv was edited or regenerated, or the settings changed: rerun with "
                                "--force to annotate again, or use another --data"):
        existing = read_annotated(args.data)
        if list(existing["prompt_id"]) != list(prompts["prompt_id"]):
            raise InputError(f"{out_csv}: its prompt ids differ from {source} — rerun stage 1 annotate with --force")
        log.info("annotate: %s is up to date; skipped (--force redoes it)", out_csv)
        return
    pairs = list(zip(prompts["prompt_id"], prompts["prompt"]))
    if args.annotator == "offline":
        rows = [annotate_offline(text) for _, text in pairs]
        annotator_name = "offline"
    else:
        chat = make_chat(args, fallback="--annotator offline")
        llm = LLMAnnotator(chat, ResponseCache(prompts_dir(args.data) / "cache" / "annotate"),
                           batch_size=args.batch_size, max_reasks=args.max_reasks)
        answers = llm.annotate(pairs, args.concurrency, progress=not args.no_progress)
        rows = [(answers[prompt_id].labels, answers[prompt_id].bpm) for prompt_id, _ in pairs]
        annotator_name = f"llm:{args.model}"
        log.info(chat.usage.summary(args.model))
    table = pd.DataFrame({
        "prompt_id": prompts["prompt_id"],
        "prompt": prompts["prompt"],
        "labels": [labels for labels, _ in rows],
        "bpm": pd.array([bpm for _, bpm in rows], dtype="Int64"),
        "annotator": annotator_name,
    })
    write_csv(out_csv, table, before_replace=lambda: begin(prov))
    # The sidecar goes last: an annotated.csv without it is an unfinished run and is redone, never trusted.
    commit(prov, extra={"n_prompts": len(table)})
    labelled = sum(1 for labels, _ in rows if labels)
    log.info("annotate: wrote %s (%d prompts, %d with labels, %d with a stated bpm)", out_csv, len(table),
             labelled, sum(1 for _, bpm in rows if bpm is not None))


def main(args) -> None:
    # Our progress lines at INFO; the SDK's and httpx's per-request lines stay quiet unless they warn.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    log.setLevel(logging.DEBUG if args.debug else logging.INFO)
    check_settings(args)
    if args.step in ("generate", "all"):
        generate(args)
    if args.step in ("annotate", "all"):
        annotate(args)


if __name__ == "__main__":
    main_exit(main, build_parser())
