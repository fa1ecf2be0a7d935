"""The yardsticks a generated clip is scored against: per clip and concept, does the clip carry it? One entry each in
YARDSTICKS; a new yardstick (a judge that tags what was generated, say) is one more entry, and stage 6, its
summary, figures and report pick it up by name. An entry says how it labels the clips (`labels`, None when the run
has nothing to label them with), what files it reads (`fingerprint`, for stage 6's provenance), how the summary,
figures and report name it, and whether it is the generator's own exact answer (`exact`: transfer and the known
answers are measured against it).

- `prompt`: the clip's prompt asks for the concept (its annotation's labels satisfy Concept.prompt_has).
- `content` (generators that record their realised content, generated/content/): the concept's prompt rule holds
  on the FINAL realised content of the clip's trajectory: the labels on which the generator puts at least
  REALISED_MASS of its posterior at the trajectory's last captured position (the finished clip, when the capture
  includes the last step). Every position of a trajectory is scored against what the sample ends up being, so
  emergence is when the output starts to reveal it: the definition the planted truth uses (data/truth.py). The
  content at an intermediate position is a posterior blend and says when the generator committed, not what a
  listener of that clip could read; stage 6 uses it only to find identical positions (interp/emergence.py).
- `judged` (when the judge has run, embeddings/judge_generated.py; any generator): a pretrained tagger's verdict
  on the FINAL clip of the clip's trajectory, through data/judge_tags.csv, scored at every position like
  `content`. Concepts the judge cannot judge, or (where the exact content is known) judges no better than chance,
  hold no positive (interp/judge.py, judge_validation.csv).
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np

from data.concepts import CONCEPTS
from interp.emergence import trajectories
from interp.judge import judged_labels as judge_verdicts
from interp.records import REALISED_MASS, GeneratedClips, Yardstick, prompt_yardstick


@dataclass(frozen=True)
class YardstickKind:
    name: str
    phrase: str          # "against the prompts": summary lines, figure legends
    title: str           # "vs prompts": report columns
    colour: str          # its colour in every figure
    verb: str            # how a note says a clip's subject has the concept ("asks for")
    subject: str         # ... and what the subject is ("prompt")
    exact: bool          # the generator's own exact answer: the truth tables and probe transfer refer to it
    labels: Callable     # GeneratedClips -> bool [n_clips, n_concepts], or None when this run has no such yardstick
    description: str     # one sentence for the report
    fingerprint: Callable = lambda generated: {}   # GeneratedClips -> {key: sha256} of what `labels` reads beyond
    #                                                the index and prompts, for stage 6's provenance

    def build(self, generated: GeneratedClips) -> Yardstick | None:
        labels = self.labels(generated)
        return None if labels is None else Yardstick(self.name, labels, self.verb, self.subject)


def prompt_labels(generated: GeneratedClips) -> np.ndarray:
    """Per clip, whether its prompt's annotation asks for each concept."""
    prompt_ids, clip_prompt = np.unique(generated.clips["prompt_id"].to_numpy(), return_inverse=True)
    return prompt_yardstick(generated.annotated, clip_prompt, prompt_ids).clip_labels


def realised_concepts(mass: np.ndarray, labels) -> np.ndarray:
    """bool [n_clips, n_concepts]: each concept's prompt rule on the labels with at least REALISED_MASS."""
    held = np.asarray(mass) >= REALISED_MASS
    patterns, inverse = np.unique(held, axis=0, return_inverse=True)   # few distinct label sets: rule once each
    names = np.array(labels)
    rules = np.array([[concept.prompt_has(names[pattern]) for concept in CONCEPTS] for pattern in patterns],
                     dtype=bool).reshape(len(patterns), len(CONCEPTS))
    return rules[np.asarray(inverse).reshape(-1)]


def content_fingerprint(generated: GeneratedClips) -> dict:
    return {} if generated.content is None else {"content_sha256": generated.content.sha256}


def final_content_labels(generated: GeneratedClips) -> np.ndarray | None:
    """Per clip, whether the final realised content of its trajectory carries each concept; None without
    realised content."""
    if generated.content is None:
        return None
    carries = realised_concepts(generated.content.mass, generated.content.labels)
    trajectory = trajectories(generated.clips)
    steps = generated.clips["step"].to_numpy()
    final_row = np.empty(trajectory.max() + 1, dtype=np.int64)
    order = np.lexsort((steps, trajectory))
    last = np.r_[trajectory[order][1:] != trajectory[order][:-1], True]
    final_row[trajectory[order][last]] = order[last]
    return carries[final_row[trajectory]]


def judged_labels(generated: GeneratedClips) -> np.ndarray | None:
    """Per clip, the judge's verdict on its trajectory's final clip; None when the judge has not run."""
    if generated.judge is None:
        return None
    return judge_verdicts(generated.judge, generated.clips, final_content_labels(generated))


def judge_fingerprint(generated: GeneratedClips) -> dict:
    return {} if generated.judge is None else {"judge": generated.judge.stem, "judge_sha256": generated.judge.sha256}


YARDSTICKS = (
    YardstickKind("prompt", "against the prompts", "vs prompts", "tab:blue", "asks for", "prompt", False,
                  prompt_labels, "a clip is a positive for a concept when its prompt's annotation asks for it"),
    YardstickKind("content", "against the final realised content", "vs final content", "tab:orange", "ends on",
                  "trajectory", True, final_content_labels,
                  f"a clip is a positive when its trajectory ENDS on content carrying the concept (the concept's "
                  f"prompt rule on the labels with at least {REALISED_MASS:g} of the generator's posterior mass at "
                  f"the last captured position), so every position is scored against what the sample becomes",
                  content_fingerprint),
    YardstickKind("judged", "against the judged final content", "vs judged content", "tab:green",
                  "is judged to end on", "trajectory", False, judged_labels,
                  "a clip is a positive when a pretrained tagger (the judge) hears the concept in the FINAL clip of "
                  "its trajectory (its evidence tags' best probability at least 0.5, data/judge_tags.csv), so every "
                  "position is scored against what the sample becomes; concepts the judge cannot judge, or judges "
                  "no better than chance where the exact content is known, hold no positive (judge_validation.csv)",
                  judge_fingerprint),
)
BY_NAME = {kind.name: kind for kind in YARDSTICKS}


def kind_of(name: str) -> YardstickKind:
    """The entry of a yardstick named in a result folder; an unknown name (a folder from a newer version) gets a
    plain one rather than an error, so old and new folders both read."""
    return BY_NAME.get(name) or YardstickKind(name, f"against {name}", f"vs {name}", "tab:purple", "carries", "clip",
                                             False, lambda generated: None, "")


def build_yardsticks(generated: GeneratedClips) -> list[Yardstick]:
    """Every yardstick this run has, in YARDSTICKS order."""
    return [yardstick for yardstick in (kind.build(generated) for kind in YARDSTICKS) if yardstick is not None]
