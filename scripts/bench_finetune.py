#!/usr/bin/env python
"""Training throughput of our fine-tuning loop against transformers' Trainer and a bare loop.

    python scripts/bench_finetune.py --tiny              # a quick check on a tiny random GPT-2
    python scripts/bench_finetune.py                     # smollm2-135m, LoRA, 4 x 256 tokens
    python scripts/bench_finetune.py --precision bf16    # bf16 autocast (slow on CPUs without it)
    python scripts/bench_finetune.py --full --precision bf16 --compile --steps 20   # on a GPU

Three sides train the same model on the same packed blocks (stories/, no held-out split) with
the same batch, precision, optimizer (AdamW, fused where torch has it), schedule and gradient
clipping:

- ``script``: scripts/finetune.py (the loop of dungeon/training/finetune.py, as ``dungeon
  finetune`` runs it), as a user runs it (no evaluation or checkpoints);
- ``trainer``: transformers' ``Trainer``;
- ``bare_loop``: a plain PyTorch loop (autocast, backward, clip, step), the floor on overhead.

Each side runs in its own process, so its peak memory is its own (CUDA: max allocated; CPU:
max resident set size). Tokens/s counts the block tokens of every step after the first (the
first warms up: allocation, compilation). ``--repeats`` runs the sides in turn several times;
each side's ``tok_s`` is its fastest round (on a shared machine the slower rounds measure the
neighbours, not the code) and ``tok_s_median`` the median. ``--threads`` pins torch's CPU
threads on every side. On a GPU each side also reports MFU = 6 * N * tokens/s / peak FLOP/s
(N: all parameters of the model).

Prints a table, the ratios against the targets (script >= 0.95x the bare loop, >= 1.0x
Trainer) and the CPU's name, then one JSON line: {"script": {...}, "trainer": {...},
"bare_loop": {...}}. The sides of one run share the machine's conditions (rounds interleave):
compare them within a run, not across runs on a shared machine. ``--precision auto`` is
decided once, in this process (on a CPU it is a measurement), and passed to every side.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dungeon.builtin_model import BUILTIN_MODEL  # noqa: E402

SIDES = ("script", "trainer", "bare_loop")
LR = 1e-4
TARGET_VS_BARE, TARGET_VS_TRAINER = 0.95, 1.0
"""The script's tokens/s against the bare loop's and Trainer's (best rounds)."""


