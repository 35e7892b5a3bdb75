#!/usr/bin/env bash
# The GPU check (issue 23) in one device call of a few minutes: `rlhf-repro bench gpu` at Pythia-1B shape in
# bf16 (SFT, RM, DPO, PPO per-process updates: s/update, tokens/s, MFU, peak memory; the on-device checks;
# `bench generate` at that shape; the projection of the paper's runs), as one JSON report.
#
#   bash scripts/gpu_check.sh                                   # on the GPU machine: $OUT/gpu_report.json
#   OUT=/tmp/g bash scripts/gpu_check.sh --device cpu --tiny    # the same path on a CPU, in seconds (tested)
#
# Extra arguments go to `bench gpu` (`rlhf-repro bench gpu --help`). It runs from the checkout without an
# install; the device image has torch, transformers and accelerate, and what else the command imports (numpy,
# PyYAML, tqdm, safetensors) comes with them. A missing one is installed from wheels/ when the call carries
# that folder (`pip download -d wheels ...` here), else the script stops and names it.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_out}"
py="${PYTHON:-python3}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

missing=$("$py" - <<'PY'
import importlib.util
print(" ".join(m for m in ("torch", "transformers", "accelerate", "numpy", "yaml", "tqdm", "safetensors")
               if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
  if [ -d wheels ]; then
    "$py" -m pip install -q --no-index --find-links wheels ${missing//yaml/pyyaml}
  else
    echo "error: missing Python packages: $missing (carry them as wheels in wheels/)" >&2
    exit 2
  fi
fi
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" | tee "$out/gpu_check.log"
"$py" -m rlhf_repro.cli bench gpu --out "$out/gpu_report.json" "$@" 2>&1 | tee -a "$out/gpu_check.log"
