#!/usr/bin/env bash
# Every GPU measurement the open issues still owe, in ONE device call of at most 8 minutes (issue 18).
#
#   OUT=/some/dir bash benchmarks/gpu_pending.sh all     # GPU machine: wheel install + every part below
#   OUT=/some/dir bash benchmarks/gpu_pending.sh smoke   # CPU, no CUDA, tiny shapes: every part's code path
#   OUT=/some/dir bash benchmarks/gpu_pending.sh kernel  # one part (policy|projection|moe|kernel|lmhead|refit|step|cp)
#   GPU_PENDING_DRY_RUN=1 OUT=/tmp bash benchmarks/gpu_pending.sh all   # print part, budget, JSON, command
#
# Parts, cheapest and most decisive first, each under its own `timeout` (seconds, GPU budget):
#   policy      120  policy_throughput.py: 1.5B at 1x8192, Megatron (fused RED loss / megatron CE) vs HF+SDPA,
#                    then 1.5B 2x4096 and 0.5B 1x8192 of the trainer's path (rows for the projection's fit)
#   projection   10  projection.py refitted on those rows (CPU work; its error on them is in the JSON)
#   moe          40  moe_layer_bench.py: 2 Qwen3-30B-A3B decoder layers (128 experts, top-8) at 1x4096, bf16,
#                    forward+backward of megatron-core's MoE layers (the project's build) vs transformers'
#                    Qwen3MoeSparseMoeBlock: ms, tokens/s, peak memory; its JSON folded into summary.json
#                    (projection_moe.py --moe-json summary.json calibrates the MoE projection on it)
#   kernel       95  kernel_bench.py at N=16,384 x V=151,936 only, sweep off (torch.compile last)
#   lmhead       40  lm_head_bench.py: the LM head fused into the loss vs cuBLAS matmul + red_loss (time, peak
#                    memory; update and old-log-prob passes) at N=16,384 x D=1,536 / 3,584 and N=65,536 x D=1,536,
#                    V=151,936; its JSON is folded into summary.json (parts[].data), the 8 files being used
#   refit        50  refit_gpu_bench.py, 1.5B, buckets 256 MiB (the trainer's default) and whole model
#   step         85  step_throughput.py, RED step stages at 1.5B and 7B; 7B's update needs 127.6 GiB of state at
#                    TP=1, over 0.9 of one GPU, so at 7B only the old-log-prob pass and the refit gather run
#   cp           20  cp_attention_check.py: context parallelism's per-chunk SDPA (bottom-right causal bias,
#                    bf16, 1.5B heads, 16k tokens, CP=2 and 4 emulated on one GPU) vs one causal call
# A part never runs past the call's deadline (GPU_PENDING_TOTAL_S, default 470 s from the start, the
# wheel install included); one with under GPU_PENDING_MIN_PART_S (15 s, or its budget if smaller) left
# is skipped and says so.
# Each part writes its JSON into $OUT as soon as it ends (the benchmarks also save as they go, so a
# part cut short keeps what it measured); $OUT/summary.json (status and seconds per part) is
# rewritten after every part, and printed last. The device tool returns at most 8 files from $OUT:
# this writes 8 (summary.json, gpu_pending.log with every part's output, one JSON per part).
# A later issue's GPU check joins as one more part: a case in budget, json_of and set_cmd (GPU and smoke
# commands), its name in ALL_PARTS, within the same total (the 8 files are used: fold a new part's JSON
# into an existing one or into summary.json: json_of "summary:NAME" means the part writes $SCRATCH/NAME
# and write_summary embeds it as that part's "data").
#
# GPU machine (no megatron-core/liger-kernel there, no downloads): carry the wheels in .whl/, made here with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform any \
#     -d .whl megatron-core==0.19.2 liger-kernel==0.8.5
# and run from the repository root (device tool: carry [".whl"]; the copy there has no .git, so name the revision):
#   GPU_PENDING_REVISION='<git log --oneline -1, run here>' bash benchmarks/gpu_pending.sh all
set -uo pipefail
mode="${1:?usage: gpu_pending.sh all|smoke|policy|projection|moe|kernel|lmhead|refit|step|cp}"
ALL_PARTS="policy projection moe kernel lmhead refit step cp"
case "$mode" in
  all|smoke) parts="${GPU_PENDING_PARTS:-$ALL_PARTS}" ;;
  *) case " $ALL_PARTS " in  # one part, by its name in ALL_PARTS (so a new part is a mode at once)
       *" $mode "*) parts="$mode" ;;
       *) echo "gpu_pending.sh: unknown mode '$mode' (expected all, smoke, or one of: $ALL_PARTS)" >&2; exit 2 ;;
     esac ;;
esac
for p in $parts; do
  case " $ALL_PARTS " in *" $p "*) ;; *) echo "gpu_pending.sh: GPU_PENDING_PARTS: unknown part '$p' (expected some of: $ALL_PARTS)" >&2; exit 2 ;; esac
