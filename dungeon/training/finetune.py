"""Fine-tune GPT-2 or any causal LM on adventure stories: LoRA or full, one process or many.

    dungeon finetune                                            # LoRA on smollm2-135m, stories/
    dungeon finetune --data my-stories/ --data extra.jsonl:2    # your corpus, any shape
    dungeon finetune --base gpt2 --full --output runs/gpt2-full
    dungeon finetune --max-steps 20 --block-size 128            # a smoke run
    dungeon finetune --output runs/adventure --resume           # go on after a stop or a crash
    python scripts/finetune.py ...                              # the same, from a checkout
    accelerate launch -m dungeon finetune ...                   # the same run under accelerate
    accelerate launch --config_file configs/accelerate/ddp.yaml -m dungeon finetune --full ...
    torchrun --nproc_per_node 2 -m dungeon finetune ...         # data-parallel on CPUs (gloo)

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

import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict

import torch
from accelerate import DistributedType, PartialState
from accelerate.utils import gather_object, set_seed
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from dungeon.saves import write_atomic
from dungeon.training.build import (
    build_model,
    forward_autocast,
    keep_only_trainable,
    make_accelerator,
    make_dataloaders,
    make_say,
    param_groups,
    quiet_libraries,
    warmup_cosine,
)
from dungeon.training.checks import HELD_OUT_LIST, Inputs, check_inputs, held_out_list
from dungeon.training.output import device_peak_flops, finish_folder, save_model, weights_digest
from dungeon.training.settings import Settings, parse_settings
from dungeon.training.state import (
    Progress,
    Run,
    StopRequest,
    Window,
    evaluate,
    log_sample,
    record_eval,
    save_checkpoint,
)


def main(argv: list[str] | None = None, prog: str = "finetune.py") -> int:
    """Run a fine-tuning; returns the exit code (0 done, 2 bad input, 128+N stopped by signal
    N). ``prog`` is the command as the user typed it, for help and the model card."""
    argv = sys.argv[1:] if argv is None else list(argv)
    s = parse_settings(argv, prog)
    started = time.time()
    if s.threads and s.threads > 0:
        torch.set_num_threads(s.threads)
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
    command = ["dungeon", "finetune"] if prog == "dungeon finetune" else ["scripts/finetune.py"]
    return train(s, inputs, [*command, *argv], started, use_cpu)


def train(s: Settings, inputs: Inputs, command: list[str], started: float, use_cpu: bool) -> int:
    partial, out = inputs.partial, s.output_dir

    # --- The accelerator: precision, accumulation, trackers, torch.compile ---------------------
    accelerator, own_autocast = make_accelerator(s, partial, use_cpu)
    precision = "bf16" if own_autocast else accelerator.mixed_precision
    say = make_say(accelerator)
    set_seed(s.seed)
    world = accelerator.num_processes
    if accelerator.is_main_process:
        if s.overwrite and partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True, exist_ok=True)
        if not s.resume:
            record = {"settings": asdict(s), "corpus_sha256": inputs.corpus_sha256, "argv": command}  # fmt: skip
            write_atomic(partial / "settings.json", json.dumps(record, indent=2))
        # Which stories are held out, as a validation list: --val-list FILE repeats the split.
        write_atomic(partial / HELD_OUT_LIST, held_out_list(inputs.read, command))
    accelerator.wait_for_everyone()

    # --- Data: packed blocks; the order depends only on the seed and the epoch ----------------
    train_blocks, eval_blocks = inputs.blocks["train"], inputs.blocks["validation"]
    if s.max_train_samples:
        train_blocks = train_blocks.select(range(min(s.max_train_samples, len(train_blocks))))
    if s.max_eval_samples:
        eval_blocks = eval_blocks.select(range(min(s.max_eval_samples, len(eval_blocks))))
    train_dl, eval_dl = make_dataloaders(s, train_blocks, eval_blocks)
    st = inputs.stats
    say(inputs.read.table())
    names = inputs.read.held_out_names
    say(
        f"held out ({len(names)}): {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}; "
        f"the list is in {out / HELD_OUT_LIST}"
    )
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
        f"precision {precision.replace('no', 'fp32')}, {world} process(es) on {accelerator.device}"
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
        own_autocast=own_autocast,
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
                    with forward_autocast(own_autocast):
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
            "command": command,
            "world_size": world,
            "total_steps": total_steps,
            "epochs_run": epochs,
            "steps_per_epoch": steps_per_epoch,
            "warmup_steps": warmup,
            "peak_lr": s.peak_lr,
            "precision": precision,
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
