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

# Versions of the test tools and plugin toolchains, pinned so that a CI run is
# reproducible. (componentize-js is pinned in plugins/package.json and its lockfile.)
KOSOKU_VERSION          := 0.1.0
WEBSOCKETS_VERSION      := 17.4
PYTEST_VERSION          := 9.2.0
COMPONENTIZE_PY_VERSION := 0.25.1
WIT_BINDGEN_VERSION     := 0.63.0

# Tools that cargo installs for the C plugins, kept inside target/.
TOOLS      := $(TARGET_DIR)/tools
WIT_BINDGEN := $(TOOLS)/bin/wit-bindgen
WASI_ADAPTER := $(TOOLS)/wasi_snapshot_preview1.reactor.wasm
WIT        := $(wildcard wit/*.wit wit/*/*.wit)

.PHONY: help deps redis-deps promtool-deps net-deps run-cluster rust-deps py-deps browser-deps js-deps c-deps bench-deps bench plugins plugins-rust plugins-js plugins-py plugins-c build lint unit integration clients adversarial fuzz fuzz-smoke autobahn browser test run clean

help:
	@echo "make run        build the plugins and start the server on $(LISTEN)"
	@echo "make run-cluster  the chat on two hosts ($(LISTEN), $(CLUSTER_LISTEN_2)) sharing a Redis of their own"
	@echo "make test       install what is missing, build everything, run every test"
	@echo "make plugins    build every WebAssembly plugin (Rust, JavaScript, Python, C) into $(PLUGIN_DIR)"
	@echo "make plugins-rust (-js, -py, -c)   build one language's plugins"
	@echo "make autobahn   run the Autobahn TestSuite (kosoku) against the echo plugin"
	@echo "make clients    run Python websockets and Node ws clients against the host"
	@echo "make adversarial  hostile traffic; writes RSS growth and bystander p99 per case"
	@echo "make fuzz       fuzz the protocol core, FUZZ_SECONDS (300) per target (make test: 12 s)"
	@echo "make browser    run the chat example in headless Chromium (ws:// and wss://)"
	@echo "make lint       cargo fmt --check and clippy -D warnings"
	@echo "make bench      build in release and compare wsplug with reference servers (about 9 minutes)"

## Installation -----------------------------------------------------------------

deps: rust-deps py-deps js-deps c-deps browser-deps redis-deps promtool-deps net-deps

# Debian's Redis, for the cluster tests and `make run-cluster` (each starts its own
# redis-server on a port of its own; nothing uses a Redis on 6379).
redis-deps:
	@command -v redis-server >/dev/null && command -v redis-cli >/dev/null \
		|| (apt-get update && apt-get install -y redis-server)

# `ss` (iproute2), with which the security tests read a listening socket's accept queue,
# and `openssl`, with which they make keys of every form.
net-deps:
	@command -v ss >/dev/null || (apt-get update && apt-get install -y iproute2)
	@command -v openssl >/dev/null || (apt-get update && apt-get install -y openssl)

# promtool (from Debian's prometheus package; only promtool is used), which checks that
# /metrics parses and follows Prometheus's naming conventions (tests/operations.rs).
promtool-deps:
	@command -v promtool >/dev/null \
		|| (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus)

rust-deps:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

# The Python tools (test tools and componentize-py) live in a venv under target/,
# made once per set of pinned versions.
PY_STAMP := $(VENV)/.installed-kosoku$(KOSOKU_VERSION)-websockets$(WEBSOCKETS_VERSION)-cpy$(COMPONENTIZE_PY_VERSION)-pytest$(PYTEST_VERSION)

py-deps: $(PY_STAMP)

$(PY_STAMP):
	@python3 -m venv --help >/dev/null 2>&1 || (apt-get update && apt-get install -y python3-venv)
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check \
		kosoku==$(KOSOKU_VERSION) websockets==$(WEBSOCKETS_VERSION) componentize-py==$(COMPONENTIZE_PY_VERSION) \
		pytest==$(PYTEST_VERSION)
	@touch $@

# componentize-js, pinned by plugins/package-lock.json.
js-deps: plugins/node_modules/.package-lock.json

plugins/node_modules/.package-lock.json: plugins/package.json plugins/package-lock.json
	cd plugins && npm ci --no-audit --no-fund --loglevel=error

