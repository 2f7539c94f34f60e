#!/usr/bin/env bash
# What to run when a session is lent a GPU machine (the `device` tool), in stages that each end
# well inside one call's 10 minutes. A machine starts bare, so every stage installs and builds
# first (1-2 minutes on its 16 cores, for sm_90, the lent H100/H200, unless TORCH_CUDA_ARCH_LIST
# says otherwise). Its image has torch, nvcc, pytest and hypothesis but not zarr: carry the wheels,
# made once here (README of the device tool; `.whl/` is ignored by .gitignore's *.whl):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
#
# THE COMMAND. The device machine gets a copy of the working tree without .git, so the commit must
# travel in the command: SKETCHMINE_GIT=<commit>. `$(git ...)` written into the run command would be
# expanded THERE, where there is no git: write the value itself. Here, on this machine,
#   bash benchmarks/gpu_session.sh command quick
# prints the exact call with the value filled in (git rev-parse --short HEAD, "+dirty" when python/,
# csrc/, benchmarks/ or tests/ differ from it), e.g.
#   run(command="SKETCHMINE_GIT=1a2b3c4 bash benchmarks/gpu_session.sh quick", carry=[".whl"], timeout_s=540)
# The script echoes the value into its log and the benchmarks record it in their JSON (machine.git).
#
# Stages (each one device call, with carry [".whl"]):
#   quick       one call for a 15-minute lease (timeout_s 540; ~4.5-6.5 min on an H200), in the order of
#               what matters most if it is cut short: build; the CUDA tests only (-k "cuda or test_build");
#               mine vs the forward over batches already on the device, AlexNet (16k images) then VGG-19
#               (8k), both preprocessing routes, true float32; then bf16's top-9 recall against float32
#               (2,000 distinct images each) and the demo model's two routes. Stops starting steps
#               after SKETCHMINE_BUDGET_S (default 500 s) so that it ends before the call's limit.
#   tests       the CUDA kernels against their references, CUDA mining = CPU (the whole test files)
#   mine        mine vs bare forward, AlexNet and VGG-19 (benchmarks.gpu_mine)
#   visualize   visualize vs the per-unit loop on the GPU (issue 3's target)
#   preprocess  issue 20: mine by both --preprocess routes vs the on-device forward, AlexNet 16k images
#               from arrays and from a PNG folder, VGG-19 4k from arrays
#
# Every step runs under its own `timeout` and its exit status and time are recorded: a failed or hung
# step does not stop the ones after it (no `set -e`); the stage's exit status is 1 when any step failed.
# A benchmark exits 1 on wrong results (its reference check), never on a missed speed target. TF32 is off
# in every benchmark arm (true float32; recorded in each JSON as "tf32").
#
# What comes back ($OUT, at most 8 files): session.log (every step's output, the elapsed time of each,
# the summary at its end), build.log, and one JSON per benchmark step (each rewritten after every model,
# so a step cut short keeps what it measured): quick writes 5 files. Record the figures in
# benchmarks/RESULTS.md.
set -uo pipefail

stage=${1:?"usage: gpu_session.sh quick|tests|mine|visualize|preprocess, or: gpu_session.sh command STAGE"}

if [[ $stage == command ]]; then  # run HERE: the device call to make, the commit written in
    target=${2:-quick}
    rev=$(git rev-parse --short HEAD 2>/dev/null) || { echo "not a git checkout" >&2; exit 2; }
    [[ -n $(git status --porcelain --untracked-files=no -- python csrc benchmarks tests) ]] && rev="$rev+dirty"
    limit=540
    echo "run(command=\"SKETCHMINE_GIT=$rev bash benchmarks/gpu_session.sh $target\", carry=[\".whl\"], timeout_s=$limit)"
    [[ -d .whl ]] || echo "note: no .whl/ here: make the wheels first (this script's header)" >&2
    exit 0
fi

case "$stage" in
  quick | tests | mine | visualize | preprocess) ;;
  *) echo "unknown stage $stage (quick, tests, mine, visualize, preprocess; or: command STAGE)" >&2; exit 2 ;;
esac

out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

t_start=$SECONDS
budget=0  # seconds after which no step starts (0: none); quick sets it
summary=()
failed=0

# step NAME LIMIT_S COMMAND...: COMMAND under `timeout` (its whole process group killed at the limit, or at
# what is left of the budget), its exit status and time recorded; never stops the stage
step() {
    local name=$1 limit=$2
    shift 2
    local now=$((SECONDS - t_start))
    if ((budget > 0)); then
        local left=$((budget - now))
        if ((left < 30)); then
            echo "=== [${now}s] $name: SKIPPED, ${left}s of the ${budget}s budget left"
            summary+=("$(printf '%-22s %-40s' "$name" "skipped (budget spent)")")
            failed=1
            return 0
        fi
        ((limit > left)) && limit=$left
    fi
    local shown
    printf -v shown '%q ' "$@"
    echo "=== [${now}s] $name (limit ${limit}s): $shown"
    local t0=$SECONDS
    timeout -k 10 "$limit" "$@"
    local rc=$?
    local took=$((SECONDS - t0)) what="rc $rc"
    ((rc == 124 || rc == 137)) && what="rc $rc (timed out at ${limit}s)"
    echo "=== [$((SECONDS - t_start))s] $name: $what after ${took}s"
    summary+=("$(printf '%-22s %-40s %5ss' "$name" "$what" "$took")")
    ((rc == 0)) || failed=1
    return 0
}

