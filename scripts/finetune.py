#!/usr/bin/env python
"""Fine-tune GPT-2 or any causal LM on adventure stories: LoRA or full, one process or many.

    python scripts/finetune.py                                  # LoRA on smollm2-135m, stories/
    python scripts/finetune.py --base gpt2 --full --output runs/gpt2-full
    python scripts/finetune.py --max-steps 20 --block-size 128  # a smoke run
    python scripts/finetune.py --output runs/adventure --resume # go on after a stop or a crash
    accelerate launch scripts/finetune.py ...                   # the same script under accelerate
    accelerate launch --config_file configs/accelerate/ddp.yaml scripts/finetune.py --full ...
    torchrun --nproc_per_node 2 scripts/finetune.py ...         # data-parallel on CPUs (gloo)

The shape of transformers' run_clm_no_trainer.py, top to bottom: settings from the command
line; every input checked before anything trains (all problems at once, exit code 2); the
corpus loaded, split by whole story, tokenized and packed by dungeon.corpus.training (so the text
is exactly what play sends the model); the model built (a LoRA adapter via peft, or every
weight); ``accelerator.prepare``; a loop with ``accelerator.accumulate``, clipping and warmup +
cosine decay; held-out loss, perplexity and a sampled continuation before training and every N
steps; ``accelerator.save_state`` every N steps and on SIGTERM/SIGINT for ``--resume``; and at
the end a model folder that ``dungeon play --model runs/NAME`` loads. The folder is built in
``NAME.partial`` and renamed when complete, so a crash never leaves a half-written model.

The output folder holds the model (LoRA: adapter_model.safetensors + adapter_config.json naming
the base as the user gave it; full: model.safetensors + config.json), the tokenizer,
dungeon.json (story format, base, kind, every setting, the results), README.md (a model card),
loss.png and logs/ (TensorBoard). See docs/finetune.md.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator, DistributedType, PartialState
from accelerate.utils import ProjectConfiguration, gather_object, set_seed
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from dungeon.builtin_model import BUILTIN_MODEL  # noqa: E402
from dungeon.corpus.training import CorpusError, EpochShuffle, load_corpus, tokenize_and_pack  # noqa: E402
from dungeon.errors import ModelNotFoundError  # noqa: E402
from dungeon.format import STOP_STRINGS, FormatSpec  # noqa: E402
from dungeon.saves import write_atomic  # noqa: E402

DUNGEON_JSON_VERSION = 1
# Only these may change when a run is resumed: they touch neither the data nor the maths.
RESUME_MAY_CHANGE = {
    "resume", "overwrite", "eval_every", "save_every", "keep_checkpoints", "log_every",
    "sample_tokens", "report_to", "dataloader_workers", "preprocessing_workers", "slow_down",
}  # fmt: skip
# LoRA targets per architecture (config.model_type); other architectures get every linear layer.
_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_TARGETS = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],  # Conv1D layers, weights stored (in, out)
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "gptj": ["q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
}
# Dense bf16 tensor-core peak in TFLOP/s, for MFU; --peak-tflops for any other accelerator.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


# ---------------------------------------------------------------------------------------------
# 1. Settings: a dataclass; the command line is built from its fields


def arg(default, help: str, **argparse_kwargs):
    return field(default=default, metadata={"help": help, **argparse_kwargs})


def optional(kind):
    def parse(text: str):
        return None if text.lower() in ("", "none", "auto") else kind(text)

    parse.__name__ = kind.__name__
    return parse


@dataclass
class Settings:
    """Everything a run depends on. Stored in dungeon.json; --resume refuses changes to most."""

    data: str = arg("stories", "story folder, JSONL file, saved dataset or hub dataset name")
    base: str = arg(BUILTIN_MODEL, f"base model: {BUILTIN_MODEL}, a model folder or a hub id")
    output: str = arg("", "output folder (default runs/<base>-<lora|full>)")
    full: bool = arg(False, "train every weight instead of a LoRA adapter")
    from_scratch: bool = arg(False, "a random init of the base's architecture (needs --full)")
    lora_r: int = arg(16, "LoRA rank")
    lora_alpha: int = arg(32, "LoRA scale numerator (scale = alpha / r)")
    lora_dropout: float = arg(0.05, "dropout on the LoRA input")
    lora_targets: str = arg("", "comma-separated module names, or all-linear (default: by model)")
    block_size: int = arg(512, "tokens per training block")
    batch_size: int = arg(4, "blocks per micro-batch on each process")
    grad_accum: int = arg(1, "micro-batches per optimizer step")
    lr: float | None = arg(
        None,
        "peak learning rate (default 2e-4 LoRA, 5e-5 full, 5e-4 scratch)",
        type=optional(float),
    )
    weight_decay: float = arg(0.0, "AdamW weight decay (never on biases and norms)")
    warmup_steps: int | None = arg(None, "warmup steps (default 5%% of steps)", type=optional(int))
    min_lr_ratio: float = arg(0.1, "the cosine decays to this share of the peak")
    max_grad_norm: float = arg(1.0, "gradient clipping norm (0: off)")
    epochs: int = arg(3, "passes over the training blocks")
    max_steps: int | None = arg(None, "optimizer steps; overrides --epochs", type=optional(int))
    max_train_samples: int | None = arg(None, "first N training blocks only", type=optional(int))
    max_eval_samples: int | None = arg(None, "first N held-out blocks only", type=optional(int))
    val_fraction: float | None = arg(
        None, "hold out this share of stories (default 0.05 without a list)", type=optional(float)
    )
    val_list: str | None = arg(
        None, "file naming held-out stories (default: <data>/validation*.txt)"
    )
    seed: int = arg(42, "seed for init, data order, dropout and samples")
    eval_every: int = arg(100, "evaluate every N steps (0: before and after only)")
    save_every: int = arg(200, "save a resumable checkpoint every N steps (0: on signals only)")
    keep_checkpoints: int = arg(2, "resumable checkpoints to keep")
    log_every: int = arg(10, "log the training loss every N steps")
    sample_tokens: int = arg(48, "tokens sampled from a held-out premise at each evaluation")
    precision: str = arg(
        "auto",
        "auto: bf16 on GPUs that have it, else fp16 with loss scaling; on CPUs bf16 autocast "
        "where the CPU does bf16 natively, else fp32",
        choices=["auto", "bf16", "fp16", "fp32"],
    )
    gradient_checkpointing: bool = arg(False, "recompute activations in backward (less memory)")
    compile: bool = arg(False, "torch.compile the model")
    cpu: bool = arg(False, "train on the CPU even when a GPU is present")
    peak_tflops: float | None = arg(None, "peak TFLOP/s for MFU (known GPUs: automatic)", type=optional(float))  # fmt: skip
    preprocessing_workers: int | None = arg(None, "tokenizer processes (default: by size)", type=optional(int))  # fmt: skip
    dataloader_workers: int = arg(0, "DataLoader worker processes")
    report_to: str = arg("auto", "tensorboard, none, or auto", choices=["auto", "tensorboard", "none"])  # fmt: skip
    resume: bool = arg(False, "continue the unfinished run in <output>.partial")
    overwrite: bool = arg(False, "replace an existing output folder")
    slow_down: float = arg(0.0, argparse.SUPPRESS)  # seconds of sleep per step, for tests

    @property
    def kind(self) -> str:
        return "full" if self.full else "lora"

    @property
    def peak_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 5e-4 if self.from_scratch else 5e-5 if self.full else 2e-4

    @property
    def output_dir(self) -> Path:
        if self.output:
            return Path(self.output)
        return Path("runs") / f"{Path(self.base.rstrip('/')).name or 'model'}-{self.kind}"

    def problems(self) -> list[str]:
        """Values out of range and flags that contradict each other."""
        p = []
        for name in ("block_size", "batch_size", "grad_accum", "epochs", "lora_r", "lora_alpha",
                     "log_every", "keep_checkpoints"):  # fmt: skip
            if getattr(self, name) < 1:
                p.append(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("eval_every", "save_every", "sample_tokens", "dataloader_workers",
                     "weight_decay", "max_grad_norm", "slow_down"):  # fmt: skip
            if getattr(self, name) < 0:
                p.append(f"--{name.replace('_', '-')} must not be negative")
        for name in ("max_steps", "max_train_samples", "max_eval_samples", "preprocessing_workers"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                p.append(f"--{name.replace('_', '-')} must be at least 1")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            p.append("--warmup-steps must not be negative")
        if self.lr is not None and not 0 < self.lr < 1:
            p.append(f"--lr must be in (0, 1), got {self.lr}")
        if not 0 <= self.lora_dropout < 1:
            p.append("--lora-dropout must be in [0, 1)")
        if not 0 <= self.min_lr_ratio <= 1:
            p.append("--min-lr-ratio must be in [0, 1]")
        if self.from_scratch and not self.full:
            p.append("--from-scratch trains every weight of a new model: add --full")
        if self.full and self.lora_targets:
            p.append("--lora-targets applies to LoRA only: drop it or drop --full")
        if self.resume and self.overwrite:
            p.append("--resume continues a run and --overwrite starts over: pick one")
        if self.val_fraction is not None and self.val_list and self.val_list.lower() != "none":
            p.append("--val-fraction and --val-list both choose the held-out stories: pick one")
        gpu = torch.cuda.is_available() and not self.cpu
        if self.precision == "fp16" and not gpu:
            p.append("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
        if self.precision == "bf16" and gpu and not torch.cuda.is_bf16_supported():
            p.append("this GPU has no bf16: use --precision fp16 (loss-scaled) or auto")
        return p


def parse_settings(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="finetune.py",
        description="Fine-tune a causal LM on adventure stories (LoRA or full). See docs/finetune.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        meta = dict(f.metadata)
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action="store_true", help=meta["help"])
        else:
            meta.setdefault("type", type(f.default) if f.default is not None else str)
            parser.add_argument(flag, default=f.default, **meta)
    return Settings(**vars(parser.parse_args(argv)))


# ---------------------------------------------------------------------------------------------
# 2. Checks: every input, before anything trains; every problem at once


@dataclass
class Inputs:
    """What the checks found: the base, its tokenizer, the packed data and the folders."""

    base_path: str
    config: object
    tokenizer: object
    corpus: object
    blocks: object
    stats: dict
    corpus_sha256: str
    partial: Path
    checkpoint: Path | None


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def latest_checkpoint(partial: Path) -> Path | None:
    """The newest complete checkpoint (complete once renamed from ``step-N.tmp``)."""
    found = sorted((partial / "checkpoints").glob("step-*[0-9]"))
    found = [c for c in found if (c / "trainer_state.json").is_file()]
    return found[-1] if found else None


def resolve_base(name: str) -> str:
    """A path or hub id from_pretrained accepts; raises LookupError with a one-line reason."""
    from dungeon.models import resolve_base as resolve

    try:
        return resolve(name)
    except ModelNotFoundError as err:
        raise LookupError(one_line(err)) from None


def one_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:240]


def saved_record(partial: Path) -> dict:
    """settings.json of an unfinished run: its settings, corpus fingerprint and command."""
    try:
        record = json.loads((partial / "settings.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def check_inputs(s: Settings) -> tuple[Inputs | None, list[str]]:
    """Check flags, folders, corpus and base model; return every problem found."""
    from transformers import AutoConfig, AutoTokenizer

    problems = s.problems()
    launcher_accum = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "")
    if launcher_accum.isdigit() and int(launcher_accum) != s.grad_accum:  # a DeepSpeed config
        problems.append(
            f"the accelerate config accumulates {launcher_accum} micro-batches but --grad-accum "
            f"is {s.grad_accum}: make them agree"
        )
    out = s.output_dir
    partial = partial_dir(out)
    checkpoint = None
    if s.resume:
        checkpoint = latest_checkpoint(partial)
        if checkpoint is None:
            why = f"{out} is finished" if out.exists() else f"{partial} holds no checkpoint"
            problems.append(f"nothing to resume: {why}; run without --resume to start a new run")
        else:
            problems += resume_differences(s, saved_record(partial), partial)
    elif not s.overwrite:
        if out.exists():
            problems.append(f"{out} exists: pass --overwrite to replace it, or another --output")
        if partial.exists():
            problems.append(f"{partial} holds an unfinished run: pass --resume or --overwrite")

    corpus = None
    try:
        corpus = load_stories(s)
    except CorpusError as err:
        problems += err.problems

    base_path = config = tokenizer = None
    try:
        base_path = resolve_base(s.base)
        config = AutoConfig.from_pretrained(base_path)
        tokenizer = AutoTokenizer.from_pretrained(base_path)
    except LookupError as err:
        problems.append(f"base model {s.base!r} not found: {err}")
    except (OSError, ValueError) as err:
        problems.append(f"base model {s.base!r} cannot be loaded: {one_line(err)}")
    if config is not None:
        window = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", 0
        )
        if window and s.block_size > window:
            problems.append(f"--block-size {s.block_size} is over the model's window of {window}")
    if tokenizer is not None and tokenizer.eos_token_id is None:
        problems.append(f"the tokenizer of {s.base} has no end-of-text token to end stories with")
        tokenizer = None

    blocks = stats = None
    digest = ""
    if corpus is not None and tokenizer is not None:
        workers = s.preprocessing_workers
        blocks, stats = tokenize_and_pack(corpus, tokenizer, s.block_size, num_proc=workers)
        if stats["train"].tokens < s.block_size:
            problems.append(
                f"{s.data}: the training stories hold {stats['train'].tokens} tokens, less than "
                f"one block of {s.block_size}; add stories or lower --block-size"
            )
        digest = corpus_digest(corpus, tokenizer)
        saved = saved_record(partial).get("corpus_sha256") if checkpoint else None
        if saved and saved != digest:
            problems.append(
                f"{s.data} changed since the run in {partial} started; --resume needs the same "
                "stories and split (or start over with --overwrite)"
            )
    if problems:
        return None, problems
    inputs = Inputs(
        base_path, config, tokenizer, corpus, blocks, stats, digest, partial, checkpoint
    )
    return inputs, []


def load_stories(s: Settings):
    """The stories split into ``train`` and ``validation``, as the run trains on them."""
    return load_corpus(s.data, val_fraction=s.val_fraction, val_list=s.val_list, seed=s.seed)


def resume_differences(s: Settings, record: dict, partial: Path) -> list[str]:
    saved = record.get("settings")
    if not isinstance(saved, dict):
        return [f"{partial}/settings.json is missing or damaged; start over with --overwrite"]
    now = asdict(s)
    changed = [
        f"--{k.replace('_', '-')} {now[k]!r} (was {saved[k]!r})"
        for k in now
        if k not in RESUME_MAY_CHANGE and k in saved and saved[k] != now[k]
    ]
    if not changed:
        return []
    return [f"--resume needs the settings of the run it continues; changed: {', '.join(changed)}"]


def corpus_digest(corpus, tokenizer) -> str:
    """A fingerprint of the stories, their split and the tokenizer (resume refuses a change)."""
    h = hashlib.sha256(f"{type(tokenizer).__name__}:{len(tokenizer)}".encode())
    for split, stories in sorted(corpus.items()):
        h.update(split.encode())
        for batch in stories.iter(batch_size=1000):
            for name, text in zip(batch["name"], batch["text"]):
                h.update(f"{len(name)}:{name}{len(text)}:{text}".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# 3. The run


def main(argv: list[str] | None = None) -> int:
    """Run the script; returns the exit code (0 done, 2 bad input, 128+N stopped by signal N)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    s = parse_settings(argv)
    started = time.time()
    # torchrun on a machine without CUDA: accelerate needs cpu=True to join a gloo group.
    use_cpu = s.cpu or (not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", 1)) > 1)
    state = PartialState(cpu=use_cpu)  # joins the process group under torchrun / accelerate
    quiet_libraries(state.is_main_process)

    with state.main_process_first():  # rank 0 first: the datasets cache is written once
        inputs, problems = check_inputs(s)
    # Every process must agree before rank 0 creates the output folder.
    failed = gather_object([bool(problems)]) if state.num_processes > 1 else [bool(problems)]
    if any(failed):
        if state.process_index == failed.index(True):
            for problem in problems:
                print(f"finetune: error: {problem}", file=sys.stderr)
        return 2
    return train(s, inputs, argv, started, use_cpu)


def train(s: Settings, inputs: Inputs, argv: list[str], started: float, use_cpu: bool) -> int:
    partial, out = inputs.partial, s.output_dir

    # --- The accelerator: precision, accumulation, trackers, torch.compile ---------------------
    accelerator = make_accelerator(s, partial, use_cpu)
    say = make_say(accelerator)
    set_seed(s.seed)
    world = accelerator.num_processes
    if accelerator.is_main_process:
        if s.overwrite and partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True, exist_ok=True)
        if not s.resume:
            record = {"settings": asdict(s), "corpus_sha256": inputs.corpus_sha256, "argv": argv}
            write_atomic(partial / "settings.json", json.dumps(record, indent=2))
    accelerator.wait_for_everyone()

    # --- Data: packed blocks; the order depends only on the seed and the epoch ----------------
    train_blocks, eval_blocks = inputs.blocks["train"], inputs.blocks["validation"]
    if s.max_train_samples:
        train_blocks = train_blocks.select(range(min(s.max_train_samples, len(train_blocks))))
    if s.max_eval_samples:
        eval_blocks = eval_blocks.select(range(min(s.max_eval_samples, len(eval_blocks))))
    train_dl, eval_dl = make_dataloaders(s, train_blocks, eval_blocks)
    st = inputs.stats
    say(
        f"data: {st['train'].stories} training stories ({st['train'].tokens:,} tokens, "
        f"{len(train_blocks)} blocks of {s.block_size}); {st['validation'].stories} held out "
        f"({st['validation'].tokens:,} tokens, {len(eval_blocks)} blocks)"
    )

    # --- The model: pretrained (or a random init of the same architecture), LoRA or full -----
    tokenizer = inputs.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # packing pads with eos too (labels -100)
    model, n_params, lora_targets = build_model(s, inputs.base_path, inputs.config)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for _, p in trainable)
    say(
        f"model: {s.base} ({n_params / 1e6:.1f}M parameters), {s.kind}"
        f"{' from scratch' if s.from_scratch else ''}, training {n_trainable / 1e6:.2f}M; "
        f"precision {accelerator.mixed_precision}, {world} process(es) on {accelerator.device}"
    )

    # --- AdamW (no decay on biases and norms), warmup then cosine decay ----------------------
    steps_per_epoch = math.ceil(
        math.ceil(len(train_blocks) / (s.batch_size * world)) / s.grad_accum
    )
    total_steps = s.max_steps or s.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    warmup = s.warmup_steps if s.warmup_steps is not None else max(1, round(0.05 * total_steps))
    fused = accelerator.device.type in ("cuda", "cpu") or None  # one fused AdamW kernel
    # FSDP (v1) must wrap the model before the optimizer sees its parameters; the rest prepare
    # at once (DeepSpeed and FSDP2 need model and optimizer in the same call).
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        model = accelerator.prepare(model)
        groups = param_groups(model.named_parameters(), s.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=s.peak_lr, betas=(0.9, 0.95), fused=fused)
        optimizer, train_dl, eval_dl = accelerator.prepare(optimizer, train_dl, eval_dl)
    else:
        groups = param_groups(trainable, s.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=s.peak_lr, betas=(0.9, 0.95), fused=fused)
        model, optimizer, train_dl, eval_dl = accelerator.prepare(
            model, optimizer, train_dl, eval_dl
        )
    if accelerator.gradient_accumulation_steps != s.grad_accum:  # a DeepSpeed config's value wins
        say(
            f"finetune: error: the accelerate config accumulates {accelerator.gradient_accumulation_steps}"
            f" micro-batches but --grad-accum is {s.grad_accum}: make them agree"
        )
        return 2
    # Stepped by hand, only after real optimizer steps (see the loop); saved with the state.
    scheduler = LambdaLR(
        getattr(optimizer, "optimizer", optimizer),
        warmup_cosine(warmup, total_steps, s.min_lr_ratio),
    )
    accelerator.register_for_checkpointing(scheduler)
    if not s.full:
        accelerator.register_save_state_pre_hook(keep_only_trainable)
    if accelerator.log_with:
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in asdict(s).items()}  # fmt: skip
        accelerator.init_trackers("finetune", config=hparams)

    # --- Resume: weights, optimizer, scheduler, RNG, and the position in the data -----------
    progress = Progress()
    if s.resume:
        # LoRA checkpoints hold the adapter only: load them non-strictly (DDP / one process).
        accelerator.load_state(str(inputs.checkpoint), **({} if sharded else {"strict": s.full}))
        state = json.loads((inputs.checkpoint / "trainer_state.json").read_text())
        progress = Progress.from_dict(state)
        say(f"resumed from {inputs.checkpoint} at step {progress.step}")
    val_prompts = list(inputs.corpus["validation"]["prompt"])[:8]
    run = Run(
        s=s,
        accelerator=accelerator,
        model=model,
        tokenizer=tokenizer,
        eval_dl=eval_dl if len(eval_blocks) else None,
        prompts=val_prompts or list(inputs.corpus["train"]["prompt"])[:1],
        partial=partial,
        say=say,
        sharded=sharded,
        started=started,
        wall_before=progress.wall_seconds,
    )
    if not s.resume:
        progress.baseline = evaluate(run, progress.step)
        what = "random init" if s.from_scratch else "zero-shot base"
        record_eval(run, progress, progress.baseline, f" (before training: {what})")
        log_sample(run, progress)

    # --- Train. SIGTERM/SIGINT: finish the step, save a checkpoint, stop cleanly -------------
    start_step = progress.step
    say(
        f"training: {total_steps} steps ({epochs} epoch(s) of {steps_per_epoch}), "
        f"{s.batch_size}x{s.block_size} tokens x {s.grad_accum} accumulation x {world} "
        f"process(es), lr {s.peak_lr:g} after {warmup} warmup steps"
    )
    bar = tqdm(
        total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr,
        disable=not accelerator.is_main_process or not sys.stderr.isatty(),
    )  # fmt: skip
    peak_flops = device_peak_flops(s, accelerator.device)
    step_loss = torch.zeros((), device=accelerator.device)
    first_epoch = start_step // steps_per_epoch
    model.train()
    with StopRequest() as stop:
        for epoch in range(first_epoch, epochs):
            if progress.step >= total_steps:
                break
            train_dl.set_epoch(epoch)
            batches = train_dl
            if epoch == first_epoch and start_step > epoch * steps_per_epoch:
                skip = (start_step - epoch * steps_per_epoch) * s.grad_accum
                batches = accelerator.skip_first_batches(train_dl, skip)
            step_start, step_tokens, micro = time.perf_counter(), 0, 0
            for batch in batches:
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and s.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), s.max_grad_norm)
                    optimizer.step()
                    if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                        scheduler.step()  # not after an fp16 overflow step
                    optimizer.zero_grad(set_to_none=True)
                step_loss += loss.detach()
                step_tokens += batch["input_ids"].numel() * world
                micro += 1
                if not accelerator.sync_gradients:
                    continue

                # One optimizer step is done: account, log, evaluate, checkpoint.
                progress.step += 1
                step = progress.step
                if s.slow_down:
                    time.sleep(s.slow_down)
                mean_loss = step_loss / micro
                seconds = time.perf_counter() - step_start
                progress.train_seconds += seconds
                progress.train_tokens += step_tokens
                if step > start_step + 1 or total_steps == start_step + 1:  # step 1 warms up
                    progress.timed_seconds += seconds
                    progress.timed_tokens += step_tokens
                window = progress.window
                window.loss += mean_loss
                window.steps += 1
                window.tokens += step_tokens
                window.seconds += seconds
                bar.update(1)
                if step % s.log_every == 0 or step == total_steps:
                    avg = accelerator.reduce(window.loss / window.steps, "mean").item()
                    progress.last_train_loss = accelerator.reduce(mean_loss, "mean").item()
                    tok_s = window.tokens / max(window.seconds, 1e-9)
                    lr = scheduler.get_last_lr()[0]
                    entry = {"step": step, "train_loss": avg, "lr": lr, "tokens_per_s": tok_s}
                    if peak_flops:
                        entry["mfu"] = 6 * n_params * tok_s / peak_flops
                    progress.history.append(entry)
                    bar.set_postfix(loss=f"{avg:.3f}", tok_s=f"{tok_s:,.0f}", lr=f"{lr:.2e}")
                    if bar.disable:
                        eta = (total_steps - step) * window.seconds / window.steps
                        say(
                            f"step {step}/{total_steps}: loss {avg:.4f}, lr {lr:.2e}, "
                            f"{tok_s:,.0f} tok/s, eta {eta:,.0f} s"
                        )
                    if accelerator.log_with:
                        metrics = {f"train/{k}": v for k, v in entry.items() if k != "step"}
                        accelerator.log(metrics, step=step)
                    progress.window = Window()
                step_loss.zero_()

                if (s.eval_every and step % s.eval_every == 0) or step == total_steps:
                    record_eval(run, progress, evaluate(run, step))
                    log_sample(run, progress)
                if world > 1:  # every process must agree to stop, or the collectives would hang
                    flag = torch.tensor(float(stop.signum), device=accelerator.device)
                    stop.signum = int(accelerator.reduce(flag, "max").item())
                if stop.signum or (
                    s.save_every and step % s.save_every == 0 and step < total_steps
                ):
                    save_checkpoint(run, progress)
                if stop.signum:
                    bar.close()
                    name = signal.Signals(stop.signum).name
                    say(
                        f"{name}: stopped at step {step}; state saved in {partial}; go on with --resume"
                    )
                    accelerator.end_training()
                    return 128 + stop.signum
                if step >= total_steps:
                    break
                step_start, step_tokens, micro = time.perf_counter(), 0, 0
        bar.close()

    # --- The model folder: the best model (or the last), tokenizer, card, loss curve ---------
    progress.wall_seconds = run.wall_seconds()
    digests = None
    if world > 1 and accelerator.distributed_type in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):  # fmt: skip
        digests = gather_object([weights_digest(accelerator.unwrap_model(model))])
    exported = "best"
    accelerator.wait_for_everyone()  # every process looks at best/ before rank 0 moves it
    if progress.best_step is None or not (partial / "best").is_dir():
        save_model(accelerator, model, tokenizer, partial / "best", s)
        exported = "last"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        derived = {
            "command": ["scripts/finetune.py", *argv],
            "world_size": world,
            "total_steps": total_steps,
            "epochs_run": epochs,
            "steps_per_epoch": steps_per_epoch,
            "warmup_steps": warmup,
            "peak_lr": s.peak_lr,
            "precision": accelerator.mixed_precision,
            "device": str(accelerator.device),
            "distributed_type": str(accelerator.distributed_type),
            "lora_targets": lora_targets,
            "parameters": n_params,
            "trainable_parameters": n_trainable,
            "tokens_per_step": s.batch_size * s.block_size * s.grad_accum * world,
            "train_stories": len(inputs.corpus["train"]),
            "val_stories": list(inputs.corpus["validation"]["name"]),
            "data_stats": {k: asdict(v) for k, v in inputs.stats.items()},
        }
        finish_folder(s, progress, derived, exported, digests, peak_flops, partial, out)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    say(f"done: {out}")
    return 0


