"""Model loading: a local folder, a hub id, the built-in offline base, and LoRA adapters.

    from dungeon.models import load_generator
    gen = load_generator("smollm2-135m")                  # built-in, works offline
    gen = load_generator("gpt2")                           # hub id (where the hub is reachable)
    gen = load_generator("path/to/model-folder")           # any local causal LM (safetensors)
    gen = load_generator("path/to/adapter-folder")         # LoRA adapter; its base is looked up
    gen = load_generator("gpt2", adapter="path/to/lora")   # LoRA adapter on a chosen base

This is the one place (with dungeon.hf_generator) that imports torch and transformers, inside
the functions that need them. Safety rules: a model never runs its own Python code
(``trust_remote_code`` is always off and a config with ``auto_map`` is refused), and pickle
weights (``*.bin``) are refused unless the caller passes ``allow_pickle=True``.

The built-in base (dungeon.builtin_model.BUILTIN_MODEL) is converted from its GGUF file on
first use by dungeon.builtin_model. Scoring text with a loaded model (the Scorer protocol) is
dungeon.hf_scoring.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from dungeon.builtin_model import BUILTIN_MODEL, Progress, ensure_builtin, report
from dungeon.errors import ModelNotFoundError, UnsafeModelError  # also importable from here
from dungeon.generator import SamplingSettings
from dungeon.model_info import (  # also importable from here
    check_dungeon_json,
    check_sampling,
    recommended_sampling,
)

if TYPE_CHECKING:
    from dungeon.hf_generator import TransformersGenerator

log = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT_S = 3.0

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


# ---------------------------------------------------------------------------------------------
# Finding a model: built-in, local folder or hub id


def _offline_env() -> bool:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return False


def hub_endpoint() -> str:
    endpoint = os.environ.get("HF_ENDPOINT")
    if endpoint:
        return endpoint
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT
    except ImportError:
        return "https://huggingface.co"


def hub_reachable(endpoint: str | None = None, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub (or the HTTPS proxy) opens within ``timeout`` seconds.

    Without this check an unreachable hub costs a retry loop of long timeouts per file.
    The probe runs in a thread because name resolution itself has no timeout.
    """
    import socket

    url = urlparse(endpoint or hub_endpoint())
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if proxy:
        url = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return bool(result and result[0])


def _hub_snapshot(repo_id: str) -> Path | None:
    """The locally cached snapshot of a hub model, if one was downloaded before."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        return None


def _offline_message(name: str, why: str) -> str:
    return (
        f"cannot load {name!r} from the Hugging Face hub: {why}.\n"
        f"Use the built-in offline model instead (--model {BUILTIN_MODEL}), or a local model "
        f"folder (--model path/to/folder with config.json and *.safetensors)."
    )


def resolve_base(name_or_path: str | os.PathLike, *, progress: Progress | None = None) -> str:
    """Turn a model name into what ``from_pretrained`` accepts.

    ``smollm2-135m`` gives the cached built-in folder (converted on first use), an existing
    folder gives its path, a hub id gives the id when the hub is reachable (or the local
    snapshot when it was downloaded before). Raises ModelNotFoundError otherwise, fast.
    """
    name = os.fspath(name_or_path)
    if name.strip().lower() == BUILTIN_MODEL:
        return str(ensure_builtin(progress=progress))
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{path} is a file; give the model folder that holds it")
        return str(path)
    looks_local = name.startswith((".", "/", "~")) or os.sep in name.replace("/", "", 1)
    if looks_local or not _HUB_ID.match(name):
        raise ModelNotFoundError(
            f"no model folder at {path}; give an existing folder, a hub id such as 'gpt2', "
            f"or the built-in offline model {BUILTIN_MODEL!r}"
        )
    if _offline_env():
        snapshot = _hub_snapshot(name)
        if snapshot is not None:
            return str(snapshot)
        raise ModelNotFoundError(
            _offline_message(name, "offline mode is on (HF_HUB_OFFLINE) and it is not cached")
        )
    if not hub_reachable():
        snapshot = _hub_snapshot(name)
        if snapshot is not None:
            return str(snapshot)
        raise ModelNotFoundError(_offline_message(name, f"{hub_endpoint()} is not reachable"))
    return name


# ---------------------------------------------------------------------------------------------
# Checks on a folder before anything is loaded from it


def _check_model_folder(folder: Path, allow_pickle: bool) -> None:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelNotFoundError(
            f"{folder} has no config.json: it is not a Hugging Face model folder"
        )
    _refuse_remote_code(json.loads(config_file.read_text()), str(folder))
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.glob("*.bin"))
    if pickles and not allow_pickle:
        raise UnsafeModelError(
            f"{folder} holds only pickle weights ({', '.join(pickles)}); loading pickle can run "
            f"arbitrary code. Convert the model to safetensors, or pass allow_pickle=True "
            f"(--allow-pickle) if you trust where it came from."
        )
    if not pickles:
        raise ModelNotFoundError(f"{folder} has no weights (*.safetensors)")


def _refuse_remote_code(config: dict, where: str) -> None:
    if config.get("auto_map"):
        raise UnsafeModelError(
            f"{where} asks to run its own Python code (auto_map in config.json); dungeon never "
            f"runs code that comes with a model. Use a model whose architecture transformers "
            f"supports natively."
        )


def _check_adapter_folder(folder: Path, allow_pickle: bool) -> dict:
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise ModelNotFoundError(f"{folder} has no adapter_config.json: it is not a LoRA adapter")
    if not (folder / "adapter_model.safetensors").is_file():
        if not (folder / "adapter_model.bin").is_file():
            raise ModelNotFoundError(f"{folder} has no adapter weights (adapter_model.safetensors)")
        if not allow_pickle:
            raise UnsafeModelError(
                f"{folder} holds only pickle adapter weights (adapter_model.bin); pass "
                f"allow_pickle=True (--allow-pickle) if you trust where it came from."
            )
    return json.loads(config_file.read_text())


# ---------------------------------------------------------------------------------------------
# Device and dtype


@dataclass(frozen=True)
class Placement:
    """Where the model runs and in which precision."""

    device: str
    dtype: str
    """The weights' dtype (prefill and, unless decode_dtype is set, decode)."""
    decode_dtype: str | None = None
    """A half-precision copy of the linear weights for one-token steps (CPU, see cpu_decode)."""


