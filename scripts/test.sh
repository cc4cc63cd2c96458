#!/usr/bin/env bash
# The test command behind `make test` and CI: lint, then the whole suite on the CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Two busy BLAS threads on two shared cores can be 50x slower than one.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
export MPLBACKEND=Agg
PY=.venv/bin/python

$PY -m ruff check . || exit 1
$PY -m pytest -q -p no:cacheprovider --timeout=600 --durations=15 "$@"
rc=$?
if [ $rc -eq 5 ]; then
    # pytest's "no tests collected": nothing failed, but nothing was tested either, and CI must say so.
    echo "pytest collected no tests: failing, as a run that tests nothing proves nothing" >&2
fi
exit $rc
