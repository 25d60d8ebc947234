"""Compare finished fine-tuning runs: one table row per model folder, from its dungeon.json.

    python scripts/compare_runs.py runs/search/*          # a markdown table, then a JSON line
    python scripts/compare_runs.py runs/a runs/b --sort perplexity

Each row names the recipe (LoRA rank and targets or full, learning rate, steps and the epochs
they cover), the tokens trained on, the wall time and speed, and the held-out perplexity before
and after training (the trainer's own figure: the held-out stories in blocks of the run's block
size, so rows compare only when the runs share their held-out stories and block size, which the
table checks). Folders that are not finished runs are listed as skipped, with why.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

TARGET_SHORT = {
    "q_proj": "q",
    "k_proj": "k",
    "v_proj": "v",
    "o_proj": "o",
    "gate_proj": "gate",
    "up_proj": "up",
    "down_proj": "down",
}


@dataclass(frozen=True)
class Row:
    run: str
    kind: str
    lr: float
    steps: int
    epochs: float
    train_tokens: int
    wall_min: float
    tokens_per_s: float
    perplexity_before: float
    perplexity_after: float
    best_step: int
    held_out: str

    @property
    def change(self) -> float:
        return self.perplexity_after / self.perplexity_before - 1


def describe(training: dict) -> str:
    """The recipe in a few words: "LoRA r16 (all 7)", "LoRA r16 (q,k,v,o)", "full"."""
    if training.get("full"):
        return "full" + (" (from scratch)" if training.get("from_scratch") else "")
    targets = sorted(training.get("lora_targets") or [])
    names = ",".join(TARGET_SHORT.get(t, t) for t in targets)
    if set(targets) == set(TARGET_SHORT):
        names = "all 7"
    return f"LoRA r{training['lora_r']} a{training['lora_alpha']} ({names})"


def read_row(folder: Path) -> Row:
    """The table row of a finished run; ValueError says why a folder is not one."""
    meta_path = folder / "dungeon.json"
    if not meta_path.is_file():
        raise ValueError("no dungeon.json (not a finished run: still training, or failed)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    training, results = meta.get("training") or {}, meta.get("results") or {}
    if "perplexity_after" not in results:
        raise ValueError("dungeon.json has no results")
    steps = int(results["steps"])
    per_epoch = training.get("steps_per_epoch") or 0
    return Row(
        run=folder.name,
        kind=describe(training),
        lr=float(training.get("peak_lr") or training["lr"]),
        steps=steps,
        epochs=round(steps / per_epoch, 2) if per_epoch else math.nan,
        train_tokens=int(results.get("train_tokens", 0)),
        wall_min=round(results.get("wall_seconds", math.nan) / 60, 1),
        tokens_per_s=round(results.get("train_tokens_per_s", math.nan), 1),
        perplexity_before=round(results["perplexity_before"], 2),
        perplexity_after=round(results["perplexity_after"], 2),
        best_step=int(results.get("best_step", steps)),
        held_out=f"{len(training.get('val_stories') or [])} stories, blocks of "
        f"{training.get('block_size')}",
    )


def table(rows: list[Row]) -> str:
    head = (
        "| run | recipe | peak lr | steps (epochs) | tokens | wall (min) | tokens/s "
        "| perplexity before | after | change | best step |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r.run} | {r.kind} | {r.lr:g} | {r.steps} ({r.epochs:g}) | {r.train_tokens:,} "
            f"| {r.wall_min:g} | {r.tokens_per_s:g} | {r.perplexity_before:.2f} "
            f"| {r.perplexity_after:.2f} | {r.change:+.1%} | {r.best_step} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders")
    parser.add_argument(
        "--sort", choices=("name", "perplexity"), default="name", help="row order (default: name)"
    )
    args = parser.parse_args(argv)
    rows, skipped = [], []
    for folder in args.runs:
        try:
            rows.append(read_row(folder))
        except (ValueError, KeyError, json.JSONDecodeError) as err:
            skipped.append(f"{folder}: {err}")
    if not rows:
        print("no finished runs among: " + ", ".join(map(str, args.runs)), file=sys.stderr)
        return 2
    key = (lambda r: r.perplexity_after) if args.sort == "perplexity" else (lambda r: r.run)
    rows.sort(key=key)
    print(table(rows))
    for line in skipped:
        print(f"skipped {line}")
    if len({r.held_out for r in rows}) > 1:
        print(
            "warning: the runs were held out on different stories or block sizes; "
            "their perplexities do not compare"
        )
    best = min(rows, key=lambda r: r.perplexity_after)
    print(json.dumps({"runs": [asdict(r) for r in rows], "best": best.run}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
