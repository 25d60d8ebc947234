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


def tiny_llama_generator(*, lora: bool = False, settings=None, **config):
    """A TransformersGenerator over a tiny random Llama on the GPT-2 tokenizer: it runs on
    LlamaDecoder, as the built-in model does. ``lora`` adds a random unmerged adapter;
    ``config`` overrides LlamaConfig fields (``tie_word_embeddings=True``: a tied random
    model mostly repeats the last token, an untied one writes varied tokens)."""
    from dungeon.hf_generator import TransformersGenerator

    tok = load_gpt2_tokenizer()
    ends = dict(bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    model = make_tiny_llama(len(tok), **{**ends, **config})
    if lora:
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "v_proj", "gate_proj", "down_proj"]
        lora_config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
        model = get_peft_model(model, lora_config).eval()
    return TransformersGenerator(model, tok, name="tiny-llama", settings=settings, fast_decode=True)


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


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m dungeon.tiny OUT_DIR")
    print(make_tiny_gpt2(Path(sys.argv[1])))
