"""``dungeon eval``: how good is a model at being a text adventure?

Two measurements, for any model, adapter or base:

1. Held-out perplexity of the validation stories (``stories/validation.txt``): the text is
   exactly what play shows the model (dungeon.format), scored token by token.
2. An automated playtest through the Game API: the scripted games shipped in
   ``dungeon/playtests/`` (a premise and 15 player inputs each). Every turn records whether
   the response writes a player action (impersonation), is empty, ends mid-sentence, repeats
   a recent turn (a loop), slips out of the second person, its distinct-2 ratio and latency.

    dungeon eval [--model smollm2-135m] [--adapter DIR | --no-adapter] [--seed 0]
    dungeon eval --rescore REPORT    # measure a saved --report again, with no model

A summary table, then one JSON line. The same seed gives the same figures (latency aside).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from dungeon.builtin_model import BUILTIN_MODEL
from dungeon.cleanup import loop_score
from dungeon.commands import parse_input
from dungeon.context import ContextSettings
from dungeon.corpus.check import first_person_slip
from dungeon.corpus.sources import find_stories
from dungeon.format import read_story_file
from dungeon.game import Game, GameSettings
from dungeon.generator import Generator, Scorer
from dungeon.story import Story

# A loop is judged as Game judges it: against the last few responses, by shared trigrams.
LOOP_THRESHOLD = GameSettings.loop_threshold
RECENT = GameSettings.loop_window
PERPLEXITY_WINDOW = ContextSettings.budget
"""Tokens per perplexity window: play's default context budget."""
# The response acting for the player: a marker (at a line start, or run on after other text:
# "...the door.> You run"), or narrating the player's next choice.
_IMPERSONATION = re.compile(
    r"(^|\n)\s*>|>\s*You\b|\bYou (then )?(decide|choose|proceed) to\b|\bYou (say|ask|reply)\s*,?\s*[\"“]",
)


@dataclass(frozen=True)
class Playtest:
    name: str
    genre: str
    premise: str
    inputs: list[str]


def load_playtests(folder: Path | None = None) -> list[Playtest]:
    """The shipped playtest scripts (or those in ``folder``), sorted by name."""
    if folder is not None:
        entries = [
            (p.name, p.read_text(encoding="utf-8")) for p in sorted(Path(folder).glob("*.json"))
        ]
    else:
        base = resources.files("dungeon") / "playtests"
        entries = [
            (e.name, e.read_text(encoding="utf-8"))
            for e in sorted(base.iterdir(), key=lambda e: e.name)
            if e.name.endswith(".json")
        ]
    tests = []
    for name, text in entries:
        try:
            data = json.loads(text)
            tests.append(
                Playtest(data["name"], data.get("genre", ""), data["premise"], list(data["inputs"]))
            )
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"playtest {name}: not a playtest script ({err})") from None
    return tests


# --- per-turn measures (pure) ----------------------------------------------------------------


def impersonates(text: str) -> bool:
    return bool(_IMPERSONATION.search(text))


def incomplete(text: str) -> bool:
    stripped = text.rstrip()
    return bool(stripped) and not re.search(r"[.!?…][\"'”’)\]]*$", stripped)


def second_person_slip(text: str) -> bool:
    return first_person_slip(text)


def distinct_2(text: str) -> float:
    words = re.findall(r"\w+", text.lower())
    pairs = list(zip(words, words[1:]))
    return len(set(pairs)) / len(pairs) if pairs else 0.0


@dataclass
class TurnRecord:
    playtest: str
    index: int
    input: str
    response: str
    impersonation: bool
    empty: bool
    incomplete: bool
    loop: bool
    slip: bool
    distinct2: float
    seconds: float


@dataclass
class PlaytestResult:
    turns: list[TurnRecord] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)

    def rate(self, attr: str) -> float:
        return sum(getattr(t, attr) for t in self.turns) / len(self.turns) if self.turns else 0.0

    def summary(self) -> dict:
        secs = [t.seconds for t in self.turns]
        return {
            "turns": len(self.turns),
            "crashes": len(self.crashes),
            "impersonation_rate": round(self.rate("impersonation"), 4),
            "empty_rate": round(self.rate("empty"), 4),
            "loop_rate": round(self.rate("loop"), 4),
            "incomplete_rate": round(self.rate("incomplete"), 4),
            "second_person_slip_rate": round(self.rate("slip"), 4),
            "distinct_2": round(statistics.fmean(t.distinct2 for t in self.turns), 4)
            if self.turns
            else 0.0,
            "median_turn_s": round(statistics.median(secs), 3) if secs else 0.0,
        }


def measure_turn(
    playtest: str, index: int, raw: str, text: str, recent: list[str], seconds: float
) -> TurnRecord:
    """Every measure of one response (``recent``: the responses before it in its game)."""
    return TurnRecord(
        playtest,
        index,
        raw,
        text,
        impersonation=impersonates(text),
        empty=not text.strip(),
        incomplete=incomplete(text),
        loop=loop_score(text, recent) >= LOOP_THRESHOLD,
        slip=second_person_slip(text),
        distinct2=distinct_2(text),
        seconds=seconds,
    )


def rescore(lines: list[str]) -> PlaytestResult:
    """Measure the turns of a saved report (``--report``) again, with this version's measures.

    The responses, inputs and latencies come from the report; no model runs. Crashes are not
    in a report, so the result has none."""
    result = PlaytestResult()
    history: dict[str, list[str]] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name, text = row["playtest"], row["response"]
            record = measure_turn(
                name,
                row["index"],
                row["input"],
                text,
                history.get(name, [])[-RECENT:],
                row["seconds"],
            )
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"report line {n}: not a turn record ({err})") from None
        history.setdefault(name, []).append(text)
        result.turns.append(record)
    return result


