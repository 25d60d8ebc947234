"""The ``dungeon`` command (also ``python -m dungeon``).

    dungeon play [--scenario NAME | --premise FILE | --load NAME] [--model M] [--seed N] ...
    dungeon check-corpus [SOURCE ...] [--data SOURCE[:WEIGHT]] ...   (same data flags as finetune)
    dungeon finetune ...        (see ``dungeon finetune --help``; the flags of scripts/finetune.py)
    dungeon eval ...            (see ``dungeon eval --help``)
    dungeon serve [--model M] [--host H] [--port P] [--api-key KEY] [--saves DIR] ...
    dungeon export RUN --merged OUT | --gguf OUT.gguf   (see docs/export.md)

Configuration is read here, at the entry point, and passed down as dataclasses.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dungeon.config import (
    DEFAULT_MODEL,
    ConfigError,
    config_file,
    merge,
    option_flags,
    read_config,
)
from dungeon.corpus.command import add_check_corpus_parser
from dungeon.errors import ModelNotFoundError, UnsafeModelError
from dungeon.evaluation.command import add_eval_parser
from dungeon.export.command import add_export_parser
from dungeon.picker import PICKERS
from dungeon.saves import SaveError
from dungeon.scenarios import ScenarioError
from dungeon.serve.command import add_serve_parser
from dungeon.training.command import add_finetune_parser

# Problems whose message says what to do: printed without a traceback wall.
USER_ERRORS = (ModelNotFoundError, UnsafeModelError, ScenarioError, SaveError)


def _play_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "play",
        help="play an adventure in the terminal",
        description=(
            "Play an adventure. With no --scenario, --premise or --load, a start menu offers "
            "to continue the last game, pick a built-in scenario or type a premise. When stdin "
            "is not a terminal, one action or command is read per line and plain text is "
            "printed (no menu, no colours)."
        ),
        epilog=(
            f"Defaults for these options can be kept in {config_file()} (TOML, e.g. "
            f'model = "{DEFAULT_MODEL}", temperature = 0.7, color = false). Colours are also off '
            "when the NO_COLOR environment variable is set. Saves, input history and the error "
            "log live in the user data folder."
        ),
    )
    g = p.add_argument_group("what to play")
    start = g.add_mutually_exclusive_group()
    start.add_argument(
        "--scenario", help="a built-in scenario (fantasy, mystery, ...) or a .json file"
    )
    start.add_argument("--premise", type=Path, metavar="FILE", help="start from the text in FILE")
    start.add_argument("--load", metavar="NAME", help="continue the saved game NAME")
    g.add_argument(
        "--seed", type=int, help="seed for the scenario and every turn (same seed, same story)"
    )

    m = p.add_argument_group("model")
    m.add_argument(
        "--model",
        help=f"'{DEFAULT_MODEL}' (built-in, offline; the default), a local model folder, a hub id "
        "such as gpt2 (needs the hub), or 'fake' (no model, for trying the interface)",
    )
    a = m.add_mutually_exclusive_group()
    a.add_argument("--adapter", metavar="DIR", help="a LoRA adapter folder to apply to the model")
    a.add_argument(
        "--no-adapter",
        action="store_const",
        const="none",
        dest="adapter",
        help="play the raw base model, without the shipped adventure adapter",
    )
    m.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 or mps")
    m.add_argument("--dtype", help="auto (default), float32, bfloat16 or float16")
    m.add_argument(
        "--quantize",
        choices=["auto", "int4", "int8", "none"],
        help="weight-only quantized decode on the CPU (default auto: 4-bit for the built-in "
        "model where this CPU's int4 kernel is faster, else full precision)",
    )
    m.add_argument(
        "--threads",
        type=int,
        help="CPU threads for the model (default: 1 on machines with 2 cores or fewer, else torch's)",
    )
    m.add_argument(
        "--allow-pickle",
        action="store_const",
        const=True,
        dest="allow_pickle",
        help="load pickle-only weights (pytorch_model.bin); only for models you trust",
    )
    m.add_argument(
        "--tokenizer",
        metavar="PATH_OR_NAME",
        help="with --model http://host:port/v1 (a model on an inference server): a local "
        "tokenizer for its model (a folder, smollm2-135m, gpt2, or 'estimate'); default: the "
        "server's tokenize endpoint",
    )

    s = p.add_argument_group("sampling (also changeable in play with /set)")
    s.add_argument(
        "--temperature",
        type=float,
        help="randomness, 0 (greedy) to 5; default: the model's recommendation (its "
        "dungeon.json), else 0.8",
    )
    s.add_argument("--top-k", type=int, dest="top_k", help="keep the k likeliest tokens (0 = off)")
    s.add_argument("--top-p", type=float, dest="top_p", help="nucleus sampling mass, (0, 1]")
    s.add_argument(
        "--typical-p", type=float, dest="typical_p", help="typical sampling mass, (0, 1]"
    )
    s.add_argument(
        "--repetition-penalty", type=float, dest="repetition_penalty", help="1.0 = off; default 1.1"
    )
    s.add_argument(
        "--max-new-tokens", type=int, dest="max_new_tokens", help="longest response, in tokens"
    )
    s.add_argument(
        "--min-new-tokens", type=int, dest="min_new_tokens", help="shortest response, in tokens"
    )
    s.add_argument(
        "--ban-marker",
        action="store_const",
        const=True,
        dest="ban_marker",
        help="forbid the model from starting a player line at all",
    )
    s.add_argument(
        "--guidance",
        type=float,
        help="action guidance, 0 (off) to 5: lean each response toward what the action asked "
        "for (a second cache row per response); default: the model's recommendation, else 0",
    )
    s.add_argument(
        "--context-budget", type=int, dest="context_budget", help="prompt tokens (default 1024)"
    )
    s.add_argument(
        "--candidates",
        type=int,
        help="responses written per turn in one batch, 1-8 (default 1); Alt-Left/Right or "
        "/choose N flips between them, /retry shows the next",
    )
    s.add_argument(
        "--no-state",
        action="store_const",
        const=False,
        dest="state",
        help="keep the world's state (inventory, condition, people, places) out of the "
        "model's context; /state still shows it",
    )
    s.add_argument(
        "--picker",
        choices=PICKERS,
        help="which of several candidates is shown: 'adherence' (default: the one the model "
        "finds most tied to your action; with a remote model, as 'story'), 'story' (the one "
        "that takes up the action's words without repeating itself) or 'first' (as written)",
    )

    p.add_argument(
        "--no-color", action="store_const", const=False, dest="color", help="plain text, no colours"
    )
    p.add_argument("--config", type=Path, help=f"config file to read (default {config_file()})")
    return p


def _options(args: argparse.Namespace):
    config = read_config(args.config) if args.config else read_config()
    flags = option_flags(args)
    flags["premise_file"] = args.premise
    if os.environ.get("NO_COLOR"):
        flags["color"] = False
    return merge(config, flags)


def cmd_play(args: argparse.Namespace) -> int:
    from dungeon.piped import run_piped

    opts = _options(args)
    if not sys.stdin.isatty():
        return run_piped(opts)
    from dungeon.ui import run_interactive

    return run_interactive(opts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dungeon",
        description="A text-adventure engine on a fine-tuned language model.",
    )
    from dungeon import __version__

    parser.add_argument("--version", action="version", version=f"dungeon {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _play_parser(sub).set_defaults(func=cmd_play)
    add_check_corpus_parser(sub)
    add_finetune_parser(sub)
    add_eval_parser(sub)
    add_export_parser(sub)
    add_serve_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ConfigError, *USER_ERRORS) as err:
        print(f"dungeon: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