# C: Debian's clang, lld and wasi-libc (preview1); wit-bindgen from crates.io with only
# the C generator; the preview1 adapter from wasmtime's crate; `jco new` (wasm-tools'
# `component new`, in the jco that componentize-js brings) makes the component.
c-deps: js-deps $(WIT_BINDGEN) $(WASI_ADAPTER)
	@command -v clang >/dev/null && command -v wasm-ld >/dev/null && test -d /usr/include/wasm32-wasi \
		&& test -n "$$(ls /usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a 2>/dev/null)" \
		|| (apt-get update && apt-get install -y clang lld wasi-libc libclang-rt-14-dev-wasm32)

# opt-level 1: the tools read a few kilobytes per plugin; their build time is what counts.
$(WIT_BINDGEN):
	CARGO_PROFILE_RELEASE_OPT_LEVEL=1 cargo install --quiet --locked --root $(TOOLS) wit-bindgen-cli@$(WIT_BINDGEN_VERSION) --no-default-features --features c

$(WASI_ADAPTER): plugins/wasi-adapter/Cargo.toml plugins/wasi-adapter/src/main.rs
	@mkdir -p $(TOOLS)
	cargo run --quiet --manifest-path plugins/wasi-adapter/Cargo.toml -- $@

# Headless Chromium from Debian, driven by playwright-core (pinned in tests/browser).
browser-deps:
	@command -v openssl >/dev/null || (apt-get update && apt-get install -y openssl)
	@test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium)
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error

## Build ------------------------------------------------------------------------

plugins: plugins-rust plugins-js plugins-py plugins-c

# Cargo names a cdylib with underscores; plugins are named with dashes. counter is built twice, as counter-v1.wasm and counter-v2.wasm, for the reload tests;
# chat is built without its history too, as chat-nohistory.wasm, for the benchmark.
# The SDK's optional exports are cargo features, which cargo unifies within one build:
# the plugins that turn them on (API 0.2 worlds with on-upgrade or snapshot/restore)
# are built on their own, so that echo and broadcast stay without them.
SDK_FEATURED := api chat
plugins-rust: rust-deps
	cd plugins && cargo build --target wasm32-wasip2 --release --quiet --workspace $(SDK_FEATURED:%=--exclude %)
	cd plugins && cargo build --target wasm32-wasip2 --release --quiet -p chat --no-default-features
	mv $(PLUGIN_DIR)/chat.wasm $(PLUGIN_DIR)/chat-nohistory.wasm
	cd plugins && for p in $(SDK_FEATURED); do cargo build --target wasm32-wasip2 --release --quiet -p $$p || exit 1; done
	cp $(PLUGIN_DIR)/echo_raw.wasm $(PLUGIN_DIR)/echo-raw.wasm
	cp $(PLUGIN_DIR)/counter.wasm $(PLUGIN_DIR)/counter-v1.wasm
	cd plugins && cargo build --target wasm32-wasip2 --release --quiet -p counter --features v2
	mv $(PLUGIN_DIR)/counter.wasm $(PLUGIN_DIR)/counter-v2.wasm

# Which WIT (version) and world each JavaScript, Python and C plugin is built against:
# the echo plugins stay on 0.1.0 and the chats on 0.2.0 (the host serves every version;
# the Rust plugins, through the SDK, use 0.3.0).
WIT_OF_echo   := wit/0.1.0
WORLD_OF_echo := plugin
WIT_OF_chat   := wit/0.2.0
WORLD_OF_chat := plugin-handshake-state
# The test plugins that print (tests/runtime.rs).
WIT_OF_probe   := wit/0.1.0
WORLD_OF_probe := plugin

# One component per directory: plugins/<name>-js/app.js -> <name>-js.wasm. No
# wasi:http (the world does not need it; without -d the component would import it).
plugins-js: $(PLUGIN_DIR)/chat-js.wasm $(PLUGIN_DIR)/echo-js.wasm $(PLUGIN_DIR)/probe-js.wasm

$(PLUGIN_DIR)/%-js.wasm: plugins/%-js/app.js $(WIT) plugins/node_modules/.package-lock.json
	@mkdir -p $(PLUGIN_DIR)
	cd plugins && npx --no-install componentize-js $*-js/app.js --wit ../$(WIT_OF_$*) -n $(WORLD_OF_$*) -d http fetch-event -o $@

