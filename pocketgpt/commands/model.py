"""`pocketgpt model info` (how big, how costly) and `pocketgpt generate` (continue a prompt).

Thin: parse, call `pocketgpt.model.info` / `pocketgpt.infer.generate`, print. Torch is imported
inside the handlers so `pocketgpt --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pocketgpt.commands import add_group, add_verb, emit
from pocketgpt.errors import ConfigMismatch, DataError, TokenizerError


def register(sub: argparse._SubParsersAction) -> None:
    group = add_group(sub, "model", help="inspect models", example="pocketgpt model info tiny --context 256")
    p = add_verb(group, "info", help="parameters by part, FLOPs per token, memory for weights and KV cache",
                 example="pocketgpt model info gpt2-124m --context 1024\npocketgpt model info runs/tiny/ --json",
                 func=cmd_info)
    p.add_argument("model", metavar="MODEL_DIR|PRESET", help="a model directory or a preset name (tiny, small, ...)")
    p.add_argument("--context", type=int, default=None, help="context length for FLOPs and KV cache (default block_size)")

    p = add_verb(sub, "generate", help="continue a prompt with a model directory",
                 example='pocketgpt generate runs/tiny/ "It is a truth" --max-tokens 50 --temperature 0.8 --seed 1',
                 func=cmd_generate)
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a model directory (config.json + model.safetensors + tokenizer)")
    p.add_argument("prompt", help="the text to continue (empty = start from <|endoftext|>)")
    p.add_argument("--max-tokens", type=int, default=64, help="most new tokens (default 64)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy; >1 more random (default 1.0)")
    p.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="sample from the smallest set with mass >= p")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible samples")


def _config_for(spec: str):
    from pocketgpt.config import PRESETS, get_preset
    from pocketgpt.model.checkpoint import load_config

    if Path(spec).is_dir():
        return load_config(spec)
    if spec in PRESETS:
        return get_preset(spec)
    raise ConfigMismatch(f"{spec!r} is neither a model directory nor a preset; presets: {', '.join(PRESETS)}")


def cmd_info(args: argparse.Namespace) -> int:
    from pocketgpt.model.info import model_info

    if args.context is not None and args.context <= 0:
        raise ConfigMismatch(f"--context {args.context}: give a positive number of tokens")
    info = model_info(_config_for(args.model), args.context)
    emit(args, info, lambda: _print_info(args.model, info))
    return 0


def _print_info(name: str, info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from pocketgpt.model.info import human_bytes, human_count

    c, params, flops = info["config"], info["params"], info["flops_per_token"]
    table = Table(title=f"{name}: {c['arch']} ({info['flavour']} flavour), {c['n_layer']} layers, "
                  f"d_model {c['d_model']}, {c['n_head']} heads ({c['n_kv_head']} kv), vocab {c['vocab_size']}")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_column("share", justify="right")
    for part in ("embeddings", "attention", "ffn", "norms", "head", "other"):
        if params[part]:
            table.add_row(f"params: {part}", f"{params[part]:,}", f"{params[part] / params['total']:.1%}")
    table.add_row("params: total", f"{params['total']:,}", human_count(params["total"]), end_section=False)
    table.add_row("params: non-embedding", f"{params['non_embedding']:,}", human_count(params["non_embedding"]),
                  end_section=True)
    n = info["context"]
    table.add_row(f"FLOPs/token forward (context {n})", human_count(flops["forward"]),
                  f"attn {flops['attention_term'] / flops['forward']:.0%}")
    table.add_row("FLOPs/token training (~3x forward)", human_count(flops["training"]), "", end_section=True)
    for k, v in info["weights_bytes"].items():
        table.add_row(f"weights {k}", human_bytes(v), "")
    for k, v in info["kv_cache_bytes"].items():
        table.add_row(f"KV cache {k}, {n} tokens, 1 sequence", human_bytes(v), "")
    Console().print(table)


def cmd_generate(args: argparse.Namespace) -> int:
    from pocketgpt.infer.generate import generate
    from pocketgpt.model.checkpoint import load_model

    if args.max_tokens < 0 or (args.top_p is not None and not 0.0 < args.top_p <= 1.0):
        raise DataError("--max-tokens must be >= 0 and --top-p in (0, 1]")
    model, tok = load_model(args.model_dir)
    if tok is None:
        raise TokenizerError(f"{args.model_dir}: no tokenizer files in the model directory; "
                             "save the model with its tokenizer (save_model(model, dir, tokenizer))")
    eot = tok.special_tokens.get("<|endoftext|>")
    stop = {i for i in (eot, model.config.eos_id) if i is not None and i >= 0}
    prompt = tok.encode(args.prompt) if args.prompt else []
    if not prompt:
        if eot is None:
            raise TokenizerError("the prompt is empty and the tokenizer has no <|endoftext|> to start from")
        prompt = [eot]
    out = generate(model, prompt, max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, seed=args.seed, stop_ids=stop)
    text = tok.decode(out.tokens)
    obj = {"text": text, "tokens": out.tokens, "prompt_tokens": out.prompt_tokens,
           "completion_tokens": len(out.tokens), "finish_reason": out.finish_reason, "seed": args.seed}
    emit(args, obj, args.prompt + text)
    return 0
