"""Benchmark a scripted 20-turn game: the engine's generator against plain ``model.generate``.

    python scripts/bench_generate.py                      # smollm2-135m, both sides
    python scripts/bench_generate.py --model path/to/model --threads 2 --turns 10
    python scripts/bench_generate.py --fixed-length       # 80 new tokens every turn, both sides

Both sides play the same scripted game through dungeon.game.Game (premise, a written history
that fills the context to about 1,000 tokens, then one scripted action per turn):

- engine:   dungeon.models.load_generator (own sampling loop, key/value cache kept across turns)
- baseline: AutoModelForCausalLM.from_pretrained + model.generate, the whole context re-read
            every turn (the way a simple engine does it)

Both sides run the default configuration: the shipped adventure adapter on the built-in model
(``--adapter none`` for the raw base); the engine with ``quantize="auto"`` (``--quantize``). After
the game, the engine side also measures ``candidates_ratio`` (the wall time of 4 candidates in
one batch over the wall time of 1, on the game's last prompts) and ``perplexity_change`` (held-out
perplexity of the first validation stories with the quantized weights against the dense ones),
and reports ``quantize`` (what ran).

Each side runs in its own subprocess so that load time and peak memory (VmHWM on Linux, else
ru_maxrss, taken at the end of the game) are its own.
Prints a table, then, as the last line, one JSON object {"engine": {...}, "baseline": {...}}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dungeon.builtin_model import BUILTIN_MODEL
from dungeon.format import STOP_STRINGS
from dungeon.generator import SamplingSettings, StopHoldback

PREMISE = (
    "You are Wren, a courier of the river guild, and the last boat out of Harrowmere left "
    "without you. Rain hammers the slate roofs of the old quarter. In your satchel is a sealed "
    "letter for the Lady of the Lantern House, and three people in this city would kill to "
    "read it."
)
HISTORY = [
    (
        "You look for shelter.",
        "You duck under the awning of a shuttered chandlery. Water runs off the canvas in a steady curtain, and across the lane a tavern sign creaks on its chain: the Drowned Bell. Lamplight glows behind its thick green windows, and you can hear a fiddle playing something slow.",
    ),
    (
        "You go into the tavern.",
        "Warmth and the smell of wet wool hit you as the door swings shut. A dozen fishermen hunch over their cups. The fiddler, an old woman with a patch over one eye, nods to you without missing a note. Behind the bar, a broad man polishes a tankard and watches the door you came through.",
    ),
    (
        "You ask the barman about the Lantern House.",
        'He sets the tankard down slowly. "Up the hill, past the chapel of the Tide Mother," he says. "But the Lady doesn\'t take visitors after dark. Not since the fire." He glances at a man in a grey coat sitting alone by the hearth, then back at you. "You\'d do well to wait for morning."',
    ),
    (
        "You look at the man in the grey coat.",
        "He is young, with a thin scar along his jaw and ink stains on his fingers. A rapier leans against his chair, the hilt wrapped in black cord. He is pretending to read a broadsheet, but his eyes keep drifting to your satchel. When he sees you looking, he smiles and raises his cup.",
    ),
    (
        "You sit down at his table.",
        '"Bold," he says, folding the broadsheet. "My name is Tamsin Vale. I clerk for the harbour office, and I know a guild courier when I see one." He leans closer. "There are men waiting for you at the chapel steps. Two of them. They have been waiting since noon."',
    ),
    (
        "You ask him why he is warning you.",
        'Tamsin turns his cup in a slow circle on the table. "Because the Lady owes my family a debt, and if that letter reaches the wrong hands, the debt dies with her." He taps the table twice. "There is another way up the hill. The old drainage tunnels run under the chapel. I can show you, for a price."',
    ),
    (
        "You ask what price he wants.",
        '"A look at the seal on your letter. Nothing more. I won\'t break it." His voice is calm, but his fingers have stopped moving. Behind you, the fiddle falls silent. The barman has stopped polishing. Somewhere outside, a bell rings the hour, eleven slow strokes.',
    ),
    (
        "You show him the seal.",
        'You turn the letter so the wax catches the firelight: a lantern inside a ring of thorns. Tamsin lets out a long breath. "Then it\'s true. She\'s calling in the Thorn Compact." He stands and pulls on his gloves. "We leave now. The tunnels flood at high tide, and high tide is in an hour."',
    ),
    (
        "You ask Tamsin if he trusts the barman.",
        '"Orrin? He sold my father\'s boat to pay a card debt," Tamsin says, without lowering his voice. The barman\'s jaw tightens, but he says nothing. "He trusts whoever paid him last. Tonight that was the men on the chapel steps, I would guess." He drops two copper coins on the table, one for each of you.',
    ),
    (
        "You finish your drink.",
        "The ale is thin and sour, but it is warm, and your hands have stopped shaking. Through the green windows the rain has eased to a drizzle. Tamsin is already at the back door, holding it open with one boot. Beyond him you can see a yard of broken crates, a well with a rotten lid, and the dark mouth of a stone stair leading down.",
    ),
]
ACTIONS = [
    "You follow Tamsin out the back door.",
    "You ask him about the Thorn Compact.",
    "You light your lantern.",
    "You climb down into the tunnel.",
    "You listen for footsteps.",
    'You say "How far is it to the chapel?"',
    "You check the letter is still dry.",
    "You wade through the rising water.",
    "You search the walls for a way up.",
    "You climb the iron ladder.",
    "You push open the grate.",
    "You look around the chapel crypt.",
    "You hide behind a stone coffin.",
    "You watch the two men on the steps.",
    "You ask Tamsin what he plans to do.",
    "You draw your knife.",
    "You slip out through the side door.",
    "You run up the hill to the Lantern House.",
    "You knock on the great oak door.",
    "You hand the letter to the Lady.",
]


# --- the baseline: plain model.generate, the whole context every turn --------------------------


class BaselineGenerator:
    """The Generator protocol over ``model.generate``, with no cache kept between calls."""

    def __init__(self, model, tokenizer, settings: SamplingSettings, name: str):
        self.model, self.tokenizer, self.settings, self.name = model, tokenizer, settings, name
        self.context_window = model.config.max_position_embeddings
        self.calls: list[dict] = []

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def stream(
        self,
        prompt: str,
        *,
        seed: int,
        settings: SamplingSettings | None = None,
        stop: Sequence[str] = STOP_STRINGS,
    ) -> Iterator[str]:
        import torch
        from transformers.generation.streamers import BaseStreamer

        s = settings or self.settings
        times: list[float] = []

        class Clock(BaseStreamer):
            def __init__(self):
                self.prompt_seen = False

            def put(self, value):
                if self.prompt_seen:  # the first put is the prompt itself
                    times.append(time.perf_counter())
                self.prompt_seen = True

            def end(self):
                pass

        started = time.perf_counter()
        ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        torch.manual_seed(seed)
        sampling = s.temperature > 0
        out = self.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=sampling,
            temperature=s.temperature if sampling else None,
            top_k=s.top_k if sampling else None,
            top_p=s.top_p if sampling else None,
            typical_p=s.typical_p if sampling else None,
            repetition_penalty=s.repetition_penalty,
            max_new_tokens=s.max_new_tokens,
            min_new_tokens=s.min_new_tokens,
            # Like the engine, no stop before min_new_tokens: with min == max, no stop at all.
            stop_strings=list(stop) if s.min_new_tokens < s.max_new_tokens else None,
            tokenizer=self.tokenizer,
            streamer=Clock(),
            pad_token_id=self.tokenizer.eos_token_id,
        )
        new = out[0, ids.shape[1] :]
        ended = time.perf_counter()
        self.calls.append(
            {
                "prompt_tokens": ids.shape[1],
                "new_tokens": len(new),
                "ttft_s": (times[0] if times else ended) - started,
                "decode_s": (times[-1] - times[0]) if len(times) > 1 else 0.0,
                "total_s": ended - started,
            }
        )
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        hold = StopHoldback(stop)
        piece = hold.push(text) + hold.flush()
        if piece:
            yield piece

    def generate(self, prompt: str, *, seed: int, settings=None, stop=STOP_STRINGS) -> str:
        return "".join(self.stream(prompt, seed=seed, settings=settings, stop=stop))


class Recorder:
    """Wraps the engine's generator to keep the stats of every call (a turn may retry)."""

    def __init__(self, gen):
        self.gen = gen
        self.name, self.settings, self.context_window = gen.name, gen.settings, gen.context_window
        self.calls: list[dict] = []
        self.prompts: list[str] = []

    def count_tokens(self, text: str) -> int:
        return self.gen.count_tokens(text)

    def stream(self, prompt, *, seed, settings=None, stop=STOP_STRINGS):
        self.prompts.append(prompt)
        yield from self.gen.stream(prompt, seed=seed, settings=settings, stop=stop)
        st = self.gen.last_stats
        self.calls.append(
            {
                "prompt_tokens": st.prompt_tokens,
                "reused_tokens": st.reused_tokens,
                "new_tokens": st.new_tokens,
                "ttft_s": st.ttft_s,
                "decode_s": st.decode_s,
                "total_s": st.total_s,
            }
        )

    def generate(self, prompt, *, seed, settings=None, stop=STOP_STRINGS):
        return "".join(self.stream(prompt, seed=seed, settings=settings, stop=stop))


