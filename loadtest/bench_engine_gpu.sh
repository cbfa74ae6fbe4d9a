#!/bin/sh
# Engine GPU benchmark: makes random-weight bf16 models at the SmolLM2-135M, Qwen2.5-0.5B and
# Llama-3.2-1B shapes (under $MODELS, default /tmp/llmgate-bench-models; never in the
# repository), runs `llmgate-bench-engine --device cuda` on each (decode tokens/s at batch 1, 8,
# 32 and 128, prefill tokens/s, TTFT, HBM roofline fraction against the measured device copy
# bandwidth) and writes the tables to loadtest/results/engine-gpu.md.
#
#   loadtest/bench_engine_gpu.sh BUILDDIR [extra llmgate-bench-engine options]
#
# BUILDDIR must be configured --with-cuda. Without a usable GPU the script stops with a message
# and exit status 2, and leaves the results file alone.
set -eu
build=${1:?usage: bench_engine_gpu.sh BUILDDIR [options]}
shift
src=$(cd "$(dirname "$0")/.." && pwd)
models=${MODELS:-/tmp/llmgate-bench-models}
out=${OUT:-$src/loadtest/results/engine-gpu.md}

if ! grep -q '^#define HAVE_CUDA 1' "$build/autoconf.h" 2>/dev/null; then
    echo "bench_engine_gpu.sh: $build is not a CUDA build (configure --with-cuda=yes)" >&2
    exit 2
fi
if ! command -v nvidia-smi > /dev/null 2>&1 || ! nvidia-smi -L > /dev/null 2>&1; then
    echo "bench_engine_gpu.sh: no NVIDIA GPU or driver on this machine (nvidia-smi -L failed);" \
         "nothing measured, $out left as it is" >&2
    exit 2
fi
mkdir -p "$models" "$(dirname "$out")"

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
{
    echo "# Engine GPU benchmark"
    echo
    echo "Random-weight bf16 models at real shapes made by \`llmgate-mkmodel\`, run by the CUDA"
    echo "backend (docs/CUDA.md). Decode is reported against the HBM roofline: (bf16 weights +"
    echo "bf16 KV bytes one step reads) / measured device-to-device copy bandwidth. Decode"
    echo "sequences share a ${PROMPT:-128}-token prompt's KV blocks and each read their whole"
    echo "context. Batches 1-8 run the hand-written GEMV, larger ones cuBLASLt; decode steps"
    echo "replay CUDA graphs."
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%MZ), commit $(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "- gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
    echo "- command: \`loadtest/bench_engine_gpu.sh BUILDDIR $*\`"
    echo
} > "$tmp"
for preset in smollm2-135m qwen2.5-0.5b llama3.2-1b; do
    dir=$models/$preset
    [ -f "$dir/model.safetensors" ] || "$build/llmgate-mkmodel" "$preset" "$dir" > /dev/null
    echo "## $preset" >> "$tmp"
    echo >> "$tmp"
    if ! "$build/llmgate-bench-engine" --device cuda --batches 1,8,32,128 "$@" "$dir" >> "$tmp"; then
        echo "bench_engine_gpu.sh: llmgate-bench-engine failed on $preset" >&2
        exit 1
    fi
    echo >> "$tmp"
done
mv "$tmp" "$out"
trap - EXIT
cat "$out"
