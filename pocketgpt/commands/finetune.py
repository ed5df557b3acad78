"""`pocketgpt sft` and `pocketgpt finetune`: the second stage of the recipe, the same training on
different data (instruction conversations; GPT-1 task data), fully or through an adapter.

Thin: flags -> base model (model/checkpoint) -> optional adapter (model/peft) -> data
(text/instructions, tasks/, train/finetune) -> a Stage (train/sft, train/finetune) -> train.loop.train
-> accuracy. Torch is imported inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pocketgpt.commands import add_verb, emit, print_task_accuracy, run_summary

# per method: a learning rate that worked on the tiny preset (bench/peft_table.py); --lr overrides
DEFAULT_LR = {None: 1e-3, "lora": 1e-2, "prefix": 1e-1, "prompt": 3e-2}  # the best measured on tiny (docs/finetuning.md)
LORA_TARGETS = "attn.qkv,attn.proj,mlp.fc,mlp.proj,mlp.gate"  # every block Linear: 15.1% vs 6.1% for attention only


def register(sub: argparse._SubParsersAction) -> None:
    p = add_verb(sub, "sft", help="instruction-tune a model on conversations (loss on assistant tokens only)",
                 example="pocketgpt data instructions --out sft.jsonl --n 4000\n"
                         "pocketgpt sft runs/tiny --data sft.jsonl --out runs/tiny-sft\n"
                         "pocketgpt sft runs/tiny --data builtin --n 4000 --peft lora --lora-r 8 --out runs/tiny-lora\n"
                         "pocketgpt sft out/demo/smollm2 --data builtin --peft lora --block-size 256 --out runs/smol-lora\n"
                         "pocketgpt generate runs/tiny-lora --chat '3 + 4 = ?'",
                 func=cmd_sft)
    p.add_argument("model", metavar="MODEL", help="base model directory (e.g. from `pocketgpt pretrain`)")
    p.add_argument("--data", required=True, metavar="FILE|builtin",
                   help="JSONL in Alpaca or messages form, or `builtin` for the built-in verifiable tasks")
    p.add_argument("--val", default=None, metavar="FILE", help="validation JSONL (default: 5%% of --data held out)")
    p.add_argument("--n", type=int, default=4000, help="with --data builtin: how many examples (default 4000)")
    p.add_argument("--tasks", default=None, help="with --data builtin: comma-separated task names (default all)")
    p.add_argument("--no-pack", action="store_true", help="one conversation per row instead of packing several")
    p.add_argument("--block-size", type=int, default=None, metavar="T",
                   help="tokens per training row (default: the model's context, at most 1024; "
                        "e.g. 256 for short conversations on a model with a long context)")
    p.add_argument("--eval-tasks", type=int, default=0, metavar="N",
                   help="after training, score N held-out examples per built-in task (0 = skip)")
    _common(p)

    f = add_verb(sub, "finetune", help="GPT-1 task fine-tuning: a linear head on the extract token",
                 example="pocketgpt finetune runs/tiny --task classification --data train.jsonl --val val.jsonl "
                         "--out runs/tiny-cls\n"
                         "   # lines: {\"text\": \"...\", \"label\": \"pos\"}\n"
                         "pocketgpt finetune runs/tiny --task entailment --data nli.jsonl --peft lora --out runs/nli\n"
                         "   # lines: {\"premise\": ..., \"hypothesis\": ..., \"label\": ...}; similarity: text_a/text_b;\n"
                         "   # multiple-choice: {\"context\": ..., \"choices\": [...], \"label\": 0}",
                 func=cmd_finetune)
    f.add_argument("model", metavar="MODEL", help="base model directory")
    f.add_argument("--task", required=True, choices=("classification", "entailment", "similarity", "multiple-choice"))
    f.add_argument("--data", required=True, metavar="FILE", help="training JSONL")
    f.add_argument("--val", default=None, metavar="FILE", help="validation JSONL (default: 10%% of --data held out)")
    f.add_argument("--aux-weight", type=float, default=0.5, help="lambda of the auxiliary LM loss (GPT-1: 0.5; 0 = off)")
    f.add_argument("--head-dropout", type=float, default=0.1, help="dropout before W_y (GPT-1: 0.1)")
    _common(f)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="output model directory (+ checkpoint/, train/)")
    p.add_argument("--on-error", choices=("skip", "fail"), default="fail",
                   help="a malformed JSONL line: stop (fail, default) or report it and skip it")
    a = p.add_argument_group("parameter-efficient fine-tuning")
    a.add_argument("--peft", choices=("lora", "prefix", "prompt"), default=None, help="train an adapter, not the model")
    a.add_argument("--lora-r", type=int, default=8, help="LoRA rank (default 8)")
    a.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA alpha: the update is scaled by alpha/r")
    a.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the LoRA input")
    a.add_argument("--lora-targets", default=LORA_TARGETS,
                   help="comma-separated Linear names to adapt (default: every block Linear; attn.qkv,attn.proj "
                        "for attention only)")
    a.add_argument("--n-virtual", type=int, default=16, help="prefix/prompt tuning: number of virtual tokens")
    a.add_argument("--merge", action="store_true", help="LoRA: save the merged weights (a plain model, no adapter)")
    t = p.add_argument_group("training")
    t.add_argument("--max-steps", type=int, default=300)
    t.add_argument("--max-minutes", type=float, default=None)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--grad-accum", type=int, default=1)
    t.add_argument("--lr", type=float, default=None, help=f"default per method: {DEFAULT_LR}")
    t.add_argument("--warmup-steps", type=int, default=20)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--eval-every", type=int, default=100)
    t.add_argument("--ckpt-every", type=int, default=0)
    t.add_argument("--seed", type=int, default=1337)
    t.add_argument("--device", default="auto")
    t.add_argument("--dtype", default="auto")
    t.add_argument("--threads", type=int, default=None,
                   help="CPU intra-op threads (default: torch's, one per core; 1 when other jobs share the cores)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")


def _train_config(args: argparse.Namespace):
    from pocketgpt.train.loop import TrainConfig

    quiet = args.json and not sys.stderr.isatty()
    return TrainConfig(max_steps=args.max_steps, max_minutes=args.max_minutes, batch_size=args.batch_size,
                       grad_accum=args.grad_accum, lr=args.lr or DEFAULT_LR[args.peft], warmup_steps=args.warmup_steps,
                       weight_decay=args.weight_decay, eval_every=args.eval_every, ckpt_every=args.ckpt_every,
                       seed=args.seed, device=args.device, dtype=args.dtype, progress=not quiet, eval_batches=10,
                       threads=args.threads)


def _base(args: argparse.Namespace):
    """(model with the adapter attached as asked, tokenizer)."""
    from pocketgpt.errors import DataError
    from pocketgpt.model import peft
    from pocketgpt.model.checkpoint import load_model

    if peft.has_adapter(args.model):  # LoRA is merged on load and training goes on from there
        meta = peft.read_adapter_config(args.model)
        if meta.get("method") != "lora":
            base = meta.get("base") or "the one it was trained on"
            raise DataError(f"{args.model}: holds a {meta.get('method')} adapter, which cannot be merged into the "
                            f"weights to train on; fine-tune its base model ({base}) instead")
    model, tok = load_model(args.model)
    if tok is None:
        raise DataError(f"{args.model}: no tokenizer files; fine-tuning needs the tokenizer the model was trained with")
    model.train()
    if args.peft:
        targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
        peft.attach(model, peft.PeftConfig(args.peft, r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                                           targets=targets, n_virtual=args.n_virtual), seed=args.seed)
    print(peft.describe(model), file=sys.stderr)
    return model, tok


def _conversations(args: argparse.Namespace) -> tuple[list, list, list[str]]:
    """(train conversations, val conversations, problems) from --data / --val."""
    from pocketgpt.text.instructions import read_instructions, to_messages

    problems: list[str] = []
    if args.data == "builtin":
        from pocketgpt import tasks

        convs = [to_messages(ex) for ex in tasks.generate(args.n, seed=args.seed, tasks=args.tasks)]
    else:
        data = read_instructions(args.data, on_error=args.on_error)
        convs, problems = data.conversations, data.problems
    if args.val:
        val = read_instructions(args.val, on_error=args.on_error)
        return convs, val.conversations, problems + val.problems
    k = max(1, len(convs) // 20)
    return convs[k:], convs[:k], problems


def cmd_sft(args: argparse.Namespace) -> int:
    from pocketgpt.train.loop import train
    from pocketgpt.train.sft import sft_stage

    model, tok = _base(args)
    train_convs, val_convs, problems = _conversations(args)
    for problem in problems:
        print(f"skipped {problem}", file=sys.stderr)
    cfg = _train_config(args)
    stage = sft_stage(model, tok, train_convs, val_convs, batch_size=cfg.batch_size, seed=cfg.seed,
                      pack=not args.no_pack, merge=args.merge, block_size=args.block_size)
    result = train(stage, cfg, Path(args.out), resume=args.resume)
    summary = run_summary(result, train_loss=result.train_loss, val_loss=result.val_loss, skipped=len(problems),
                          params=stage.settings["params"], peft=args.peft)
    if args.eval_tasks:
        from pocketgpt.eval.tasks import evaluate_tasks
        from pocketgpt.model.peft import load_model_with_adapter

        tuned, tok2 = load_model_with_adapter(result.out_dir)
        summary["eval_tasks"] = evaluate_tasks(tuned, tok2, n=args.eval_tasks)

    def human() -> None:
        print(f"{result.stopped} after {result.steps} steps: train loss {result.train_loss}, val loss {result.val_loss}")
        print(f"{summary['params']}; model directory: {result.out_dir}")
        print_task_accuracy(summary.get("eval_tasks"))
    emit(args, summary, human)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from pocketgpt.text.formats import pad_id_of
    from pocketgpt.text.specials import EXTRACT
    from pocketgpt.train.finetune import (
        TaskData,
        TaskModel,
        evaluate_task_model,
        finetune_stage,
        read_task_file,
    )
    from pocketgpt.train.loop import train

    gpt, tok = _base(args)
    T = gpt.config.block_size - (args.n_virtual if args.peft == "prompt" else 0)
    data, labels = read_task_file(args.data, args.task, tok, labels=None, max_len=T, on_error=args.on_error)
    if args.val:
        val, _ = read_task_file(args.val, args.task, tok, labels=labels, max_len=T, on_error=args.on_error)
    else:
        k = max(1, len(data.examples) // 10)
        val, data = TaskData(data.examples[:k]), TaskData(data.examples[k:], data.problems)
    for problem in data.problems + val.problems:
        print(f"skipped {problem}", file=sys.stderr)
    model = TaskModel(gpt, args.task, len(labels), tok.special_tokens[EXTRACT], dropout=args.head_dropout)
    cfg = _train_config(args)
    stage = finetune_stage(model, tok, data, val, batch_size=cfg.batch_size, seed=cfg.seed,
                           aux_weight=args.aux_weight, labels=labels, merge=args.merge)
    result = train(stage, cfg, Path(args.out), resume=args.resume)
    scores = evaluate_task_model(model, val, pad_id_of(tok), batch_size=cfg.batch_size)
    names = labels or [f"answer {i}" for i in range(len(scores["confusion"]))]
    summary = {"out": str(result.out_dir), "steps": result.steps, "task": args.task, "labels": names,
               "val_accuracy": scores["accuracy"], "val_n": scores["n"], "confusion": scores["confusion"],
               "train_loss": result.train_loss, "params": stage.settings["params"]}

    def human() -> None:
        print(f"{args.task}: val accuracy {100 * scores['accuracy']:.1f}% on {scores['n']} examples "
              f"({summary['params']})")
        width = max(8, *(len(n) for n in names))
        print("confusion (rows: gold, columns: predicted)")
        print(" " * width + "".join(f"{n:>{width}}" for n in names))
        for n, row in zip(names, scores["confusion"], strict=False):
            print(f"{n:>{width}}" + "".join(f"{c:>{width}}" for c in row))
        print(f"model directory: {result.out_dir}")
    emit(args, summary, human)
    return 0