# plugins/<name>-py/app.py -> <name>-py.wasm; componentize-py generates the bindings.
plugins-py: $(PLUGIN_DIR)/chat-py.wasm $(PLUGIN_DIR)/echo-py.wasm $(PLUGIN_DIR)/probe-py.wasm

$(PLUGIN_DIR)/%-py.wasm: plugins/%-py/app.py $(WIT) $(PY_STAMP)
	@mkdir -p $(PLUGIN_DIR)
	cd plugins/$*-py && $(VENV)/bin/componentize-py -d ../../$(WIT_OF_$*) -w $(WORLD_OF_$*) componentize app -o $@

# plugins/<name>-c/app.c -> <name>-c.wasm: bindings from the WIT, a preview1 reactor
# module from clang, then a component with the adapter.
plugins-c: c-deps $(PLUGIN_DIR)/chat-c.wasm $(PLUGIN_DIR)/echo-c.wasm

C_BUILD := $(TARGET_DIR)/c-plugins

$(PLUGIN_DIR)/%-c.wasm: plugins/%-c/app.c $(WIT) | c-deps
	@mkdir -p $(PLUGIN_DIR) $(C_BUILD)/$*
	$(WIT_BINDGEN) c ./$(WIT_OF_$*) --world $(WORLD_OF_$*) --out-dir $(C_BUILD)/$*
	clang --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror -Wl,--strip-debug \
		-I $(C_BUILD)/$* -o $(C_BUILD)/$*/core.wasm \
		plugins/$*-c/app.c $(C_BUILD)/$*/$(subst -,_,$(WORLD_OF_$*)).c $(C_BUILD)/$*/$(subst -,_,$(WORLD_OF_$*))_component_type.o
	cd plugins && npx --no-install jco new $(C_BUILD)/$*/core.wasm --adapt wasi_snapshot_preview1=$(WASI_ADAPTER) -o $@

# The host, its library and its tests. Benchmarks build in release (the bench profile),
# a second wasmtime build: `make bench` builds them, and lint type-checks them.
build: rust-deps
	cargo build --bins --tests --quiet

lint: rust-deps
	cargo fmt --all --check
	cd plugins && cargo fmt --all --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	cd plugins && cargo clippy --target wasm32-wasip2 --release --quiet -- -D warnings
	cargo fmt --check --manifest-path plugins/wasi-adapter/Cargo.toml
	cargo fmt --check --manifest-path host/fuzz/Cargo.toml
	cargo clippy --quiet --manifest-path host/fuzz/Cargo.toml --all-targets -- -D warnings
	cargo clippy --quiet --manifest-path plugins/wasi-adapter/Cargo.toml -- -D warnings

## Benchmarks -------------------------------------------------------------------

# Node's `ws` (pinned in bench/node) is the compressing reference server.
bench-deps:
	@command -v openssl >/dev/null || (apt-get update && apt-get install -y openssl)
	cd bench/node && npm ci --no-audit --no-fund --loglevel=error

bench: rust-deps plugins bench-deps redis-deps
	cargo build --release --quiet -p wsplug-host -p wsplug-bench
	cargo bench --quiet -p wsplug-host --bench protocol --bench plugin -- --warm-up-time 0.3 --measurement-time 1
	python3 bench/run.py

## Tests ------------------------------------------------------------------------

unit: build
	cargo test --lib --quiet -p wsplug-host
	cargo test --quiet -p wsplug-host --test architecture
	cargo test --quiet -p wsplug-ws -p wsplug-http -p wsplug-conn -p wsplug-cluster-proto

# The real host binary with the real plugins: protocol (integration), plugin runtime
# (runtime), configuration, TLS, static files, shutdown (settings), the chat in every
# language (chat), plugin API 0.2 (plugin_api), several hosts through Redis (cluster) and
# the security model's rules, each the way it breaks (security).
integration: build plugins redis-deps promtool-deps net-deps
	WSPLUG_PLUGIN_DIR=$(PLUGIN_DIR) cargo test --quiet --test integration --test runtime --test settings --test chat --test plugin_api --test cluster --test operations --test security --test plugin_runtime

