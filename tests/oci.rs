//! The OCI image layout of `make oci` (tests/support/oci.rs), built from a tiny fake module: the
//! layout files, every digest and size, the media types Istio's and Envoy Gateway's image
//! fetchers look for, determinism, and the tar.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/oci.rs"]
mod oci;

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const WASM: &[u8] = b"\0asm\x01\0\0\0";

fn meta() -> oci::Meta {
    oci::Meta {
        tag: "9.9.9-test".to_string(),
        title: "oauth-filter".to_string(),
        version: "9.9.9".to_string(),
        description: "test image".to_string(),
        licenses: "Apache-2.0".to_string(),
        source: Some("https://example.com/oauth-filter".to_string()),
        root_id: "oauth_filter".to_string(),
    }
}

/// A fresh directory under target/ (removed first).
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-oci")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn digest(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The blob a descriptor names, checked against its digest and size.
fn blob(dir: &Path, descriptor: &Value) -> Vec<u8> {
    let d = descriptor["digest"].as_str().unwrap();
    let hex = d.strip_prefix("sha256:").unwrap();
    let bytes = std::fs::read(dir.join("blobs/sha256").join(hex)).unwrap();
    assert_eq!(digest(&bytes), d, "digest of blob {d}");
    assert_eq!(
        descriptor["size"].as_u64().unwrap(),
        bytes.len() as u64,
        "size of blob {d}"
    );
    bytes
}

