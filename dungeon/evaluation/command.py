"""``dungeon eval``: the command line over the evaluation package.

    dungeon eval [--model smollm2-135m] [--adapter DIR | --no-adapter] [--seed 0]
    dungeon eval --continuity-only        # only the continuity probes (a quicker run)
    dungeon eval --judge MODEL | --no-adherence
    dungeon eval --temperature 0.5        # play settings: --candidates, --picker, --top-p, ...
    dungeon eval --rescore REPORT         # measure a saved --report again, with no model

A summary table, then one JSON line; the continuity probes that failed, and why, on stderr.
The same seed gives the same figures (latency aside).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from dungeon.builtin_model import BUILTIN_MODEL
from dungeon.config import merge
from dungeon.evaluation.measures import PlaytestResult, TurnRecord
from dungeon.evaluation.perplexity import PERPLEXITY_WINDOW, held_out_texts, perplexity
from dungeon.evaluation.playtests import load_playtests, rescore, run_playtests
from dungeon.generator import FakeGenerator, Scorer
from dungeon.picker import PICKERS
from dungeon.story import Story

PLAY_FLAGS = ("candidates", "picker", "state", "context_budget")
"""The play settings eval takes as flags (and records in its figures); the rest are play's
defaults, so eval plays as ``dungeon play`` does."""
SAMPLING_FLAGS = ("temperature", "top_p", "repetition_penalty", "guidance")
"""The sampling settings eval takes as flags, by play's names; the others (and these where
not given) are the model's recommendation over SamplingSettings' defaults, as in play. The
figures record every sampling setting in effect."""
DEFAULT_JUDGE = BUILTIN_MODEL
"""The adherence judge: the raw built-in base, loaded without any adapter."""


def add_eval_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="measure a model: held-out perplexity, scripted playtests, action adherence and "
        "continuity probes",
    )
    p.add_argument("--model", default=BUILTIN_MODEL, help="model (built-in name, folder or hub id)")
    a = p.add_mutually_exclusive_group()
    a.add_argument("--adapter", help="LoRA adapter folder")
    a.add_argument(
        "--no-adapter", action="store_const", const="none", dest="adapter", help="the raw base"
    )
    p.add_argument(
        "--stories",
        type=Path,
        default=Path("stories"),
        help="corpus with validation lists (validation.txt: perplexity; the others: perplexity_new)",
    )
    p.add_argument("--playtests", type=Path, help="folder of playtest scripts (default: shipped)")
    p.add_argument(
        "--continuity-only",
        action="store_true",
        help="play only the continuity probes (the scripts with checks)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="play only the first N scripts (smoke runs)")
    p.add_argument("--no-perplexity", action="store_true")
    p.add_argument("--no-playtest", action="store_true")
    j = p.add_mutually_exclusive_group()
    j.add_argument(
        "--judge",
        default=DEFAULT_JUDGE,
        metavar="MODEL",
        help=f"the model that scores action adherence, loaded without adapter (default "
        f"{DEFAULT_JUDGE}, the same judge for every model under test; 'fake' for a toy one)",
    )
    j.add_argument("--no-adherence", action="store_true", help="skip action adherence")
    g = p.add_argument_group("play settings (default: play's own, dungeon.config.PlayOptions)")
    g.add_argument("--candidates", type=int, help="responses written per turn, 1-8")
    g.add_argument("--picker", choices=PICKERS, help="which candidate is shown")
    g.add_argument(
        "--no-state",
        action="store_const",
        const=False,
        dest="state",
        help="leave the world's state out of the context",
    )
    g.add_argument(
        "--context-budget", type=int, dest="context_budget", help="prompt tokens (play: 1024)"
    )
    g.add_argument(
        "--temperature",
        type=float,
        help="randomness, 0 (greedy) to 5 (default: the model's recommendation, else 0.8)",
    )
    g.add_argument("--top-p", type=float, dest="top_p", help="nucleus sampling mass, (0, 1]")
    g.add_argument("--repetition-penalty", type=float, dest="repetition_penalty", help="1.0 = off")
    g.add_argument(
        "--guidance", type=float, help="action guidance, 0 (off) to 5 (default: the model's)"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--report", type=Path, help="also write every turn to this JSONL file")
    p.add_argument(
        "--rescore",
        type=Path,
        metavar="REPORT",
        help="no model: measure the turns of a saved --report again and print the summary "
        "(continuity from the --playtests scripts, adherence as the report has it)",
    )
    p.set_defaults(func=cmd_eval)


def load_judge(name: str, *, device: str = "auto", dtype: str = "auto") -> Scorer:
    """The adherence judge: ``name`` without any adapter, and dense weights (no quantized
    decode), so its scores do not depend on the model under test or on this CPU's kernels."""
    if name == "fake":
        return FakeGenerator(name="fake")
    from dungeon.models import load_generator

    return load_generator(name, device=device, dtype=dtype, quantize="none")


