"""The built-in verifiable tasks as RLHF material: prompts, rewards and ranked answers without people.

    prompt_items(n)       held-in / held-out task examples as prompt records {"messages": [user turn], ...}
    task_reward           reward(items, answers) = the task's own score in [0, 1]         (tasks/)
    model_reward(rm)      reward(items, answers) = a reward model's score                  (train/reward.py)
    sample_answers        K sampled answers per prompt, batched through the one Engine      (infer/engine.py)
    preference_records    {prompt, responses, ranking} lines: K answers ranked by
                          text/preferences.rank_responses (correctness, then format and length rules)

PPO reads the same prompt records whichever reward it uses, so "reward model" vs "task scorer" is
one flag. Knows nothing of the CLI or of the training loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pocketgpt import tasks
from pocketgpt.text.instructions import user_text
from pocketgpt.text.preferences import rank_responses, rule_key

Item = dict[str, Any]


def prompt_items(
    n: int,
    *,
    seed: int = 0,
    task_names: str | Sequence[str] | None = None,
    langs: Sequence[str] = ("en", "zh"),
    split: str = "train",
) -> list[Item]:
    """`n` task examples as prompt records: the user's turn in "messages", the example's fields
    (task, lang, output, meta) beside it for the scorer."""
    examples = tasks.generate(n, seed=seed, tasks=task_names, langs=langs, split=split)
    return [{**ex, "messages": [{"role": "user", "content": user_text(ex)}]} for ex in examples]


def task_reward(items: Sequence[Mapping[str, Any]], answers: Sequence[str]) -> list[float]:
    """The verifiable reward: each item's task scores the answer (1.0 = right, partial credit where defined)."""
    return [tasks.score(dict(it), a) for it, a in zip(items, answers, strict=True)]


def model_reward(rm: torch.nn.Module, tokenizer, *, template=None):
    """A RewardFn over a trained reward model (`train/reward.load_reward_model`)."""
    from pocketgpt.train.reward import score_texts

    def reward(items: Sequence[Mapping[str, Any]], answers: Sequence[str]) -> list[float]:
        return score_texts(rm, tokenizer, [it["messages"] for it in items], answers, template=template)

    return reward


@torch.no_grad()
def sample_answers(
    model: torch.nn.Module,
    tokenizer,
    items: Sequence[Mapping[str, Any]],
    k: int,
    *,
    template,
    max_tokens: int = 48,
    temperature: float = 1.0,
    seed: int = 0,
    max_batch: int = 16,
) -> list[list[str]]:
    """K answers per item, sampled (answer j of item i with seed (seed, i, j), so reruns agree);
    prompts that do not fit the context get no answers ([])."""
    from pocketgpt.infer.engine import Engine
    from pocketgpt.infer.sampling import SamplingParams
    from pocketgpt.model import peft

    stop_ids = tuple(template.stop_ids(tokenizer))
    text_stops = tuple(s for s in template.stop if s not in tokenizer.special_tokens)
    context = model.config.block_size
    engine = Engine(model, tokenizer, max_batch=max_batch, fast=peft.peft_config(model) is None)
    handles: list[list] = []
    for i, it in enumerate(items):
        prompt = template.encode(tokenizer, it["messages"], add_generation_prompt=True)
        if len(prompt) + 1 >= context:
            handles.append([])
            continue
        room = min(max_tokens, context - len(prompt) - 1)
        handles.append(
            [
                engine.submit(
                    prompt,
                    SamplingParams(
                        max_tokens=room,
                        temperature=temperature,
                        stop_ids=stop_ids,
                        stop=text_stops,
                        seed=seed * 1_000_003 + i * 1009 + j,
                    ),
                )
                for j in range(k)
            ]
        )
    while engine.step():  # drive the engine in this thread
        pass
    return [[h.result().text.strip() for h in hs] for hs in handles]


def preference_records(
    items: Sequence[Mapping[str, Any]], answers: Sequence[Sequence[str]]
) -> list[dict[str, Any]]:
    """One ranking record per item with at least two answers that the rules tell apart; of answers that
    tie under the rules (the same text, or e.g. two wrong numbers of one length) the first is kept, since
    a pair the rules cannot order would teach the reward model noise. Correct answers rank first."""
    out = []
    for it, sampled in zip(items, answers, strict=True):
        kept = {rule_key(it, a): a for a in reversed(sampled)}.values()  # reversed: a tie's first sample wins
        distinct = list(dict.fromkeys(a for a in sampled if a in kept))
        if len(distinct) < 2:
            continue
        ranking = rank_responses(it, distinct)
        scores = task_reward([it] * len(distinct), distinct)
        out.append(
            {
                "prompt": it["messages"][-1]["content"],
                "responses": distinct,
                "ranking": ranking,
                "task": it.get("task"),
                "lang": it.get("lang"),
                "reference": it.get("output"),
                "scores": scores,
            }
        )
    return out
