# wsplug: every install step the build and the tests need lives here, so that a
# fresh Debian machine with only Rust installed can run `make run` and `make test`.

SHELL := /bin/bash
.DEFAULT_GOAL := help

ROOT        := $(CURDIR)
TARGET_DIR  := $(ROOT)/target
PLUGIN_DIR  := $(TARGET_DIR)/wasm32-wasip2/release
VENV        := $(TARGET_DIR)/venv
PY          := $(VENV)/bin/python
HOST        := $(TARGET_DIR)/debug/host
LISTEN      ?= 127.0.0.1:9001

export CARGO_TARGET_DIR := $(TARGET_DIR)

# Versions of the test tools, pinned so that a CI run is reproducible.
KOSOKU_VERSION     := 0.1.0
WEBSOCKETS_VERSION := 17.4

.PHONY: help deps rust-deps py-deps browser-deps bench-deps bench plugins build lint unit integration autobahn browser test run clean

help:
	@echo "make run        build the plugins and start the server on $(LISTEN)"
	@echo "make test       install what is missing, build everything, run every test"
	@echo "make plugins    build the WebAssembly plugins into $(PLUGIN_DIR)"
	@echo "make autobahn   run the Autobahn TestSuite (kosoku) against the echo plugin"
	@echo "make browser    run the chat example in headless Chromium (ws:// and wss://)"
	@echo "make lint       cargo fmt --check and clippy -D warnings"
	@echo "make bench      build in release and compare wsplug with reference servers (about 8 minutes)"

## Installation -----------------------------------------------------------------

deps: rust-deps py-deps browser-deps

rust-deps:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

# The Python test tools live in a venv under target/, made once.
py-deps: $(VENV)/.installed

$(VENV)/.installed:
	@python3 -m venv --help >/dev/null 2>&1 || (apt-get update && apt-get install -y python3-venv)
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check \
		kosoku==$(KOSOKU_VERSION) websockets==$(WEBSOCKETS_VERSION)
	@touch $@

# Headless Chromium from Debian, driven by playwright-core (pinned in tests/browser).
browser-deps:
	@command -v openssl >/dev/null || (apt-get update && apt-get install -y openssl)
	@test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium)
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error

## Build ------------------------------------------------------------------------

# counter is built twice, as counter-v1.wasm and counter-v2.wasm, for the reload tests.
plugins: rust-deps
	cd plugins && cargo build --target wasm32-wasip2 --release --quiet
	cp $(PLUGIN_DIR)/counter.wasm $(PLUGIN_DIR)/counter-v1.wasm
	cd plugins && cargo build --target wasm32-wasip2 --release --quiet -p counter --features v2
	mv $(PLUGIN_DIR)/counter.wasm $(PLUGIN_DIR)/counter-v2.wasm
	@ls -1 $(PLUGIN_DIR)/*.wasm

build: rust-deps
	cargo build --all-targets --quiet

lint: rust-deps
	cargo fmt --all --check
	cd plugins && cargo fmt --all --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	cd plugins && cargo clippy --target wasm32-wasip2 --release --quiet -- -D warnings

## Benchmarks -------------------------------------------------------------------

# Node's `ws` (pinned in bench/node) is the compressing reference server.
bench-deps:
	@command -v openssl >/dev/null || (apt-get update && apt-get install -y openssl)
	cd bench/node && npm ci --no-audit --no-fund --loglevel=error

bench: rust-deps plugins bench-deps
	cargo build --release --quiet -p wsplug-host -p wsplug-bench
	cargo bench --quiet -p wsplug-host --bench protocol -- --warm-up-time 1 --measurement-time 2
	python3 bench/run.py

## Tests ------------------------------------------------------------------------

unit: build
	cargo test --lib --quiet

# The real host binary with the real plugins: protocol (integration), plugin runtime
# (runtime) and configuration, TLS, static files, shutdown (settings).
integration: build plugins
	WSPLUG_PLUGIN_DIR=$(PLUGIN_DIR) cargo test --quiet --test integration --test runtime --test settings

browser: build plugins browser-deps
	cd tests/browser && HOST=$(HOST) CHAT_PLUGIN=$(PLUGIN_DIR)/chat.wasm node --test

autobahn: build plugins py-deps
	$(PY) tests/autobahn.py --host $(HOST) --plugin $(PLUGIN_DIR)/echo.wasm --outdir $(TARGET_DIR)/autobahn --kosoku $(VENV)/bin/kosoku

test: deps lint unit integration browser autobahn
	@echo "make test: all checks passed"

## Run --------------------------------------------------------------------------

run: rust-deps plugins
	cargo build --release --quiet --bin host
	@echo
	@echo "  wsplug chat: open http://$(LISTEN)/ in two browser windows"
	@echo
	$(TARGET_DIR)/release/host --listen $(LISTEN) --plugin $(PLUGIN_DIR)/chat.wasm --static examples/chat

clean:
	cargo clean
