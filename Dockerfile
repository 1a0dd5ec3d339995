# The module as a "compat" Wasm image (one layer holding plugin.wasm), which Istio's WasmPlugin
# and Envoy Gateway's EnvoyExtensionPolicy also pull. For those with Docker (or buildah/podman);
# `make oci` builds the same module into an OCI image without any engine. Not built in CI.
#   make build && docker build -t REGISTRY/oauth-filter:0.1.0 . && docker push REGISTRY/oauth-filter:0.1.0
# Exactly one COPY, so that the image has exactly one layer.
FROM scratch
COPY target/wasm32-wasip1/release/oauth_filter.wasm ./plugin.wasm
