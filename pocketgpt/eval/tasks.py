"""Task accuracy: how often a model answers the built-in verifiable tasks right.

    examples  = held-out examples of each task (tasks/, split "test": unseen instruction templates)
    prompts   = chat template(user: instruction [+ input]) + the assistant header
    answers   = Engine, greedy, stopped at the template's turn end
    accuracy  = mean task score per task (partial credit where the task defines it), and overall
                the mean over tasks, so each task weighs the same

Any model directory with a tokenizer works: a base model gets the same prompt (plain template when
its tokenizer has no chat tokens) and simply scores low. Knows nothing of the CLI or of training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pocketgpt import tasks
from pocketgpt.tasks.task import LANGS, Example
from pocketgpt.text.chat import ChatTemplate, get_template, template_for
from pocketgpt.text.instructions import user_text

if TYPE_CHECKING:
    import torch

    from pocketgpt.text.bpe import Tokenizer


@dataclass
class TaskScore:
    """One task's result: mean score, the share answered exactly (score 1.0), and per language."""

    task: str
    n: int
    accuracy: float
    exact: float
    by_lang: dict[str, float] = field(default_factory=dict)


def evaluate_tasks(model: torch.nn.Module, tokenizer: Tokenizer, *,
                   task_names: str | Sequence[str] | None = None, n: int = 50, seed: int = 0,
                   langs: Sequence[str] = LANGS, split: str = "test", max_tokens: int = 64,
                   template: ChatTemplate | str | None = None, system: str | None = None,
                   max_batch: int = 16, keep_samples: int = 3) -> dict[str, Any]:
    """Generate greedy answers for `n` examples of each task and score them (with `system`, every
    prompt starts with that system message).
    Returns {"template", "system", "split", "seed", "n", "too_long", "tasks": [TaskScore...], "overall", "samples"};
    "too_long" counts prompts longer than the model's context (scored 0, not an error)."""
    names = tasks.task_names(task_names)
    template = template_for(tokenizer) if template is None else (
        get_template(template) if isinstance(template, str) else template)
    examples = [ex for name in names for ex in tasks.get_task(name).generate(n, seed, langs, split)]
    answers, too_long = generate_answers(model, tokenizer, template, examples, max_tokens=max_tokens,
                                         max_batch=max_batch, system=system)
    scores = [tasks.score(ex, a) for ex, a in zip(examples, answers, strict=True)]
    results = summarize(names, examples, scores)
    samples = first_samples(examples, answers, scores, keep_samples)
    return {"template": template.name, "system": system, "split": split, "seed": seed, "n": n, "too_long": too_long,
            "tasks": [asdict(r) for r in results],
            "overall": sum(r.accuracy for r in results) / len(results) if results else 0.0,
            "samples": samples}


def prompt_ids(tokenizer: Tokenizer, template: ChatTemplate, ex: Example, system: str | None = None) -> list[int]:
    """The tokens a model is asked with: [system turn,] one user turn, then the assistant header."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user_text(ex)})
    return template.encode(tokenizer, messages, add_generation_prompt=True)


def generate_answers(model: torch.nn.Module, tokenizer: Tokenizer, template: ChatTemplate,
                     examples: Sequence[Example], *, max_tokens: int = 64, max_batch: int = 16,
                     system: str | None = None) -> tuple[list[str], int]:
    """Greedy answers through the one Engine, batched, ending at the template's turn end; and how
    many prompts did not fit the model's context (their answer is "", scored 0)."""
    from pocketgpt.infer.engine import Engine
    from pocketgpt.infer.sampling import SamplingParams

    params = SamplingParams(
        max_tokens=max_tokens, temperature=0.0, stop_ids=tuple(template.stop_ids(tokenizer)),
        stop=tuple(s for s in template.stop if s not in tokenizer.special_tokens),  # text stops ("\nUser:")
    )
    prompts = [prompt_ids(tokenizer, template, ex, system) for ex in examples]
    context = model.config.block_size
    fits = [i for i, p in enumerate(prompts) if len(p) < context]  # a too-long prompt gets ""
    answers = [""] * len(prompts)
    if fits:
        # KV slots only as long as this run needs: SmolLM2's 8,192-token context x 16 slots would be 6 GB
        longest = max(len(prompts[i]) for i in fits) + max_tokens + 1
        engine = Engine(model, tokenizer, max_batch=max_batch, max_len=min(context, longest))
        for i, c in zip(fits, engine.generate([prompts[i] for i in fits], params), strict=True):
            answers[i] = c.text.strip()
    return answers, len(prompts) - len(fits)


def first_samples(examples: Sequence[Example], answers: Sequence[str], scores: Sequence[float],
                  per_task: int) -> list[dict[str, Any]]:
    """The first `per_task` (prompt, answer, reference, score) of each task, to show next to the numbers."""
    shown: dict[str, int] = {}
    out = []
    for ex, answer, s in zip(examples, answers, scores, strict=True):
        if shown.get(ex["task"], 0) < per_task:
            shown[ex["task"]] = shown.get(ex["task"], 0) + 1
            out.append({"task": ex["task"], "lang": ex["lang"], "prompt": user_text(ex), "reference": ex["output"],
                        "answer": answer, "score": s})
    return out


def summarize(names: Sequence[str], examples: Sequence[Example], scores: Sequence[float]) -> list[TaskScore]:
    """Per-task mean score, exact share and per-language mean, in the order of `names`."""
    out = []
    for name in names:
        rows = [(ex["lang"], s) for ex, s in zip(examples, scores, strict=True) if ex["task"] == name]
        if not rows:
            continue
        langs = sorted({lang for lang, _ in rows})
        by_lang = {lang: _mean([s for g, s in rows if g == lang]) for lang in langs}
        out.append(TaskScore(name, len(rows), _mean([s for _, s in rows]), _mean([float(s == 1.0) for _, s in rows]),
                             by_lang))
    return out


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0
