#!/usr/bin/env bash
# Every GPU measurement the open issues still need, for one device call each (10-minute limit a call).
#
#   bash benchmarks/gpu_pending.sh kernel   # issue 4: benchmarks/kernel_bench.py on this revision
#   bash benchmarks/gpu_pending.sh policy   # issue 5 (+8): policy_throughput.py, then projection.py on it
#   bash benchmarks/gpu_pending.sh refit    # issue 6: refit_gpu_bench.py, Qwen2.5-1.5B shape
#   bash benchmarks/gpu_pending.sh step     # issue 8: step_throughput.py, RED step stages at 0.5B-7B shapes
#
# Run on the GPU machine from the repository root with the wheels carried in .whl/ (it has no
# megatron-core or liger-kernel and cannot download; see ../shared/GPU.md):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform any \
#     -d .whl megatron-core==0.19.2 liger-kernel==0.8.5
# Everything lands in $OUT (logs, JSON). Each part's own time limit keeps the call inside 10 minutes.
set -uo pipefail
part="${1:?usage: gpu_pending.sh kernel|policy|refit|step}"
case "$part" in kernel|policy|refit|step) ;; *)
  echo "gpu_pending.sh: unknown part '$part' (expected kernel, policy, refit or step)" >&2; exit 2 ;; esac
OUT="${OUT:?set OUT to the output folder}"
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
git log --oneline -1 2>/dev/null | tee "$OUT/revision.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
case "$part" in
  kernel)
    timeout 540 python3 benchmarks/kernel_bench.py --out "$OUT" 2>&1 | tee "$OUT/kernel.log" ;;
  policy)
    timeout 480 python3 benchmarks/policy_throughput.py --out "$OUT" --shapes 1.5b \
      --layouts 1x8192,2x4096,1x16384 --impls mcore_sdpa_red,mcore_sdpa,hf_sdpa \
      --extra 1.5b:mcore_sdpa_cudnn:1x8192,1.5b:mcore_sdpa_flash:1x8192 2>&1 | tee "$OUT/policy.log"
    python3 benchmarks/projection.py --policy-json "$OUT/policy_throughput.json" \
      --report "$OUT/projection.md" 2>&1 | tee "$OUT/projection.log" ;;
  refit)
    timeout 540 python3 benchmarks/refit_gpu_bench.py --out "$OUT" 2>&1 | tee "$OUT/refit.log" ;;
  step)
    timeout 540 python3 benchmarks/step_throughput.py --out "$OUT" 2>&1 | tee "$OUT/step.log" ;;
esac