# --- one side ----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def peak_rss() -> int:
    """This process's peak resident memory in MB: Linux's VmHWM where there is one (a child's
    ru_maxrss starts from its parent's resident memory at fork), else ru_maxrss."""
    try:
        status = Path("/proc/self/status").read_text()
        return round(int(status.split("VmHWM:")[1].split()[0]) / 1024)
    except (OSError, IndexError, ValueError):
        unit = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 2**20)


def candidates_ratio(gen, prompts: list[str], seed: int, n: int = 4) -> float:
    """Wall time of ``n`` candidates (one batch) over the wall time of one response, summed
    over ``prompts``; each prompt is generated once first so that both find it cached."""
    one = many = 0.0
    for i, prompt in enumerate(prompts):
        gen.generate(prompt, seed=seed + i)
        start = time.perf_counter()
        gen.generate(prompt, seed=seed + i)
        one += time.perf_counter() - start
        start = time.perf_counter()
        gen.generate_batch(prompt, seeds=[seed + i + k for k in range(n)])
        many += time.perf_counter() - start
    return many / one if one else 0.0


def perplexities(gen, stories: int) -> tuple[float, float]:
    """Held-out perplexity of the first ``stories`` validation stories: the dense path
    (prefill's weights) and the quantized weights everywhere (the same when not quantized)."""
    import math

    from dungeon.evaluation import PERPLEXITY_WINDOW, validation_texts
    from dungeon.quantize import quantized_everywhere

    root = Path(__file__).resolve().parent.parent
    texts = validation_texts(root / "stories")[:stories]

    def ppl() -> float:
        lps = [
            lp
            for t in texts
            for lp in gen.token_logprobs("", t, end=True, window=PERPLEXITY_WINDOW)
        ]
        return math.exp(-math.fsum(lps) / len(lps))

    dense = ppl()
    with quantized_everywhere(gen.model):
        quantized = ppl()
    return dense, quantized


