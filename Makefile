# The two commands of the quick start: `make run` (the main job) and `make test` (the test suite).
# Each first runs scripts/setup.sh, which installs what is missing (apt packages, .venv, torch, the project).
.PHONY: setup run simulate test lint bench clean

PY := .venv/bin/python

setup:
	@bash scripts/setup.sh

run: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE TRL_EXPERIMENTAL_SILENCE=1 \
		$(PY) -m training.sim_loop --config configs/tiny-cpu.yaml

simulate: setup
	@mkdir -p runs
	$(PY) -m sim_bridge simulate sim_bridge/data/cube20_ender3.gcode --printer ender3-klipper \
		--json runs/cube20_report.json --plot runs/cube20.png

test: setup
	@bash scripts/test.sh

lint: setup
	$(PY) -m ruff check .

bench: setup
	$(PY) benchmarks/bench_gcode.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