def cpu_name() -> str:
    """The CPU's model name, core count and bf16 features (Linux), else the platform's word."""
    import platform

    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((x.split(":", 1)[1].strip() for x in info.splitlines() if x.startswith("model name")), "?")  # fmt: skip
    flags = set(next((x.split(":", 1)[1].split() for x in info.splitlines() if x.startswith("flags")), []))  # fmt: skip
    features = [f for f, flag in (("AMX", "amx_bf16"), ("AVX-512-BF16", "avx512_bf16"),
                                  ("AVX-512", "avx512f"), ("AVX2", "avx2")) if flag in flags]  # fmt: skip
    return f"{name}, {os.cpu_count()} cores ({', '.join(features[:2]) or 'no AVX2'})"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default=BUILTIN_MODEL, help="base model (name, folder or hub id)")
    p.add_argument("--tiny", action="store_true", help="use a tiny random GPT-2 (quick check)")
    p.add_argument("--data", default=str(ROOT / "stories"), help="corpus (any finetune.py source)")
    p.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=4, help="timed steps (after 1 warm-up step)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--compile", action="store_true", help="torch.compile on every side")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None, help="for MFU on unknown GPUs")
    p.add_argument("--repeats", type=int, default=1, help="rounds of all sides, interleaved")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads on every side")
    p.add_argument("--sides", default=",".join(SIDES), help="comma-separated subset of sides")
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="run every side under cProfile, keep DIR/<side>-<round>.prof and print each side's "
        "top calls by own time (data loading, optimizer, autocast casts, logging show there)",
    )
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # a child process
    p.add_argument("--json-out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def load_finetune():
    """The fine-tuning modules as one namespace: the bench shares their model, schedule and
    measures (dungeon/training/)."""
    from types import SimpleNamespace

    from dungeon.training import build, checks, output, settings

    return SimpleNamespace(
        Settings=settings.Settings,
        resolve_base=checks.resolve_base,
        build_model=build.build_model,
        warmup_cosine=build.warmup_cosine,
        device_precision=build.device_precision,
        quiet_libraries=build.quiet_libraries,
        device_peak_flops=output.device_peak_flops,
        peak_memory_mb=output.peak_memory_mb,
    )


def resolved_precision(name: str, finetune) -> str:
    """bf16, fp16 or fp32: ``auto`` is what finetune.py picks on this machine."""
    return finetune.device_precision() if name == "auto" else name


def settings_for(args, finetune):
    """The finetune.py Settings every side shares."""
    return finetune.Settings(
        data=args.data, base=args.base, full=args.full, block_size=args.block_size,
        batch_size=args.batch_size, lr=LR, warmup_steps=1, max_steps=args.steps + 1,
        precision=args.precision, val_list="none", val_fraction=0.0, seed=0,
        gradient_checkpointing=args.gradient_checkpointing,
    )  # fmt: skip


def build(args, finetune):
    """Model (LoRA or full), packed training blocks and the schedule, as finetune.py makes them."""
    import torch
    from transformers import AutoTokenizer

    from dungeon.corpus.training import load_corpus, tokenize_and_pack

    s = settings_for(args, finetune)
    base = finetune.resolve_base(s.base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    corpus = load_corpus(s.data, val_list="none", val_fraction=0.0)
    blocks, _ = tokenize_and_pack(corpus, tokenizer, s.block_size)
    torch.manual_seed(0)
    model, n_params, _ = finetune.build_model(s, base)
    return s, model, blocks["train"].with_format("torch"), n_params


def run_bare_loop(args, finetune) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from dungeon.corpus.training import EpochShuffle

    s, model, blocks, n_params = build(args, finetune)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).train()
    precision = resolved_precision(args.precision, finetune)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    forward = torch.compile(model) if args.compile else model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.95), fused=True)
    total = args.steps + 1
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, finetune.warmup_cosine(1, total, 0.1))
    loader = DataLoader(blocks, batch_size=s.batch_size, sampler=EpochShuffle(len(blocks), 0))
    ends = []
    for step, batch in enumerate(loader):
        if step == total:
            break
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = forward(**batch).loss
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        ends.append(time.perf_counter())
    return timing(args, finetune, ends, n_params, precision, loss.item())


def run_trainer(args, finetune) -> dict:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    s, model, blocks, n_params = build(args, finetune)
    precision = resolved_precision(args.precision, finetune)
    ends = []

    class StepClock(TrainerCallback):
        def on_step_end(self, targs, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=s.batch_size,
            max_steps=args.steps + 1,
            learning_rate=LR,
            warmup_steps=1,
            lr_scheduler_type="cosine_with_min_lr",
            lr_scheduler_kwargs={"min_lr_rate": 0.1},
            adam_beta2=0.95,
            weight_decay=0.0,
            max_grad_norm=1.0,
            optim="adamw_torch_fused",
            bf16=precision == "bf16",
            fp16=precision == "fp16",
            use_cpu=not torch.cuda.is_available(),
            torch_compile=args.compile,
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=0,
        )
        trainer = Trainer(model=model, args=targs, train_dataset=blocks, callbacks=[StepClock()])
        out = trainer.train()
    return timing(args, finetune, ends, n_params, precision, out.training_loss)


def timing(args, finetune, ends: list[float], n_params, precision: str, loss: float) -> dict:
    """Tokens/s over the steps after the first, from the end of one step to the end of the last."""
    import torch

    tokens = args.batch_size * args.block_size * (len(ends) - 1)
    seconds = ends[-1] - ends[0]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = finetune.device_peak_flops(finetune.Settings(peak_tflops=args.peak_tflops), device)
    return {
        "tok_s": tokens / seconds,
        "mfu": 6 * n_params * tokens / seconds / peak if peak else None,
        "peak_mem_mb": finetune.peak_memory_mb()[0],
        "step_s": seconds / (len(ends) - 1),
        "steps_timed": len(ends) - 1,
        "precision": precision,
        "n_params": n_params,
        "loss": loss,
    }


