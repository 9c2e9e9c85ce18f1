#!/usr/bin/env bash
# The GPU checks in one go, sized for a 10-minute slot on one H100/H200 (an estimate: not run on a GPU yet):
#   1. the bf16/sdpa CUDA cases of tests/test_mask.py (mask and padding invariance, eager vs sdpa);
#   2. benchmarks/bench_real_recipe.py on the full-size random 2B: stage 1 and stage 2, nf4 and none;
#   3. benchmarks/bench_input_pipeline.py: images/s against data.workers on the machine's cores (~2 min).
#
#   bash benchmarks/gpu_check.sh                        # from anywhere; results in $OUT or benchmarks/results/
#   STAGE2_BATCH=1024 STEPS=2 bash benchmarks/gpu_check.sh   # the preset's full stage-2 batch (longer)
#
# Environment: OUT (results folder), VENV (default .cache/venv-gpu, created with --system-site-packages so a
# CUDA torch already on the machine is reused), PYTHON, TORCH_SPEC (what to pip-install when the venv has no
# torch or when set, e.g. "torch --index-url https://download.pytorch.org/whl/cu124"), STAGE2_BATCH (256),
# STEPS (2), BENCH_SECONDS (420: the benchmark is stopped after this; its JSON keeps what it measured),
# IMAGE_SIZES (e.g. "448 644": also measure nf4 at these image sides, 256 and 529 LLM tokens per image; the
# default run uses the preset's budget, 896 px = 1024 tokens; README "The image budget" quotes estimates until then).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR=${OUT:-benchmarks/results}
VENV=${VENV:-.cache/venv-gpu}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
mkdir -p "$OUT_DIR"
exec > >(tee "$OUT_DIR/gpu_check.log") 2>&1

[ -x "$VENV/bin/python" ] || "$PY" -m venv --system-site-packages "$VENV" || exit 1
VPY="$VENV/bin/python"
if [ -n "${TORCH_SPEC:-}" ] || ! "$VPY" -c "import torch" 2>/dev/null; then
  # shellcheck disable=SC2086  # a spec may carry pip options: split it into words
  "$VPY" -m pip install -q ${TORCH_SPEC:-torch} || exit 1
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # comalite from this checkout, installed or not
if ! "$VPY" -c "import comalite.backbone, comalite.embedding, comalite.gradcache, comalite.objective, pytest" 2>/dev/null; then
  "$VPY" -m pip install -q -e ".[dev]" || exit 1
fi
"$VPY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA GPU'; \
print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())" || exit 1

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME=${HF_HOME:-$PWD/.cache/hf}
export TQDM_DISABLE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
export MPLBACKEND=Agg MPLCONFIGDIR=${MPLCONFIGDIR:-$PWD/.cache/matplotlib}

echo "== 1. CUDA mask tests"
"$VPY" -m pytest -q -rs -m gpu tests/test_mask.py --junitxml "$OUT_DIR/gpu_mask_tests.xml"
tests_rc=$?

echo "== 2. full-size recipe benchmark"
timeout -k 15 "${BENCH_SECONDS:-420}" "$VPY" benchmarks/bench_real_recipe.py --device cuda \
  --steps "${STEPS:-2}" --warmup 1 --stage2-batch "${STAGE2_BATCH:-256}" --timeout 300 \
  --out "$OUT_DIR/real_recipe_cuda.json"
bench_rc=$?

echo "== 3. input pipeline: images/s and data wait against workers, on this machine's cores"
timeout -k 15 300 "$VPY" benchmarks/bench_input_pipeline.py --images 512 --workers 0,1,2,4,8,15 --compute-ms 20 \
  --out "$OUT_DIR/input_pipeline_gpu_machine.json" || bench_rc=$?

for size in ${IMAGE_SIZES:-}; do
  echo "== 4. image budget: ${size} x ${size} px, nf4"
  timeout -k 15 "${BENCH_SECONDS:-420}" "$VPY" benchmarks/bench_real_recipe.py --device cuda --quantizations nf4 \
    --steps "${STEPS:-2}" --warmup 1 --stage2-batch "${STAGE2_BATCH:-256}" --image-size "$size" --timeout 300 \
    --out "$OUT_DIR/real_recipe_cuda_${size}px.json" || bench_rc=$?
done

echo "== done: mask tests exit $tests_rc, benchmark exit $bench_rc; results in $OUT_DIR"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
