"""The training loop's state, and what it does between steps: evaluate, sample, checkpoint."""

from __future__ import annotations

import json
import math
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader

from dungeon.format import STOP_STRINGS
from dungeon.saves import write_atomic
from dungeon.training.build import forward_autocast
from dungeon.training.output import save_model
from dungeon.training.settings import Settings


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
    own_autocast: bool = False
    """bf16 on the CPU: the loop's own autocast around each forward (build.make_accelerator)."""

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
    # Evaluation never moves training's RNG.
    with torch.random.fork_rng(devices=run.no_rng), forward_autocast(run.own_autocast):
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