def run_script(args, workdir: Path) -> dict:
    """scripts/finetune.py in its own process, with evaluation and checkpoints off."""
    out = workdir / f"script-{time.monotonic_ns()}"
    cmd = [
        *python(args, "script"), str(ROOT / "scripts" / "finetune.py"), "--data", args.data,
        "--base", args.base, "--output", str(out), "--block-size", str(args.block_size),
        "--batch-size", str(args.batch_size), "--max-steps", str(args.steps + 1),
        "--lr", str(LR), "--warmup-steps", "1", "--precision", args.precision,
        "--val-list", "none", "--val-fraction", "0", "--eval-every", "0", "--save-every", "0",
        "--sample-tokens", "0", "--log-every", "1000", "--report-to", "none", "--seed", "0",
    ]  # fmt: skip
    cmd += ["--full"] if args.full else []
    cmd += ["--compile"] if args.compile else []
    cmd += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
    cmd += ["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []
    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env(args))
    if done.returncode != 0:
        raise SystemExit(f"finetune.py failed:\n{done.stderr[-3000:]}")
    meta = json.loads((out / "dungeon.json").read_text())
    r = meta["results"]
    steps = r["steps"] - 1
    return {
        "tok_s": r["train_tokens_per_s"],
        "peak_mem_mb": r["peak_mem_mb"],
        "step_s": args.batch_size * args.block_size / r["train_tokens_per_s"],
        "steps_timed": steps,
        "mfu": r["mfu"],
        "precision": meta["training"]["precision"].replace("no", "fp32"),
        "n_params": meta["training"]["parameters"],
        "loss": r["final_train_loss"],
    }


