#!/usr/bin/env bash
# The test command behind `make test` and CI: lint, then the whole suite on the CPU, in two tiers.
# With arguments (a file, -k ...) it runs only pytest on them.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Two busy BLAS threads on two shared cores can be 50x slower than one.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
export MPLBACKEND=Agg
PY=.venv/bin/python

# pytest's "no tests collected" (5): nothing failed, but nothing was tested either, and CI must say so.
no_tests() {
    echo "pytest collected no tests ($1): failing, as a run that tests nothing proves nothing" >&2
}

$PY -m ruff check . || exit 1
if [ $# -gt 0 ]; then
    $PY -m pytest -q -p no:cacheprovider --timeout=600 "$@"
    rc=$?
    [ $rc -eq 5 ] && no_tests "$*"
    exit $rc
fi

# The tutorial tier walks docs/tutorial.md; most of its time is a print on the virtual printer in real time,
# waiting, so it runs beside the rest of the suite in a second pytest process and reports after it.
tutorial_log=$(mktemp)
$PY -m pytest -q -p no:cacheprovider --timeout=1500 -m tutorial tests/test_tutorial.py >"$tutorial_log" 2>&1 &
tutorial_pid=$!
trap 'kill $tutorial_pid 2>/dev/null' EXIT INT TERM

$PY -m pytest -q -p no:cacheprovider --timeout=600 --durations=15 -m "not tutorial"
rc=$?
[ $rc -eq 5 ] && no_tests "suite"

wait $tutorial_pid
trc=$?
echo "--- tutorial tier (docs/tutorial.md, tests/test_tutorial.py -m tutorial):"
cat "$tutorial_log"
rm -f "$tutorial_log"
[ $trc -eq 5 ] && no_tests "tutorial tier"
[ $rc -ne 0 ] && exit $rc
exit $trc