# ---------------------------------------------------------------------------------------------
# 4. The loop's state, and what it does between steps


@dataclass
class Window:
    """Training figures since the last log line (a resumed run logs the same averages)."""

    loss: float = 0.0
    """Sum of the steps' mean losses (a tensor while training: no sync with the device)."""
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0


@dataclass
class Progress:
    """Everything the loop accumulates; a checkpoint saves it (trainer_state.json)."""

    step: int = 0
    """Optimizer steps done."""
    best_eval_loss: float | None = None
    best_step: int | None = None
    """The step of the best held-out loss: the model in NAME.partial/best."""
    baseline: dict | None = None
    """The evaluation before training (the base zero-shot, or the random init)."""
    history: list[dict] = field(default_factory=list)
    """One entry per log line: step, train_loss, lr, tokens_per_s (and mfu)."""
    evals: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    train_tokens: int = 0
    timed_seconds: float = 0.0
    """Like train_seconds, without the first step of a process (it warms up)."""
    timed_tokens: int = 0
    wall_seconds: float = 0.0
    """Wall time of the run, over every resume, as of the last checkpoint or the end."""
    last_train_loss: float | None = None
    window: Window = field(default_factory=Window)

    def to_dict(self) -> dict:
        state = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "window"}
        state["window"] = {f.name: float(getattr(self.window, f.name)) for f in fields(Window)}
        return state

    @classmethod
    def from_dict(cls, state: dict) -> Progress:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in state.items() if k in known}
        values["window"] = Window(**state.get("window", {}))
        return cls(**values)


