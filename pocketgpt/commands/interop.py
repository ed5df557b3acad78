"""`pocketgpt import hf|gguf` and `pocketgpt export hf|gguf`: move weights between our model
directory and Hugging Face directories or llama.cpp GGUF files (see model/hf.py, model/gguf_*.py)."""

from __future__ import annotations

import argparse

from pocketgpt.commands import add_group, add_verb, emit


def register(sub: argparse._SubParsersAction) -> None:
    imp = add_group(sub, "import", help="convert a Hugging Face directory or a GGUF file into a model directory",
                    example="pocketgpt import gguf SmolLM2-135M-Instruct.Q4_1.gguf smollm2/")
    p = add_verb(imp, "hf", help="a transformers GPT-2/Llama directory (config.json + weights + vocab) -> ours",
                 example="pocketgpt import hf ./gpt2-hf ./gpt2-ours", func=import_hf_cmd)
    p.add_argument("src", help="Hugging Face model directory (save_pretrained output)")
    p.add_argument("out", help="our model directory to write")
    p = add_verb(imp, "gguf", help="a llama.cpp GGUF file (gpt2 or llama; F32/F16/BF16/Q8_0/Q4_0/Q4_1) -> ours",
                 example="pocketgpt import gguf model.Q8_0.gguf ./model", func=import_gguf_cmd)
    p.add_argument("file", help="the .gguf file")
    p.add_argument("out", help="our model directory to write (weights in fp32)")

    exp = add_group(sub, "export", help="write a model directory for transformers or llama.cpp",
                    example="pocketgpt export gguf ./my-model my-model.gguf --quant q8_0")
    p = add_verb(exp, "hf", help="ours -> a directory GPT2LMHeadModel / LlamaForCausalLM.from_pretrained loads",
                 example="pocketgpt export hf ./my-model ./my-model-hf", func=export_hf_cmd)
    p.add_argument("model", help="our model directory")
    p.add_argument("out", help="Hugging Face directory to write")
    p = add_verb(exp, "gguf", help="ours -> one GGUF file that llama.cpp and Ollama run",
                 example="pocketgpt export gguf ./my-model my-model.gguf --quant f16", func=export_gguf_cmd)
    p.add_argument("model", help="our model directory (with its tokenizer)")
    p.add_argument("out", help="the .gguf file to write")
    p.add_argument("--quant", default="f32", choices=("f32", "f16", "q8_0"),
                   help="weight matrices as f32, f16 or q8_0 (norms and biases stay f32); default f32")


def import_hf_cmd(args: argparse.Namespace) -> int:
    from pocketgpt.model.hf import import_hf

    return _done(args, import_hf(args.src, args.out), f"imported {args.src}")


def import_gguf_cmd(args: argparse.Namespace) -> int:
    from pocketgpt.model.gguf_import import import_gguf

    return _done(args, import_gguf(args.file, args.out), f"imported {args.file}")


def export_hf_cmd(args: argparse.Namespace) -> int:
    from pocketgpt.model.hf import export_hf

    return _done(args, export_hf(args.model, args.out), f"exported {args.model} for transformers")


def export_gguf_cmd(args: argparse.Namespace) -> int:
    from pocketgpt.model.gguf_export import export_gguf

    return _done(args, export_gguf(args.model, args.out, args.quant), f"exported {args.model} as GGUF {args.quant}")


def _done(args: argparse.Namespace, out, what: str) -> int:
    from pathlib import Path

    out = Path(out)
    files = sorted(p.name for p in out.iterdir()) if out.is_dir() else [out.name]
    size = sum(p.stat().st_size for p in (out.iterdir() if out.is_dir() else [out]) if p.is_file())
    emit(args, {"out": str(out), "files": files, "bytes": size}, f"{what} -> {out} ({size / 1e6:.1f} MB)")
    return 0
