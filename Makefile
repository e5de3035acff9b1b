# The two commands: `make run` and `make test`. See README.md.

SHELL := /bin/bash
CARGO ?= cargo
VENV := tests/.venv
# What the build needs on a fresh Debian machine (see ARCHITECTURE.md, "System packages").
SYSTEM_PACKAGES := build-essential pkg-config libclang-dev libssl-dev libxml2-dev libxmlsec1-dev libxslt1-dev
# What the tests and benchmarks need besides.
TEST_SYSTEM_PACKAGES := python3 python3-venv curl chromium xmlsec1 libnss3-tools
BENCH_SYSTEM_PACKAGES := wrk nginx-light

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test deps test-deps bench check build clean

## Install what is missing, build, and run the gateway with the shipped config.toml.
run: deps
	$(CARGO) build --release --workspace
	./target/release/portcullis serve --config config.toml

## Install every test dependency, then check style and run every test.
test: test-deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	# Plugin libraries the tests load: every cdylib of the workspace (debug), and the
	# release build of the example plugin that the shipped config.toml names.
	$(CARGO) build --workspace
	$(CARGO) build --release -p portcullis-htpasswd
	set -o pipefail; $(CARGO) test --workspace 2>&1 | tee target/test-output.txt
	@awk '/^test result:/ { passed += $$4; failed += $$6 } END { printf "%d passed, %d failed\n", passed, failed }' target/test-output.txt

## Benchmarks (not tests): Portcullis beside nginx, figures into the terminal.
bench: test-deps
	$(MAKE) --no-print-directory install-packages PACKAGES="$(BENCH_SYSTEM_PACKAGES)"
	tests/bench/proxy.sh
	tests/bench/saml.sh
	tests/bench/oidc.sh

deps:
	@$(MAKE) --no-print-directory install-packages PACKAGES="$(SYSTEM_PACKAGES)"

test-deps: deps
	@$(MAKE) --no-print-directory install-packages PACKAGES="$(TEST_SYSTEM_PACKAGES)"
	@[ -x $(VENV)/bin/python ] || python3 -m venv $(VENV)
	@$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	@command -v npm >/dev/null || $(MAKE) --no-print-directory install-packages PACKAGES="nodejs npm"
	@cd tests && npm ci --no-audit --no-fund --silent

# Installs the Debian packages in $(PACKAGES) that are not installed yet.
install-packages:
	@missing=$$(for p in $(PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

check:
	$(CARGO) run --quiet --bin portcullis -- check --config config.toml

clean:
	$(CARGO) clean
	rm -rf $(VENV)
