"""Take a fine-tuned model to other runtimes: a standalone merged folder, or one GGUF file.

    dungeon export runs/adventure --merged exported/adventure      # transformers, dungeon play
    dungeon export runs/adventure --gguf adventure.gguf             # llama.cpp, KoboldCpp, Ollama
    dungeon export dungeon/adapters/adventure --gguf adventure-q8.gguf --gguf-type q8_0

    from dungeon.export import load_source, export_merged, export_gguf
    source = load_source("runs/adventure")          # base + LoRA, merged (float32)
    export_merged(source, "exported/adventure")
    export_gguf(source, "adventure.gguf", gguf_type="q8_0")

- source: what RUN is (a training run, an adapter folder, a model folder, ``smollm2-135m``) and
  the merged model it makes;
- merged: the standalone folder (safetensors, tokenizer, dungeon.json, model card);
- gguf_file: the GGUF writer (llama and GPT-2, f32/f16/bf16 and the Q8_0-Q4_0 types);
- output: atomic writes, the disk-space check, --force;
- command: the ``dungeon export`` subcommand.

Every module imports torch, transformers, peft and gguf inside its functions only. See
docs/export.md.
"""

from dungeon.export.gguf_file import GGUF_TYPES, export_gguf
from dungeon.export.merged import export_merged
from dungeon.export.source import ExportError, Source, load_source

__all__ = ["GGUF_TYPES", "ExportError", "Source", "export_gguf", "export_merged", "load_source"]