def run_child(args, side: str, workdir: Path) -> dict:
    if side == "script":
        return run_script(args, workdir)
    out = workdir / f"{side}-{time.monotonic_ns()}.json"
    cmd = [*python(args, side), __file__, *child_argv(args), "--side", side, "--json-out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env(args))
    if done.returncode != 0:
        raise SystemExit(f"the {side} side failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def python(args, side: str) -> list[str]:
    """The interpreter for a side's process: under cProfile with --profile."""
    if not args.profile:
        return [sys.executable]
    Path(args.profile).mkdir(parents=True, exist_ok=True)
    done = len(list(Path(args.profile).glob(f"{side}-*.prof")))
    return [sys.executable, "-m", "cProfile", "-o", f"{args.profile}/{side}-{done + 1}.prof"]


def print_profiles(folder: str, sides: list[str], top: int = 14) -> None:
    """Each side's top calls by own time, in its last round (loading included)."""
    import pstats

    for side in sides:
        last = sorted(Path(folder).glob(f"{side}-*.prof"))[-1]
        print(f"\n--- {side}: top {top} calls by own time ({last}) ---")
        pstats.Stats(str(last), stream=sys.stdout).sort_stats("tottime").print_stats(top)


def per_round(runs: dict[str, list[dict]], other: str) -> list[float]:
    """The script's tokens/s over ``other``'s, round by round."""
    return [a["tok_s"] / b["tok_s"] for a, b in zip(runs["script"], runs[other])]


def child_env(args) -> dict:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)  # torch's intra-op threads, on every side
    return env


def child_argv(args) -> list[str]:
    argv = ["--base", args.base, "--data", args.data, "--batch-size", str(args.batch_size),
            "--block-size", str(args.block_size), "--steps", str(args.steps),
            "--precision", args.precision]  # fmt: skip
    argv += ["--full"] if args.full else []
    argv += ["--compile"] if args.compile else []
    argv += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
    argv += ["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []
    return argv


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.side:  # a child: run one side, write its result
        finetune = load_finetune()
        finetune.quiet_libraries(True)
        result = (
            run_bare_loop(args, finetune)
            if args.side == "bare_loop"
            else run_trainer(args, finetune)
        )
        Path(args.json_out).write_text(json.dumps(result))
        return 0

    if args.precision == "auto":
        # Decided once, here, with the sides' thread count: on a CPU --precision auto measures
        # bf16 against fp32, and on a busy machine two processes can measure differently.
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        args.precision = load_finetune().device_precision()
        print(f"precision auto: {args.precision} on this machine, for every side", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        workdir = Path(tmp)
        if args.tiny:
            from dungeon.tiny import make_tiny_gpt2

            args.base = str(make_tiny_gpt2(workdir / "tiny-gpt2"))
        sides = [x.strip() for x in args.sides.split(",") if x.strip()]
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        for round_ in range(args.repeats):
            # Each round starts with another side: the load of a shared machine drifts over
            # minutes, and a fixed order would hand the quieter end of every round to one side.
            turn = round_ % len(sides)
            for side in sides[turn:] + sides[:turn]:
                print(f"round {round_ + 1}/{args.repeats}: {side} ...", file=sys.stderr, flush=True)
                runs[side].append(run_child(args, side, workdir))
    summary = {}
    for side, results in runs.items():
        best = dict(max(results, key=lambda r: r["tok_s"]))
        best["tok_s_median"] = statistics.median(r["tok_s"] for r in results)
        best["peak_mem_mb"] = max(r["peak_mem_mb"] for r in results)
        best["runs_tok_s"] = [r["tok_s"] for r in results]
        summary[side] = best

    bare = summary.get("bare_loop", {}).get("tok_s")
    kind = "full" if args.full else "LoRA"
    first = next(iter(summary.values()))
    print(
        f"\n{Path(args.base).name} {kind}, batch {args.batch_size} x {args.block_size}, "
        f"{first['precision']}, {args.steps} timed steps x {args.repeats} round(s)"
    )
    print(f"{'side':<10} {'tokens/s':>10} {'median':>8} {'vs bare':>8} {'peak MB':>9} {'MFU':>7}")
    for side, r in summary.items():
        rel = f"{100 * r['tok_s'] / bare:.1f}%" if bare else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        print(
            f"{side:<10} {r['tok_s']:>10.1f} {r['tok_s_median']:>8.1f} {rel:>8} "
            f"{r['peak_mem_mb']:>9.0f} {mfu:>7}"
        )
    if "script" in summary and bare and "trainer" in summary:
        ratio = summary["script"]["tok_s"] / bare
        vs_trainer = summary["script"]["tok_s"] / summary["trainer"]["tok_s"]
        summary["ratios"] = {
            "vs_bare_best": ratio,
            "vs_trainer_best": vs_trainer,
            "vs_bare_per_round": per_round(runs, "bare_loop"),
            "vs_trainer_per_round": per_round(runs, "trainer"),
        }
        print(
            "per round (the sides of one round share its load): script / bare "
            + ", ".join(f"{x:.2f}" for x in summary["ratios"]["vs_bare_per_round"])
            + "; script / trainer "
            + ", ".join(f"{x:.2f}" for x in summary["ratios"]["vs_trainer_per_round"])
        )
        print(
            f"script: {ratio:.2f}x the bare loop (target >= {TARGET_VS_BARE}: "
            f"{'met' if ratio >= TARGET_VS_BARE else 'missed'}), {vs_trainer:.2f}x Trainer "
            f"(target >= {TARGET_VS_TRAINER}: {'met' if vs_trainer >= TARGET_VS_TRAINER else 'missed'})"
        )
    print(f"cpu: {cpu_name()}; torch threads: {args.threads or 'torch default'}")
    if args.profile:
        print_profiles(args.profile, sides)
    print(json.dumps(summary))
    return 0 if all(math.isfinite(summary[side]["tok_s"]) for side in sides) else 1


if __name__ == "__main__":
    sys.exit(main())
