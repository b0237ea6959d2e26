# weave-sidecar: every target sets up what it needs (virtualenv, Go build, pip installs).
#   make demo   a real Weave-traced program through the sidecar into a local trace server
#   make test   go vet, go test -race, a short fuzz run, pytest, check-wheels
#   make wheels        every platform's wheel and the sdist into dist/
#   make check-wheels  check them (tags, binaries, pip resolution, smoke test), lint workflows
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

.PHONY: all venv build install demo test test-go test-fuzz test-py check bench soak clean \
	wheels check-wheels lint-workflows qemu

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

test: test-go test-fuzz test-py check-wheels

test-go: $(BIN)
	cd go && $(GO) vet ./...
	cd go && $(GO) test -race -count=1 ./...

test-fuzz:
	cd go && $(GO) test -run='^$$' -fuzz='^FuzzDecode' -fuzztime=$(FUZZTIME) -fuzzminimizetime=1s ./internal/protocol
	cd go && $(GO) test -run='^$$' -fuzz='^FuzzReadSegment$$' -fuzztime=$(FUZZTIME) -fuzzminimizetime=1s ./internal/spool

test-py: install
	$(PY) -m pytest

# Wheels for every platform, cross-compiled here (CGO_ENABLED=0), plus the sdist.
# Each wheel is built from the sdist in a fresh temp dir, so no build/ output
# leaks from one target into the next and the sdist is proven complete.
WHEEL_TARGETS := linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64
SDIST := dist/weave_sidecar-$(VERSION).tar.gz
ACTIONLINT := github.com/rhysd/actionlint/cmd/actionlint@v1.7.12

dist/.built: $(VENV)/.deps $(GO_SOURCES) $(PY_SOURCES) MANIFEST.in README.md
	rm -rf dist
	mkdir -p build
	$(PY) -m build -q --sdist --no-isolation --outdir dist . > build/sdist.log 2>&1 \
		|| (cat build/sdist.log; exit 1)
	for t in $(WHEEL_TARGETS); do \
		echo "wheel for $$t"; \
		GOOS=$${t%/*} GOARCH=$${t#*/} WEAVE_SIDECAR_REQUIRE_BINARY=1 \
			$(PY) -m build -q --wheel --no-isolation --outdir dist $(SDIST) \
			> build/wheel.log 2>&1 || { cat build/wheel.log; exit 1; }; \
	done
	ls dist
	touch $@

wheels: dist/.built

# The arm64 binary's --version runs under qemu where it can be installed.
qemu:
	@command -v qemu-aarch64-static >/dev/null 2>&1 \
	|| { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq qemu-user-static >/dev/null; }; } \
	|| echo "qemu-user-static not installable here: the linux/arm64 --version check is skipped"

lint-workflows:
	$(GO) run $(ACTIONLINT) -shellcheck= -pyflakes= .github/workflows/*.yml

check-wheels: wheels venv lint-workflows
	$(PY) scripts/check_wheels.py --dist dist --go $(GO)

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

# Overload: 8 clients against a down or slow backend; prints peak RSS (Linux).
soak: $(BIN)
	cd go && $(GO) run ./cmd/soak --sidecar ../$(BIN)

clean:
	rm -rf build dist python/*.egg-info $(BIN) $(VENV)
