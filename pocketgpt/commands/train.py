"""`pocketgpt pretrain`: train a GPT from scratch on raw text, cleaned text or token shards.

Thin: flags -> ModelConfig (preset + overrides) and TrainConfig (preset defaults + overrides) ->
`train.pretrain.prepare_data` -> `train.loop.train` -> a few samples. Every ModelConfig and
TrainConfig field has its own flag (`--n-layer 6`, `--lr 1e-3`), generated from the dataclasses so
the two can never drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path

from pocketgpt.commands import add_verb, emit, run_summary

SKIP_MODEL = {"arch", "extra"}  # pretrain trains decoder-only GPTs; extra is provenance


def register(sub: argparse._SubParsersAction) -> None:
    p = add_verb(sub, "pretrain", help="pretrain a GPT on text (default: the built-in corpus)",
                 example="pocketgpt pretrain --preset tiny --out runs/tiny            # ~4 min on 2 CPU cores\n"
                         "pocketgpt pretrain --preset tiny --data my.txt --n-layer 6 --max-steps 3000 --out runs/mine\n"
                         "pocketgpt pretrain --out runs/tiny --resume                 # continue exactly\n"
                         "torchrun --nproc_per_node=2 -m pocketgpt pretrain --preset small --out runs/small",
                 func=cmd_pretrain)
    p.add_argument("--preset", default="tiny", help="model preset: tiny, small, gpt2-124m, tiny-llama, tiny-moe")
    p.add_argument("--data", nargs="+", default=None, metavar="PATH",
                   help="text files, a `pocketgpt clean` directory, token shards, or corpus names (default: default)")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="where the model directory and checkpoints go")
    p.add_argument("--tokenizer", default=None, help="use this tokenizer (dir or gpt2) instead of training one")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--processes", type=int, default=None, help="tokenizer processes (default 2)")
    p.add_argument("--samples", type=int, default=60, help="tokens per sample printed at the end (0 = none)")
    model = p.add_argument_group("model (overrides the preset)")
    from pocketgpt.config import ModelConfig
    from pocketgpt.train.loop import TrainConfig

    _dataclass_flags(model, ModelConfig, skip=SKIP_MODEL, dest_prefix="m_")
    train = p.add_argument_group("training (overrides the preset's defaults)")
    _dataclass_flags(train, TrainConfig, skip=set(), dest_prefix="t_")


def _dataclass_flags(group, cls, *, skip: set[str], dest_prefix: str) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        if kind is bool:
            group.add_argument(flag, dest=dest_prefix + f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=f.metadata.get("help"))
        else:
            group.add_argument(flag, dest=dest_prefix + f.name, type=kind, default=None, metavar=f.name.upper(),
                               help=f.metadata.get("help"))


def _base_type(hint):
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint if hint in (int, float, str, bool) else str


def _picked(args: argparse.Namespace, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix) and v is not None}


def cmd_pretrain(args: argparse.Namespace) -> int:
    import os

    import torch

    from pocketgpt.config import get_preset
    from pocketgpt.model.checkpoint import build_model
    from pocketgpt.text.specials import EOT, PAD
    from pocketgpt.train.loop import TrainConfig, train
    from pocketgpt.train.pretrain import TRAIN_PRESETS, prepare_data, pretrain_stage

    config = get_preset(args.preset).replace(**_picked(args, "m_"))
    tcfg = TrainConfig(**{**TRAIN_PRESETS.get(args.preset, {}), **_picked(args, "t_")})
    quiet = not tcfg.progress or not sys.stderr.isatty() and args.json
    prepared = prepare_data(args.data, vocab_size=config.vocab_size, tokenizer=args.tokenizer,
                            processes=args.processes, progress=not quiet)
    for note in prepared.notes:
        print(note, file=sys.stderr)
    tok = prepared.tokenizer
    config = config.replace(vocab_size=tok.vocab_size, eos_id=tok.special_tokens.get(EOT, -1),
                            pad_id=tok.special_tokens.get(PAD, -1))
    torch.manual_seed(tcfg.seed)  # the initial weights depend on the seed only
    model = build_model(config)
    stage = pretrain_stage(model, prepared, batch_size=tcfg.batch_size, seed=tcfg.seed)
    result = train(stage, tcfg, Path(args.out), resume=args.resume)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    samples = _samples(result.out_dir, args.samples) if args.samples else {}
    summary = run_summary(result, train_loss=result.train_loss, val_loss=result.val_loss,
                          tokens=result.history[-1].get("tokens") if result.history else 0, samples=samples)

    def human() -> None:
        print(f"{result.stopped} after {result.steps} steps: train loss {result.train_loss}, val loss {result.val_loss}")
        print(f"model directory: {result.out_dir}   curve: {result.out_dir / 'train' / 'loss.png'}")
        for prompt, text in samples.items():
            print(f"--- {prompt}{text}")
    emit(args, summary, human)
    return 0


def _samples(model_dir: Path, n_tokens: int) -> dict[str, str]:
    """A short continuation of each sample prompt (temperature 0.8, seeded, ending at a document
    boundary), to see what was learned."""
    from pocketgpt.infer.engine import Engine
    from pocketgpt.infer.sampling import SamplingParams
    from pocketgpt.model.checkpoint import load_model
    from pocketgpt.text.specials import EOT
    from pocketgpt.train.pretrain import sample_prompts

    model, tok = load_model(model_dir)
    engine = Engine(model, tok, max_batch=4)
    prompts = sample_prompts(tok)
    block = model.config.block_size
    ids = [tok.encode(p)[-(block // 2):] for p in prompts]  # leave room to continue in a short context
    params = SamplingParams(max_tokens=max(1, min(n_tokens, block - max(map(len, ids)) - 1)), temperature=0.8,
                            top_k=50, seed=1, stop_ids=tuple(i for i in [tok.special_tokens.get(EOT)] if i is not None))
    done = engine.generate(ids, params)
    return {p: c.text for p, c in zip(prompts, done, strict=True)}
