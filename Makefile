# The two commands: `make demo` and `make test`. Both create the virtualenv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REPO ?= build/repo
PORT ?= 50051
METRICS_PORT ?= 9464
SERVER := localhost:$(PORT)
UKBENCH ?= ../shared/data/ukbench

.PHONY: venv demo test protos lint bench

# A strict editable install links every module into build/__editable__.*/offshelf, a real package tree for
# readers and static tools; a module added, moved or removed changes its folder, which re-runs the install.
PACKAGE_DIRS := $(addsuffix /,$(shell find protos export train service clients -type d -not -name __pycache__))

$(STAMP): pyproject.toml $(PACKAGE_DIRS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[torch,dev]' --config-settings editable_mode=strict
	touch $@

venv: $(STAMP)

# Export the embedded default, serve it, classify photos, index real photos and query them, stop the server.
demo: $(STAMP)
	@mkdir -p build && rm -rf build/demo-data
	@test -f $(REPO)/efficientnet-lite0/1/model.onnx || $(BIN)/offshelf export efficientnet-lite0 --repo $(REPO)
	@$(BIN)/offshelf serve --repo $(REPO) --data-dir build/demo-data --port $(PORT) --metrics-port $(METRICS_PORT) \
		--drain-seconds 0 2> build/serve.log & server=$$!; trap "kill $$server; wait $$server" EXIT; \
	echo "server starting (log: build/serve.log)"; \
	$(BIN)/offshelf health --server $(SERVER) --wait 120 || { tail -5 build/serve.log; exit 1; }; \
	$(BIN)/offshelf models --server $(SERVER); \
	skimage=$$($(BIN)/python -c "import skimage, pathlib; print(pathlib.Path(skimage.__file__).parent / 'data')"); \
	echo; echo "== classify: top ImageNet labels and embedding sizes"; \
	$(BIN)/offshelf embed --server $(SERVER) --top 3 $$skimage/chelsea.png $$skimage/coffee.png $$skimage/rocket.jpg; \
	if [ -d $(UKBENCH) ]; then photos=$(UKBENCH); queries="$(UKBENCH)/ukbench00004.jpg $(UKBENCH)/ukbench00101.jpg"; \
	else photos=$$skimage; queries="$$skimage/chelsea.png $$skimage/astronaut.png"; fi; \
	echo; echo "== index $$photos"; \
	$(BIN)/offshelf collection create demo --server $(SERVER) && \
	$(BIN)/offshelf add --server $(SERVER) --collection demo $$photos && \
	echo && echo "== search: top 4 of each query" && \
	for q in $$queries; do $(BIN)/offshelf search --server $(SERVER) --collection demo -k 4 $$q || exit 1; done; \
	if [ -d $(UKBENCH) ]; then echo; echo "== UKBench N-S score"; \
		$(BIN)/offshelf eval ukbench --server $(SERVER) $(UKBENCH) --plot build/ukbench-ns.png; fi

test: lint
	$(BIN)/python -m pytest

# Regenerate protos/v1/*_pb2*.py from protos/v1/*.proto (a test fails when they are stale).
protos: $(STAMP)
	$(BIN)/python -m offshelf.protos.generate

# Static checks: ruff's lint and format, mypy on service/ and clients/ (also run by `make test`).
lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/embed.py
