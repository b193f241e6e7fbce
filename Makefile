# The two commands: `make demo` and `make test`. Both create the virtualenv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REPO ?= build/repo
PORT ?= 50051
METRICS_PORT ?= 9464
SERVER := localhost:$(PORT)

.PHONY: venv demo test protos lint bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[torch,dev]'
	touch $@

venv: $(STAMP)

# Export the embedded default, serve it, embed and classify real photos, stop the server.
demo: $(STAMP)
	@mkdir -p build
	@test -f $(REPO)/efficientnet-lite0/1/model.onnx || $(BIN)/offshelf export efficientnet-lite0 --repo $(REPO)
	@$(BIN)/offshelf serve --repo $(REPO) --port $(PORT) --metrics-port $(METRICS_PORT) --drain-seconds 0 \
		2> build/serve.log & server=$$!; trap "kill $$server; wait $$server" EXIT; \
	echo "server starting (log: build/serve.log)"; \
	$(BIN)/offshelf health --server $(SERVER) --wait 120 || { tail -5 build/serve.log; exit 1; }; \
	$(BIN)/offshelf models --server $(SERVER); \
	photos=$$($(BIN)/python -c "import skimage, pathlib; d = pathlib.Path(skimage.__file__).parent / 'data'; \
		print(' '.join(str(d / n) for n in ['chelsea.png', 'coffee.png', 'rocket.jpg', 'astronaut.png']))"); \
	$(BIN)/offshelf embed --server $(SERVER) --top 3 $$photos

test: $(STAMP)
	$(BIN)/python -m pytest

# Regenerate protos/v1/*_pb2*.py from protos/v1/*.proto (a test fails when they are stale).
protos: $(STAMP)
	$(BIN)/python -m offshelf.protos.generate

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/embed.py
