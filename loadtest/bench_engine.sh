#!/bin/sh
# Engine CPU benchmark: makes random-weight models at the SmolLM2-135M and Qwen2.5-0.5B shapes
# (under $MODELS, default /tmp/llmgate-bench-models; never in the repository), runs
# llmgate-bench-engine on each and writes the tables to loadtest/results/engine-cpu.md.
#
#   loadtest/bench_engine.sh BUILDDIR [extra llmgate-bench-engine options]
set -eu
build=${1:?usage: bench_engine.sh BUILDDIR [options]}
shift
src=$(cd "$(dirname "$0")/.." && pwd)
models=${MODELS:-/tmp/llmgate-bench-models}
out=${OUT:-$src/loadtest/results/engine-cpu.md}
mkdir -p "$models" "$(dirname "$out")"

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
{
    echo "# Engine CPU benchmark"
    echo
    echo "Random-weight bf16 models at real shapes made by \`llmgate-mkmodel\`; batch-1 decode is"
    echo "memory-bandwidth bound, so it is reported against the roofline: (weights + KV bytes one"
    echo "step reads) / measured read bandwidth. Decode sequences share a ${PROMPT:-128}-token"
    echo "prompt's KV blocks and each read their whole context. With batch > 1 on a small host the"
    echo "step is compute-bound (about 2 FLOP per weight per token), so the memory roofline there is"
    echo "an upper bound, not the limit; the batch-1 fraction is the figure of merit."
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%MZ), commit $(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "- cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
    echo "- command: \`loadtest/bench_engine.sh BUILDDIR $*\`"
    echo
} > "$tmp"
for preset in smollm2-135m qwen2.5-0.5b; do
    dir=$models/$preset
    [ -f "$dir/model.safetensors" ] || "$build/llmgate-mkmodel" "$preset" "$dir" > /dev/null
    echo "## $preset" >> "$tmp"
    echo >> "$tmp"
    "$build/llmgate-bench-engine" "$@" "$dir" >> "$tmp"
    echo >> "$tmp"
done
mv "$tmp" "$out"
trap - EXIT
cat "$out"
