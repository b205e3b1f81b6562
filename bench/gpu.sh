#!/usr/bin/env bash
# GPU benchmark, one short run on a machine with an NVIDIA GPU and `pip install -e .[gpu]`:
# Lepton's train step (TensorFlow) with and without mixed precision and XLA, and the Keras
# reference convnet on the same GPU. Appends JSON lines to bench/gpu-results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench}/gpu-results.jsonl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$out"
scratch=$(mktemp -d)
export LEPTON_HOME=$scratch MLFLOW_TRACKING_URI=sqlite:///$scratch/mlflow.db
lepton-tasks ingest --run-dir "$scratch/run" --source "${LEPTON_BENCH_MNIST:-../shared/data/mnist}" >/dev/null
for mp in on off; do
  for jit in on off; do
    rm -rf "$scratch/run/train"
    lepton-tasks train --run-dir "$scratch/run" --epochs 5 --patience 99 --batch-size 256 \
      --mixed-precision $mp --jit-compile $jit | tail -1 |
      python -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'step':'train','mixed_precision':'$mp','xla':'$jit','device':r['device'],'images_per_second':r['images_per_second'],'val_accuracy':r['metrics']['val_accuracy']}))" | tee -a "$out"
  done
done
python bench/gpu_keras.py | tee -a "$out"