def cmd_eval(args) -> int:
    from dungeon.startup import build_generator, make_game  # as play does

    started = time.perf_counter()
    flags = {k: getattr(args, k) for k in (*PLAY_FLAGS, *SAMPLING_FLAGS)}
    flags.update(model=args.model, adapter=args.adapter, device=args.device, dtype=args.dtype)
    try:  # bad scripts, a bad report, a bad corpus or bad settings fail before the model loads
        opts = merge({}, flags)  # no config file: eval's figures depend on its flags alone
        if args.rescore:
            lines = args.rescore.read_text(encoding="utf-8").splitlines()
            result = rescore(lines, load_playtests(args.playtests))
        else:
            tests = [] if args.no_playtest else load_playtests(args.playtests)
            if args.continuity_only:
                tests = [t for t in tests if t.checks]
            tests = tests[: args.limit]
            fixed, new = ([], []) if args.no_perplexity else held_out_texts(args.stories)
            make_game(FakeGenerator(), Story(premise="You wait."), opts, {})  # checks settings
    except (ValueError, OSError) as err:
        print(f"dungeon eval: {err}", file=sys.stderr)
        return 2
    if args.rescore:
        print_failed_probes(result)
        print_figures({"report": str(args.rescore), **result.summary()})
        return 0
    loading = time.perf_counter()
    generator = build_generator(opts)
    load_s = time.perf_counter() - loading
    figures: dict = {
        "model": getattr(generator, "name", args.model),
        "seed": args.seed,
        "load_s": round(load_s, 2),
        **{k: getattr(opts, k) for k in PLAY_FLAGS},
        "sampling": opts.sampling.to_dict(),  # in effect: the flags over the model's advice
    }
    judge = None
    if not args.no_playtest and not args.no_adherence:  # loaded now: a missing judge fails fast
        judge = load_judge(args.judge, device=args.device, dtype=args.dtype)
        figures["judge"] = getattr(judge, "name", args.judge)
    if not args.no_perplexity:
        if isinstance(generator, Scorer):
            # Play's context budget, or the model's own window where that is shorter.
            window = min(PERPLEXITY_WINDOW, generator.context_window)
            for key, texts in (("perplexity", fixed), ("perplexity_new", new)):
                print(f"{key}: {len(texts)} held-out stories", file=sys.stderr)
                figures[key] = (
                    round(perplexity(generator, texts, window=window), 3) if texts else None
                )
        else:
            print("(no perplexity: this backend cannot score text)", file=sys.stderr)
            figures["perplexity"] = figures["perplexity_new"] = None
    if not args.no_playtest:
        with contextlib.ExitStack() as stack:
            report = None
            if args.report:
                report = stack.enter_context(open(args.report, "w", encoding="utf-8"))

            def write_turn(record: TurnRecord) -> None:
                if report:
                    report.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")
                    report.flush()

            result = run_playtests(
                generator,
                tests,
                seed=args.seed,
                judge=judge,
                new_game=lambda gen, story: make_game(gen, story, opts, {}),
                progress=lambda s: print(f"\r{s:<48}", end="", file=sys.stderr),
                on_turn=write_turn,
            )
        print(file=sys.stderr)
        figures.update(result.summary())
        for crash in result.crashes:
            print(f"crash: {crash}", file=sys.stderr)
        print_failed_probes(result)
    figures["wall_s"] = round(time.perf_counter() - started, 1)
    print_figures(figures)
    return 0


def print_failed_probes(result: PlaytestResult) -> None:
    for probe in result.probes:
        if not probe.passed:
            print(f"continuity: {probe.name} failed: {'; '.join(probe.problems)}", file=sys.stderr)


def print_figures(figures: dict) -> None:
    """The summary table, then the figures as one JSON line."""
    print(f"{'measure':<26}{'value':>12}")
    for k, v in figures.items():
        if k == "sampling":
            for key in SAMPLING_FLAGS:
                print(f"{key:<26}{v[key]!s:>12}")
        elif k not in ("model", "judge", "report"):
            print(f"{k:<26}{v!s:>12}")
    print(json.dumps(figures))