_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU does bf16 math natively (AVX-512-BF16 or AMX); else fp32 is faster."""
    import torch

    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:
            pass
    return False


def default_threads() -> int | None:
    """CPU threads for play: 1 on machines with two cores or fewer, else None (torch's default,
    one per physical core). The command line passes this to load_generator(threads=...).

    Measured on a 2-core machine (docs/models.md): with 2 threads, decoding collapses from about
    13 to 1-4 tokens/s whenever any other process is busy, because each of the thousands of
    small parallel regions per token waits for the core that was taken away; 1 thread stays
    steady and leaves a core for the rest of the system.
    """
    return 1 if (os.cpu_count() or 1) <= 2 else None


def choose_placement(device: str = "auto", dtype: str = "auto") -> Placement:
    """Pick the device (CUDA, then MPS, then CPU) and a dtype that is fast there."""
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU")
    dtype = (dtype or "auto").lower()
    if dtype == "auto":
        if kind == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        elif kind == "mps":
            dtype = "float16"
        else:
            # Measured (docs/models.md): without native bf16, bf16 prefill is ~6x slower than
            # fp32, while fp16 copies for decode steps make decoding ~1.3x faster.
            dtype = "bfloat16" if cpu_has_fast_bf16() else "mixed"
    if dtype == "mixed":
        if kind != "cpu":
            raise ValueError("dtype 'mixed' (fp32 prefill, fp16 decode) is for the CPU only")
        return Placement(device, "float32", "float16")
    if dtype not in _DTYPES:
        raise ValueError(
            f"unknown dtype {dtype!r}; use auto, float32, bfloat16, float16 or mixed (CPU)"
        )
    return Placement(device, _DTYPES[dtype])


# ---------------------------------------------------------------------------------------------
# The entry point


def _has_tokenizer(folder: Path) -> bool:
    return any(
        (folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")
    )


@contextlib.contextmanager
def _quiet_local_load(local: bool):
    """No "Loading weights" bar for a local folder: it takes a second, and in piped play the
    bar would land among the story. Downloads from the hub keep their progress bars."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    if local and was_on:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if local and was_on:
            hf_logging.enable_progress_bar()