def run_side(args) -> dict:
    settings = SamplingSettings(max_new_tokens=args.max_new_tokens)
    if args.fixed_length:
        settings = SamplingSettings(
            max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens
        )
    t0 = time.perf_counter()
    import torch
    import transformers  # noqa: F401  (imported here so that load_s is the model load only)

    from dungeon import Game, Story, Turn
    from dungeon.story import Candidate

    imported = time.perf_counter()
    from dungeon.models import default_threads

    threads = default_threads() if args.threads == "auto" else int(args.threads)
    threads = threads or torch.get_num_threads()
    if threads:  # the same for both sides
        torch.set_num_threads(threads)
    adapter = args.adapter
    if adapter == "shipped":
        from dungeon.startup import shipped_adapter

        adapter = shipped_adapter(args.model)
    elif adapter == "none":
        adapter = None
    if args.side == "engine":
        from dungeon.models import load_generator

        gen = Recorder(
            load_generator(
                args.model,
                adapter=adapter,
                dtype=args.dtype,
                quantize=args.quantize,
                threads=threads,
                settings=settings,
            )
        )
        dtype = gen.gen.precision
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from dungeon.models import resolve_base

        path = resolve_base(args.model)
        tok = AutoTokenizer.from_pretrained(path)
        kwargs = {} if args.baseline_dtype == "default" else {"dtype": args.baseline_dtype}
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()
        if adapter:  # merged, as the engine used to run it
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter).merge_and_unload().eval()
        gen = BaselineGenerator(model, tok, settings, args.model)
        dtype = str(model.dtype).removeprefix("torch.")
    loaded = time.perf_counter()

    story = Story(premise=PREMISE, seed=args.seed)
    story.turns = [Turn(a, "do", [Candidate(r, 0)]) for a, r in HISTORY]
    game = Game(gen, story)
    turns = []
    for action in ACTIONS[: args.turns]:
        before = len(gen.calls)
        start = time.perf_counter()
        text = "".join(game.stream(action))
        latency = time.perf_counter() - start
        calls = gen.calls[before:]
        turns.append(
            {
                "latency_s": latency,
                "ttft_s": calls[0]["ttft_s"],
                "attempts": len(calls),
                "context_tokens": calls[0]["prompt_tokens"],
                "reused_tokens": sum(c.get("reused_tokens", 0) for c in calls),
                "new_tokens": sum(c["new_tokens"] for c in calls),
                "decode_s": sum(c["decode_s"] for c in calls),
                "decode_steps": sum(max(0, c["new_tokens"] - 1) for c in calls),
                "chars": len(text),
            }
        )
        if args.verbose:
            print(f"[{args.side}] {action} -> {text!r}", file=sys.stderr)
    peak_rss_mb = peak_rss()
    extra = {}
    if args.side == "engine":
        extra["quantize"] = dtype.split("+", 1)[1] if "+" in dtype else "none"
        if args.candidates_prompts:
            prompts = gen.prompts[-args.candidates_prompts :]
            extra["candidates_ratio"] = round(candidates_ratio(gen.gen, prompts, args.seed), 2)
        if args.ppl_stories:
            dense, quantized = perplexities(gen.gen, args.ppl_stories)
            extra["perplexity"] = round(quantized, 3)
            extra["perplexity_change"] = round(quantized / dense - 1, 4)
    latencies = [t["latency_s"] for t in turns]
    steps = sum(t["decode_steps"] for t in turns)
    decode_s = sum(t["decode_s"] for t in turns)
    return {
        "model": args.model,
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "import_s": round(imported - t0, 2),
        "load_s": round(loaded - imported, 2),
        "ttft_first_s": round(turns[0]["ttft_s"], 3),
        "ttft_s": round(statistics.median(t["ttft_s"] for t in turns[1:] or turns), 3),
        "decode_tok_s": round(steps / decode_s, 1) if decode_s else 0.0,
        "median_turn_s": round(statistics.median(latencies), 2),
        "p90_turn_s": round(percentile(latencies, 0.9), 2),
        "turn_s_per_token": round(
            statistics.median(t["latency_s"] / max(1, t["new_tokens"]) for t in turns), 3
        ),
        "mean_context_tokens": round(statistics.mean(t["context_tokens"] for t in turns)),
        "mean_new_tokens": round(statistics.mean(t["new_tokens"] for t in turns), 1),
        "mean_reused_tokens": round(statistics.mean(t["reused_tokens"] for t in turns)),
        "attempts": sum(t["attempts"] for t in turns),
        "turns": len(turns),
        "peak_rss_mb": peak_rss_mb,  # the game's (before the measures below)
        "adapter": Path(adapter).name if adapter else None,
        **extra,
    }


