"""Ship a trained LoRA run as the package's default adventure adapter.

    python scripts/ship_adapter.py runs/adventure [--dest dungeon/adapters/adventure]
    python scripts/ship_adapter.py runs/adventure --sampling temperature=0.5

finetune.py saves the trainable LoRA weights in fp32. This copies a finished LoRA run of the
built-in base into the package with its weights in 16-bit safetensors (fp16 by default: the
LoRA factors are small numbers, where fp16 keeps three more bits than bf16), plus
adapter_config.json, dungeon.json (story format, settings, results), the model card and the
loss curve. The tokenizer is left out: the adapter adds no tokens, so play takes the base's.
``--sampling KEY=VALUE`` (repeatable) writes the model's recommended play settings into the
shipped dungeon.json (``"sampling"``): play uses them where the user chose nothing else.

It refuses a run that is not a LoRA adapter of the built-in base, an unfinished run, or a
result over the size limit, and it replaces the destination folder only once the new one is
complete, so a failed copy never leaves a half-written adapter behind.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from dungeon.builtin_model import BUILTIN_MODEL  # noqa: E402
from dungeon.generator import SamplingSettings  # noqa: E402
from dungeon.model_info import check_sampling  # noqa: E402

MAX_BYTES = 20 * 1024 * 1024
COPIED = ("adapter_config.json", "dungeon.json", "README.md", "loss.png")
DTYPES = ("fp16", "bf16")


def problems(run: Path) -> list[str]:
    """What stops ``run`` from being shipped (empty when nothing does)."""
    if run.with_name(run.name + ".partial").exists() and not run.exists():
        return [f"{run} is unfinished ({run.name}.partial exists): finish it with --resume"]
    if not run.is_dir():
        return [f"no run folder at {run}"]
    found = []
    config_file = run / "adapter_config.json"
    if not config_file.is_file():
        return [f"{run} has no adapter_config.json: ship a LoRA run (not --full)"]
    if not (run / "adapter_model.safetensors").is_file():
        found.append(f"{run} has no adapter_model.safetensors")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        return [f"{config_file}: unreadable ({err})"]
    if config.get("base_model_name_or_path") != BUILTIN_MODEL:
        found.append(
            f"the adapter's base is {config.get('base_model_name_or_path')!r}; the shipped "
            f"adapter must be trained on --base {BUILTIN_MODEL}"
        )
    if not (run / "dungeon.json").is_file():
        found.append(f"{run} has no dungeon.json: it was not written by scripts/finetune.py")
    return found


def parse_sampling(pairs: list[str]) -> dict:
    """``KEY=VALUE`` pairs as recommended sampling settings, checked as play checks them;
    raises ValueError naming every bad pair."""
    values, found = {}, []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            found.append(f"--sampling {pair!r}: write KEY=VALUE, e.g. temperature=0.5")
            continue
        try:
            values[key] = getattr(SamplingSettings().with_value(key, raw.strip()), key)
        except ValueError as err:
            found.append(f"--sampling {pair!r}: {err}")
    if not found:
        found = [f"--sampling: {problem}" for problem in check_sampling(values)[1]]
    if found:
        raise ValueError("; ".join(found))
    return values


def to_16bit(src: Path, dst: Path, dtype: str) -> dict:
    """Write ``src``'s tensors to ``dst`` in 16 bits; return the largest rounding error."""
    import torch
    from safetensors.torch import load_file, save_file

    target = torch.float16 if dtype == "fp16" else torch.bfloat16
    tensors = load_file(src)
    out, worst, count = {}, 0.0, 0
    for name, t in tensors.items():
        if t.is_floating_point():
            if t.abs().max() > torch.finfo(target).max:
                raise ValueError(f"{name} does not fit in {dtype}; try --dtype bf16")
            low = t.to(target)
            worst = max(worst, float((low.float() - t.float()).abs().max()))
            t = low
        out[name] = t.contiguous()
        count += t.numel()
    save_file(out, str(dst), metadata={"format": "pt"})
    return {"tensors": len(out), "parameters": count, "max_abs_rounding_error": worst}


def shipped_note(run: Path, dtype: str, sampling: dict | None = None) -> str:
    flags = "".join(f" --sampling {k}={v}" for k, v in (sampling or {}).items())
    advice = (
        f" It recommends {', '.join(f'{k} = {v}' for k, v in sampling.items())} for play "
        "(dungeon.json's `sampling`; a config file or flag still wins)."
        if sampling
        else ""
    )
    return (
        "\n## Shipped in the package\n\n"
        f"Copied from `{run}` with `python scripts/ship_adapter.py {run} --dtype {dtype}{flags}`: "
        f"the LoRA weights in {dtype} safetensors. `dungeon play` uses this adapter by default "
        f"on `{BUILTIN_MODEL}`; `dungeon play --no-adapter` plays the raw base.{advice}\n"
    )


def write_sampling(path: Path, sampling: dict) -> None:
    """Put the recommended sampling into a dungeon.json (replacing any it had)."""
    info = json.loads(path.read_text(encoding="utf-8"))
    info["sampling"] = sampling
    path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def ship(run: Path, dest: Path, dtype: str, sampling: dict | None = None) -> dict:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        info = to_16bit(run / "adapter_model.safetensors", tmp / "adapter_model.safetensors", dtype)
        for name in COPIED:
            if (run / name).is_file():
                shutil.copy2(run / name, tmp / name)
        if sampling:
            write_sampling(tmp / "dungeon.json", sampling)
        card = tmp / "README.md"
        if card.is_file():
            with open(card, "a", encoding="utf-8") as f:
                f.write(shipped_note(run, dtype, sampling))
        size = sum(p.stat().st_size for p in tmp.iterdir())
        if size > MAX_BYTES:
            raise ValueError(
                f"the adapter folder would be {size / 2**20:.1f} MB, over the "
                f"{MAX_BYTES / 2**20:.0f} MB limit: train a smaller --lora-r"
            )
        old = dest.with_name(dest.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**info, "dtype": dtype, "bytes": size, "dest": str(dest), "sampling": sampling or {}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a finished LoRA run folder from scripts/finetune.py")
    p.add_argument(
        "--dest",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "dungeon" / "adapters" / "adventure",
        help="where the package looks for its adapter (default: %(default)s)",
    )
    p.add_argument("--dtype", choices=DTYPES, default="fp16")
    p.add_argument(
        "--sampling",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a recommended play setting written into dungeon.json, e.g. temperature=0.5 "
        "(repeatable; keys as in `dungeon play`'s config file)",
    )
    args = p.parse_args(argv)
    try:
        sampling = parse_sampling(args.sampling)
    except ValueError as err:
        print(f"ship_adapter: {err}", file=sys.stderr)
        return 2
    found = problems(args.run)
    if found:
        for line in found:
            print(f"ship_adapter: {line}", file=sys.stderr)
        return 2
    try:
        result = ship(args.run, args.dest, args.dtype, sampling)
    except (ValueError, OSError) as err:
        print(f"ship_adapter: {err}", file=sys.stderr)
        return 2
    print(
        f"shipped {result['parameters']:,} parameters ({result['dtype']}, "
        f"{result['bytes'] / 2**20:.1f} MB) to {result['dest']}; largest rounding error "
        f"{result['max_abs_rounding_error']:.2e}"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