@dataclass(frozen=True)
class Run:
    """The fixed parts of a run that evaluation, samples and checkpoints need."""

    s: Settings
    accelerator: Accelerator
    model: object
    tokenizer: object
    eval_dl: DataLoader | None
    """Held-out blocks; None when no story is held out."""
    prompts: list[str]
    """Openings of held-out stories (or one training story) to sample from."""
    partial: Path
    say: Callable[[str], None]
    sharded: bool
    """FSDP or DeepSpeed: the weights are spread over the processes."""
    started: float
    """time.time() when this process started."""
    wall_before: float
    """Wall seconds of the run before this process (a resumed run)."""

    @property
    def no_rng(self) -> list:
        """Devices whose RNG evaluation and samples must leave untouched (beside the CPU)."""
        return [self.accelerator.device] if self.accelerator.device.type == "cuda" else []

    def wall_seconds(self) -> float:
        return self.wall_before + time.time() - self.started


class StopRequest:
    """SIGTERM or SIGINT while training: finish the step, save a checkpoint, stop cleanly.

    A second Ctrl-C stops at once, without a checkpoint. As a context manager it installs the
    handlers and gives the previous ones back, however the block ends.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum = 0
        self.previous: dict = {}

    def __call__(self, signum, frame) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.signum = signum

    def __enter__(self) -> StopRequest:
        self.previous = {sig: signal.signal(sig, self) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def evaluate(run: Run, step: int) -> dict | None:
    """Held-out loss and perplexity at ``step``; None when no story is held out."""
    if run.eval_dl is None:
        return None
    with torch.random.fork_rng(devices=run.no_rng):  # evaluation never moves training's RNG
        loss = held_out_loss(run.model, run.eval_dl, run.accelerator)
    return {"step": step, "eval_loss": loss, "perplexity": math.exp(min(loss, 50))}


def record_eval(run: Run, progress: Progress, result: dict | None, label: str = "") -> None:
    """Log an evaluation; a new best held-out loss (after step 0) saves the model to best/."""
    if result is None:
        return
    progress.evals.append(result)
    run.say(
        f"step {result['step']}{label}: held-out loss {result['eval_loss']:.4f}, "
        f"perplexity {result['perplexity']:.2f}"
    )
    if run.accelerator.log_with:
        metrics = {"eval/loss": result["eval_loss"], "eval/perplexity": result["perplexity"]}
        run.accelerator.log(metrics, step=result["step"])
    best = progress.best_eval_loss
    if result["step"] > 0 and (best is None or result["eval_loss"] < best):
        progress.best_eval_loss, progress.best_step = result["eval_loss"], result["step"]
        save_model(run.accelerator, run.model, run.tokenizer, run.partial / "best", run.s)


def log_sample(run: Run, progress: Progress) -> None:
    """Sample a short continuation of the next prompt in turn, and log it."""
    s = run.s
    if not s.sample_tokens or run.sharded:  # sharded weights would need gathering first
        return
    prompt = run.prompts[len(progress.samples) % len(run.prompts)]
    seed = s.seed + progress.step
    text = sample_continuation(
        run.model, run.tokenizer, prompt, s, run.accelerator, seed, run.no_rng
    )
    progress.samples.append({"step": progress.step, "prompt": prompt, "sample": text})
    run.say(f"sample at step {progress.step}: …{prompt[-100:]!r} → {text!r}")
    if run.accelerator.log_with:
        run.accelerator.log({"sample": f"{prompt}**{text}**"}, step=progress.step)


def save_checkpoint(run: Run, progress: Progress) -> None:
    """save_state into step-N.tmp, then rename: a kill mid-save leaves no broken checkpoint."""
    accelerator, checkpoints = run.accelerator, run.partial / "checkpoints"
    final = checkpoints / f"step-{progress.step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        progress.wall_seconds = run.wall_seconds()
        write_atomic(tmp / "trainer_state.json", json.dumps(progress.to_dict()))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(checkpoints.glob("step-*[0-9]"))[: -run.s.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------------------------
# 5. Pieces of the run


def quiet_libraries(main_process: bool) -> None:
    import warnings

    import datasets
    import transformers

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    if main_process:
        transformers.logging.set_verbosity_warning()
    else:
        transformers.logging.set_verbosity_error()


def make_say(accelerator):
    def say(message: str) -> None:
        if accelerator.is_main_process:
            tqdm.write(message, file=sys.stderr)

    return say


def resolve_precision(s: Settings) -> str | None:
    """accelerate's mixed_precision for --precision (None: what accelerate launch was given)."""
    if s.precision == "auto" and os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None  # accelerate launch --mixed_precision, or its config file
    precision = device_precision(s.cpu) if s.precision == "auto" else s.precision
    return {"fp32": "no"}.get(precision, precision)