def _read_local_weights(folder: Path, dtype):
    """A local safetensors model read one tensor at a time; None where that does not apply.

    ``from_pretrained`` memory-maps the weight files, and every page it reads stays in the
    process's resident memory until the load ends: for the built-in model, its 540 MB float32
    cache plus the 270 MB bf16 model it builds from it, a peak of 1.14 GB before anything else
    (docs/models.md). Reading each tensor with ``pread`` into its own buffer instead (the same
    conversion code, given the tensors as a state dict) holds one float32 tensor at a time: the
    same weights, bit for bit, for a peak of 0.65 GB.
    """
    import transformers

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = json.loads(index.read_text()).get("weight_map", {}).values()
        files = [folder / name for name in sorted(set(shards))]
    else:
        files = [folder / "model.safetensors"]
    if int(transformers.__version__.split(".")[0]) < 5 or not all(f.is_file() for f in files):
        return None  # transformers 4 does not take lazy slices as a state dict
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    try:  # safetensors' pread backend is recent
        with safe_open(str(files[0]), framework="pt", device="cpu", backend="pread"):
            pass
    except TypeError:
        return None
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    # The Auto class deep-copies its arguments, which lazy tensor slices refuse: ask it for the
    # model class, then load with that class.
    model_class = AutoModelForCausalLM._model_mapping.get(type(config), None)
    if model_class is None:
        return None
    with contextlib.ExitStack() as files_open:
        state = {}
        for file in files:
            reader = files_open.enter_context(
                safe_open(str(file), framework="pt", device="cpu", backend="pread")
            )
            state.update({key: reader.get_slice(key) for key in reader.keys()})  # noqa: SIM118
        lm = model_class.from_pretrained(None, config=config, state_dict=state, dtype=dtype)
    if (folder / "generation_config.json").is_file():
        lm.generation_config = GenerationConfig.from_pretrained(folder)
    return lm


def _load_remote(url, adapter, tokenizer, settings, context_window):
    """A model on an inference server (``load_generator("http://host:port/v1")``)."""
    from dungeon.remote import load_remote

    if adapter is not None:
        raise ModelNotFoundError(
            "an adapter is loaded where the model runs: give it to the server (e.g. vLLM's "
            "--enable-lora), not to dungeon"
        )
    return load_remote(
        url,
        tokenizer=tokenizer,
        settings=settings,
        api_key=os.environ.get("DUNGEON_MODEL_API_KEY") or None,
        context_window=context_window,
    )


