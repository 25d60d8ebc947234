"""Tiny randomly initialised GPT-2 models on the real GPT-2 BPE, for offline tests and smoke runs.

    python -m dungeon.tiny OUT_DIR     # writes a tiny GPT-2 model folder

Needs the tokenizer from scripts/fetch_gpt2_tokenizer.py (``make test`` runs it).
"""

from __future__ import annotations

import sys
from pathlib import Path

from dungeon.paths import gpt2_tokenizer_dir


class TokenizerMissing(RuntimeError):
    pass


def load_gpt2_tokenizer():
    from transformers import AutoTokenizer

    path = gpt2_tokenizer_dir()
    if not (path / "tokenizer.json").exists():
        raise TokenizerMissing(
            f"no GPT-2 tokenizer at {path}; run: python scripts/fetch_gpt2_tokenizer.py"
        )
    return AutoTokenizer.from_pretrained(path)


def make_tiny_gpt2(out_dir: Path, *, seed: int = 0, n_layer: int = 2, n_embd: int = 64) -> Path:
    """Save a randomly initialised GPT-2 (safetensors + tokenizer) to ``out_dir``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = load_gpt2_tokenizer()
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=512,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=4,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m dungeon.tiny OUT_DIR")
    print(make_tiny_gpt2(Path(sys.argv[1])))


def make_tiny_llama(vocab_size: int, *, seed: int = 0, **config):
    """A tiny random Llama (2 layers, hidden 64, 4 query heads over 2 key/value heads: the
    built-in base's grouped attention in miniature), in eval mode. ``config`` overrides or adds
    LlamaConfig fields (token ids, tied embeddings)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, **{**shape, **config})).eval()
