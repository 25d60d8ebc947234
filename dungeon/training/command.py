"""``dungeon finetune``: the fine-tuning run of dungeon.training.finetune, on PATH.

    dungeon finetune --data my-stories/ --output runs/mine     # the flags of scripts/finetune.py
    accelerate launch -m dungeon finetune ...                  # under accelerate or torchrun

Every argument after ``finetune`` goes to the run's own parser unchanged (``dungeon finetune
--help`` lists them), so the command and scripts/finetune.py take exactly the same arguments.
torch is imported only when the command runs.
"""

from __future__ import annotations

import argparse


def add_finetune_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a model on your stories (LoRA or full; --help for every flag)",
        add_help=False,  # --help belongs to the run's own parser
        prefix_chars="\0",  # every argument, flags included, is passed on as it is
    )
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_finetune)
    return p


def cmd_finetune(args: argparse.Namespace) -> int:
    from dungeon.training.finetune import main

    return main(args.argv, prog="dungeon finetune")
