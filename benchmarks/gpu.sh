#!/usr/bin/env bash
# One-shot GPU benchmarks (about 5-7 minutes on one H100/H200):
#   1. training step, SAM ViT-B at 1024: co2sam vs the published loop's structure
#      (Grounding DINO Swin-B every step), each optimisation alone, FLOPs and MFU;
#   2. inference (evaluate_model), ViT-B at 1024, by batch size and precision;
#   3. memory of one ViT-H training step at batch 1 in bf16, with and without
#      gradient checkpointing ("does it fit in 40 GB?": peak + resident);
#   4. the backbones side by side at full size (SAM, SAM-HQ, SAM 2.1: training step and
#      inference, bf16);
#   5. `co2sam demo --quick` on the GPU: the product end to end (Fabric, bf16-mixed
#      training, evaluation), its table and wall time (not in --dry-run).
# Weights are random (speed and memory do not depend on their values): nothing is
# downloaded. Each part has its own time limit, so a slow part cannot eat the others.
#
#   bash benchmarks/gpu.sh [OUT_DIR]             # a machine with a CUDA GPU
#   bash benchmarks/gpu.sh --dry-run [OUT_DIR]   # CPU, tiny model: checks the script
#
# Writes OUT_DIR/gpu_results.md (the tables, with the commands, to paste into
# benchmarks/RESULTS.md), one JSON file per part and the full log. OUT_DIR defaults to
# gpu-results/. Needs python with torch (CUDA build) and co2sam's dependencies; co2sam
# is taken from src/ when it is not installed (PYTHON=... picks the interpreter).
set -uo pipefail
cd "$(dirname "$0")/.."

dry_run=0
if [ "${1:-}" = "--dry-run" ]; then
  dry_run=1
  shift
fi
out="${1:-gpu-results}"
mkdir -p "$out"
python="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
results="$out/gpu_results.md"
log="$out/gpu_log.txt"
: >"$log"

if [ "$dry_run" = 1 ]; then
  common=(--device cpu --variant tiny --size 128 --threads 1 --warmup 0)
  # a few cases only: tests/test_benchmarks.py builds every case of each script
  train_extra=(--iterations 1 --batch-sizes 1,2 --boxes 2 --detector reduced --no-memory
    --only "published loop, detector every step (reduced)" --only "ours b1 fp32 sdpa")
  infer_extra=(--iterations 1 --images 2 --batch-sizes 1 --precisions fp32 --no-memory)
  big=(--device cpu --variant tiny --size 128 --threads 1 --iterations 1 --warmup 0)
  limit_train=300 limit_infer=120 limit_big=120 limit_backbones=120
  backbones=(--device cpu --scale tiny --threads 1 --iterations 1 --warmup 0)
  att=sdpa  # model.attention auto on a CPU
else
  common=(--device cuda --variant vit_b --size 1024 --warmup 2)
  train_extra=(--iterations 6 --batch-sizes 1,4,8 --flops --profile "ours b1 bf16 folded")
  infer_extra=(--iterations 3 --images 32 --batch-sizes 1,4,16 --flops)
  big=(--device cuda --variant vit_h --size 1024 --iterations 3 --warmup 1)
  limit_train=270 limit_infer=110 limit_big=130 limit_backbones=120 limit_demo=120
  backbones=(--device cuda --scale full --precision bf16 --iterations 10 --warmup 2)
  att=folded  # model.attention auto on CUDA
fi

{
  echo "# GPU benchmarks ($(date -u +%Y-%m-%d))"
  echo
  if [ "$dry_run" = 1 ]; then echo "DRY RUN on CPU with a tiny model: not results."; echo; fi
  "$python" - <<'PY'
import platform, torch
print(f"- torch {torch.__version__}, python {platform.python_version()}")
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    print(f"- GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, "
          f"{props.multi_processor_count} SMs, CUDA {torch.version.cuda}")
PY
  echo
} >>"$results"

quoted() {  # the command as one would type it
  local arg words=()
  for arg in "$@"; do
    if [[ $arg =~ [^A-Za-z0-9_./=:,+-] ]]; then words+=("'$arg'"); else words+=("$arg"); fi
  done
  echo "${words[*]}"
}

run() {  # run LIMIT TITLE -- command...: time-limited, output to the log and the results
  local limit=$1 title=$2
  shift 3
  {
    echo "## $title"
    echo
    echo '```'
    quoted "$@"
    echo '```'
  } >>"$results"
  echo "=== $title: $*" >>"$log"
  local started=$SECONDS
  timeout --signal=TERM --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$log" |
    grep -E '^(\||###|ratio |memory:|device:|case |co2sam demo|[┏┃┡│├└]|    |$)' |
    cat -s >>"$results"
  local status=${PIPESTATUS[0]}
  echo "(${title}: $((SECONDS - started)) s in all, models built and cases set up included)" >>"$results"
  if [ "$status" != 0 ]; then
    echo "**exit status $status** (124: stopped at the ${limit} s limit)" >>"$results"
  fi
  echo >>"$results"
  return 0
}

run "$limit_train" "Training step, SAM ViT-B" -- "$python" benchmarks/train_step.py \
  "${common[@]}" "${train_extra[@]}" --best-batch 4 --json "$out/train_vit_b.json"

run "$limit_infer" "Inference, SAM ViT-B" -- "$python" benchmarks/inference.py \
  "${common[@]}" "${infer_extra[@]}" --json "$out/infer_vit_b.json"

# --best-no-cache: the T-teacher's forward runs too, the worst case for memory.
run "$limit_big" "Memory, SAM ViT-H, one bf16 step at batch 1" -- "$python" \
  benchmarks/train_step.py "${big[@]}" --skip-reference --batch-sizes 1 --best-batch 1 \
  --best-no-cache --best-checkpointing --only "ours b1 bf16 $att" \
  --only "ours best: b1 bf16 $att ckpt" --json "$out/memory_vit_h.json"

run "$limit_backbones" "Backbones side by side" -- "$python" benchmarks/backbones.py \
  "${backbones[@]}" --json "$out/backbones.json"

if [ "$dry_run" = 0 ]; then
  demo_dir=$(mktemp -d)
  run "$limit_demo" "co2sam demo --quick on the GPU" -- "$python" -c \
    "from co2sam.cli import app; app()" demo --quick --no-progress --out "$demo_dir/run" \
    --set train.accelerator=cuda --set train.precision=bf16-mixed
  cp "$demo_dir/run/report.json" "$out/demo_report.json" 2>/dev/null
fi

echo "results: $results"
