"""MusicGen's generator options: stage 2 `--generator-option KEY=VALUE` (repeatable), parsed and checked here.

Unset keys take the model's generation config (sampling) or the defaults below (lens logit, residuals none).
"""
from data.stage import InputError

LENSES = ("logit", "regenerate")
RESIDUALS = ("none", "cond", "both")

# name -> (parser, help). Sampling settings default to the model's generation_config.json.
OPTIONS = {
    "lens": (str, "logit (one generation, each layer read through the final norm and heads; default) or "
                  "regenerate (one generation per layer with the decoder truncated: the published DecoderLens)"),
    "residuals": (str, "none (default), cond (each layer's residual stream of the conditional rows) or both "
                       "(conditional and unconditional rows of the CFG batch)"),
    "guidance_scale": (float, "classifier-free guidance scale (1 = no CFG)"),
    "top_k": (int, "top-k sampling (0 = off)"),
    "top_p": (float, "nucleus sampling mass (1 = off)"),
    "temperature": (float, "sampling temperature"),
    "do_sample": (lambda text: _parse_bool(text), "true: sample; false: greedy"),
    "melody": (str, "MusicGen Melody only: a chroma .npy [frames, 12] or a wav the model's processor turns into "
                    "chroma (needs torchaudio)"),
}


def _parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not true/false")


def parse_options(options: dict | None) -> dict:
    """Typed generator options from stage 2's KEY=VALUE strings; InputError names the bad one."""
    parsed = {}
    for key, text in (options or {}).items():
        if key not in OPTIONS:
            raise InputError(f"--generator-option {key}: unknown for musicgen — choose from {', '.join(OPTIONS)}")
        convert, _ = OPTIONS[key]
        try:
            parsed[key] = convert(text) if isinstance(text, str) else text
        except ValueError:
            raise InputError(f"--generator-option {key}={text}: not a valid value ({OPTIONS[key][1]})") from None
    if parsed.get("lens", "logit") not in LENSES:
        raise InputError(f"--generator-option lens={parsed['lens']}: choose logit or regenerate")
    if parsed.get("residuals", "none") not in RESIDUALS:
        raise InputError(f"--generator-option residuals={parsed['residuals']}: choose from {', '.join(RESIDUALS)}")
    for key, low, inclusive in (("guidance_scale", 0.0, False), ("temperature", 0.0, False), ("top_p", 0.0, False),
                                ("top_k", 0, True)):
        if key in parsed and not (parsed[key] >= low if inclusive else parsed[key] > low):
            raise InputError(f"--generator-option {key}={parsed[key]}: must be {'>=' if inclusive else '>'} {low}")
    if "top_p" in parsed and parsed["top_p"] > 1:
        raise InputError(f"--generator-option top_p={parsed['top_p']}: must be at most 1")
    return parsed