# Stock clients against the real host: Python `websockets` and Node `ws` (pinned in
# tests/clients/node), with and without compression, every size, bursts, broadcasts.
clients: build plugins py-deps redis-deps
	HOST=$(HOST) PLUGIN_DIR=$(PLUGIN_DIR) $(PY) -m pytest tests/clients/python -q
	cd tests/clients/node && npm ci --no-audit --no-fund --loglevel=error
	cd tests/clients/node && HOST=$(HOST) PLUGIN_DIR=$(PLUGIN_DIR) node --test

# Hostile traffic against the real host: slowloris, half-open connections, header bombs,
# fragment and ping floods, slow readers, compression bombs, garbage, churn, trap bursts.
# Each case checks the host lives, its RSS stays bounded and a bystander's latency stays
# low; the table of numbers goes to $(ADVERSARIAL_REPORT). Then the same again with every
# plugin stateless (its calls on the connections' threads, its replies straight into their
# output), to $(ADVERSARIAL_REPORT_STATELESS); the trap burst's stateless case ran already.
ADVERSARIAL_REPORT ?= $(TARGET_DIR)/adversarial-report.md
ADVERSARIAL_REPORT_STATELESS ?= $(TARGET_DIR)/adversarial-report-stateless.md

adversarial: build plugins-rust py-deps
	WSPLUG_HOST=$(HOST) WSPLUG_PLUGIN_DIR=$(PLUGIN_DIR) ADVERSARIAL_REPORT=$(ADVERSARIAL_REPORT) $(PY) -m pytest tests/adversarial
	WSPLUG_HOST=$(HOST) WSPLUG_PLUGIN_DIR=$(PLUGIN_DIR) ADVERSARIAL_REPORT=$(ADVERSARIAL_REPORT_STATELESS) \
		WSPLUG_HOST_FLAGS=--stateless $(PY) -m pytest tests/adversarial -k "not stateless"

# Fuzz targets of the sans-IO protocols, WebSocket and cluster (host/fuzz: cargo-fuzz and
# libFuzzer, with AddressSanitizer): 12 s per target in `make test`, FUZZ_SECONDS per target
# in `make fuzz`.
FUZZ_SECONDS ?= 300

fuzz-smoke: rust-deps
	host/fuzz/run.sh 12

fuzz: rust-deps
	host/fuzz/run.sh $(FUZZ_SECONDS)

browser: build plugins browser-deps
	cd tests/browser && HOST=$(HOST) PLUGIN_DIR=$(PLUGIN_DIR) node --test

autobahn: build plugins py-deps
	$(PY) tests/autobahn.py --host $(HOST) --plugin $(PLUGIN_DIR)/echo.wasm --outdir $(TARGET_DIR)/autobahn --kosoku $(VENV)/bin/kosoku

test: deps lint unit fuzz-smoke integration clients adversarial browser autobahn
	@echo "make test: all checks passed"

## Run --------------------------------------------------------------------------

run: rust-deps plugins-rust
	cargo build --release --quiet --bin host
	@echo
	@echo "  wsplug chat: open http://$(LISTEN)/ in two browser windows"
	@echo
	$(TARGET_DIR)/release/host --listen $(LISTEN) --plugin $(PLUGIN_DIR)/chat.wasm --static examples/chat

# The chat on two hosts sharing a Redis server of their own (port CLUSTER_REDIS_PORT):
# a message typed on one host's page reaches the other's.
CLUSTER_REDIS_PORT ?= 6390
CLUSTER_LISTEN_2   ?= 127.0.0.1:9002

run-cluster: rust-deps plugins-rust redis-deps
	cargo build --release --quiet --bin host
	@trap 'kill 0' EXIT; \
	redis-server --port $(CLUSTER_REDIS_PORT) --bind 127.0.0.1 --save "" --appendonly no --loglevel warning & \
	until redis-cli -p $(CLUSTER_REDIS_PORT) ping 2>/dev/null | grep -q PONG; do sleep 0.1; done; \
	echo; echo "  wsplug chat on two hosts: open http://$(LISTEN)/ and http://$(CLUSTER_LISTEN_2)/"; echo; \
	for listen in $(LISTEN) $(CLUSTER_LISTEN_2); do \
		$(TARGET_DIR)/release/host --listen $$listen --plugin $(PLUGIN_DIR)/chat.wasm --static examples/chat \
			--cluster redis://127.0.0.1:$(CLUSTER_REDIS_PORT) --cluster-name chat & \
	done; \
	wait

clean:
	cargo clean
	rm -rf host/fuzz/target host/fuzz/artifacts
