# Two commands for a fresh machine; each does all of its own set-up.
#   make demo   the daemon on a demo line: alerts arrive at an MQTT subscriber (private mosquitto)
#   make test   the whole test suite (installs the training extra and the test peers)
#
# pip runs --isolated: this machine's pip configuration points at a local torch build that the
# registry's torchvision does not load with; the registry's own torch/torchvision pair does.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PIP     = $(BIN)/pip --isolated --disable-pip-version-check -q
DEMO_OUT ?= demo-output

.PHONY: demo test bench venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamps: reinstall only when pyproject.toml changes.
$(VENV)/.device-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[train,dev,bench,openvino,onsite,cloud]'
	AWS_DEFAULT_REGION=us-east-1 $(BIN)/python -c "import torchvision.ops, ultralytics, onnxruntime, openvino, duckdb, cv2, mlflow, sagemaker.mlops.workflow"
	touch $@ $(VENV)/.device-installed

venv: $(VENV)/.device-installed

demo: $(VENV)/.device-installed
	scripts/system-packages.sh demo
	$(BIN)/edge-inspect detect samples --save $(DEMO_OUT)
	$(BIN)/edge-inspect demo

test: $(VENV)/.test-installed
	scripts/system-packages.sh test
	scripts/label-studio.sh >/dev/null          # a real Label Studio, in its own virtualenv
	scripts/node-tools.sh                       # asl-validator (npm): the state machines' validator
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests

# The benchmark (README, "INT8 and speed"): the Ultralytics comparison needs the train extra too.
bench: $(VENV)/.test-installed
	$(BIN)/edge-inspect bench --out bench-output

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .venv-label-studio .tools