/// Name → (typeflag, content) of a ustar archive, checking each header's checksum.
fn untar(mut tar: &[u8]) -> BTreeMap<String, (u8, Vec<u8>)> {
    let mut entries = BTreeMap::new();
    assert_eq!(tar.len() % 512, 0);
    while tar.len() >= 512 {
        let header = &tar[..512];
        if header.iter().all(|&b| b == 0) {
            assert!(tar.iter().all(|&b| b == 0), "data after the end blocks");
            break;
        }
        assert_eq!(&header[257..263], b"ustar\0");
        let field = |range: std::ops::Range<usize>| {
            let text = std::str::from_utf8(&header[range]).unwrap();
            u64::from_str_radix(text.trim_matches(|c| c == '\0' || c == ' '), 8).unwrap()
        };
        let mut blank = header.to_vec();
        blank[148..156].fill(b' ');
        let sum: u64 = blank.iter().map(|&b| u64::from(b)).sum();
        assert_eq!(field(148..156), sum, "checksum");
        assert_eq!(field(136..148), 0, "mtime");
        let end = header[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = String::from_utf8(header[..end].to_vec()).unwrap();
        let size = field(124..136) as usize;
        let padded = size.div_ceil(512) * 512;
        let content = tar[512..512 + size].to_vec();
        entries.insert(name, (header[156], content));
        tar = &tar[512 + padded..];
    }
    entries
}

#[test]
fn layout_is_what_istio_and_envoy_gateway_pull() {
    let dir = scratch("layout");
    let layout = oci::build(WASM, &meta());
    layout.write(&dir).unwrap();

    assert_eq!(
        read_json(&dir.join("oci-layout")),
        serde_json::json!({ "imageLayoutVersion": "1.0.0" })
    );

    let index = read_json(&dir.join("index.json"));
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], oci::INDEX_MEDIA_TYPE);
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1);
    let entry = &manifests[0];
    assert_eq!(entry["mediaType"], oci::MANIFEST_MEDIA_TYPE);
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        "9.9.9-test"
    );
    let manifest_bytes = blob(&dir, entry);
    assert_eq!(entry["digest"], layout.manifest.digest.as_str());

    let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], oci::MANIFEST_MEDIA_TYPE);
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.module.wasm.config.v1+json"
    );
    let config: Value = serde_json::from_slice(&blob(&dir, &manifest["config"])).unwrap();
    assert_eq!(config["type"], "envoy_proxy");
    assert_eq!(config["config"]["rootIds"][0], "oauth_filter");

    // Istio and Envoy Gateway: exactly two layers, one of them the raw module.
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    assert_eq!(layers[0], {
        let mut c = manifest["config"].clone();
        c["annotations"] =
            serde_json::json!({ "org.opencontainers.image.title": "runtime-config.json" });
        c
    });
    let wasm_layers: Vec<&Value> = layers
        .iter()
        .filter(|l| l["mediaType"] == "application/vnd.module.wasm.content.layer.v1+wasm")
        .collect();
    assert_eq!(wasm_layers.len(), 1);
    assert_eq!(blob(&dir, wasm_layers[0]), WASM);
    assert_eq!(wasm_layers[0]["digest"], digest(WASM).as_str());
    assert_eq!(
        wasm_layers[0]["annotations"]["org.opencontainers.image.title"],
        "plugin.wasm"
    );

    let annotations = &manifest["annotations"];
    assert_eq!(
        annotations["org.opencontainers.image.title"],
        "oauth-filter"
    );
    assert_eq!(
        annotations["org.opencontainers.image.licenses"],
        "Apache-2.0"
    );
    assert_eq!(
        annotations["org.opencontainers.image.source"],
        "https://example.com/oauth-filter"
    );
    assert_eq!(annotations["org.opencontainers.image.version"], "9.9.9");
    assert!(annotations
        .as_object()
        .unwrap()
        .keys()
        .all(|k| !k.contains("created")));

    // Nothing else under blobs/: config (twice referenced), module, manifest.
    let mut names: Vec<String> = std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut expected: Vec<String> = [&layout.manifest, &layout.config, &layout.wasm]
        .iter()
        .map(|b| b.digest["sha256:".len()..].to_string())
        .collect();
    expected.sort();
    assert_eq!(names, expected);

    // JSON is compact with sorted keys (so the digests do not depend on serde_json's features).
    let text = String::from_utf8(manifest_bytes).unwrap();
    assert!(
        !text.contains("\": ") && !text.contains(", ") && !text.contains('\n'),
        "{text}"
    );
    assert!(text.find("\"annotations\"") < text.find("\"config\""));
    assert!(text.find("\"config\"") < text.find("\"layers\""));

    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn same_module_same_digests() {
    let (a, b) = (scratch("det-a"), scratch("det-b"));
    oci::build(WASM, &meta()).write(&a).unwrap();
    oci::build(WASM, &meta()).write(&b).unwrap();
    for file in ["index.json", "oci-layout", oci::TAR_NAME] {
        assert_eq!(
            std::fs::read(a.join(file)).unwrap(),
            std::fs::read(b.join(file)).unwrap(),
            "{file}"
        );
    }
    // Writing again over an old layout of another module leaves no stale blob behind.
    let other = oci::build(b"\0asm\x01\0\0\0\0", &meta());
    other.write(&a).unwrap();
    assert_eq!(
        std::fs::read_dir(a.join("blobs/sha256")).unwrap().count(),
        3
    );
    assert_ne!(
        other.manifest.digest,
        oci::build(WASM, &meta()).manifest.digest
    );
    // The tag changes index.json only, not the image.
    let mut retagged = meta();
    retagged.tag = "latest".to_string();
    let c = oci::build(WASM, &retagged);
    let d = oci::build(WASM, &meta());
    assert_eq!(c.manifest, d.manifest);
    assert_ne!(c.index, d.index);
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn tar_holds_the_layout() {
    let dir = scratch("tar");
    let layout = oci::build(WASM, &meta());
    layout.write(&dir).unwrap();
    let tar = std::fs::read(dir.join(oci::TAR_NAME)).unwrap();
    assert_eq!(tar, layout.tar());
    let entries = untar(&tar);

    let mut files = 0;
    for (name, bytes) in layout.files() {
        let (kind, content) = entries.get(&name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(*kind, b'0', "{name}");
        assert_eq!(content.len(), bytes.len(), "size of {name}");
        assert_eq!(content, &std::fs::read(dir.join(&name)).unwrap(), "{name}");
        files += 1;
    }
    assert_eq!(files, 5);
    for d in ["blobs/", "blobs/sha256/"] {
        assert_eq!(entries[d].0, b'5', "{d}");
    }
    assert_eq!(entries.len(), files + 2);
    let _ = std::fs::remove_dir_all(&dir);
}