# --- both sides --------------------------------------------------------------------------------

ROWS = [
    ("load_s", "load (s)"),
    ("ttft_first_s", "first token, turn 1 (s)"),
    ("ttft_s", "first token, later turns (s)"),
    ("decode_tok_s", "decode (tokens/s)"),
    ("median_turn_s", "median turn (s)"),
    ("p90_turn_s", "p90 turn (s)"),
    ("turn_s_per_token", "median turn s / new token"),
    ("peak_rss_mb", "peak RSS (MB)"),
    ("mean_context_tokens", "mean context (tokens)"),
    ("mean_new_tokens", "mean new tokens / turn"),
    ("mean_reused_tokens", "mean reused tokens / turn"),
    ("attempts", "generations (turns + retries)"),
    ("candidates_ratio", "4 candidates / 1 (wall time)"),
    ("perplexity", "held-out perplexity"),
    ("perplexity_change", "perplexity vs unquantized"),
    ("dtype", "dtype"),
    ("quantize", "quantize"),
    ("adapter", "adapter"),
    ("threads", "threads"),
]


def table(results: dict) -> str:
    """A Markdown table: one row per measure, one column per side."""
    sides = list(results)
    width = max(10, *(len(str(r.get(k, ""))) for r in results.values() for k, _ in ROWS))
    lines = [f"| {'':30} | " + " | ".join(f"{s:>{width}}" for s in sides) + " |"]
    lines.append(f"|{'-' * 32}|" + "|".join("-" * (width + 1) + ":" for _ in sides) + "|")
    for key, label in ROWS:
        cells = " | ".join(f"{results[s].get(key, ''):>{width}}" for s in sides)
        lines.append(f"| {label:30} | {cells} |")
    return "\n".join(lines)


