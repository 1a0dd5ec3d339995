//! `make oci`: the built module as an OCI image layout that Istio (`WasmPlugin`) and Envoy Gateway
//! (`EnvoyExtensionPolicy`) pull, written without a container engine (see tests/support/oci.rs).
//!
//! cargo run --quiet --profile tools --example oci -- <module.wasm> <outdir> [tag]
//!
//! The tag defaults to the crate version; `OCI_SOURCE` (else Cargo.toml's `repository`) becomes
//! the `org.opencontainers.image.source` annotation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/oci.rs"]
mod oci;

use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (wasm, out, tag) = match args.as_slice() {
        [wasm, out] => (wasm, out, env!("CARGO_PKG_VERSION").to_string()),
        [wasm, out, tag] if !tag.is_empty() => (wasm, out, tag.clone()),
        [wasm, out, _] => (wasm, out, env!("CARGO_PKG_VERSION").to_string()),
        _ => {
            eprintln!("usage: oci <module.wasm> <outdir> [tag]");
            std::process::exit(2);
        }
    };
    let bytes = std::fs::read(wasm).unwrap_or_else(|e| panic!("read {wasm}: {e} (make build)"));
    assert!(
        bytes.starts_with(b"\0asm"),
        "{wasm} is not a WebAssembly module"
    );
    let source = std::env::var("OCI_SOURCE")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| Some(env!("CARGO_PKG_REPOSITORY").to_string()).filter(|s| !s.is_empty()));
    let meta = oci::Meta {
        tag: tag.clone(),
        title: env!("CARGO_PKG_NAME").to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        description: env!("CARGO_PKG_DESCRIPTION").to_string(),
        licenses: env!("CARGO_PKG_LICENSE").to_string(),
        source,
        root_id: "oauth_filter".to_string(),
    };
    let layout = oci::build(&bytes, &meta);
    let out = PathBuf::from(out);
    layout
        .write(&out)
        .unwrap_or_else(|e| panic!("write {}: {e}", out.display()));

    let tar = out.join(oci::TAR_NAME);
    println!("OCI image layout {} (tag {tag})", out.display());
    println!("  manifest {}", layout.manifest.digest);
    println!(
        "  module   {} ({} bytes)",
        layout.wasm.digest,
        layout.wasm.bytes.len()
    );
    println!("  archive  {}", tar.display());
    println!("push it with one of:");
    println!(
        "  skopeo copy --preserve-digests oci-archive:{}:{tag} docker://REGISTRY/oauth-filter:{tag}",
        tar.display()
    );
    println!(
        "  oras cp --from-oci-layout {}:{tag} REGISTRY/oauth-filter:{tag}",
        out.display()
    );
    println!("  crane push {} REGISTRY/oauth-filter:{tag}", out.display());
}