def run_playtests(
    generator: Generator,
    playtests: list[Playtest],
    *,
    seed: int = 0,
    settings: GameSettings | None = None,
    progress=None,
    on_turn=None,
) -> PlaytestResult:
    """Play every script through the Game API and record each turn (``on_turn(record)`` as
    each one is played, so a long run's report survives an interruption)."""
    result = PlaytestResult()
    for k, test in enumerate(playtests):
        game = Game(generator, Story(premise=test.premise, seed=seed * 1000 + k), settings)
        for i, raw in enumerate(test.inputs):
            parsed = parse_input(raw)
            mode = parsed.mode if parsed.kind == "action" else "do"
            recent = [t.response for t in game.story.turns[-RECENT:]]
            started = time.perf_counter()
            try:
                turn = game.act(parsed.text, mode)
            except Exception as err:  # a crash is a finding, not the end of the eval
                result.crashes.append(f"{test.name} turn {i + 1}: {type(err).__name__}: {err}")
                continue
            seconds = time.perf_counter() - started
            record = measure_turn(test.name, i + 1, raw, turn.response, recent, seconds)
            result.turns.append(record)
            if on_turn:
                on_turn(record)
            if progress:
                progress(f"{test.name} {i + 1}/{len(test.inputs)}")
    return result


# --- perplexity ------------------------------------------------------------------------------


def validation_texts(stories: Path) -> list[str]:
    """The model text of every held-out story of ``stories`` (dungeon.corpus.sources)."""
    files = find_stories(stories)
    if files.problems:
        raise ValueError("\n".join(files.problems))
    if not files.held_out:
        raise ValueError(
            f"{stories}/validation.txt lists no stories: pass --stories with a corpus folder "
            "that has one (or --no-perplexity)"
        )
    return [read_story_file(path).model_text() for path in files.held_out]


def perplexity(scorer: Scorer, texts: list[str], *, window: int = PERPLEXITY_WINDOW) -> float:
    """Token-weighted perplexity of ``texts``, each followed by the end-of-text token.

    Texts longer than ``window`` tokens are read with a sliding window (each token scored
    once, with at least half a window of context: see Scorer.token_logprobs)."""
    logprobs = [
        lp for text in texts for lp in scorer.token_logprobs("", text, end=True, window=window)
    ]
    if not logprobs:
        raise ValueError("no tokens to score: the texts are empty")
    return math.exp(-math.fsum(logprobs) / len(logprobs))


# --- command line ----------------------------------------------------------------------------


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="measure a model: held-out perplexity and a scripted playtest")
    p.add_argument("--model", default=BUILTIN_MODEL, help="model (built-in name, folder or hub id)")
    a = p.add_mutually_exclusive_group()
    a.add_argument("--adapter", help="LoRA adapter folder")
    a.add_argument(
        "--no-adapter", action="store_const", const="none", dest="adapter", help="the raw base"
    )
    p.add_argument(
        "--stories", type=Path, default=Path("stories"), help="corpus with validation.txt"
    )
    p.add_argument("--playtests", type=Path, help="folder of playtest scripts (default: shipped)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="play only the first N scripts (smoke runs)")
    p.add_argument("--no-perplexity", action="store_true")
    p.add_argument("--no-playtest", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--report", type=Path, help="also write every turn to this JSONL file")
    p.add_argument(
        "--rescore",
        type=Path,
        metavar="REPORT",
        help="no model: measure the turns of a saved --report again and print the summary",
    )
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    if args.rescore:
        try:
            result = rescore(args.rescore.read_text(encoding="utf-8").splitlines())
        except (ValueError, OSError) as err:
            print(f"dungeon eval: {err}", file=sys.stderr)
            return 2
        print_figures({"report": str(args.rescore), **result.summary()})
        return 0
    from dungeon.config import PlayOptions
    from dungeon.startup import build_generator  # picks the threads as play does

    try:  # bad scripts or a bad corpus fail before the model loads
        tests = [] if args.no_playtest else load_playtests(args.playtests)[: args.limit]
        texts = [] if args.no_perplexity else validation_texts(args.stories)
    except (ValueError, OSError) as err:
        print(f"dungeon eval: {err}", file=sys.stderr)
        return 2
    opts = PlayOptions(model=args.model, adapter=args.adapter, device=args.device, dtype=args.dtype)
    started = time.perf_counter()
    generator = build_generator(opts)
    load_s = time.perf_counter() - started
    figures: dict = {
        "model": getattr(generator, "name", args.model),
        "seed": args.seed,
        "load_s": round(load_s, 2),
    }
    if not args.no_perplexity:
        if isinstance(generator, Scorer):
            # Play's context budget, or the model's own window where that is shorter.
            window = min(PERPLEXITY_WINDOW, generator.context_window)
            figures["perplexity"] = round(perplexity(generator, texts, window=window), 3)
        else:
            print("(no perplexity: this backend cannot score text)", file=sys.stderr)
            figures["perplexity"] = None
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
                progress=lambda s: print(f"\r{s:<40}", end="", file=sys.stderr),
                on_turn=write_turn,
            )
        print(file=sys.stderr)
        figures.update(result.summary())
        for crash in result.crashes:
            print(f"crash: {crash}", file=sys.stderr)
    print_figures(figures)
    return 0


def print_figures(figures: dict) -> None:
    """The summary table, then the figures as one JSON line."""
    print(f"{'measure':<26}{'value':>12}")
    for k, v in figures.items():
        if k not in ("model", "report"):
            print(f"{k:<26}{v!s:>12}")
    print(json.dumps(figures))
