#!/usr/bin/env bash
# The GPU checks and benchmarks of one short lent-GPU session (the `device` tool), in priority order,
# each under its own time limit so that a slow step cannot starve the rest. Everything is logged to
# $OUT (or ./gpu_out): one log per step.
#
# Needs, beside the working tree: .whl/ (the wheels the GPU image lacks, see DEVELOPING.md) and the
# real test slides copied to .devshared/slides (../shared does not travel). Usage, on the GPU node:
#   bash benchmarks/gpu_session.sh
set -u
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$OUT/01_machine.log" 2>&1 || { cat "$OUT/01_machine.log"; exit 1; }
fi
export PYTHONPATH=/tmp/site:$PWD
NCPU=$(python3 -c "import os; print(len(os.sched_getaffinity(0)))")
export WSI_MIL_SHARED_SLIDES=${WSI_MIL_SHARED_SLIDES:-$PWD/.devshared/slides}
step() {  # step NAME SECONDS COMMAND...: run COMMAND under a limit, log to $OUT/NAME.log, say how it ended
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc $rc, $((SECONDS - t0)) s (limit $limit s)" | tee -a "$OUT/steps.log"
  tail -n 25 "$OUT/$name.log"
}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; echo "$NCPU cores"
  python3 -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"
} >> "$OUT/01_machine.log" 2>&1
cat "$OUT/01_machine.log"

step 10_pytest_gpu "${T_PYTEST:-90}" python3 -m pytest -m gpu -q -p no:cacheprovider \
  tests/tiling/test_gpu_tiles.py tests/tiling/test_dicom_direct.py tests/mil/test_mil_gpu.py tests/ssl/test_ssl_gpu.py \
  tests/extract/test_extract.py
step 50_tiling_gpu "${T_TILING:-50}" python3 benchmarks/bench_tiling.py --gpu-only --device cuda \
  --sizes 10000 --threads "$NCPU" --cache /tmp/bench_tiling
step 51_tiling_gpu_30k "${T_TILING30:-60}" python3 benchmarks/bench_tiling.py --gpu-only --device cuda \
  --sizes 30000 --slides native --threads "$NCPU" --cache /tmp/bench_tiling
[ -n "${EPOCHS:-}" ] && step 20_mil_epochs "${T_EPOCHS:-60}" python3 benchmarks/bench_mil.py --device cuda --bags 500 --tiles 10000 \
  --dim 1024 --distinct 4 --heads chowder,weldon
step 30_train_untuned "${T_UNTUNED:-100}" python3 benchmarks/bench_mil.py fit --cross-validate --tune off --label-noise 0.2 \
  --device cuda --bags 500 --tiles 10000 --dim 1024 --distinct 4 --heads chowder,weldon
step 40_train_tuned "${T_TUNED:-150}" python3 benchmarks/bench_mil.py fit --cross-validate --tune on --label-noise 0.2 \
  --device cuda --bags 500 --tiles 10000 --dim 1024 --distinct 4 --heads chowder
date -u >> "$OUT/steps.log"