def device_precision(cpu: bool = False) -> str:
    """What --precision auto picks on this machine: bf16, fp16 or fp32."""
    if torch.cuda.is_available() and not cpu:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    from dungeon.models import cpu_has_fast_bf16

    # Without AVX-512-BF16 or AMX, bf16 matmuls on a CPU are emulated: far slower than fp32.
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def make_accelerator(s: Settings, partial: Path, use_cpu: bool) -> Accelerator:
    """The Accelerator of a run: precision, accumulation, trackers, torch.compile."""
    tracker = s.report_to
    if tracker == "auto":
        tracker = "tensorboard" if importlib.util.find_spec("tensorboard") else "none"
    return Accelerator(
        mixed_precision=resolve_precision(s),
        gradient_accumulation_steps=s.grad_accum,
        cpu=use_cpu,
        log_with=None if tracker == "none" else tracker,
        project_config=ProjectConfiguration(
            project_dir=str(partial), logging_dir=str(partial / "logs")
        ),
        dynamo_backend="inductor" if s.compile else None,
    )


def make_dataloaders(s: Settings, train_blocks, eval_blocks) -> tuple[DataLoader, DataLoader]:
    """Training blocks in an order that depends only on the seed and the epoch; held-out
    blocks in order."""
    train_blocks, eval_blocks = train_blocks.with_format("torch"), eval_blocks.with_format("torch")
    # Own generators: a DataLoader otherwise draws a seed from the global RNG each time it is
    # iterated, and a resumed run (one iteration fewer) would get other dropout masks.
    train_dl = DataLoader(
        train_blocks,
        batch_size=s.batch_size,
        sampler=EpochShuffle(len(train_blocks), s.seed),
        num_workers=s.dataloader_workers,
        generator=torch.Generator().manual_seed(s.seed),
    )
    eval_dl = DataLoader(
        eval_blocks,
        batch_size=s.batch_size,
        num_workers=s.dataloader_workers,
        generator=torch.Generator().manual_seed(s.seed),
    )
    return train_dl, eval_dl


