"""`pocketgpt model info` (how big, how costly), `pocketgpt generate` (continue a prompt) and
`pocketgpt predict` (the next-token distribution: the tutorials' "周一上班真的很 -> 爽 / 丧" view).

Thin: parse, call `pocketgpt.model.info` / the inference engine (`pocketgpt.infer`), print. Torch is imported
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
                 example='pocketgpt generate runs/tiny/ "It is a truth" --max-tokens 50 --temperature 0.8 --seed 1\n'
                         'pocketgpt generate runs/zh/ "周一上班" --top-p 0.9 --stop "。" --frequency-penalty 0.5',
                 func=cmd_generate)
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a model directory (config.json + model.safetensors + tokenizer)")
    p.add_argument("prompt", help="the text to continue (empty = start from <|endoftext|>)")
    p.add_argument("--max-tokens", type=int, default=64, help="most new tokens (default 64)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy; >1 more random (default 1.0)")
    p.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="sample from the smallest set with mass >= p")
    p.add_argument("--min-p", type=float, default=None, help="drop tokens less likely than min_p x the top token")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages tokens already seen")
    p.add_argument("--presence-penalty", type=float, default=0.0, help="subtract from tokens generated at least once")
    p.add_argument("--frequency-penalty", type=float, default=0.0, help="subtract per time a token was generated")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop before this text (repeatable); it is never printed")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible samples")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="print text as it is generated (default: on for a terminal, off with --json)")

    p = add_verb(sub, "predict", help="the next-token distribution after a prompt, as a table (and a chart)",
                 example='pocketgpt predict runs/zh/ "周一上班真的很" --top 10 --plot next.png', func=cmd_predict)
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a model directory (config.json + model.safetensors + tokenizer)")
    p.add_argument("prompt", help="the text whose next token to predict")
    p.add_argument("--top", type=int, default=10, help="how many of the most likely tokens to show (default 10)")
    p.add_argument("--temperature", type=float, default=1.0, help="show softmax(logits / T) (default 1.0)")
    p.add_argument("--plot", metavar="PNG", default=None, help="also draw a bar chart into this PNG file")


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


def _load_with_tokenizer(model_dir: str):
    from pocketgpt.model.checkpoint import load_model
    from pocketgpt.model.peft import has_adapter, load_model_with_adapter

    # an adapter directory (adapter.json) runs with its adapter, as the store's ADAPTER does
    model, tok = load_model_with_adapter(model_dir) if has_adapter(model_dir) else load_model(model_dir)
    if tok is None:
        raise TokenizerError(f"{model_dir}: no tokenizer files in the model directory; "
                             "save the model with its tokenizer (save_model(model, dir, tokenizer))")
    return model, tok


def cmd_generate(args: argparse.Namespace) -> int:
    import re
    import sys

    from pocketgpt.infer.engine import Engine
    from pocketgpt.infer.sampling import SamplingParams

    model, tok = _load_with_tokenizer(args.model_dir)
    eot = tok.special_tokens.get("<|endoftext|>")
    stop_ids = tuple(i for i in (eot, model.config.eos_id) if i is not None and i >= 0)
    try:
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                                top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                                presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
                                stop_ids=stop_ids, stop=tuple(args.stop), seed=args.seed)
    except DataError as e:  # name the flags, not the dataclass fields: top_p -> --top-p
        flags = re.sub(r"\b(max_tokens|temperature|top_k|top_p|min_p|repetition_penalty|stop)\b",
                       lambda m: "--" + m.group(1).replace("_", "-"), str(e))
        raise DataError(flags) from None
    prompt = tok.encode(args.prompt) if args.prompt else []
    if not prompt:
        if eot is None:
            raise TokenizerError("the prompt is empty and the tokenizer has no <|endoftext|> to start from")
        prompt = [eot]
    engine = Engine(model, tok, max_batch=1,
                    max_len=min(model.config.block_size, len(prompt) + args.max_tokens + 1))
    handle = engine.submit(prompt, params)
    stream = args.stream if args.stream is not None else (sys.stdout.isatty() and not args.json)
    if stream and not args.json:
        sys.stdout.write(args.prompt)
        while engine.step():
            for delta in handle.ready():
                sys.stdout.write(delta)
                sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        while engine.step():
            pass
    out = handle.result()
    obj = {"text": out.text, "tokens": out.tokens, "prompt_tokens": out.prompt_tokens,
           "completion_tokens": len(out.tokens), "finish_reason": out.finish_reason, "seed": args.seed}
    if not stream or args.json:
        emit(args, obj, args.prompt + out.text)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from pocketgpt.infer.sampling import top_probs

    if args.top <= 0 or args.temperature <= 0:
        raise DataError("--top must be >= 1 and --temperature > 0")
    model, tok = _load_with_tokenizer(args.model_dir)
    prompt = tok.encode(args.prompt)
    if not prompt:
        raise DataError("the prompt is empty; give some text whose next token to predict")
    prompt = prompt[-model.config.block_size:]  # the model sees at most its context
    with torch.no_grad():
        logits = model(torch.tensor([prompt]))[0, -1]  # (V,)
    rows = [{"token": _show(tok, i), "id": i, "prob": p} for i, p in top_probs(logits / args.temperature, args.top)]
    obj = {"prompt": args.prompt, "prompt_tokens": len(prompt), "top": rows}
    if args.plot:
        obj["plot"], obj["font"] = str(args.plot), _plot(args.prompt, rows, args.plot)
    emit(args, obj, lambda: _print_predict(obj))
    return 0


def _show(tok, token_id: int) -> str:
    """A token as text; a piece of a UTF-8 character shows as its bytes (e.g. <e5 91>), never as garbage."""
    data = tok.token_bytes(token_id)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "<" + " ".join(f"{b:02x}" for b in data) + ">"


def _print_predict(obj: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"next token after {obj['prompt']!r} ({obj['prompt_tokens']} tokens)")
    table.add_column("token")
    table.add_column("id", justify="right")
    table.add_column("probability", justify="right")
    table.add_column("")
    for r in obj["top"]:
        table.add_row(repr(r["token"])[1:-1], str(r["id"]), f"{r['prob']:.4f}", "█" * max(1, round(r["prob"] * 40)))
    Console().print(table)
    if "plot" in obj:
        note = f"font {obj['font']}" if obj["font"] else "no CJK font found: Chinese labels may show as boxes"
        print(f"chart: {obj['plot']} ({note})")


_CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei",
              "WenQuanYi Micro Hei", "SimHei", "Microsoft YaHei", "PingFang SC", "Heiti SC", "AR PL UMing CN")


def _plot(prompt: str, rows: list[dict], path: str) -> str | None:
    """Horizontal bars of the top tokens into a PNG; returns the CJK font used (None = matplotlib's default)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    from pocketgpt.atomic import atomic_path

    installed = {f.name for f in font_manager.fontManager.ttflist}
    font = next((f for f in _CJK_FONTS if f in installed), None)
    if font:
        plt.rcParams["font.sans-serif"] = [font, *plt.rcParams["font.sans-serif"]]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(rows) + 1.2))
    ax.barh([repr(r["token"])[1:-1] for r in rows][::-1], [r["prob"] for r in rows][::-1])
    ax.set_xlabel("probability")
    ax.set_title(f"next token after: {prompt[-40:]}")
    with warnings.catch_warnings():  # without a CJK font every glyph warns; the caller reports it once
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    plt.close(fig)
    return font
