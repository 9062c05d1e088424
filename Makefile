# Two commands on a fresh clone: `make demo` (set up + the main job) and `make test` (set up + tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONVZOO := $(VENV)/bin/convzoo
# Real data shipped beside the repository; a user's own data goes in --data-path or $$CONVZOO_DATA.
export CONVZOO_DATA ?= $(abspath ../shared/data)
DEMO   ?= runs/demo
DEMO_TRAIN ?=# extra `convzoo train` flags for the demo (its test shortens the run: --epochs 4)
DEMO_QUANT ?=# extra `convzoo quantize` flags (its test: --train-limit 6400, a shorter QAT fine-tune)

.PHONY: demo test check setup system-deps clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

demo: setup
	$(CONVZOO) data info mnist
	$(CONVZOO) train --config lenet5-mnist --output-dir $(DEMO) --exist-ok $(DEMO_TRAIN)
	$(CONVZOO) eval --ckpt $(DEMO)/best.pt
	$(CONVZOO) quantize --ckpt $(DEMO)/best.pt --output-dir $(DEMO)/quant --exist-ok $(DEMO_QUANT)
	$(CONVZOO) export --ckpt $(DEMO)/best.pt --output $(DEMO)/model.onnx --exist-ok
	$(CONVZOO) data sample mnist --count 5 --output $(DEMO)/digits
	$(CONVZOO) predict --model $(DEMO)/model.onnx $(DEMO)/digits
	$(CONVZOO) predict --model $(DEMO)/quant/model-int8.onnx --from-test 25 --grid $(DEMO)/grid.png

# Debian packages the suite reads (Fashion-MNIST) or drives (Chromium); installed when missing.
system-deps:
	bash scripts/system_deps.sh

# Test files are shared out over TEST_WORKERS processes (pytest-xdist), a whole file per process so
# its module fixtures (a trained run, a started server) are built once; 0 runs everything in one.
TEST_WORKERS ?= 2
test: setup system-deps
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations 25

# The quick tier for everyday work: no real-data training, no browser, no subprocess-heavy runs.
check: setup
	$(PY) -m pytest -q -m "not real_data and not slow and not browser"

clean:
	rm -rf $(VENV) runs *.egg-info
