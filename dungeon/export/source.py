"""What ``dungeon export`` reads: a run folder, an adapter folder or the built-in base, merged.

    from dungeon.export.source import load_source
    source = load_source("runs/adventure")    # a LoRA run: base + adapter, merged in float32
    source.model, source.tokenizer, source.info  # the merged model, its tokenizer, dungeon.json

A LoRA adapter (a training run, or the shipped ``dungeon/adapters/adventure``) is applied to the
base its adapter_config.json (or dungeon.json) names and folded into it with peft's
``merge_and_unload``; a full run or any model folder is loaded as it is; ``smollm2-135m`` is the
built-in base. The merge runs in float32 whatever the stored precision, so the exported weights
round once, at the end. The same safety rules as play apply (no model code, no pickle unless
asked). torch, transformers and peft are imported inside the functions.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dungeon.builtin_model import BUILTIN_MODEL, Progress, ensure_builtin, report
from dungeon.errors import ModelNotFoundError, UnsafeModelError


class ExportError(ValueError):
    """An export cannot be done as asked; the message (one line) says why and what to do."""


@dataclass
class Source:
    """A model ready to export: base and adapter merged, in float32."""

    model: Any
    """The merged causal LM (a transformers PreTrainedModel, float32, on the CPU, eval mode)."""
    tokenizer: Any
    """Its tokenizer (the adapter folder's when it has one, else the base's)."""
    name: str
    """A short name for cards and GGUF metadata (the run folder's name)."""
    kind: str
    """``lora`` (an adapter merged into its base), ``full`` (a model folder) or ``base``."""
    path: Path
    """The folder the export reads (the run, the adapter, or the built-in cache)."""
    base: str | None
    """The base model as the run names it (LoRA and fine-tuned runs), else None."""
    info: dict | None
    """The folder's dungeon.json (story format, training settings, results), if it has one."""
    stored_dtype: str
    """The precision the weights were stored in (``float32``, ``bfloat16``...): the default
    precision of a merged export."""

    @property
    def model_type(self) -> str:
        return str(self.model.config.model_type)


def load_source(
    run: str | os.PathLike, *, allow_pickle: bool = False, progress: Progress | None = None
) -> Source:
    """Load ``run`` (a run or adapter folder, a model folder, or ``smollm2-135m``), merged.

    Raises ExportError (or ModelNotFoundError / UnsafeModelError from the model checks) with a
    one-line message before any weights are read when the folder is not something it can export.
    """
    from dungeon import models

    name = os.fspath(run)
    if name.strip().lower() == BUILTIN_MODEL:
        folder, kind = ensure_builtin(progress=progress), "base"
        label = BUILTIN_MODEL
    else:
        folder = Path(name).expanduser()
        label = folder.resolve().name if folder.exists() else folder.name
        kind = _folder_kind(folder)
    info = models.check_dungeon_json(folder) if kind != "base" else None

    base_dir, adapter_dir, base_name = folder, None, None
    if kind == "lora":
        adapter_config = models._check_adapter_folder(folder, allow_pickle)
        adapter_dir = folder
        base_name = adapter_config.get("base_model_name_or_path") or (info or {}).get("base")
        if not base_name:
            raise ExportError(f"{folder}/adapter_config.json names no base model")
        try:
            base_dir = Path(models.resolve_base(base_name, progress=progress))
        except ModelNotFoundError as err:
            raise ExportError(f"the base of {folder} ({base_name}): {err}") from None
        if not base_dir.is_dir():
            raise ExportError(
                f"the base of {folder} is the hub model {base_name!r}; exports read local "
                f"folders only: download it and point adapter_config.json at the folder"
            )
    else:
        base_name = (info or {}).get("base")
    models._check_model_folder(base_dir, allow_pickle)
    if kind == "lora":
        models.check_dungeon_json(base_dir)
    stored = _stored_dtype(base_dir)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report(progress, f"Loading {label} ({kind})")
    tok_dir = adapter_dir if adapter_dir and models._has_tokenizer(adapter_dir) else base_dir
    if not models._has_tokenizer(tok_dir):
        raise ExportError(f"{tok_dir} has no tokenizer (tokenizer.json or vocab.json)")
    tokenizer = AutoTokenizer.from_pretrained(tok_dir, trust_remote_code=False)
    with models._quiet_local_load(True):
        model = AutoModelForCausalLM.from_pretrained(
            base_dir,
            dtype=torch.float32,
            trust_remote_code=False,
            use_safetensors=None if allow_pickle else True,
        )
    if adapter_dir is not None:
        from peft import PeftModel

        report(progress, f"Merging the adapter {label} into {base_name}")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
            model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    model.eval()
    return Source(
        model=model,
        tokenizer=tokenizer,
        name=label,
        kind=kind,
        path=folder,
        base=base_name,
        info=info,
        stored_dtype=stored,
    )


def _folder_kind(folder: Path) -> str:
    if not folder.exists():
        partial = folder.with_name(folder.name + ".partial")
        if partial.is_dir():
            raise ExportError(
                f"the run {folder} has not finished ({partial} is still being written); finish "
                f"it (finetune.py --resume) or export a finished run"
            )
        raise ExportError(
            f"no folder at {folder}: give a training run folder, an adapter folder, a model "
            f"folder or {BUILTIN_MODEL!r}"
        )
    if not folder.is_dir():
        raise ExportError(f"{folder} is a file: give the model folder that holds it")
    if (folder / "adapter_config.json").is_file():
        return "lora"
    if (folder / "config.json").is_file():
        return "full"
    raise ExportError(
        f"{folder} is not a model folder: it has neither config.json (a model) nor "
        f"adapter_config.json (a LoRA adapter)"
    )


def _stored_dtype(folder: Path) -> str:
    """The dtype config.json records for the weights (float32 when it says nothing)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return "float32"
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    return dtype if dtype in ("float32", "float16", "bfloat16") else "float32"


__all__ = [
    "ExportError",
    "ModelNotFoundError",
    "Source",
    "UnsafeModelError",
    "load_source",
]