def build_model(s: Settings, base_path: str, config=None):
    """The model to train: the base (or a random init of ``config``), wrapped for LoRA unless
    --full. Returns ``(model, parameters of the base, LoRA target modules or None)``."""
    from transformers import AutoModelForCausalLM

    if s.from_scratch:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    if s.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if s.full:
        return model, n_params, None
    from peft import get_peft_model

    lora = lora_config(s, model)
    targets = lora.target_modules
    targets = targets if isinstance(targets, str) else sorted(targets)
    return get_peft_model(model, lora), n_params, targets


def param_groups(named, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices, none on biases and norms."""
    named = list(named)
    decay = [p for n, p in named if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in named if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay}]


def lora_config(s: Settings, model):
    """LoRA on the attention and MLP projections the architecture has (--lora-targets to pick)."""
    from peft import LoraConfig
    from transformers.pytorch_utils import Conv1D

    if s.lora_targets == "all-linear":
        targets = "all-linear"
    elif s.lora_targets:
        targets = [t.strip() for t in s.lora_targets.split(",") if t.strip()]
    else:
        targets = LORA_TARGETS.get(model.config.model_type, "all-linear")
    # GPT-2's Conv1D layers store weights as (in, out): LoRA must be told (fan_in_fan_out).
    names = set(targets) if isinstance(targets, list) else set()
    conv1d = any(
        isinstance(m, Conv1D) and n.rsplit(".", 1)[-1] in names for n, m in model.named_modules()
    )
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=s.lora_r,
        lora_alpha=s.lora_alpha,
        lora_dropout=s.lora_dropout,
        target_modules=targets,
        fan_in_fan_out=conv1d,
    )


def warmup_cosine(warmup: int, total: int, floor: float):
    """LR multiplier: linear warmup to 1, then cosine decay to ``floor`` at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def keep_only_trainable(models, weights, output_dir) -> None:
    """LoRA checkpoints hold the adapter (plus optimizer and RNG), not a copy of the base."""
    for model, state in zip(models, weights):
        keep = {n for n, p in model.named_parameters() if p.requires_grad}
        for key in [k for k in state if k not in keep]:
            del state[key]


@torch.no_grad()
def held_out_loss(model, eval_dl, accelerator) -> float:
    """Mean next-token loss over every real (non-padding) held-out token, on all processes."""
    model.eval()
    total = count = 0.0
    for batch in eval_dl:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        per_token = F.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), labels, ignore_index=-100, reduction="none"
        )
        # Per block, so gather_for_metrics can drop the blocks repeated to even out processes.
        sums, counts = accelerator.gather_for_metrics((per_token.sum(1), (labels != -100).sum(1)))
        total += sums.double().sum().item()
        count += counts.double().sum().item()
    model.train()
    return total / max(count, 1.0)


