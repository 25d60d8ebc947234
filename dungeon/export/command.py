"""The ``dungeon export`` subcommand: argument parsing and one line per error.

    dungeon export RUN --merged OUT [--dtype auto|float32|bfloat16|float16]
    dungeon export RUN --gguf OUT.gguf [--gguf-type f16|q8_0|...]
    dungeon export RUN --merged OUT --gguf OUT.gguf --force

Everything that can be checked before the model loads is (targets, types); everything that
can be checked before anything is written is (architecture, tokenizer, disk space).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dungeon.builtin_model import BUILTIN_MODEL


def add_export_parser(sub) -> argparse.ArgumentParser:
    from dungeon.export.gguf_file import GGUF_TYPES
    from dungeon.export.merged import DTYPES

    p = sub.add_parser(
        "export",
        help="write a run as a standalone model folder or a GGUF file",
        description=(
            "Export RUN (a training run folder, an adapter folder such as "
            f"dungeon/adapters/adventure, a model folder, or {BUILTIN_MODEL}) with any LoRA "
            "adapter merged into its base: --merged writes a transformers model folder "
            "(safetensors, tokenizer, dungeon.json, model card), --gguf one file for llama.cpp, "
            "KoboldCpp, Ollama and LM Studio. Outputs appear whole or not at all."
        ),
        epilog="See docs/export.md for using the GGUF file in KoboldCpp and Ollama.",
    )
    p.add_argument(
        "run", metavar="RUN", help=f"run or adapter folder, model folder, {BUILTIN_MODEL}"
    )
    p.add_argument("--merged", type=Path, metavar="OUT", help="write a standalone model folder")
    p.add_argument("--gguf", type=Path, metavar="OUT.gguf", help="write a GGUF file")
    p.add_argument(
        "--gguf-type",
        default="f16",
        choices=list(GGUF_TYPES),
        help="GGUF weight type (default f16; q8_0 is near-lossless at about half the size; "
        "for K-quants run llama.cpp's llama-quantize on the f16 file)",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=list(DTYPES),
        help="precision of the merged folder (default: as the run stored its weights)",
    )
    p.add_argument("--force", action="store_true", help="replace outputs that exist")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read pickle-only weights (pytorch_model.bin); only for models you trust",
    )
    p.set_defaults(func=cmd_export)
    return p


def cmd_export(args: argparse.Namespace) -> int:
    from dungeon.errors import ModelNotFoundError, UnsafeModelError
    from dungeon.export.source import ExportError

    if args.merged is None and args.gguf is None:
        print("dungeon export: say what to write: --merged OUT, --gguf OUT.gguf, or both", file=sys.stderr)  # fmt: skip
        return 2
    try:
        for line in run_export(args):
            print(line)
    except (ExportError, ModelNotFoundError, UnsafeModelError) as err:
        print(f"dungeon export: {err}", file=sys.stderr)
        return 2
    return 0


def run_export(args: argparse.Namespace) -> list[str]:
    """Do the export the arguments ask for; return what was written, one line each."""
    from dungeon.export.gguf_file import check_gguf_exportable, export_gguf
    from dungeon.export.gguf_file import estimated_bytes as gguf_bytes
    from dungeon.export.merged import estimated_bytes as merged_bytes
    from dungeon.export.merged import export_merged
    from dungeon.export.output import check_space, check_target
    from dungeon.export.source import ExportError, load_source

    both = args.merged is not None and args.gguf is not None
    if both and args.merged.resolve() == args.gguf.resolve():
        raise ExportError("--merged and --gguf name the same path")
    if args.merged is not None:
        check_target(args.merged, force=args.force, kind="folder")
    if args.gguf is not None:
        check_target(args.gguf, force=args.force, kind="file")

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    source = load_source(args.run, allow_pickle=args.allow_pickle, progress=progress)
    if args.gguf is not None:
        check_gguf_exportable(source)
    if both:  # room for the two together, before either is written
        needed = merged_bytes(source, args.dtype) + gguf_bytes(source, args.gguf_type)
        check_space(args.merged, needed)
        check_space(args.gguf, needed)
    written = []
    if args.merged is not None:
        out = export_merged(
            source, args.merged, dtype=args.dtype, force=args.force,
            command=command_line(args), progress=progress,
        )  # fmt: skip
        written.append(f"wrote {out} (merged model folder, {_size(out)})")
    if args.gguf is not None:
        out = export_gguf(
            source, args.gguf, gguf_type=args.gguf_type, force=args.force, progress=progress
        )
        written.append(f"wrote {out} (GGUF {args.gguf_type}, {_size(out)})")
    return written


def command_line(args: argparse.Namespace) -> list[str]:
    """The command that reproduces this export (recorded in dungeon.json and the card)."""
    cmd = ["dungeon", "export", str(args.run)]
    if args.merged is not None:
        cmd += ["--merged", str(args.merged)]
        if args.dtype != "auto":
            cmd += ["--dtype", args.dtype]
    if args.gguf is not None:
        cmd += ["--gguf", str(args.gguf), "--gguf-type", args.gguf_type]
    return cmd


def _size(path: Path) -> str:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return f"{sum(p.stat().st_size for p in files) / 1e6:,.1f} MB"