def load_generator(
    model: str | os.PathLike | None,
    adapter: str | os.PathLike | None = None,
    device: str = "auto",
    dtype: str = "auto",
    *,
    threads: int | None = None,
    settings: SamplingSettings | None = None,
    allow_pickle: bool = False,
    merge_adapter: bool | None = None,
    quantize: str = "auto",
    reuse_cache: bool = True,
    context_window: int | None = None,
    progress: Progress | None = None,
    tokenizer: str | None = None,
) -> TransformersGenerator:
    """Load a causal LM (and optionally a LoRA adapter) as a TransformersGenerator.

    ``model`` may also be a server's address, ``http://host:port/v1``: the model then runs
    there (any OpenAI-compatible completions server) and a ``dungeon.remote.RemoteGenerator``
    comes back; ``tokenizer`` names a local tokenizer for its model (dungeon.remote).

    ``model`` is ``smollm2-135m``, a local model folder, a hub id, or an adapter folder (its
    adapter_config.json names the base); it may be None when ``adapter`` names its own base.
    ``threads`` sets torch's CPU thread count, which is global to the process: None (the
    default) leaves it as it is, so a program that embeds the engine keeps its own setting;
    ``dungeon play`` and ``dungeon eval`` pass default_threads(). ``merge_adapter`` folds
    LoRA weights into the base for speed (None: merged unless the weights are quantized, where
    the adapter runs as a float32 side path next to the 4-bit products). ``quantize`` is
    ``auto``, ``int4``, ``int8`` or ``none``: weight-only quantized decode on the CPU
    (dungeon.quantize.choose_mode says what ``auto`` picks). ``progress`` receives short status messages (the
    first use of the built-in model converts it, under a minute). Raises ModelNotFoundError or
    UnsafeModelError with a message saying why.
    """
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(
            f"threads must be None (leave torch's setting) or 1 or more, got {threads!r}"
        )
    from dungeon.remote import is_url

    if is_url(model):
        return _load_remote(str(model), adapter, tokenizer, settings, context_window)
    started = time.perf_counter()
    if model is not None and adapter is None:
        folder = Path(os.fspath(model)).expanduser()
        if (folder / "adapter_config.json").is_file():
            model, adapter = None, folder
    adapter_dir = Path(os.fspath(adapter)).expanduser() if adapter is not None else None
    if adapter_dir is not None and not adapter_dir.is_dir():
        raise ModelNotFoundError(f"no adapter folder at {adapter_dir}")
    adapter_config = _check_adapter_folder(adapter_dir, allow_pickle) if adapter_dir else {}
    adapter_info = (check_dungeon_json(adapter_dir) if adapter_dir else None) or {}
    if model is None:
        model = adapter_config.get("base_model_name_or_path") or adapter_info.get("base")
        if not model:
            raise ModelNotFoundError(
                f"{adapter_dir}/adapter_config.json names no base model; pass the base too"
            )
    name = os.fspath(model)
    report(progress, f"Finding {name}", log)
    base = resolve_base(name, progress=progress)
    base_dir = Path(base)
    base_info: dict = {}
    if base_dir.is_dir():
        _check_model_folder(base_dir, allow_pickle)
        base_info = check_dungeon_json(base_dir) or {}
    # The model's recommended sampling (its dungeon.json); the adapter's wins over its base's,
    # and stands alone where the two do not fit together.
    recommended = recommended_sampling(adapter_info, adapter_dir) if adapter_dir else {}
    both, clash = check_sampling({**recommended_sampling(base_info, base_dir), **recommended})
    recommended = recommended if clash else both

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    placement = choose_placement(device, dtype)
    if threads is not None:
        torch.set_num_threads(threads)

    if not base_dir.is_dir():  # a hub id: check the config before any weights come down
        try:
            config = AutoConfig.from_pretrained(base, trust_remote_code=False)
        except ValueError as err:
            if "trust_remote_code" in str(err):
                _refuse_remote_code({"auto_map": True}, base)
            raise
        _refuse_remote_code(config.to_dict(), base)

    report(progress, f"Loading {name} ({placement.device}, {placement.dtype})", log)
    tok_source = adapter_dir if adapter_dir and _has_tokenizer(adapter_dir) else base
    tokenizer = AutoTokenizer.from_pretrained(tok_source, trust_remote_code=False)
    try:
        with _quiet_local_load(base_dir.is_dir()):
            lm = _read_local_weights(base_dir, getattr(torch, placement.dtype))
            if lm is None:
                lm = AutoModelForCausalLM.from_pretrained(
                    base,
                    dtype=getattr(torch, placement.dtype),
                    trust_remote_code=False,
                    use_safetensors=None if allow_pickle else True,
                )
    except OSError as err:
        if not allow_pickle and "safetensors" in str(err).lower():
            raise UnsafeModelError(
                f"{name} has no safetensors weights; pass allow_pickle=True (--allow-pickle) "
                f"to load pickle weights if you trust where they came from"
            ) from err
        raise
    from dungeon.quantize import choose_mode

    from_4bit_file = name.strip().lower() == BUILTIN_MODEL
    quant = choose_mode(quantize, placement.device, from_4bit_file=from_4bit_file)
    if adapter_dir is not None:
        from peft import PeftModel

        report(progress, f"Applying the adapter {adapter_dir.name}", log)
        with warnings.catch_warnings():
            # peft asks transformers a deprecated question while it wraps the model; the
            # FutureWarning is for peft's authors, not for players.
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
            lm = PeftModel.from_pretrained(lm, adapter_dir)
        if merge_adapter or (merge_adapter is None and quant == "none"):
            lm = lm.merge_and_unload()
    lm.to(placement.device)
    lm.eval()
    unmerged_adapter = adapter_dir is not None and hasattr(lm, "get_base_model")  # peft
    merged_adapter = adapter_dir is not None and not unmerged_adapter
    half_decode = bool(placement.decode_dtype) and not unmerged_adapter and quant == "none"
    if quant != "none":
        from dungeon.builtin_model import INT4_FILE, builtin_gguf_path
        from dungeon.quantize import quantize_loaded

        # The built-in base's own 4-bit blocks (cached next to its weights, else read from its
        # GGUF file), unless a merged adapter changed the weights.
        own_blocks = from_4bit_file and not merged_adapter
        quant = quantize_loaded(
            lm,
            quant,
            gguf=builtin_gguf_path() if own_blocks else None,
            int4_file=base_dir / INT4_FILE if own_blocks else None,
        )
    if half_decode:
        from dungeon.cpu_decode import add_decode_weights

        add_decode_weights(lm, getattr(torch, placement.decode_dtype))

    from dungeon.hf_generator import TransformersGenerator

    label = name if adapter_dir is None else f"{name}+{adapter_dir.name}"
    gen = TransformersGenerator(
        lm,
        tokenizer,
        name=label,
        settings=settings or SamplingSettings().updated(recommended),
        context_window=context_window,
        reuse_cache=reuse_cache,
    )
    gen.recommended_sampling = recommended  # startup.build_generator puts the user's on top
    if half_decode:
        gen.precision = f"{placement.dtype}+{placement.decode_dtype} decode"
    elif quant != "none":
        gen.precision = f"{placement.dtype}+{quant}"
    log.info(
        "loaded %s on %s (%s%s) in %.1f s",
        label,
        placement.device,
        placement.dtype,
        f", {placement.decode_dtype} decode" if half_decode else "",
        time.perf_counter() - started,
    )
    return gen
