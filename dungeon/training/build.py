"""The pieces a run is built from: accelerator, precision, data loaders, model, LoRA, schedule."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dungeon.corpus.training import EpochShuffle
from dungeon.training.settings import LORA_TARGETS, Settings


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
    return "bf16" if cpu_bf16_is_faster() else "fp32"


BF16_MIN_SPEEDUP = 1.15
"""bf16 autocast on a CPU must beat fp32 by this much to be chosen (the casts cost too)."""


@functools.cache
def cpu_bf16_is_faster() -> bool:
    """bf16 autocast trains faster than fp32 on this CPU: it has AVX-512-BF16 or AMX, and a
    measurement agrees. Without them bf16 matmuls are emulated, several times slower than
    fp32 (10x on an AVX2-only AMD EPYC), so the measurement is not even tried there."""
    from dungeon.models import cpu_has_fast_bf16

    return cpu_has_fast_bf16() and bf16_speedup() >= BF16_MIN_SPEEDUP


def bf16_speedup(rows: int = 1024, width: int = 576, out: int = 1536, repeats: int = 5) -> float:
    """fp32 time / bf16-autocast time of a linear layer's forward and backward, the bulk of a
    LoRA or full training step (SmolLM2-135M's MLP shape, one 4 x 256 batch). Best of
    ``repeats``, so neighbours on a shared machine count less; about half a second."""
    import time

    layer = torch.nn.Linear(width, out)
    x = torch.randn(rows, width, requires_grad=True)

    def best(bf16: bool) -> float:
        times = []
        for _ in range(repeats + 1):  # the first run warms up (oneDNN picks its kernels)
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y = layer(x)
            y.float().square().mean().backward()
            times.append(time.perf_counter() - start)
        return min(times[1:])

    with torch.random.fork_rng():
        return best(False) / max(best(True), 1e-9)


def make_accelerator(s: Settings, partial: Path, use_cpu: bool) -> tuple[Accelerator, bool]:
    """The Accelerator of a run (precision, accumulation, trackers, torch.compile), and whether
    the loop autocasts to bf16 itself.

    bf16 on a CPU is our own ``torch.autocast`` around the forward pass, not accelerate's
    mixed precision: accelerate also casts every output of the forward pass back to fp32,
    which for a causal LM is a full fp32 copy of the logits (4 x 256 x 49,152 for SmolLM2)
    on every micro-batch, though the loop only needs the loss. GPUs keep accelerate's
    (loss scaling for fp16, FSDP and DeepSpeed precision policies)."""
    tracker = s.report_to
    if tracker == "auto":
        tracker = "tensorboard" if importlib.util.find_spec("tensorboard") else "none"
    precision = resolve_precision(s)
    on_cpu = use_cpu or s.cpu or not torch.cuda.is_available()
    own_autocast = precision == "bf16" and on_cpu
    accelerator = Accelerator(
        mixed_precision="no" if own_autocast else precision,
        gradient_accumulation_steps=s.grad_accum,
        cpu=use_cpu,
        log_with=None if tracker == "none" else tracker,
        project_config=ProjectConfiguration(
            project_dir=str(partial), logging_dir=str(partial / "logs")
        ),
        dynamo_backend="inductor" if s.compile else None,
    )
    return accelerator, own_autocast


def forward_autocast(own_autocast: bool):
    """The context the loop runs each forward pass in (see make_accelerator)."""
    if own_autocast:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers 5 renamed it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
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
