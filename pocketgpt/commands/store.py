"""The model store's verbs, named like Ollama's: create, list, show, rm, cp, run, doctor.

Thin: parse, call `pocketgpt.serve.store.Store` / `serve.chat_cli`, print. The store lives under
$POCKETGPT_HOME/models (or --store DIR). pull/push live in commands/transfer.py, serve/ps/stop in
commands/serve.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pocketgpt.commands import add_verb, emit
from pocketgpt.errors import PocketError


def register(sub: argparse._SubParsersAction) -> None:
    p = add_verb(sub, "create", help="add a model to the store, from a Modelfile or a model directory",
                 example="pocketgpt create tiny --from runs/tiny/\n"
                         "pocketgpt create tiny-chat -f Modelfile   # FROM tiny / PARAMETER temperature 0.5 / SYSTEM ...",
                 func=cmd_create)
    p.add_argument("name", help="model name, name[:tag] (tag defaults to latest)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("-f", "--file", metavar="MODELFILE", help="a Modelfile (default ./Modelfile)")
    src.add_argument("--from", dest="from_", metavar="DIR|GGUF|NAME", help="a model directory, .gguf file or store model")
    _store_arg(p)

    p = add_verb(sub, "list", help="the models in the store", example="pocketgpt list\npocketgpt list --json",
                 func=cmd_list)
    _store_arg(p)
    p = add_verb(sub, "ls", help="the models in the store (same as list)", example="pocketgpt ls", func=cmd_list)
    _store_arg(p)

    p = add_verb(sub, "show", help="a model's details, parameters, template, system prompt, license or Modelfile",
                 example="pocketgpt show tiny\npocketgpt show tiny --modelfile > Modelfile", func=cmd_show)
    p.add_argument("name", help="model name")
    part = p.add_mutually_exclusive_group()
    for flag in ("modelfile", "parameters", "template", "system", "license"):
        part.add_argument(f"--{flag}", action="store_true", help=f"print only the {flag}")
    _store_arg(p)

    p = add_verb(sub, "rm", help="remove models (blobs no other model uses are deleted)",
                 example="pocketgpt rm tiny tiny-chat:v2", func=cmd_rm)
    p.add_argument("names", nargs="+", metavar="NAME", help="model names")
    _store_arg(p)

    p = add_verb(sub, "cp", help="copy a model to a new name (shares its blobs)",
                 example="pocketgpt cp tiny my/tiny:v1", func=cmd_cp)
    p.add_argument("src", help="existing model")
    p.add_argument("dst", help="new name")
    _store_arg(p)

    p = add_verb(sub, "run", help="chat with a store model (REPL with /set, /show, /clear, /bye), or answer one prompt",
                 example='pocketgpt run tiny-chat\npocketgpt run tiny-chat "写一首关于秋天的诗" --seed 1',
                 func=cmd_run, json_flag=False)
    p.add_argument("name", help="model name")
    p.add_argument("prompt", nargs="?", default=None, help="answer this one prompt and exit (default: interactive)")
    p.add_argument("--verbose", action="store_true", help="print token counts and speed after each answer")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible answers")
    p.add_argument("--temperature", type=float, default=None, help="override the model's temperature")
    p.add_argument("--num-predict", type=int, default=None, help="most tokens per answer (-1 = until context is full)")
    _store_arg(p)

    p = add_verb(sub, "doctor", help="check the store: orphaned or corrupt blobs, broken manifests; --repair fixes",
                 example="pocketgpt doctor\npocketgpt doctor --repair", func=cmd_doctor)
    p.add_argument("--repair", action="store_true",
                   help="quarantine corrupt blobs and broken manifests, delete orphans and stale temporaries")
    _store_arg(p)


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar="DIR", default=None, help="store directory (default $POCKETGPT_HOME/models)")


def _store(args: argparse.Namespace, progress: bool = False):
    import sys

    from pocketgpt.serve.store import Store

    show = progress and not getattr(args, "json", False)
    return Store(args.store, progress=(lambda step: print(step, file=sys.stderr, flush=True)) if show else None)


def cmd_create(args: argparse.Namespace) -> int:
    from pocketgpt.serve.modelfile import Modelfile

    store = _store(args, progress=True)
    if args.from_:
        mf = Modelfile(from_=args.from_, base_dir=Path.cwd())
    else:
        path = Path(args.file or "Modelfile")
        if not args.file and not path.is_file():
            raise PocketError("no ./Modelfile here; give one with -f Modelfile, or a model directory with --from DIR")
        mf = Modelfile.load(path)
    m = store.create(args.name, mf)
    emit(args, m.summary(), f"created {m.name} ({m.digest[7:19]}, {_size(m.size)})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    models = _store(args).list()
    rows = [m.summary() for m in models]
    emit(args, {"models": rows}, lambda: _print_list(rows))
    return 0


def _print_list(rows: list[dict]) -> None:
    header = ("NAME", "ID", "SIZE", "MODIFIED")
    table = [(r["name"], r["digest"][:12], _size(r["size"]), _ago(r["modified_at"])) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table, strict=False)]
    for row in [header, *table]:
        print("    ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())


def cmd_show(args: argparse.Namespace) -> int:
    m = _store(args).get(args.name)
    if args.modelfile:
        return _part(args, "modelfile", m.modelfile())
    if args.parameters:
        from pocketgpt.serve.modelfile import parameter_lines

        return _part(args, "parameters", "\n".join(x.removeprefix("PARAMETER ") for x in parameter_lines(m.params)))
    if args.template:
        return _part(args, "template", m.template or "")
    if args.system:
        return _part(args, "system", m.system or "")
    if args.license:
        return _part(args, "license", "\n\n".join(m.license))
    info = {**m.summary(), "model_info": _model_info(m.config), "parameters": m.params, "template": m.template,
            "system": m.system, "license": m.license, "messages": m.messages, "adapter": m.adapter}
    emit(args, info, lambda: _print_show(m, info))
    return 0


def _part(args: argparse.Namespace, key: str, text: str) -> int:
    emit(args, {key: text}, text.rstrip("\n"))
    return 0


def _model_info(c: dict) -> dict:
    return {"architecture": c.get("flavour") or c.get("arch", "gpt"), "context_length": c.get("block_size"),
            "embedding_length": c.get("d_model"), "block_count": c.get("n_layer"), "head_count": c.get("n_head"),
            "vocab_size": c.get("vocab_size")}


def _print_show(m, info: dict) -> None:
    d, mi = info["details"], info["model_info"]
    print(f"  Model\n    {'name':<20}{m.name}\n    {'architecture':<20}{mi['architecture']}\n"
          f"    {'parameters':<20}{d['parameter_size']}\n    {'context length':<20}{mi['context_length']}\n"
          f"    {'embedding length':<20}{mi['embedding_length']}\n    {'quantization':<20}{d['quantization_level']}")
    if m.params:
        print("\n  Parameters")
        for key, value in m.params.items():
            for v in value if isinstance(value, list) else [value]:
                print(f"    {key:<20}{v!r}" if isinstance(v, str) else f"    {key:<20}{v}")
    if m.system:
        print("\n  System\n    " + m.system.replace("\n", "\n    "))
    if m.license:
        print("\n  License\n    " + m.license[0].strip().split("\n")[0])


def cmd_rm(args: argparse.Namespace) -> int:
    store = _store(args)
    for name in args.names:
        store.get(name)  # every name must exist before any is removed
    done = []
    for name in args.names:
        store.remove(name)
        done.append(name)
    emit(args, {"deleted": done}, "\n".join(f"deleted '{n}'" for n in done))
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    _store(args).copy(args.src, args.dst)
    emit(args, {"source": args.src, "destination": args.dst}, f"copied '{args.src}' to '{args.dst}'")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pocketgpt.serve.chat_cli import run_chat
    from pocketgpt.serve.loaded import load_store_model

    loaded = load_store_model(_store(args), args.name)
    for key, value in (("seed", args.seed), ("temperature", args.temperature), ("num_predict", args.num_predict)):
        if value is not None:
            from pocketgpt.serve.modelfile import check_parameters

            loaded.options.update(check_parameters({key: value}, where=f"--{key.replace('_', '-')}"))
    return run_chat(loaded, args.prompt, verbose=args.verbose)


def cmd_doctor(args: argparse.Namespace) -> int:
    report = _store(args).doctor(repair=args.repair)
    emit(args, report, lambda: _print_doctor(report))
    return 0 if report["ok"] or args.repair else 1


def _print_doctor(r: dict) -> None:
    print(f"store {r['root']}: {r['models']} model(s), {r['blobs']} blob(s)")
    for d in r["corrupt"]:
        print(f"  corrupt blob   {d} (sha256 does not match)")
    for b in r["broken"]:
        print(f"  broken model   {b['name']}: {b['problem']}")
    for d in r["orphaned"]:
        print(f"  orphaned blob  {d}")
    for p in r["stale_files"]:
        print(f"  stale file     {p}")
    for p in r["stale_cache"]:
        print(f"  stale cache    cache/{p}")
    if r["ok"]:
        print("  everything is in order")
    elif "repaired" in r:
        x = r["repaired"]
        print(f"repaired: quarantined {x['quarantined_blobs']} blob(s) and {x['quarantined_manifests']} manifest(s)"
              f"{' into ' + x['quarantine'] if x['quarantine'] else ''}; deleted {x['deleted_orphans']} orphan(s) "
              f"({_size(x['freed_bytes'])}) and {x['deleted_stale']} stale item(s)")
    else:
        print("run `pocketgpt doctor --repair` to fix")


def _size(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _ago(iso: str) -> str:
    from datetime import UTC, datetime

    s = (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= size:
            n = int(s // size)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now"
