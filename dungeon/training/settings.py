"""The settings of a fine-tuning run: one dataclass, and the command line built from its fields.

Light to import (no torch): ``dungeon finetune --help`` answers at once. The run itself is
dungeon.training.finetune.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from pathlib import Path

from dungeon.builtin_model import BUILTIN_MODEL

DUNGEON_JSON_VERSION = 1
# Only these may change when a run is resumed: they touch neither the data nor the maths.
RESUME_MAY_CHANGE = {
    "resume", "overwrite", "eval_every", "save_every", "keep_checkpoints", "log_every",
    "sample_tokens", "report_to", "dataloader_workers", "preprocessing_workers", "slow_down",
    "threads",
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

    data: list[str] = field(
        default_factory=lambda: ["stories"],
        metadata={
            "help": "a story folder (.txt/.md, any shape), a text file, JSONL, CSV/TSV, a saved "
            "dataset or a hub dataset; repeat for several, PATH:WEIGHT to weight one "
            "(default: stories)",
            "action": "append",
            "metavar": "SOURCE[:WEIGHT]",
        },
    )
    separator: str | None = arg(
        None, "marker between the stories of a text file (default: <|endoftext|> where it occurs)"
    )
    text_column: str = arg("text", "the column of a CSV/TSV file or dataset holding a story")
    encoding: str | None = arg(None, "the text files' encoding (default: UTF-8, checked)")
    keep_actions: bool = arg(False, "train on action lines as written, not as play renders them")
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
    threads: int | None = arg(
        None,
        "torch CPU threads (default: torch's, one per core); 1 is faster on a 2-core machine "
        "that other jobs share",
        type=optional(int),
    )
    peak_tflops: float | None = arg(None, "peak TFLOP/s for MFU (known GPUs: automatic)", type=optional(float))  # fmt: skip
    preprocessing_workers: int | None = arg(None, "tokenizer processes (default: by size)", type=optional(int))  # fmt: skip
    dataloader_workers: int = arg(0, "DataLoader worker processes")
    report_to: str = arg("auto", "tensorboard, none, or auto", choices=["auto", "tensorboard", "none"])  # fmt: skip
    resume: bool = arg(False, "continue the unfinished run in <output>.partial")
    overwrite: bool = arg(False, "replace an existing output folder")
    slow_down: float = arg(0.0, argparse.SUPPRESS)  # seconds of sleep per step, for tests

    def __post_init__(self) -> None:
        if self.data is None:  # no --data on the command line
            self.data = ["stories"]
        elif isinstance(self.data, (str, Path)):  # Settings(data="stories")
            self.data = [str(self.data)]
        self.data = [str(d) for d in self.data]

    def read_options(self):
        """How to read the --data sources (raises ValueError on a bad --separator)."""
        from dungeon.corpus.readers import ReadOptions

        return ReadOptions(self.separator, self.encoding, self.text_column, self.keep_actions)

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
        for name in ("max_steps", "max_train_samples", "max_eval_samples", "preprocessing_workers",
                     "threads"):  # fmt: skip
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
        import torch

        gpu = torch.cuda.is_available() and not self.cpu
        if self.precision == "fp16" and not gpu:
            p.append("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
        if self.precision == "bf16" and gpu and not torch.cuda.is_bf16_supported():
            p.append("this GPU has no bf16: use --precision fp16 (loss-scaled) or auto")
        return p


def parse_settings(argv: list[str] | None, prog: str = "finetune.py") -> Settings:
    return Settings(**vars(settings_parser(prog).parse_args(argv)))


DATA_FLAGS = ("data", "separator", "text_column", "encoding", "keep_actions", "val_fraction",
              "val_list", "seed", "block_size")  # fmt: skip
"""The flags that choose and read the stories: ``dungeon check-corpus`` takes them too."""


def settings_parser(
    prog: str = "finetune.py", parser=None, only: tuple[str, ...] | None = None
) -> argparse.ArgumentParser:
    """The command line of Settings (``parser``: add the flags to an existing one; ``only``:
    just these fields' flags)."""
    parser = parser or argparse.ArgumentParser(
        prog=prog,
        description="Fine-tune a causal LM on adventure stories (LoRA or full). See docs/finetune.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in fields(Settings):
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        meta = dict(f.metadata)
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action="store_true", help=meta["help"])
        elif meta.get("action") == "append":  # None: Settings fills in the default
            parser.add_argument(flag, default=None, type=str, **meta)
        else:
            meta.setdefault("type", type(f.default) if f.default is not None else str)
            parser.add_argument(flag, default=f.default, **meta)
    return parser
