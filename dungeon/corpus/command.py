"""``dungeon check-corpus``: check a corpus before training on it.

    dungeon check-corpus                      # the project's stories/: every rule
    dungeon check-corpus my-stories/          # any folder, file or dataset fine-tuning reads
    dungeon check-corpus --data a/ --data b.jsonl:2 --separator '***' --val-fraction 0.1

It takes the sources and the data flags of ``dungeon finetune`` (the same Settings fields,
the same defaults) and prints the statistics fine-tuning prints, with the stories it would
hold out. Exit code 1 when there is a problem, each on one line of stderr.
"""

from __future__ import annotations

import argparse
import sys

from dungeon.training.settings import DATA_FLAGS, Settings, settings_parser


def add_check_corpus_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "check-corpus",
        help="check a corpus (the stories/ folder, or any source finetune reads) and print "
        "statistics",
        description="Check a corpus as fine-tuning would read it, and print its statistics.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "folder",
        nargs="*",
        metavar="SOURCE",
        help="sources, as --data takes them (default: stories)",
    )
    settings_parser(parser=p, only=DATA_FLAGS)
    p.add_argument("--no-tokens", action="store_true", help="skip the GPT-2 token count")
    p.set_defaults(func=cmd_check_corpus)
    return p


def cmd_check_corpus(args: argparse.Namespace) -> int:
    from dungeon.corpus.check import check_sources

    settings = Settings(
        data=[*args.folder, *(args.data or [])] or None,
        **{k: getattr(args, k) for k in DATA_FLAGS if k != "data"},
    )
    count = None
    if not args.no_tokens:
        try:
            from dungeon.tiny import load_gpt2_tokenizer

            tok = load_gpt2_tokenizer()
            tok.model_max_length = 10**9  # counting only: stories may exceed GPT-2's window
            count = lambda text: len(tok(text).input_ids)  # noqa: E731
        except Exception as err:  # the tokenizer is optional here
            print(f"(no token count: {err})", file=sys.stderr)
    try:
        options = settings.read_options()
    except ValueError as err:
        print(f"dungeon: {err}", file=sys.stderr)
        return 2
    report = check_sources(
        settings.data, options=options, val_fraction=settings.val_fraction,
        val_list=settings.val_list, seed=settings.seed, count_tokens=count,
        block_size=settings.block_size,
    )  # fmt: skip
    where = " ".join(settings.data)
    table = report.table()
    if table:
        print(table)
    for problem in report.problems:
        print(problem, file=sys.stderr)
    if report.problems:
        print(f"{len(report.problems)} problem(s) in {where}", file=sys.stderr)
        return 1
    stories = len(report.corpus.stories) if report.corpus else len(report.project.stories)
    print(f"{where}: {stories} stories, all checks passed")
    return 0
