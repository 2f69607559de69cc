# The two commands a fresh machine needs (see README.md):
#   make run    build the plugins and run the gateway on config.toml
#   make test   build everything and run every test
# Each installs what it needs (the wasm32-wasip2 Rust target).

CARGO ?= cargo
PLUGIN_TARGET := wasm32-wasip2

.PHONY: run test plugins wasm-target build lint fmt bench clean

wasm-target:
	@rustup target list --installed 2>/dev/null | grep -qx $(PLUGIN_TARGET) || rustup target add $(PLUGIN_TARGET)

# Every plugin and test fixture, built for the gateway to load.
plugins: wasm-target
	cd plugins && $(CARGO) build --release --target $(PLUGIN_TARGET)

build: plugins
	$(CARGO) build --release -p soundbox-gateway

run: build
	./target/release/soundbox-gateway run --config config.toml

# Host tests (unit + end-to-end with the real binary and real plugins), then
# the plugins' own unit tests, natively.
test: plugins
	$(CARGO) build -p soundbox-gateway
	$(CARGO) test --workspace
	cd plugins && $(CARGO) test

lint:
	$(CARGO) fmt --all --check
	cd plugins && $(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	cd plugins && $(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all
	cd plugins && $(CARGO) fmt --all

bench: plugins
	$(CARGO) bench -p soundbox-gateway

clean:
	$(CARGO) clean
	cd plugins && $(CARGO) clean
