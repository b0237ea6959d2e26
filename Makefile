# weave-sidecar: every target sets up what it needs (virtualenv, Go build, pip installs).
#   make demo   a real Weave-traced program through the sidecar into a local trace server
#   make test   go vet, go test -race, a short fuzz run, pytest
#   make check  formatters, linters, mypy
#   make bench  benchmark.py and the Go benchmarks

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
GO ?= go
# Build with the Go on this machine; never fetch another toolchain mid-build.
export GOTOOLCHAIN ?= local

VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' python/weave_sidecar/_version.py)
BIN := python/weave_sidecar/bin/weave-sidecar
GO_SOURCES := $(shell find go -name '*.go' -not -name '*_test.go') go/go.mod go/go.sum
PY_SOURCES := $(shell find python -name '*.py') setup.py pyproject.toml
FUZZTIME ?= 15s

.PHONY: all venv build install demo test test-go test-fuzz test-py check bench clean

all: install

$(VENV)/.deps: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.deps

# The binary in the source tree: for Go tests and development.
$(BIN): $(GO_SOURCES)
	cd go && CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" \
		-o ../$(BIN) ./cmd/weave-sidecar

build: $(BIN)

# Installs the package into the venv the way users get it (a wheel with the
# binary and the .pth hook), not as an editable install.
$(VENV)/.installed: $(VENV)/.deps $(GO_SOURCES) $(PY_SOURCES)
	$(PY) -m pip install -q --no-deps --no-build-isolation --force-reinstall .
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) examples/demo.py

test: test-go test-fuzz test-py

test-go: $(BIN)
	cd go && $(GO) vet ./...
	cd go && $(GO) test -race -count=1 ./...

test-fuzz:
	cd go && $(GO) test -run='^$$' -fuzz='^FuzzDecode' -fuzztime=$(FUZZTIME) ./internal/protocol
	cd go && $(GO) test -run='^$$' -fuzz='^FuzzReadSegment$$' -fuzztime=$(FUZZTIME) ./internal/spool

test-py: install
	$(PY) -m pytest

check: venv
	test -z "$$(gofmt -l go)" || (gofmt -l go; exit 1)
	cd go && $(GO) vet ./...
	$(PY) -m ruff format --check python tests examples benchmarks scripts benchmark.py setup.py
	$(PY) -m ruff check python tests examples benchmarks scripts benchmark.py setup.py
	$(PY) -m mypy

$(VENV)/.bench-deps: $(VENV)/.deps requirements-bench.txt
	$(PY) -m pip install -q -r requirements-bench.txt
	touch $@

bench: install $(VENV)/.bench-deps
	$(PY) benchmark.py --compare
	cd go && $(GO) test -run='^$$' -bench=. -benchmem ./...

clean:
	rm -rf build dist python/*.egg-info $(BIN) $(VENV)
