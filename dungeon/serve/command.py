"""The ``dungeon serve`` subcommand: its arguments, and start-up through dungeon.startup.

    dungeon serve [--model M --adapter DIR --quantize Q] [--host 127.0.0.1] [--port 5001]
                  [--api-key KEY] [--saves DIR] [--cors ORIGIN] [--max-queue N]

Only argparse is imported here; the web framework loads when the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dungeon.config import DEFAULT_MODEL, config_file, merge, option_flags, read_config
from dungeon.picker import PICKERS

from .settings import DEFAULT_HOST, DEFAULT_PORT


def add_serve_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "serve",
        help="serve the engine over HTTP: game API, KoboldAI and OpenAI APIs, a browser page",
        description=(
            "One process, one loaded model, many games. Open the printed address in a "
            "browser to play, point SillyTavern or KoboldAI Lite at it, or call the game API "
            "from any language. Every game is saved as it is played (in --saves)."
        ),
        epilog=f"Model defaults are read from {config_file()} as for `dungeon play`. "
        "See docs/serve.md for every endpoint.",
    )
    net = p.add_argument_group("network")
    net.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}: this machine only; any other "
        "address needs --api-key)",
    )
    net.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    net.add_argument(
        "--api-key",
        dest="api_key",
        default=os.environ.get("DUNGEON_API_KEY") or None,
        help="require this key on every API request (Authorization: Bearer KEY or X-Api-Key); "
        "default: the DUNGEON_API_KEY environment variable",
    )
    net.add_argument(
        "--cors",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let web pages from ORIGIN (e.g. https://lite.koboldai.net, or '*') call the API "
        "from a browser; repeatable (default: off)",
    )
    net.add_argument(
        "--max-queue",
        dest="max_queue",
        type=int,
        default=16,
        help="requests that may wait for the model before 503 (default 16)",
    )
    net.add_argument(
        "--batch-size",
        dest="batch_size",
        type=int,
        default=8,
        help="turns of different games decoded together (default 8; 1: one at a time)",
    )
    net.add_argument(
        "--kv-cache-mb",
        dest="kv_cache_mb",
        type=float,
        default=256.0,
        help="memory for the games' key/value caches kept between turns (default 256 MB)",
    )
    p.add_argument(
        "--saves",
        type=Path,
        metavar="DIR",
        help="folder for the games' saves (default: the user data folder, as dungeon play)",
    )

    m = p.add_argument_group("model (as for dungeon play)")
    m.add_argument(
        "--model",
        help=f"'{DEFAULT_MODEL}' (built-in, the default), a model folder, a hub id, 'fake', or "
        "an inference server's address (http://host:port/v1)",
    )
    a = m.add_mutually_exclusive_group()
    a.add_argument("--adapter", metavar="DIR", help="a LoRA adapter folder")
    a.add_argument("--no-adapter", action="store_const", const="none", dest="adapter")
    m.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 or mps")
    m.add_argument("--dtype", help="auto (default), float32, bfloat16 or float16")
    m.add_argument("--quantize", choices=["auto", "int4", "int8", "none"])
    m.add_argument("--threads", type=int, help="CPU threads for the model")
    m.add_argument("--allow-pickle", action="store_const", const=True, dest="allow_pickle")
    m.add_argument(
        "--tokenizer",
        metavar="PATH_OR_NAME",
        help="with --model http://host:port/v1: a local tokenizer for the server's model",
    )
    s = m.add_argument_group("game defaults")
    s.add_argument("--temperature", type=float)
    s.add_argument("--top-k", type=int, dest="top_k")
    s.add_argument("--top-p", type=float, dest="top_p")
    s.add_argument("--typical-p", type=float, dest="typical_p")
    s.add_argument("--repetition-penalty", type=float, dest="repetition_penalty")
    s.add_argument("--max-new-tokens", type=int, dest="max_new_tokens")
    s.add_argument("--min-new-tokens", type=int, dest="min_new_tokens")
    s.add_argument("--ban-marker", action="store_const", const=True, dest="ban_marker")
    s.add_argument(
        "--guidance",
        type=float,
        help="action guidance for new games, 0 (off) to 5 (default: the model's)",
    )
    s.add_argument("--context-budget", type=int, dest="context_budget")
    s.add_argument("--candidates", type=int, help="responses per turn for new games (1-8)")
    s.add_argument(
        "--picker",
        choices=PICKERS,
        help="which of a turn's candidates a game shows first: 'adherence' (default; the "
        "server's batching backend cannot score, so it picks as 'story'), 'story' or 'first'",
    )
    p.add_argument("--config", type=Path, help=f"config file to read (default {config_file()})")
    p.set_defaults(func=cmd_serve)
    return p


def cmd_serve(args: argparse.Namespace) -> int:
    from dungeon.startup import build_generator

    from .settings import ServeSettings

    config = read_config(args.config) if args.config else read_config()
    opts = merge(config, option_flags(args))
    try:
        settings = ServeSettings(
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            saves=args.saves,
            cors=tuple(args.cors),
            max_queue=args.max_queue,
            batch_size=args.batch_size,
            kv_cache_mb=args.kv_cache_mb,
        )
    except ValueError as err:
        print(f"dungeon serve: {err}", file=sys.stderr)
        return 2
    print(f"dungeon serve: loading {opts.model} ...", file=sys.stderr, flush=True)
    generator = build_generator(opts)
    from .app import run_server

    try:
        return run_server(generator, opts, settings)
    except OSError as err:
        print(f"dungeon serve: {err}", file=sys.stderr)
        return 2
