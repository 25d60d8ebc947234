"""Make the GPT-2 BPE tokenizer available offline, from a package registry.

The Hugging Face hub may be out of reach; the GPT-2 byte-pair encoding (OpenAI's r50k_base,
MIT) also ships inside the openai-whisper source distribution on PyPI as
``whisper/assets/gpt2.tiktoken``. This script downloads that sdist with pip (no install),
converts the file with transformers' TikTokenConverter and saves a tokenizer folder in the
user cache (see dungeon.paths.gpt2_tokenizer_dir). Tests build tiny GPT-2 models on it.

    python scripts/fetch_gpt2_tokenizer.py [--out DIR] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

WHISPER_SDIST = "openai-whisper==20250625"
ASSET = "whisper/assets/gpt2.tiktoken"
# sha256 of gpt2.tiktoken as shipped in that sdist (the r50k_base ranks).
ASSET_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOS = "<|endoftext|>"


def fetch_asset(workdir: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
        "--no-binary", ":all:", "--no-build-isolation", WHISPER_SDIST, "-d", str(workdir),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    sdist = next(workdir.glob("openai_whisper-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(ASSET))
        src = tar.extractfile(member)
        assert src is not None
        out = workdir / "gpt2.tiktoken"
        out.write_bytes(src.read())
    return out


def convert(tiktoken_file: Path, out_dir: Path) -> None:
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converter = TikTokenConverter(
        vocab_file=str(tiktoken_file), pattern=GPT2_PATTERN, extra_special_tokens=[EOS]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=converter.converted(),
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        model_max_length=1024,
    )
    if tok.convert_tokens_to_ids(EOS) != 50256 or len(tok) != 50257:
        raise SystemExit(
            f"conversion gave {len(tok)} tokens, EOS {tok.eos_token_id}; want 50257/50256"
        )
    tok.save_pretrained(out_dir)


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from dungeon.paths import gpt2_tokenizer_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="folder to write the tokenizer to")
    parser.add_argument("--force", action="store_true", help="rebuild even if it exists")
    args = parser.parse_args()
    out = args.out or gpt2_tokenizer_dir()
    if (out / "tokenizer.json").exists() and not args.force:
        print(f"GPT-2 tokenizer already at {out}", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        asset = fetch_asset(Path(tmp))
        digest = hashlib.sha256(asset.read_bytes()).hexdigest()
        if ASSET_SHA256 and digest != ASSET_SHA256:
            raise SystemExit(f"{ASSET}: sha256 {digest} does not match {ASSET_SHA256}")
        staging = Path(tmp) / "tokenizer"
        convert(asset, staging)
        # Copy next to the target, then rename: a reader never sees a half-written folder.
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(staging, partial)
        shutil.rmtree(out, ignore_errors=True)
        partial.rename(out)
    print(f"GPT-2 tokenizer written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
