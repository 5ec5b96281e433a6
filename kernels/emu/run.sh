#!/usr/bin/env bash
# Checks kernels/cuda_sampling.cu without a GPU: its host code and kernel
# compiled for the CPU against an emulation of the CUDA pieces it uses
# (cuda_util.cuh here), run against src/sampler.c.  Slow (a few minutes:
# every __syncthreads and shuffle is a barrier of real threads); not part
# of make test.  Run it after changing the sampling kernel.
#
#   kernels/emu/run.sh [VOCAB]     tests A and B (default vocabulary 3001),
#                                  then C at vocabulary 6000
set -euo pipefail
cd "$(dirname "$0")/../.."
W=$(mktemp -d /tmp/llm-emu.XXXXXX)
trap 'rm -rf "$W"' EXIT
cp kernels/emu/cuda_util.cuh kernels/cuda_sampling.cuh "$W/"
{
    printf 'extern "C" {\n#include "sampler.h"\n}\n'
    awk '/\/\* ---- tools: the kernel over caller-supplied logits/ {exit} {print}' \
        kernels/cuda_sampling.cu |
        sed 's/sample_kernel<<<n, SAMPLE_THREADS, 0, st>>>(/EMU_LAUNCH(n, /'
} > "$W/cuda_sampling_emu.cpp"
grep -q EMU_LAUNCH "$W/cuda_sampling_emu.cpp" ||
    { echo "emu: the kernel launch in cuda_sampling.cu was not found" >&2; exit 2; }
cc -std=c11 -O2 -ffp-contract=off -Isrc -c src/sampler.c -o "$W/sampler.o"
# no contraction: the CPU sampler's float operations, as the kernel's _rn ones
g++ -std=c++20 -O1 -ffp-contract=off -w -I"$W" -Isrc "$W/cuda_sampling_emu.cpp" \
    kernels/emu/sampling_emu.cpp "$W/sampler.o" -o "$W/emu" -lpthread
"$W/emu" "${1:-3001}"
"$W/emu" 6000 C