def decode_ab(args) -> dict:
    """Decode steps of today's default against the path before issue 11 (transformers' forward,
    dense weights, the adapter merged), interleaved in one process so that other work on the
    machine slows both alike. Also 4 rows at once (steps/s of the batch). Returns tokens/s."""
    import torch

    from dungeon.hf_generator import TransformersGenerator
    from dungeon.models import load_generator
    from dungeon.startup import shipped_adapter

    torch.set_num_threads(1 if args.threads == "auto" else int(args.threads))
    adapter = shipped_adapter(args.model) if args.adapter == "shipped" else None
    dense = load_generator(args.model, adapter=adapter, dtype=args.dtype, quantize="none")
    sides = {
        "before": TransformersGenerator(dense.model, dense.tokenizer, fast_decode=False),
        "after": load_generator(args.model, adapter=adapter, dtype=args.dtype),
    }
    prompt = PREMISE + "".join(f"\n\n> {a}\n{r}" for a, r in HISTORY) + "\n\n> You wait.\n"
    times: dict[str, list[float]] = {"before": [], "after": [], "after x4": []}
    with torch.inference_mode():
        for gen in sides.values():
            gen._prefill(gen.encode(prompt))
        n = len(sides["after"]._cache_ids)
        for _ in range(args.ab_rounds):
            for name, gen in sides.items():
                gen.runner.crop(n)
                gen._cache_ids = gen._cache_ids[:n]
                start = time.perf_counter()
                for _ in range(16):
                    gen._forward([13])
                times[name].append(16 / (time.perf_counter() - start))
            gen = sides["after"]
            gen.runner.crop(n)
            gen._cache_ids = gen._cache_ids[:n]
            gen._reshape_rows(4)
            start = time.perf_counter()
            for _ in range(16):
                gen._forward_rows([13] * 4)
            times["after x4"].append(4 * 16 / (time.perf_counter() - start))
            gen._reshape_rows([0])
    return {
        "context_tokens": n,
        **{k: round(statistics.median(v), 1) for k, v in times.items()},
        "precision": {k: g.precision for k, g in sides.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=BUILTIN_MODEL, help="built-in name, folder or hub id")
    parser.add_argument("--turns", type=int, default=len(ACTIONS), help="turns to play (max 20)")
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument(
        "--threads", default="auto", help="torch CPU threads for both sides (default: auto)"
    )
    parser.add_argument("--dtype", default="auto", help="engine dtype (auto, float32, bfloat16)")
    parser.add_argument(
        "--quantize", default="auto", help="engine quantize (auto, int4, int8, none)"
    )
    parser.add_argument(
        "--adapter",
        default="shipped",
        help="LoRA adapter for both sides: shipped (the default configuration), none, or a folder",
    )
    parser.add_argument(
        "--candidates-prompts",
        type=int,
        default=3,
        help="game prompts on which 4 candidates are timed against 1 (0: skip)",
    )
    parser.add_argument(
        "--ppl-stories",
        type=int,
        default=8,
        help="validation stories for the perplexity change of quantization (0: skip)",
    )
    parser.add_argument(
        "--baseline-dtype", default="default", help="baseline dtype (default: from_pretrained's)"
    )
    parser.add_argument(
        "--fixed-length",
        action="store_true",
        help="every turn writes exactly --max-new-tokens tokens (no early stop), on both sides",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--decode-ab",
        action="store_true",
        help="only compare decode steps, before and after issue 11, interleaved in one process",
    )
    parser.add_argument("--ab-rounds", type=int, default=7, help="rounds of --decode-ab")
    parser.add_argument("--side", choices=["both", "engine", "baseline"], default="both")
    parser.add_argument("--verbose", action="store_true", help="print each turn to stderr")
    args = parser.parse_args()
    if args.decode_ab:
        print(json.dumps(decode_ab(args)))
        return 0
    if args.side != "both":
        print(json.dumps(run_side(args)))
        return 0

    from dungeon.models import resolve_base

    resolve_base(args.model)  # convert the built-in model once, before either side is timed
    results = {}
    for side in ("engine", "baseline"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--side", side]
        print(f"running the {side} ...", file=sys.stderr, flush=True)
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
        if done.returncode != 0:
            print(f"the {side} run failed (exit {done.returncode})", file=sys.stderr)
            return done.returncode
        results[side] = json.loads(done.stdout.strip().splitlines()[-1])
    print(table(results))
    e, b = results["engine"], results["baseline"]
    if e["median_turn_s"]:
        print(f"median turn: the engine is {b['median_turn_s'] / e['median_turn_s']:.1f}x faster")
    print(json.dumps({"engine": e, "baseline": b}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
