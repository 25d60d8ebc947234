"""``dungeon export RUN --merged OUT``: a standalone model folder any transformers user can load.

The folder holds the merged weights (model.safetensors), config.json, generation_config.json,
the tokenizer, dungeon.json (the story format to play it with, and the run's settings and
results) and README.md (a model card). ``dungeon play --model OUT`` plays it with no adapter and
no base download; ``AutoModelForCausalLM.from_pretrained(OUT)`` loads it anywhere.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from dungeon.builtin_model import Progress, report
from dungeon.export.output import atomic_output, check_space, check_target
from dungeon.export.source import ExportError, Source
from dungeon.format import FormatSpec

DUNGEON_JSON_VERSION = 1
DTYPES = ("auto", "float32", "bfloat16", "float16")
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def output_dtype(source: Source, dtype: str) -> str:
    """The precision the merged weights are written in: ``auto`` keeps the stored one."""
    if dtype not in DTYPES:
        raise ExportError(f"unknown --dtype {dtype!r}; use {', '.join(DTYPES)}")
    return source.stored_dtype if dtype == "auto" else dtype


def export_merged(
    source: Source,
    out: str | Path,
    *,
    dtype: str = "auto",
    force: bool = False,
    command: list[str] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write ``source`` as a standalone model folder at ``out``, atomically; return ``out``."""
    import torch

    from dungeon.models import _quiet_local_load

    out = Path(out)
    dtype = output_dtype(source, dtype)
    check_target(out, force=force, kind="folder")
    check_space(out, estimated_bytes(source, dtype))
    report(progress, f"Writing {out} ({dtype})")
    model = source.model
    with atomic_output(out, force=force, folder=True) as tmp:
        # Cast a copy of the weights, not the model: a GGUF written next from the same source
        # must see float32, not weights rounded to the folder's precision. Tied weights stay
        # one tensor.
        cast: dict[tuple, torch.Tensor] = {}
        state = {}
        for name, t in model.state_dict().items():
            key = (t.data_ptr(), tuple(t.shape))
            if key not in cast:
                cast[key] = t.detach().to(getattr(torch, dtype))
            state[name] = cast[key]
        model.config.use_cache = True
        with _quiet_local_load(True):  # no "Writing model shards" bar among the messages
            model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        del state, cast
        config = json.loads((tmp / "config.json").read_text())
        config["dtype"] = dtype  # what the file holds (transformers records the model's own)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        source.tokenizer.save_pretrained(tmp)
        meta = dungeon_json(source, dtype, command)
        (tmp / "dungeon.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        plotted = (source.path / "loss.png").is_file()
        if plotted:
            shutil.copyfile(source.path / "loss.png", tmp / "loss.png")
        (tmp / "README.md").write_text(model_card(source, out, meta, plotted), encoding="utf-8")
    return out


def estimated_bytes(source: Source, dtype: str = "auto") -> int:
    """About how large the weights of the merged folder will be."""
    n_params = sum(p.numel() for p in source.model.parameters())
    return n_params * _BYTES[output_dtype(source, dtype)]


def dungeon_json(source: Source, dtype: str, command: list[str] | None) -> dict:
    """The run's dungeon.json with kind ``merged`` and an ``export`` record.

    play reads ``format`` (dungeon.model_info.check_dungeon_json) and the recommended ``sampling``;
    ``training`` and ``results`` are the run's own, kept so the folder still says how it was made.
    """
    from dungeon import __version__

    info = dict(source.info or {})
    kind = {"lora": "merged", "full": "full", "base": "base"}[source.kind]
    meta = {
        "version": DUNGEON_JSON_VERSION,
        "format": info.get("format") or FormatSpec().to_dict(),
        "base": source.base,
        "kind": kind,
    }
    for key in ("sampling", "training", "results"):
        if key in info:
            meta[key] = info[key]
    meta["export"] = {
        "from": str(source.path),
        "from_kind": source.kind,
        "dtype": dtype,
        "command": command,
        "dungeon_version": __version__,
    }
    return meta


def model_card(source: Source, out: Path, meta: dict, plotted: bool) -> str:
    """README.md: what the folder is, how to play it, how it was trained and exported."""
    what = {
        "lora": f"the LoRA adapter `{source.name}` merged into its base `{source.base}`",
        "full": f"the fully fine-tuned model `{source.name}`",
        "base": f"the base model `{source.name}`",
    }[source.kind]
    cfg = source.model.config
    n_params = sum(p.numel() for p in source.model.parameters())
    lines = [
        f"# {out.name}",
        "",
        f"A standalone model for dungeon, a text-adventure engine: {what}, "
        f"{n_params / 1e6:.1f}M parameters ({cfg.model_type}), stored in "
        f"{meta['export']['dtype']}. It needs neither the adapter nor the base to run.",
        "",
        "```",
        f"dungeon play --model {out}",
        "```",
        "",
        "Any transformers program loads it with `AutoModelForCausalLM.from_pretrained`. It "
        "writes stories in the dungeon story format: a premise, then turns of `> You do "
        "something.` on a line of their own and the story's response. Stop generating at "
        + ", ".join(f"`{json.dumps(s)}`" for s in meta["format"].get("stop_strings", []))
        + ": each starts the player's next turn.",
        "",
    ]
    results = meta.get("results") or {}
    training = meta.get("training") or {}
    if results.get("perplexity_after") is not None:
        before, after = results.get("perplexity_before"), results["perplexity_after"]
        data = training.get("data", "?")
        data = ", ".join(map(str, data)) if isinstance(data, list) else data
        lines += [
            "## Training",
            "",
            f"Fine-tuned on `{data}` for {results.get('steps', '?')} "
            f"steps; held-out perplexity "
            f"{'n/a' if before is None else format(before, '.2f')} -> {after:.2f}.",
            "",
        ]
        if plotted:
            lines += ["![loss curve](loss.png)", ""]
    lines += ["## Reproduce", "", "```"]
    if training.get("command"):
        lines.append("python " + " ".join(training["command"]))
    command = meta["export"].get("command")
    lines.append(" ".join(command) if command else f"dungeon export {source.path} --merged {out}")
    lines += [
        "```",
        "",
        "`dungeon.json` beside this card records the story format, the training settings and "
        "results, and the export.",
        "",
    ]
    return "\n".join(lines)
