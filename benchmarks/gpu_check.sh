#!/usr/bin/env bash
# The GPU check: one script, at most 8 minutes on one NVIDIA H200, no network.
#   bash benchmarks/gpu_check.sh OUT_DIR
# 1. the environment (GPU, CUDA torch; .venv must already hold a CUDA build: the machine has no network),
# 2. SFT and GRPO throughput (tokens/s) and peak memory of the embedded model, per backend (trl from .venv,
#    unsloth from .venv-unsloth when scripts/setup-gpu.sh made it; otherwise reported as skipped, with why),
# 3. the GPU loop (configs/gpu.yaml) with a short budget: before / SFT / GRPO on the held-out suite,
# 4. OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md (the table docs/benchmarks.md quotes).
# Each step has its own time limit, so a hung step cannot eat the others' time.
set -uo pipefail
OUT=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRL_EXPERIMENTAL_SILENCE=1
t0=$(date +%s)
say() { echo "gpu_check [$(( $(date +%s) - t0 )) s] $*"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1 \
    || { say "no NVIDIA GPU: $(cat "$OUT/gpu.txt")"; exit 2; }
.venv/bin/python -c "import torch, sys; print(torch.__version__, torch.version.cuda); sys.exit(0 if torch.cuda.is_available() else 1)" \
    > "$OUT/torch.txt" 2>&1 || { say "no CUDA torch in .venv: $(cat "$OUT/torch.txt")"; exit 2; }
say "GPU $(cat "$OUT/gpu.txt"); torch $(cat "$OUT/torch.txt")"

say "throughput, trl"
timeout 120 .venv/bin/python benchmarks/bench_training.py --backend trl --steps 40 --jobs 64 \
    --out "$OUT/bench-trl.json" > "$OUT/bench-trl.log" 2>&1 || say "trl throughput failed (see bench-trl.log)"
say "throughput, unsloth"
if [ -x .venv-unsloth/bin/python ]; then
    timeout 150 .venv-unsloth/bin/python benchmarks/bench_training.py --backend unsloth --steps 40 --jobs 64 \
        --out "$OUT/bench-unsloth.json" > "$OUT/bench-unsloth.log" 2>&1 || say "unsloth throughput failed (see bench-unsloth.log)"
else
    echo '{"results": [{"backend": "unsloth", "skipped": "no .venv-unsloth: run scripts/setup-gpu.sh (needs the package registry)"}]}' \
        > "$OUT/bench-unsloth.json"
fi

say "the GPU loop, short budget"
timeout 210 .venv/bin/python -m training.sim_loop --config configs/gpu.yaml --set train_jobs=1024 \
    --set sft.epochs=2 --set grpo.max_steps=20 --set eval_episodes=64 --set "output_dir=$OUT/runs" \
    > "$OUT/loop.log" 2>&1 || say "the loop failed or ran out of time (see loop.log)"

.venv/bin/python - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def read(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return {"results": [{"skipped": f"{name} missing"}]}
bench = read("bench-trl.json")["results"] + read("bench-unsloth.json")["results"]
reports = sorted(out.glob("runs/*/report.json"))
loop = json.loads(reports[-1].read_text()) if reports else {"phases": {}}
summary = {"gpu": (out / "gpu.txt").read_text().strip(), "torch": (out / "torch.txt").read_text().strip(),
           "throughput": bench, "loop": loop.get("phases", {})}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=1))
rows = ["| backend | SFT tokens/s | GRPO generated tokens/s | peak memory (MiB) | note |", "|---|---:|---:|---:|---|"]
for r in bench:
    rows.append(f"| {r.get('backend', '?')} | {r.get('sft_tokens_per_s', '')} | {r.get('grpo_generated_tokens_per_s', '')} | "
                f"{r.get('peak_memory_mib', '')} | {r.get('skipped', '')} |")
rows += ["", "| phase | success rate | mean reward | valid G-code |", "|---|---:|---:|---:|"]
for phase, m in loop.get("phases", {}).items():
    rows.append(f"| {phase} | {m.get('success_rate', 0):.3f} | {m.get('mean_reward', 0):.3f} | {m.get('valid_gcode_rate', 0):.3f} |")
(out / "gpu_check.md").write_text(f"GPU: {summary['gpu']}; torch {summary['torch']}\n\n" + "\n".join(rows) + "\n")
print((out / "gpu_check.md").read_text())
PYEOF
say "done"