done
OUT="${OUT:?set OUT to the output folder}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
TOTAL_S="${GPU_PENDING_TOTAL_S:-470}"
MIN_PART_S="${GPU_PENDING_MIN_PART_S:-15}"
LOG="$OUT/gpu_pending.log"
export PYTHONUNBUFFERED=1
# the scripts' CSV rows (bench_util.rows_beside) stay off here: $OUT comes back with its JSONs only (<= 8 files)
export RED_BENCH_CSV="${RED_BENCH_CSV:-off}"

say() { echo "$*" | tee -a "$LOG"; }

# part -> budget (s), the JSON it writes, its command (GPU or smoke)
budget() { case "$1" in policy) echo 120 ;; projection) echo 10 ;; moe) echo 40 ;; kernel) echo 95 ;; lmhead) echo 40 ;;
  refit) echo 50 ;; step) echo 85 ;; cp) echo 20 ;; esac; }
json_of() { case "$1" in policy) echo policy_throughput.json ;; projection) echo projection.json ;;
  moe) echo summary:moe_layer_bench.json ;;
  kernel) echo kernel_bench.json ;; lmhead) echo summary:lm_head_bench.json ;; refit) echo refit_gpu_bench.json ;;
  step) echo step_throughput.json ;; cp) echo cp_attention.json ;; esac; }
set_cmd() {  # sets cmd=(script and arguments) for part $1
  local smoke=0; [ "$mode" = smoke ] && smoke=1
  case "$1" in
    policy) if [ $smoke = 1 ]; then
        cmd=(benchmarks/policy_throughput.py --out "$OUT" --smoke --impls mcore_sdpa_red,mcore_sdpa,hf_sdpa \
          --extra smoke:mcore_sdpa_red:1x32)
      else
        cmd=(benchmarks/policy_throughput.py --out "$OUT" --shapes 1.5b --layouts 1x8192 \
          --impls mcore_sdpa_red,hf_sdpa,mcore_sdpa --extra 1.5b:mcore_sdpa_red:2x4096,0.5b:mcore_sdpa_red:1x8192)
      fi ;;
    projection)
      cmd=(benchmarks/projection.py --policy-json "$OUT/policy_throughput.json" --json "$OUT/projection.json" \
        --report "$SCRATCH/projection.md") ;;
    moe) if [ $smoke = 1 ]; then
        cmd=(benchmarks/moe_layer_bench.py --json "$SCRATCH/moe_layer_bench.json" --smoke)
      else
        cmd=(benchmarks/moe_layer_bench.py --json "$SCRATCH/moe_layer_bench.json" --shape 30b-a3b --layers 2 \
          --layouts 1x4096 --impls mcore,hf)
      fi ;;
    kernel) if [ $smoke = 1 ]; then
        cmd=(benchmarks/kernel_bench.py --out "$OUT" --smoke --parts correctness,two_shard,diag,table)
      else
        cmd=(benchmarks/kernel_bench.py --out "$OUT" --shape 16384x151936 --no-sweep \
          --parts correctness,two_shard,diag,table --variants red_loss,red_loss_gif,liger,naive,compile)
      fi ;;
    lmhead) if [ $smoke = 1 ]; then
        cmd=(benchmarks/lm_head_bench.py --json "$SCRATCH/lm_head_bench.json" --smoke)
      else
        cmd=(benchmarks/lm_head_bench.py --json "$SCRATCH/lm_head_bench.json" \
          --sizes 16384x1536x151936,16384x3584x151936,65536x1536x151936 --variants unfused,fused)
      fi ;;
    refit) if [ $smoke = 1 ]; then
        cmd=(benchmarks/refit_gpu_bench.py --out "$OUT" --shape smoke --buckets 256MiB,whole --repeats 2)
      else
        cmd=(benchmarks/refit_gpu_bench.py --out "$OUT" --shape 1.5b --buckets 256MiB,whole)
      fi ;;
    step) if [ $smoke = 1 ]; then
        cmd=(benchmarks/step_throughput.py --out "$OUT" --shapes smoke,smoke_untied --prompts 2 --group 2 \
          --response 16 --prompt-len 8 --repeats 1 --state-budget-gib 0.008 --fallback-stages old_logprob,refit_stream)
      else
        cmd=(benchmarks/step_throughput.py --out "$OUT" --shapes 1.5b,7b --fallback-stages old_logprob,refit_stream)
      fi ;;
    cp) if [ $smoke = 1 ]; then  # context parallelism's per-chunk SDPA (bottom-right causal bias) vs one causal call
        cmd=(benchmarks/cp_attention_check.py --out "$OUT" --smoke)
      else
        cmd=(benchmarks/cp_attention_check.py --out "$OUT" --seq 16384 --cp 2,4)
      fi ;;
  esac
}

if [ -n "${GPU_PENDING_DRY_RUN:-}" ]; then  # print each part's budget and command; run nothing
  SCRATCH='<scratch>'
  for part in $parts; do
    set_cmd "$part"; printf '%s\t%s\t%s\t%s\n' "$part" "$(budget "$part")" "$(json_of "$part")" "${cmd[*]}"
  done
  exit 0
