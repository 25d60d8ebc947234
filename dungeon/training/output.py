"""What a run leaves behind: the model folder, dungeon.json, the model card and the loss curve."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dungeon.format import FormatSpec
from dungeon.saves import write_atomic
from dungeon.training.settings import DUNGEON_JSON_VERSION, PEAK_TFLOPS, Settings

if TYPE_CHECKING:
    from dungeon.training.state import Progress


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
        f"| data | `{' '.join(s.data)}`: {t['train_stories']} training stories "
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
        ("" if t["command"][0] == "dungeon" else "python ") + " ".join(t["command"]),
        "```",
        "",
        "`dungeon.json` beside this card records the story format, every setting and all results.",
        "",
    ]
    return "\n".join(lines)