@torch.no_grad()
def sample_continuation(model, tokenizer, prompt, s: Settings, accelerator, seed, devices) -> str:
    """A short sampled continuation from its own seed: training's RNG stream is untouched."""
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.eval()
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    ids = ids[:, -max(1, s.block_size - s.sample_tokens) :].to(accelerator.device)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = unwrapped.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=s.sample_tokens,
            do_sample=True,
            temperature=0.8,
            top_p=0.92,
            pad_token_id=tokenizer.pad_token_id,
        )
    unwrapped.train()
    text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    ends = [i for i in (text.find(stop) for stop in STOP_STRINGS) if i >= 0]
    return text[: min(ends)] if ends else text  # as play would show it


def save_model(accelerator, model, tokenizer, target: Path, s: Settings) -> None:
    """Write the model (LoRA: the adapter only) to ``target`` atomically; all processes call it."""
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)  # gathers sharded (FSDP / ZeRO-3) weights
    if accelerator.is_main_process:
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped = accelerator.unwrap_model(model)
        if not s.full:
            # Play finds the base by the name the user gave (smollm2-135m, gpt2, a folder).
            unwrapped.peft_config["default"].base_model_name_or_path = s.base
            unwrapped.save_pretrained(tmp, state_dict=state_dict, save_embedding_layers=False)
        else:
            unwrapped.config.use_cache = True  # off for gradient checkpointing; play wants it
            unwrapped.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
            unwrapped.config.use_cache = not s.gradient_checkpointing
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    accelerator.wait_for_everyone()


