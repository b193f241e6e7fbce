# The two commands: `make demo` and `make test`. Both create the virtualenv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REPO ?= build/demo-repo
PORT ?= 50051
METRICS_PORT ?= 9464
HTTP_PORT ?= 8000
SERVER := localhost:$(PORT)
UKBENCH ?= ../shared/data/ukbench

.PHONY: venv demo test protos lint bench lock

# A strict editable install links every module into build/__editable__.*/offshelf, a real package tree for
# readers and static tools; a module added, moved or removed changes its folder, which re-runs the install.
PACKAGE_DIRS := $(addsuffix /,$(shell find protos export train service clients -type d -not -name __pycache__))

# onnxruntime for this machine (an extra of offshelf): the CUDA build where nvidia-smi is found, else the CPU one.
# Both install the same module, so the other one goes first. `make RUNTIME=gpu venv` overrides.
RUNTIME ?= $(if $(shell command -v nvidia-smi),gpu,cpu)
OTHER_RUNTIME := $(if $(filter gpu,$(RUNTIME)),onnxruntime,onnxruntime-gpu)

$(STAMP): pyproject.toml $(PACKAGE_DIRS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip uninstall -q -y $(OTHER_RUNTIME) 2>/dev/null || true
	$(BIN)/pip install -q -e '.[torch,dev,$(RUNTIME)]' --config-settings editable_mode=strict
	touch $@

venv: $(STAMP)

# The embedded default as exported for retrieval (docs/retrieval.md): whole photos, a GeM output beside the default
# logits and embedding.
RETRIEVAL_EXPORT := --preprocess no-crop --output logits=_fc --output embedding=_avg_pooling \
	--output gem=_head_act:gem:l2

# Export the embedded default, serve it, classify photos, index real photos and query them (GeM, database-side
# augmentation, alpha query expansion), stop the server; `make demo KEEP=1` keeps it serving, with the search page
# on http://localhost:$(HTTP_PORT)/.
demo: $(STAMP)
	@mkdir -p build && rm -rf build/demo-data
	@test -f $(REPO)/efficientnet-lite0/1/model.onnx || \
		$(BIN)/offshelf export efficientnet-lite0 --repo $(REPO) $(RETRIEVAL_EXPORT)
	@$(BIN)/offshelf serve --repo $(REPO) --data-dir build/demo-data --port $(PORT) --metrics-port $(METRICS_PORT) \
		--http-port $(HTTP_PORT) --drain-seconds 0 2> build/serve.log & server=$$!; \
	trap "kill $$server; wait $$server" EXIT; \
	echo "server starting (log: build/serve.log)"; \
	$(BIN)/offshelf health --server $(SERVER) --wait 120 || { tail -5 build/serve.log; exit 1; }; \
	$(BIN)/offshelf models --server $(SERVER); \
	skimage=$$($(BIN)/python -c "import skimage, pathlib; print(pathlib.Path(skimage.__file__).parent / 'data')"); \
	echo; echo "== classify: top ImageNet labels and embedding sizes"; \
	$(BIN)/offshelf embed --server $(SERVER) --top 3 $$skimage/chelsea.png $$skimage/coffee.png $$skimage/rocket.jpg; \
	if [ -d $(UKBENCH) ]; then photos=$(UKBENCH); queries="$(UKBENCH)/ukbench00004.jpg $(UKBENCH)/ukbench00101.jpg"; \
	else photos=$$skimage; queries="$$skimage/chelsea.png $$skimage/astronaut.png"; fi; \
	echo; echo "== index $$photos"; \
	$(BIN)/offshelf collection create demo --server $(SERVER) --output gem --thumbnail-size 128 && \
	$(BIN)/offshelf add --server $(SERVER) --collection demo $$photos && \
	$(BIN)/offshelf collection augment demo --server $(SERVER) --neighbours 1 && \
	echo && echo "== search: top 4 of each query" && \
	for q in $$queries; do $(BIN)/offshelf search --server $(SERVER) --collection demo -k 4 --qe 1 $$q || exit 1; done; \
	if [ -d $(UKBENCH) ]; then echo; echo "== UKBench N-S score"; \
		$(BIN)/offshelf eval ukbench --server $(SERVER) $(UKBENCH) --output gem --dba 1 --qe 1 \
			--plot build/ukbench-ns.png; fi; \
	if [ -n "$(KEEP)" ]; then echo; echo "search page: http://localhost:$(HTTP_PORT)/ (Ctrl-C stops the server)"; \
		wait $$server; fi

# One pytest-xdist worker per core; the tests on the shared Milvus standalone run in one of them (tests/conftest.py).
test: lint
	$(BIN)/python -m pytest -n auto --dist loadgroup

# Regenerate protos/v1/*_pb2*.py from protos/v1/*.proto (a test fails when they are stale).
protos: $(STAMP)
	$(BIN)/python -m offshelf.protos.generate

# Static checks: ruff's lint and format, mypy on service/ and clients/ (also run by `make test`).
lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/embed.py

# The container images' dependencies, pinned with hashes (deploy/requirements-*.lock) from pyproject.toml.
# The CPU image runs python:3.11-slim's Python; the GPU image Ubuntu 24.04's, 3.12.
LOCK := $(BIN)/uv pip compile pyproject.toml --quiet --generate-hashes --python-platform x86_64-manylinux_2_28 \
	--extra milvus
lock: $(STAMP)
	$(LOCK) --python-version 3.11 --extra cpu -o deploy/requirements-cpu.lock
	$(LOCK) --python-version 3.12 --extra gpu --constraint deploy/cuda13.txt -o deploy/requirements-gpu.lock
