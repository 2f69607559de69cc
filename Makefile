# The two commands a fresh machine needs (see README.md):
#   make run    build the plugins and run the gateway on config.toml
#   make test   build everything and run every test
# Each installs what it needs (the wasm32-wasip2 Rust target; for the tests
# also Mosquitto and strace from Debian's packages).

CARGO ?= cargo
PLUGIN_TARGET := wasm32-wasip2

.PHONY: run test test-tools plugins wasm-target build lint fmt bench clean

wasm-target:
	@rustup target list --installed 2>/dev/null | grep -qx $(PLUGIN_TARGET) || rustup target add $(PLUGIN_TARGET)

# Every plugin and test fixture, built for the gateway to load.
plugins: wasm-target
	cd plugins && $(CARGO) build --release --target $(PLUGIN_TARGET)

build: plugins
	$(CARGO) build --release -p soundbox-gateway

run: build
	./target/release/soundbox-gateway run --config config.toml

# System tools the tests use, from Debian's packages when missing: Mosquitto
# (the MQTT tests run a real broker) and strace (the durability test).
test-tools:
	@missing=""; \
	command -v strace >/dev/null || missing="$$missing strace"; \
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing; \
	fi

# Host tests (unit + end-to-end with the real binary and real plugins), then
# the plugins' own unit tests, natively.
test: test-tools plugins
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
