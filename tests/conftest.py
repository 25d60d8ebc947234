"""Shared fixtures. Tests never reach the hub: HF_HUB_OFFLINE is forced here too."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
from prompt_toolkit.output import DummyOutput

from dungeon.format import FormatSpec

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _user_dirs(tmp_path_factory, monkeypatch):
    """Keep saves, history and config of tests out of the real user folders.

    The cache folder is left alone on purpose: converted models and the GPT-2 tokenizer are
    expensive to rebuild and read-only for tests.
    """
    base = tmp_path_factory.mktemp("user")
    monkeypatch.setenv("DUNGEON_DATA_DIR", str(base / "data"))
    monkeypatch.setenv("DUNGEON_CONFIG_DIR", str(base / "config"))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A tiny random GPT-2 folder with the real GPT-2 BPE tokenizer."""
    from dungeon.tiny import make_tiny_gpt2

    return make_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture
def one_torch_thread():
    """The tiny model gains nothing from threads, and they stall when other jobs share the CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_lora(tiny_gpt2, tmp_path_factory) -> Path:
    """A LoRA adapter over the tiny GPT-2, with non-zero weights so it changes the output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    config = LoraConfig(
        r=4,
        lora_alpha=16,
        target_modules=["c_attn"],
        init_lora_weights=False,
        fan_in_fan_out=True,
    )
    model = get_peft_model(base, config)
    out = tmp_path_factory.mktemp("lora")
    model.save_pretrained(out)
    info = {"format": FormatSpec().to_dict(), "base": str(tiny_gpt2), "training": {}}
    (out / "dungeon.json").write_text(json.dumps(info))
    return out


def load_script(name: str):
    """scripts/<name>.py as a module (scripts are programs, not part of the package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


class RecordingOutput(DummyOutput):
    """A DummyOutput that keeps the text written to it."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, data: str) -> None:
        self.parts.append(data)

    def write_raw(self, data: str) -> None:
        self.parts.append(data)

    @property
    def text(self) -> str:
        return "".join(self.parts)
