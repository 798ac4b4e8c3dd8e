# Two commands for a fresh machine; each does all of its own set-up.
#   make demo   the daemon on a demo line: alerts arrive at an MQTT subscriber (private mosquitto)
#   make test   the whole test suite (installs the training extra and the test peers)
#   make loop   the closed loop rehearsed here: the line drifts, the loop retrains and redeploys (about 13 min)
#
# pip runs --isolated: this machine's pip configuration points at a local torch build that the
# registry's torchvision does not load with; the registry's own torch/torchvision pair does.
# Every install is held to constraints.txt (exact versions, resolved once by `make constraints`):
# left to itself, pip backtracks through a hundred s3fs/aiobotocore releases, downloading each,
# and fills a small disk before it installs anything.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PIP     = $(BIN)/pip --isolated --disable-pip-version-check --no-cache-dir -q
DEMO_OUT ?= demo-output

LOOP_OUT ?= loop-output
LOOP_DRIFT ?= warm-light

.PHONY: demo test bench loop venv constraints clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamps: reinstall only when pyproject.toml changes.
$(VENV)/.device-installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -c constraints.txt -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -c constraints.txt -e '.[train,dev,bench,openvino,onsite,cloud]'
	AWS_DEFAULT_REGION=us-east-1 $(BIN)/python -c "import torchvision.ops, ultralytics, onnxruntime, openvino, duckdb, cv2, mlflow, sagemaker.mlops.workflow"
	touch $@ $(VENV)/.device-installed

$(VENV)/.loop-installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -c constraints.txt -e '.[loop]'
	$(BIN)/python -c "import torchvision.ops, ultralytics, duckdb, mlflow, moto.server, matplotlib"
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
	scripts/iac-tools.sh >/dev/null             # checkov, the template's policy scanner, in its own virtualenv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests

# The benchmark (README, "INT8 and speed"): the Ultralytics comparison needs the train extra too.
bench: $(VENV)/.test-installed
	$(BIN)/edge-inspect bench --out bench-output

# The closed loop (README, "The closed loop"): one command, private peers, a report in $(LOOP_OUT)/.
loop: $(VENV)/.loop-installed
	scripts/system-packages.sh demo
	$(BIN)/edge-inspect loop --drift $(LOOP_DRIFT) --out $(LOOP_OUT) --auto-approve

# Re-resolve constraints.txt after a change to pyproject.toml's dependencies (uv resolves from
# metadata alone, in seconds; it runs from a throwaway virtualenv and is not a dependency).
constraints:
	$(PYTHON) -m venv /tmp/edge-inspect-uv && /tmp/edge-inspect-uv/bin/pip --isolated -q --no-cache-dir install uv
	printf 'torch==2.14.1\ntorchvision==0.29.1\n' > /tmp/edge-inspect-uv/torch.txt  # the pair that lies on this kind of machine's disk
	/tmp/edge-inspect-uv/bin/uv pip compile pyproject.toml --extra train --extra dev --extra bench --extra openvino \
	    --extra onsite --extra cloud --extra loop --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	    -c /tmp/edge-inspect-uv/torch.txt --no-header -o constraints.txt

clean:
	rm -rf $(VENV) $(DEMO_OUT) $(LOOP_OUT) .pytest_cache .venv-label-studio .tools
