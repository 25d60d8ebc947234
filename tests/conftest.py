"""Shared fixtures. Tests never reach the hub: HF_HUB_OFFLINE is forced here too."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

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
