"""`pocketgpt reward | score | ppo | dpo` and `pocketgpt data preferences`: the third stage of the recipe.

Thin: flags -> models (model/checkpoint, model/peft) -> data (text/preferences, train/task_rewards)
-> a Stage (train/reward, train/ppo, train/dpo) -> train.loop.train -> a printed summary. Torch is
imported inside the handlers. The math lives in train/; nothing here samples, scores or steps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pocketgpt.commands import add_verb, emit, print_task_accuracy, run_summary

PPO_EXAMPLE = """pocketgpt ppo --policy runs/tiny-sft --reward task --tasks arithmetic --out runs/tiny-ppo
pocketgpt ppo --policy runs/tiny-sft --reward runs/tiny-rm --kl-target 2 --out runs/tiny-ppo-rm
pocketgpt ppo --policy runs/tiny-sft --reward task --peft lora --ptx 0.1 --out runs/tiny-ppo-lora"""


def register(sub: argparse._SubParsersAction) -> None:
    r = add_verb(
        sub,
        "reward",
        help="train a reward model on preference pairs (pairwise loss, held-out accuracy)",
        example="pocketgpt data preferences --model runs/tiny-sft --out prefs.jsonl\n"
        "pocketgpt reward runs/tiny-sft --data prefs.jsonl --out runs/tiny-rm\n"
        "pocketgpt score runs/tiny-rm '3 + 4 = ?' '7'",
        func=cmd_reward,
    )
    r.add_argument("model", metavar="SFT_MODEL", help="the model directory the reward model starts from")
    _pref_data(r)
    _training(r, steps=200, lr=1e-4, batch=8)

    s = add_verb(
        sub,
        "score",
        help="the reward model's score of one answer to one prompt",
        example="pocketgpt score runs/tiny-rm '3 + 4 = ?' '7'\npocketgpt score runs/tiny-rm '你好' '你好！' --json",
        func=cmd_score,
    )
    s.add_argument("model", metavar="RM", help="a reward model directory (from `pocketgpt reward`)")
    s.add_argument("prompt", help="the user's message")
    s.add_argument("response", help="the assistant's answer to score")

    p = add_verb(
        sub,
        "ppo",
        help="PPO against a reward model or the task scorers, with a KL leash to the SFT model",
        example=PPO_EXAMPLE,
        func=cmd_ppo,
    )
    p.add_argument(
        "--policy", required=True, metavar="SFT_MODEL", help="the SFT model (also the frozen reference)"
    )
    p.add_argument(
        "--reward",
        required=True,
        metavar="RM|task",
        help="a reward model directory, or `task` for the built-in task scorers (verifiable reward)",
    )
    p.add_argument(
        "--tasks",
        default=None,
        metavar="A,B",
        help="built-in tasks whose prompts PPO trains on (default all)",
    )
    p.add_argument("--prompts", type=int, default=2000, help="training prompts (default 2000)")
    p.add_argument("--beta", type=float, default=0.05, help="KL coefficient (start value with --kl-target)")
    p.add_argument(
        "--kl-target",
        type=float,
        default=None,
        metavar="NATS",
        help="adapt beta so the KL per answer stays near NATS (default: fixed beta)",
    )
    p.add_argument(
        "--kl-horizon",
        type=int,
        default=10000,
        metavar="N",
        help="answers over which the adaptive beta may move by about 20%% (Ziegler et al.: 10000; "
        "a short run needs fewer to react)",
    )
    p.add_argument(
        "--ptx",
        type=float,
        default=0.0,
        metavar="COEF",
        help="PPO-ptx: weight of the LM loss on built-in task conversations mixed into each step",
    )
    p.add_argument("--rollout-batch", type=int, default=32, help="answers per rollout (default 32)")
    p.add_argument("--minibatch", type=int, default=16, help="answers per optimizer step (default 16)")
    p.add_argument("--epochs", type=int, default=2, help="passes over each rollout (default 2)")
    p.add_argument("--max-tokens", type=int, default=24, help="longest answer sampled (default 24)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--ent-coef", type=float, default=0.0, help="entropy bonus (default 0)")
    p.add_argument(
        "--eval-tasks",
        type=int,
        default=0,
        metavar="N",
        help="after training, score N held-out examples per task with greedy answers (0 = skip)",
    )
    _peft(p)
    _training(p, steps=100, lr=1e-4, batch=16, eval_every=20)

    d = add_verb(
        sub,
        "dpo",
        help="direct preference optimisation on preference pairs (no reward model, no sampling)",
        example="pocketgpt dpo runs/tiny-sft --data prefs.jsonl --out runs/tiny-dpo\n"
        "pocketgpt dpo runs/tiny-sft --data prefs.jsonl --peft lora --beta 0.2 --out runs/tiny-dpo-lora",
        func=cmd_dpo,
    )
    d.add_argument("model", metavar="SFT_MODEL", help="the SFT model (also the reference)")
    _pref_data(d)
    d.add_argument("--beta", type=float, default=0.1, help="DPO beta: the KL leash (default 0.1)")
    d.add_argument(
        "--nll",
        type=float,
        default=0.0,
        metavar="COEF",
        help="DPO+NLL: add COEF x the chosen answers' per-token NLL, so they stay likely (default 0)",
    )
    d.add_argument(
        "--eval-tasks",
        type=int,
        default=0,
        metavar="N",
        help="after training, score N held-out examples per task with greedy answers (0 = skip)",
    )
    _peft(d)
    _training(d, steps=200, lr=5e-5, batch=8)


def register_preferences(verbs: argparse._SubParsersAction) -> None:
    """`pocketgpt data preferences` (added to the `data` group by commands/data.py)."""
    p = add_verb(
        verbs,
        "preferences",
        help="sample K answers per task prompt from a model and rank them with the task scorers",
        example="pocketgpt data preferences --model runs/tiny-sft --out prefs.jsonl --n 500 --k 4\n"
        "pocketgpt data preferences --model runs/tiny-sft --out prefs.jsonl --tasks arithmetic --lang zh",
        func=cmd_preferences,
    )
    p.add_argument("--model", required=True, metavar="SFT_MODEL", help="the model whose answers are ranked")
    p.add_argument(
        "--out", required=True, metavar="FILE", help="the preference JSONL to write (ranking form)"
    )
    p.add_argument("--n", type=int, default=500, help="prompts (default 500)")
    p.add_argument("--k", type=int, default=4, help="answers sampled per prompt (default 4)")
    p.add_argument("--tasks", default=None, metavar="A,B", help="built-in task names (default: all)")
    p.add_argument("--lang", default="en,zh", metavar="en,zh", help="languages, alternating (default en,zh)")
    p.add_argument("--split", choices=("train", "test"), default="train")
    p.add_argument("--max-tokens", type=int, default=48, help="longest answer (default 48)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="same seed, same file (default 0)")


# -- flags --------------------------------------------------------------------------------------------
def _pref_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="FILE", help="preference JSONL (pairs or rankings)")
    p.add_argument(
        "--val", default=None, metavar="FILE", help="held-out preference JSONL (default: 10%% of the prompts)"
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="output model directory (+ checkpoint/, train/)"
    )
    p.add_argument(
        "--on-error", choices=("skip", "fail"), default="fail", help="a malformed line: stop or skip it"
    )


def _peft(p: argparse.ArgumentParser) -> None:
    a = p.add_argument_group("parameter-efficient training")
    a.add_argument(
        "--peft",
        choices=("lora",),
        default=None,
        help="train a LoRA adapter; the reference is the base without it (no second copy)",
    )
    a.add_argument("--lora-r", type=int, default=8)
    a.add_argument("--lora-alpha", type=float, default=16.0)


def _training(p: argparse.ArgumentParser, *, steps: int, lr: float, batch: int, eval_every: int = 50) -> None:
    if not any(a.dest == "out" for a in p._actions):
        p.add_argument("--out", required=True, metavar="DIR", help="output directory (+ checkpoint/, train/)")
    t = p.add_argument_group("training")
    t.add_argument("--max-steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
    t.add_argument("--max-minutes", type=float, default=None)
    t.add_argument(
        "--batch-size", type=int, default=batch, help=f"pairs (reward, dpo) per step (default {batch})"
    )
    t.add_argument("--lr", type=float, default=lr, help=f"default {lr}")
    t.add_argument("--warmup-steps", type=int, default=10)
    t.add_argument("--eval-every", type=int, default=eval_every)
    t.add_argument("--ckpt-every", type=int, default=0)
    t.add_argument("--seed", type=int, default=1337)
    t.add_argument("--device", default="auto")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")


def _train_config(args: argparse.Namespace, *, batch_size: int | None = None, schedule: str = "cosine"):
    from pocketgpt.train.loop import TrainConfig

    quiet = args.json and not sys.stderr.isatty()
    return TrainConfig(
        max_steps=args.max_steps,
        max_minutes=args.max_minutes,
        batch_size=batch_size or args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        schedule=schedule,
        weight_decay=0.0,
        eval_every=args.eval_every,
        ckpt_every=args.ckpt_every,
        seed=args.seed,
        device=args.device,
        progress=not quiet,
        eval_batches=1,
        log_every=1,
    )


def _load(model_dir: str, *, train: bool = False):
    """(model, tokenizer) of a model directory (an adapter merged), tokenizer required."""
    from pocketgpt.errors import DataError
    from pocketgpt.model.peft import load_model_with_adapter

    model, tok = load_model_with_adapter(model_dir, merge=True)
    if tok is None:
        raise DataError(
            f"{model_dir}: no tokenizer files; RLHF needs the tokenizer the model was trained with"
        )
    return model.train(train), tok


def _attach_lora(model, args: argparse.Namespace) -> None:
    from pocketgpt.model import peft

    if args.peft:
        peft.attach(model, peft.PeftConfig("lora", r=args.lora_r, alpha=args.lora_alpha), seed=args.seed)
    print(peft.describe(model), file=sys.stderr)


def _pairs(args: argparse.Namespace):
    """(train pairs, held-out pairs): --val, or the last 10% of the prompts (every pair of a prompt on one side)."""
    from pocketgpt.text.preferences import read_preferences

    data = read_preferences(args.data, on_error=args.on_error)
    for problem in data.problems:
        print(f"skipped {problem}", file=sys.stderr)
    if args.val:
        return data.pairs, read_preferences(args.val, on_error=args.on_error).pairs
    prompts = list(dict.fromkeys(repr(p.prompt) for p in data.pairs))
    held = set(prompts[len(prompts) - max(1, len(prompts) // 10) :]) if len(prompts) > 1 else set()
    train = [p for p in data.pairs if repr(p.prompt) not in held]
    return train, [p for p in data.pairs if repr(p.prompt) in held]


def _eval_tasks(model, tok, args: argparse.Namespace) -> dict | None:
    if not args.eval_tasks:
        return None
    from pocketgpt.eval.tasks import evaluate_tasks

    model.eval()
    return evaluate_tasks(
        model, tok, task_names=getattr(args, "tasks", None), n=args.eval_tasks, max_tokens=32
    )


# -- handlers ---------------------------------------------------------------------------------------------
def cmd_preferences(args: argparse.Namespace) -> int:
    from pocketgpt.errors import DataError
    from pocketgpt.text.chat import template_for
    from pocketgpt.text.preferences import write_preferences
    from pocketgpt.train.task_rewards import preference_records, prompt_items, sample_answers

    if args.n < 1 or args.k < 2:
        raise DataError("--n must be >= 1 and --k >= 2 (a ranking needs two answers)")
    model, tok = _load(args.model)
    items = prompt_items(
        args.n, seed=args.seed, task_names=args.tasks, langs=args.lang.split(","), split=args.split
    )
    answers = sample_answers(
        model,
        tok,
        items,
        args.k,
        template=template_for(tok),
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
    )
    records = preference_records(items, answers)
    n = write_preferences(args.out, records)
    pairs = sum(len(r["responses"]) * (len(r["responses"]) - 1) // 2 for r in records)
    any_right = sum(max(r["scores"]) == 1.0 for r in records)
    mixed = sum(max(r["scores"]) > min(r["scores"]) for r in records)
    report = {
        "out": str(args.out),
        "prompts": args.n,
        "records": n,
        "pairs": pairs,
        "with_a_right_answer": any_right,
        "with_right_and_wrong": mixed,
    }
    emit(
        args,
        report,
        lambda: print(
            f"wrote {n} rankings ({pairs} pairs) to {args.out}; {any_right} prompts have a "
            f"right answer among the {args.k}, {mixed} have right and wrong ones "
            f"({args.n - n} prompts whose answers the ranking rules cannot tell apart were left out)"
        ),
    )
    return 0


def cmd_reward(args: argparse.Namespace) -> int:
    from pocketgpt.train.loop import train
    from pocketgpt.train.reward import RewardModel, reward_stage

    gpt, tok = _load(args.model, train=True)
    train_pairs, val_pairs = _pairs(args)
    model = RewardModel(gpt)
    cfg = _train_config(args)
    stage = reward_stage(model, tok, train_pairs, val_pairs, batch_size=cfg.batch_size, seed=cfg.seed)
    result = train(stage, cfg, Path(args.out), resume=args.resume)
    final = [r for r in result.history if "pair_acc" in r]
    acc = final[-1] if final else {}
    summary = run_summary(
        result,
        train_pairs=len(train_pairs),
        val_pairs=len(val_pairs),
        val_pair_accuracy=acc.get("pair_acc"),
        val_margin=acc.get("pair_margin"),
    )
    emit(
        args,
        summary,
        lambda: print(
            f"{result.stopped} after {result.steps} steps: held-out pairwise accuracy "
            f"{100 * (acc.get('pair_acc') or 0):.1f}% on {len(val_pairs)} pairs ({len(train_pairs)} trained on); "
            f"reward model: {result.out_dir}"
        ),
    )
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from pocketgpt.train.reward import load_reward_model, score_texts

    model, tok = load_reward_model(args.model)
    value = score_texts(model, tok, [args.prompt], [args.response])[0]
    emit(
        args,
        {"model": str(args.model), "prompt": args.prompt, "response": args.response, "score": value},
        f"{value:.4f}",
    )
    return 0


def cmd_ppo(args: argparse.Namespace) -> int:
    from pocketgpt.text.chat import template_for
    from pocketgpt.train.loop import train
    from pocketgpt.train.ppo import PolicyWithValue, PPOConfig, ppo_stage
    from pocketgpt.train.ppo_dashboard import plot_dashboard
    from pocketgpt.train.task_rewards import prompt_items

    gpt, tok = _load(args.policy, train=True)
    _attach_lora(gpt, args)
    template = template_for(tok)
    reward, reward_name = _reward_fn(args.reward, tok)
    items = prompt_items(args.prompts, seed=args.seed, task_names=args.tasks)
    val_items = prompt_items(64, seed=args.seed, task_names=args.tasks, split="test")
    ppo = PPOConfig(
        rollout_batch=args.rollout_batch,
        minibatch=args.minibatch,
        epochs=args.epochs,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        beta=args.beta,
        kl_target=args.kl_target,
        kl_horizon=args.kl_horizon,
        ent_coef=args.ent_coef,
        ptx_coef=args.ptx,
        seed=args.seed,
    )
    ptx_rows = (
        [
            template.encode(tok, [*it["messages"], {"role": "assistant", "content": it["output"]}])
            for it in items
        ]
        if args.ptx > 0
        else None
    )
    policy = PolicyWithValue(gpt)
    stage = ppo_stage(
        policy,
        tok,
        reward,
        items,
        ppo,
        template=template,
        ptx_rows=ptx_rows,
        evaluate=_greedy_reward(policy, tok, template, val_items, reward, args.max_tokens),
    )
    stage.settings["reward"] = reward_name
    cfg = _train_config(args, batch_size=ppo.minibatch, schedule="constant")
    result = train(stage, cfg, Path(args.out), resume=args.resume)
    png = plot_dashboard(
        result.history, Path(args.out) / "train" / "ppo.png", title=f"PPO: {Path(args.out).name}"
    )
    rows = [r for r in result.history if "reward" in r]
    last = rows[-max(1, ppo.steps_per_rollout()) :]
    mean = lambda key: sum(r[key] for r in last) / len(last) if last else None  # noqa: E731
    summary = run_summary(
        result,
        reward=reward_name,
        first_reward=rows[0]["reward"] if rows else None,
        last_reward=mean("reward"),
        last_kl=mean("kl"),
        last_resp_len=mean("resp_len"),
        dashboard=str(png) if png else None,
        val=[r for r in result.history if "val_reward" in r][-1:],
    )
    summary["eval_tasks"] = _eval_tasks(gpt, tok, args)

    def human() -> None:
        print(
            f"{result.stopped} after {result.steps} steps; reward {summary['first_reward']} -> "
            f"{summary['last_reward']:.3f}, KL {summary['last_kl']:.3f} nats/answer, "
            f"answer length {summary['last_resp_len']:.1f} tokens"
        )
        print(
            f"metrics: {Path(args.out) / 'train' / 'metrics.jsonl'}; dashboard: {png}; policy: {result.out_dir}"
        )
        print_task_accuracy(summary["eval_tasks"])

    emit(args, summary, human)
    return 0


def cmd_dpo(args: argparse.Namespace) -> int:
    from pocketgpt.train.dpo import dpo_stage
    from pocketgpt.train.loop import train

    model, tok = _load(args.model, train=True)
    _attach_lora(model, args)
    train_pairs, val_pairs = _pairs(args)
    cfg = _train_config(args)
    stage = dpo_stage(
        model,
        tok,
        train_pairs,
        val_pairs,
        batch_size=cfg.batch_size,
        beta=args.beta,
        nll_coef=args.nll,
        seed=cfg.seed,
    )
    result = train(stage, cfg, Path(args.out), resume=args.resume)
    rows = [r for r in result.history if "reward_acc" in r]
    summary = run_summary(
        result,
        train_pairs=len(train_pairs),
        val_pairs=len(val_pairs),
        val_loss=result.val_loss,
        last_reward_acc=rows[-1]["reward_acc"] if rows else None,
        eval_tasks=_eval_tasks(model, tok, args),
    )

    def human() -> None:
        print(
            f"{result.stopped} after {result.steps} steps: train loss {result.train_loss}, held-out DPO loss "
            f"{result.val_loss} on {len(val_pairs)} pairs; policy: {result.out_dir}"
        )
        print_task_accuracy(summary["eval_tasks"])

    emit(args, summary, human)
    return 0


# -- helpers ---------------------------------------------------------------------------------------------
def _reward_fn(spec: str, tok):
    """(RewardFn, name): `task` = the built-in task scorers, else a reward model directory."""
    from pocketgpt.errors import DataError
    from pocketgpt.train.reward import load_reward_model
    from pocketgpt.train.task_rewards import model_reward, task_reward

    if spec == "task":
        return task_reward, "task scorers"
    rm, rm_tok = load_reward_model(spec)
    if rm_tok is not None and rm_tok.vocab_size != tok.vocab_size:
        raise DataError(
            f"{spec}: the reward model's tokenizer ({rm_tok.vocab_size} tokens) differs from the "
            f"policy's ({tok.vocab_size}); train the reward model from the same SFT model"
        )
    return model_reward(rm, rm_tok or tok), f"reward model {spec}"


def _greedy_reward(policy, tok, template, items, reward, max_tokens: int):
    """stage.evaluate: the mean reward and task accuracy of greedy answers to fixed held-out prompts."""
    from pocketgpt.train.task_rewards import sample_answers, task_reward

    def evaluate(model) -> dict[str, float]:
        answers = [
            a[0] if a else ""
            for a in sample_answers(
                policy.gpt, tok, items, 1, template=template, max_tokens=max_tokens, temperature=0.0
            )
        ]
        scores, right = reward(items, answers), task_reward(items, answers)
        return {"val_reward": sum(scores) / len(scores), "val_task_acc": sum(right) / len(right)}

    return evaluate