def weights_digest(model) -> str:
    """sha256 of the trainable weights: data-parallel processes must all end with the same."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def peak_memory_mb() -> tuple[float, str]:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_max_rss"


def device_peak_flops(s: Settings, device) -> float | None:
    if s.peak_tflops:
        return s.peak_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((t * 1e12 for key, t in PEAK_TFLOPS.items() if key in name), None)


def finish_folder(
    s: Settings, progress: Progress, derived, exported, digests, peak_flops, partial, out
) -> None:
    """Lift the exported model to the top of NAME.partial, add the card, rename it to NAME."""
    for item in (partial / "best").iterdir():
        item.replace(partial / item.name)
    shutil.rmtree(partial / "best")
    shutil.rmtree(partial / "checkpoints", ignore_errors=True)

    evals, baseline = progress.evals, progress.baseline or {}
    final = evals[-1] if evals and evals[-1]["step"] > 0 else {}
    chosen = final
    if exported == "best":
        chosen = next((e for e in evals if e["step"] == progress.best_step), final)
    timed = progress.timed_seconds
    tok_s = progress.timed_tokens / timed if timed > 0 else None
    memory, memory_kind = peak_memory_mb()
    results = {
        "steps": progress.step,
        "exported": exported,
        "exported_step": chosen.get("step", progress.step),
        "eval_loss_before": baseline.get("eval_loss"),
        "perplexity_before": baseline.get("perplexity"),
        "eval_loss_after": chosen.get("eval_loss"),
        "perplexity_after": chosen.get("perplexity"),
        "final_eval_loss": final.get("eval_loss"),
        "final_train_loss": progress.last_train_loss,
        "best_step": progress.best_step,
        "train_tokens": progress.train_tokens,
        "train_seconds": progress.train_seconds,
        "train_tokens_per_s": tok_s,
        "mfu": 6 * derived["parameters"] * tok_s / peak_flops if tok_s and peak_flops else None,
        "peak_mem_mb": memory,
        "peak_mem_kind": memory_kind,
        "wall_seconds": progress.wall_seconds,
        "history": progress.history,
        "evals": evals,
        "samples": progress.samples[-3:],
    }
    if digests is not None:
        results["rank_weight_sha256"] = digests
        results["ranks_in_sync"] = len(set(digests)) == 1
    meta = {
        "version": DUNGEON_JSON_VERSION,
        "format": FormatSpec().to_dict(),
        "base": s.base,
        "kind": s.kind,
        "training": {**asdict(s), **derived},
        "results": results,
    }
    write_atomic(partial / "dungeon.json", json.dumps(meta, indent=2))
    plotted = plot_losses(progress, partial / "loss.png")
    (partial / "README.md").write_text(model_card(s, meta, plotted), encoding="utf-8")
    (partial / "settings.json").unlink(missing_ok=True)

    if out.exists():  # --overwrite: swap the old folder out, then delete it
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        out.rename(old)
        partial.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        partial.rename(out)


def plot_losses(progress: Progress, path: Path) -> bool:
    """loss.png: training loss at each log step and held-out loss at each evaluation."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    if progress.history:
        hist = progress.history
        ax.plot([h["step"] for h in hist], [h["train_loss"] for h in hist], label="train")
    if progress.evals:
        evals = progress.evals
        ax.plot([e["step"] for e in evals], [e["eval_loss"] for e in evals], "o-", label="held-out")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def model_card(s: Settings, meta: dict, plotted: bool) -> str:
    t, r = meta["training"], meta["results"]

    def num(x, spec=".3f"):
        return "n/a" if x is None else format(x, spec)

    kind = "LoRA adapter" if s.kind == "lora" else "fully fine-tuned model"
    lora = f" (r={s.lora_r}, alpha={s.lora_alpha}, on {t['lora_targets']})" if not s.full else ""
    before = "random init" if s.from_scratch else "zero-shot base"
    processes = "process" if t["world_size"] == 1 else "processes"
    stats = t["data_stats"]
    lines = [
        f"# {s.output_dir.name}",
        "",
        f"A {kind} for dungeon, a text-adventure engine: `{s.base}` "
        f"{'trained from a random init' if s.from_scratch else 'fine-tuned'} on adventure "
        f"stories in the dungeon story format (v{meta['format']['version']}).",
        "",
        "```",
        f"dungeon play --model {s.output_dir}",
        "```",
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| base | `{s.base}` |",
        f"| kind | {s.kind}{lora} |",
        f"| data | `{s.data}`: {t['train_stories']} training stories "
        f"({stats['train']['tokens']:,} tokens), {len(t['val_stories'])} held out "
        f"({stats['validation']['tokens']:,} tokens) |",
        f"| steps | {r['steps']} of {t['tokens_per_step']:,} tokens ({s.batch_size} x "
        f"{s.block_size} x {s.grad_accum} accumulation x {t['world_size']} {processes}) |",
        f"| optimizer | AdamW, lr {t['peak_lr']:g}, {t['warmup_steps']} warmup steps, cosine "
        f"to {s.min_lr_ratio:g}x |",
        f"| precision | {t['precision'].replace('no', 'fp32')} on {t['device']} |",
        f"| wall time | {r['wall_seconds'] / 60:.1f} min ({num(r['train_tokens_per_s'], ',.0f')} "
        "training tokens/s) |",
        "",
        "## Held-out results",
        "",
        "| | loss | perplexity |",
        "|---|---|---|",
        f"| before ({before}) | {num(r['eval_loss_before'])} | "
        f"{num(r['perplexity_before'], '.2f')} |",
        f"| after (step {r['exported_step']}, {r['exported']}) | {num(r['eval_loss_after'])} | "
        f"{num(r['perplexity_after'], '.2f')} |",
        "",
    ]
    if plotted:
        lines += ["![loss curve](loss.png)", ""]
    lines += [
        "## Reproduce",
        "",
        "```",
        "python " + " ".join(t["command"]),
        "```",
        "",
        "`dungeon.json` beside this card records the story format, every setting and all results.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("finetune: interrupted", file=sys.stderr)
        sys.exit(130)
