"""The one look of every stage-6 page (report.html of either space, and the sections stage 6 --compare and the
commitment search add to it): the stylesheet, the page template, and the line that names what made the clips —
generator, model/checkpoint, preset and lens — with a warning when that generator is no trained model.

The lens is what a trajectory position's clip *is*: for MusicGen (a trajectory over decoder layers) the logit
lens (every layer read through the final norm and heads of one generation) or DecoderLens regeneration (one
generation per layer with the decoder truncated); for a diffusion generator the decoded clean estimate x0 or the
decoded noisy latent xt at each sampler step."""
import html
import re

import numpy as np

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222;
       line-height: 1.4; }
h1 { margin-bottom: 0.3em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #f0f0f0; } td.text, th.text { text-align: left; }
details { margin: 0.3em 0; } summary { cursor: pointer; }
img { display: block; width: 100%; height: auto; margin: 0.5em 0; }
img.narrow { width: 60%; }
audio { height: 28px; width: 220px; }
.muted { color: #777; } .yes { color: #a00; font-weight: bold; }
.headline { border: 2px solid #456; border-radius: 6px; background: #f5f8fb; padding: 0.6em 1em; margin: 1em 0; }
.headline ul { margin: 0.4em 0; padding-left: 1.3em; } .headline li { margin: 0.25em 0; }
.warning { border: 2px solid #b60; background: #fff4e0; color: #630; border-radius: 6px; padding: 0.5em 1em;
           margin: 0.8em 0; font-weight: bold; }
.made-by { font-size: 0.95em; }
"""

LENSES = {
    "logit": "logit lens: every decoder layer read through the final norm and heads of one generation",
    "regenerate": "DecoderLens regeneration: one generation per layer with the decoder truncated after it",
}
KINDS = {"x0": "the decoded clean estimate x0 at each sampler step",
         "xt": "the decoded noisy latent xt at each sampler step"}


def escape(value) -> str:
    return html.escape("" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value))


def lens(generation: dict, kind: str | None = "x0") -> str:
    """What a clip at a trajectory position is, in words (see the module docstring)."""
    if "lens" in generation:
        return LENSES.get(str(generation["lens"]), f"lens {generation['lens']}")
    if generation.get("trajectory_axis", {}).get("name") == "layer":
        return "one clip per decoder layer"
    return KINDS.get(kind, f"clips of kind {kind}")


def warning(generation: dict) -> str:
    """Why the results say nothing about a trained text-to-music model, or '' when they may."""
    name = str(generation.get("generator", ""))
    kind = str(generation.get("model_kind", ""))
    if name == "ideal":
        return ("The generator is the reference (\"ideal\") model: the closed-form posterior mean over a bank of "
                "soundfont-rendered clips, not a trained text-to-music model. Its results check the method (against "
                "planted answers where the preset plants them); they say nothing about how a trained model works.")
    if "organism" in name or "untrained" in kind.lower() or "organism" in kind.lower():
        return (f"The generator is a model organism ({kind or name}): a tiny model trained on the planted "
                "bank (or not trained at all), not a text-to-music model people use. Read the results as a test of "
                "the method.")
    if kind:
        return f"The generator is not a trained text-to-music model: {kind}."
    return ""


def made_by(generation: dict, kind: str | None = "x0", warn: bool = True) -> str:
    """One line naming generator, model (checkpoint), preset and lens, then the warning box where one applies
    (warn=False: a section of a page whose headline carries it already)."""
    checkpoint = generation.get("checkpoint_sha256")
    model = escape(generation.get("model") or "unknown")
    if checkpoint:
        model += f" <span class='muted'>(checkpoint sha256 {escape(str(checkpoint)[:12])}…)</span>"
    preset = generation.get("preset")
    line = (f"<p class='made-by'>Generator <b>{escape(generation.get('generator') or 'unknown')}</b>, model "
            f"<b>{model}</b>{f', preset <b>{escape(preset)}</b>' if preset else ''}; lens: "
            f"<b>{escape(lens(generation, kind))}</b>.</p>")
    caution = warning(generation) if warn else ""
    return line + (f"<div class='warning'>⚠ {escape(caution)}</div>" if caution else "")


def bullets(markdown: str) -> str:
    """The summary's markdown bullets (interp/summary.py) as an HTML list: **bold** and `code` kept."""
    items = []
    for line in markdown.splitlines():
        if not line.startswith("- "):
            continue
        text = escape(line[2:])
        text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
        items.append("<li>" + re.sub(r"`(.+?)`", r"<code>\1</code>", text) + "</li>")
    return "<ul>" + "".join(items) + "</ul>"


def page(title: str, body: str) -> str:
    """A whole HTML page in the house style."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>{STYLE}</style></head><body>
{body}
</body></html>
"""
