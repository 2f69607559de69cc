# The two commands a fresh machine needs (see README.md):
#   make run    build the plugins and run the gateway on config.toml
#   make test   build everything and run every test
# Each installs what it needs (the wasm32-wasip2 Rust target; for the tests
# also Mosquitto, strace, Chromium and libfaketime from Debian's packages, and the pinned
# componentize-py and componentize-js that build the hello connector
# examples in Python and JavaScript, which needs python3 and npm).

CARGO ?= cargo
PLUGIN_TARGET := wasm32-wasip2

.PHONY: run test test-tools plugins hello-connectors wasm-target build lint fmt bench bench-e2e clean FORCE

wasm-target:
	@rustup target list --installed 2>/dev/null | grep -qx $(PLUGIN_TARGET) || rustup target add $(PLUGIN_TARGET)

# Every plugin and test fixture, built for the gateway to load.
plugins: wasm-target
	cd plugins && $(CARGO) build --release --target $(PLUGIN_TARGET)

# The hello connector of examples/hello-connector in Rust, Python and
# JavaScript, built into target/hello-connector/ for the e2e tests. Python's
# and JavaScript's builders are installed here, pinned: componentize-py into
# a venv under target/, componentize-js with `npm ci` from its lock file.
HELLO := examples/hello-connector
HELLO_OUT := target/hello-connector
HELLO_VENV := $(HELLO_OUT)/venv

hello-connectors: $(HELLO_OUT)/hello_rust.wasm $(HELLO_OUT)/hello_python.wasm $(HELLO_OUT)/hello_js.wasm

# Cargo knows what changed, so it is always asked. It builds in the plugins'
# target dir: same dependency versions and release profile, so after
# `make plugins` only the example itself is compiled.
$(HELLO_OUT)/hello_rust.wasm: wasm-target FORCE
	cd $(HELLO)/rust && $(CARGO) build --release --target $(PLUGIN_TARGET) --target-dir $(CURDIR)/plugins/target
	@mkdir -p $(HELLO_OUT)
	cp plugins/target/$(PLUGIN_TARGET)/release/hello_connector.wasm $@

$(HELLO_VENV)/bin/componentize-py: $(HELLO)/python/requirements.txt
	python3 -m venv $(HELLO_VENV)
	$(HELLO_VENV)/bin/pip install --quiet --disable-pip-version-check -r $<
	@touch $@

$(HELLO_OUT)/hello_python.wasm: $(HELLO)/python/app.py $(HELLO)/python/build.sh plugin-sdk/wit/connector.wit $(HELLO_VENV)/bin/componentize-py
	PATH="$(CURDIR)/$(HELLO_VENV)/bin:$$PATH" sh $(HELLO)/python/build.sh $@

$(HELLO)/js/node_modules/.package-lock.json: $(HELLO)/js/package-lock.json
	cd $(HELLO)/js && npm ci --no-audit --no-fund

$(HELLO_OUT)/hello_js.wasm: $(HELLO)/js/hello.js $(HELLO)/js/build.sh plugin-sdk/wit/connector.wit $(HELLO)/js/node_modules/.package-lock.json
	sh $(HELLO)/js/build.sh $@

FORCE:

build: plugins
	$(CARGO) build --release -p soundbox-gateway

run: build
	./target/release/soundbox-gateway run --config config.toml

# System tools the tests use, from Debian's packages when missing: Mosquitto
# (the MQTT tests run a real broker), strace (the durability test),
# Chromium (the status page test renders the page in a real browser) and
# libfaketime (the chaos test that jumps the gateway's wall clock).
test-tools:
	@missing=""; \
	command -v strace >/dev/null || missing="$$missing strace"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing="$$missing nats-server"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v faketime >/dev/null || missing="$$missing faketime"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing; \
	fi

# Host tests (unit + end-to-end with the real binary and real plugins), then
# the plugins' own unit tests, natively.
test: test-tools plugins hello-connectors
	$(CARGO) build -p soundbox-gateway
	$(CARGO) test --workspace
	cd plugins && $(CARGO) test
	cd $(HELLO)/rust && $(CARGO) test --target-dir $(CURDIR)/plugins/target

lint:
	$(CARGO) fmt --all --check
	cd plugins && $(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	cd plugins && $(CARGO) clippy --all-targets -- -D warnings
	cd $(HELLO)/rust && $(CARGO) fmt --check && $(CARGO) clippy --all-targets --target-dir $(CURDIR)/plugins/target -- -D warnings

fmt:
	$(CARGO) fmt --all
	cd plugins && $(CARGO) fmt --all
	cd $(HELLO)/rust && $(CARGO) fmt

bench: plugins
	$(CARGO) bench -p soundbox-gateway

# The end-to-end bench alone: the release binary under load against the
# disk's fdatasync floor and a naive server, in a few minutes; one report.
bench-e2e: plugins
	$(CARGO) bench -p soundbox-gateway --bench e2e

clean:
	$(CARGO) clean
	cd plugins && $(CARGO) clean
	rm -rf $(HELLO)/js/node_modules

# --- Raspberry Pi packaging (packaging/, examples/raspberry-pi.md) ----------
# Not part of `make test` or CI: release builds of wasmtime for two more
# targets (dist profile: thin LTO, stripped) take far longer than CI's 30
# minutes on 2 cores. They build into target/cross, at low priority, so they
# never hold the cargo lock of target/. Each installs what it needs when
# missing: Debian's cross gcc and libc (aarch64, armhf), qemu-user-static,
# the Rust targets, cargo-deb.
#   make cross        target/cross/{aarch64-unknown-linux-gnu,armv7-unknown-linux-gnueabihf}/dist/soundbox-gateway
#   make deb          target/cross/debian/soundbox-gateway_<version>-1_{arm64,armhf,amd64}.deb
#   make cross-smoke  both cross binaries under qemu-user: start, a SePay webhook, SIGTERM
PI_TARGETS := aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf

.PHONY: cross deb cross-smoke

cross:
	CARGO="$(CARGO)" sh packaging/cross-build.sh $(PI_TARGETS)

deb: plugins
	CARGO="$(CARGO)" sh packaging/build-deb.sh $(PI_TARGETS) x86_64-unknown-linux-gnu

cross-smoke: cross plugins
	for t in $(PI_TARGETS); do bash packaging/cross-smoke.sh $$t || exit 1; done