setup() {
    echo "stage $stage; git ${SKETCHMINE_GIT:-unknown (pass SKETCHMINE_GIT=<commit> in the command: see the header)}"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    step wheels 120 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD/python:$PWD
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
    # shellcheck disable=SC2016  # $1 is the inner shell's argument
    step build 300 bash -c 'python3 setup.py build_ext --inplace > "$1" 2>&1 || { tail -40 "$1"; exit 1; }' \
        build "$out/build.log"
    step cuda-kernels 60 python3 -c \
        "import torch, sketchmine._C as c; assert c.with_cuda, 'built without CUDA kernels'; print('CUDA kernels built')"
}

# session 9 saw a TORCH_CHECK failure segfault under the device image's torch 2.11 (not under 2.14.1): that
# test runs alone afterwards, so a crash there cannot hide the others
BAD=tests/test_ops.py::test_bad_arguments_are_rejected
TEST_FILES=(tests/test_ops.py tests/test_build.py tests/test_classstats.py tests/test_miner.py
            tests/test_preprocess_device.py tests/test_distribution_ops.py)

main() {
    setup
    case "$stage" in
      quick)
        budget=${SKETCHMINE_BUDGET_S:-500}
        step cuda-tests 150 python3 -m pytest -q -p no:cacheprovider "${TEST_FILES[@]}" -k "cuda or test_build" \
            --deselect "$BAD"
        step bad-arguments 60 python3 -m pytest -q -p no:cacheprovider "$BAD"
        step alexnet-fp32 150 python3 -m benchmarks.preprocess --device cuda --models alexnet --images 16384 \
            --batch-size 256 --workers 12 --repeats 2 --methods pure,cpu,device,pure-bf16,bf16 --no-demo \
            --no-wait-quiet --json "$out/quick_alexnet.json"
        step vgg19-fp32 150 python3 -m benchmarks.preprocess --device cuda --models vgg19 --vgg19-images 8192 \
            --vgg19-batch-size 256 --workers 12 --repeats 2 --methods pure,cpu,device,pure-bf16,bf16 --no-demo \
            --no-wait-quiet --json "$out/quick_vgg19.json"
        step bf16-recall 120 python3 -m benchmarks.preprocess --device cuda --models alexnet,vgg19 --images 2000 \
            --batch-size 256 --vgg19-images 2000 --vgg19-batch-size 256 --workers 12 --repeats 2 \
            --methods device,pure-bf16,bf16 --check-images 0 --no-wait-quiet --json "$out/quick_bf16.json"
        ;;
      tests)
        step tests 400 python3 -m pytest -q -p no:cacheprovider "${TEST_FILES[@]}" --deselect "$BAD"
        step bad-arguments 60 python3 -m pytest -q -p no:cacheprovider "$BAD"
        ;;
      mine)
        step gpu-mine 420 python3 -m benchmarks.gpu_mine --images 16384 --batch-size 256 --workers 12 --repeats 3 \
            --json "$out/gpu_mine.json"
        ;;
      visualize)
        step visualize 420 python3 -m benchmarks.visualize_vs_loop --device cuda --images 1024 --units 256 \
            --loop-units 32 --json "$out/visualize_gpu.json"
        ;;
      preprocess)
        # AlexNet at 16k images (~1 min per route on an H100-class GPU), VGG-19 at 4k; both sources
        step alexnet 300 python3 -m benchmarks.preprocess --device cuda --models alexnet --images 16384 \
            --batch-size 256 --workers 12 --repeats 2 --folder --no-wait-quiet --json "$out/preprocess_alexnet.json"
        step vgg19 200 python3 -m benchmarks.preprocess --device cuda --models vgg19 --vgg19-images 4096 \
            --vgg19-batch-size 128 --workers 12 --repeats 2 --no-demo --no-wait-quiet \
            --json "$out/preprocess_vgg19.json"
        ;;
    esac
    echo "=== summary: stage $stage, git ${SKETCHMINE_GIT:-unknown}, $((SECONDS - t_start))s in all"
    printf '%s\n' ${summary[@]+"${summary[@]}"}
    ((failed == 0)) || { echo "=== some step failed, timed out or was skipped (above)"; return 1; }
    return 0
}

main 2>&1 | tee "$out/session.log"
exit "${PIPESTATUS[0]}"