fi
SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/gpu_pending.XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT
: > "$LOG"
: > "$SCRATCH/parts.tsv"
if [ "$mode" = smoke ]; then  # same parts, tiny shapes, the CPU: CUDA hidden, Triton interpreted
  export CUDA_VISIBLE_DEVICES="" TRITON_INTERPRET=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  install="skipped (smoke: this environment's packages)"
else
  t0=$SECONDS
  ls .whl/*.whl > /dev/null 2>&1 || { say "gpu_pending.sh: no wheels in .whl/ (see the header: megatron-core, liger-kernel)"; exit 1; }
  timeout 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl 2>&1 | tee -a "$LOG" || { say "gpu_pending.sh: wheel install failed"; exit 1; }
  export PYTHONPATH="/tmp/site:$PWD"
  install="ok in $((SECONDS - t0)) s"
fi
rev="$(git log --oneline -1 2>/dev/null)"; rev="${rev:-${GPU_PENDING_REVISION:-unknown (no .git; set GPU_PENDING_REVISION)}}"
say "revision: $rev"
say "gpu: $(nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || echo none)"
say "install: $install"

write_summary() {  # $SCRATCH/parts.tsv -> $OUT/summary.json (and a table on stdout when asked)
  "$PY" - "$OUT" "$SCRATCH/parts.tsv" "$mode" "$TOTAL_S" "$SECONDS" "$install" "$rev" "$SCRATCH" "${1:-}" <<'EOF'
import json, os, sys
out, tsv, mode, total, secs, install, rev, scratch, show = sys.argv[1:10]
def errors(x):
    if isinstance(x, dict):
        return sum(1 for k in x if k in ("error", "errors")) + sum(errors(v) for v in x.values())
    return sum(errors(v) for v in x) if isinstance(x, list) else 0
parts = []
for line in open(tsv).read().splitlines():
    part, status, rc, seconds, budget, jname = line.split("\t")
    embedded = jname.startswith("summary:")  # written to the scratch folder, folded in here
    path = os.path.join(scratch, jname[len("summary:"):]) if embedded else os.path.join(out, jname)
    row = {"part": part, "status": status, "rc": int(rc), "seconds": int(seconds), "budget_s": int(budget),
           "json": ("summary.json" if embedded else jname) if os.path.exists(path) else None}
    if row["json"]:
        try:
            data = json.load(open(path))
            row["errors_inside"] = errors(data)
            if embedded:
                row["data"] = data
        except ValueError as e:
            row["json_unreadable"] = str(e)[:200]
    parts.append(row)
s = {"mode": mode, "revision": rev, "install": install, "total_budget_s": int(total), "seconds": int(secs), "parts": parts}
json.dump(s, open(os.path.join(out, "summary.json.tmp"), "w"), indent=1)
os.replace(os.path.join(out, "summary.json.tmp"), os.path.join(out, "summary.json"))
if show:
    print(f"\n=== gpu_pending.sh {mode}: {secs} s of {total} ({install}) ===")
    print("| part | status | seconds | budget | JSON | errors inside |\n|---|---|---|---|---|---|")
    for r in parts:
        print(f"| {r['part']} | {r['status']} | {r['seconds']} | {r['budget_s']} | {r['json'] or '-'} | "
              f"{r.get('errors_inside', r.get('json_unreadable', '-'))} |")
EOF
}

for part in $parts; do
  b=$(budget "$part"); left=$((TOTAL_S - SECONDS - 5)); t=$(( b < left ? b : left ))
  jname=$(json_of "$part"); case "$jname" in summary:*) ;; *) rm -f "$OUT/$jname" ;; esac
  if [ "$t" -lt "$(( b < MIN_PART_S ? b : MIN_PART_S ))" ]; then  # under its minimum (or whole budget) left
    status="skipped: ${left} s left of the call's ${TOTAL_S}"; rc=0; took=0
  elif [ "$part" = projection ] && [ ! -s "$OUT/policy_throughput.json" ]; then
    status="skipped: no policy_throughput.json"; rc=0; took=0
  else
    set_cmd "$part"
    say "=== $part (timeout ${t} s): $PY ${cmd[*]}"
    t0=$SECONDS
    timeout -k 5 "$t" "$PY" "${cmd[@]}" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}; took=$((SECONDS - t0))
    case "$rc" in 0) status=ok ;; 124|137) status="timeout after ${t} s" ;; *) status="failed (exit $rc)" ;; esac
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$part" "$status" "$rc" "$took" "$b" "$jname" >> "$SCRATCH/parts.tsv"
  say "=== $part: $status (${took} s)"
  write_summary
done
write_summary show | tee -a "$LOG"
"$PY" -c "import json,sys; sys.exit(0 if all(p['status'] == 'ok' for p in json.load(open('$OUT/summary.json'))['parts']) else 1)"
