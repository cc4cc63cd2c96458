#!/usr/bin/env bash
# The GPU side of the set-up, on a machine with an NVIDIA GPU (after scripts/setup.sh, which already put a
# CUDA build of torch into .venv when nvidia-smi sees a GPU):
#   .venv          + vllm (optional: grpo.use_vllm), with --vllm
#   .venv-unsloth  Unsloth in an environment of its own: it pins trl<=0.24 and datasets<4.4, below what the
#                  main environment needs (trl>=1.0), so it cannot share .venv. layerloop is installed there
#                  without its dependency list, then everything it needs except what Unsloth pins.
# Run:  bash scripts/setup-gpu.sh [--vllm]
#       .venv-unsloth/bin/python -m training.sim_loop --config configs/gpu.yaml --set backend=unsloth
# Which TRL features each backend supports: docs/training.md ("Backends").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! (command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1); then
    echo "setup-gpu: no NVIDIA GPU here (nvidia-smi sees none); the CPU set-up is scripts/setup.sh" >&2
    exit 2
fi
[ -x .venv/bin/python ] || bash scripts/setup.sh
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "setup-gpu: .venv has a CPU build of torch; reinstall it with CUDA: .venv/bin/pip install --force-reinstall torch" >&2
    exit 2
fi
if [ "${1:-}" = "--vllm" ]; then
    echo "setup-gpu: installing vllm into .venv"
    .venv/bin/python -m pip install -q vllm
fi

ENV=.venv-unsloth
STAMP=$ENV/.layerloop-installed
want=$(cat pyproject.toml scripts/setup-gpu.sh | sha256sum | cut -c1-16)
if [ "$(cat $STAMP 2>/dev/null)" != "$want" ]; then
    echo "setup-gpu: installing Unsloth (with its own torch, trl and datasets) into $ENV"
    [ -x $ENV/bin/python ] || "$PY" -m venv $ENV
    $ENV/bin/python -m pip install -q --upgrade pip
    $ENV/bin/python -m pip install -q unsloth
    $ENV/bin/python -m pip install -q --no-deps -e .
    # layerloop's dependencies minus the three Unsloth chose (torch, trl, datasets).
    deps=$($ENV/bin/python - <<'PYEOF'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(" ".join(d for d in deps if re.split(r"[<>=!~ \[]", d)[0] not in ("torch", "trl", "datasets")))
PYEOF
)
    # shellcheck disable=SC2086
    $ENV/bin/python -m pip install -q $deps
    $ENV/bin/python -c "import unsloth, trl; print(f'setup-gpu: unsloth {unsloth.__version__}, trl {trl.__version__}')"
    echo "$want" > $STAMP
fi
