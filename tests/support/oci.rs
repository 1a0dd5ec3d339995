//! An OCI image of the Wasm module, as Istio's `WasmPlugin` and Envoy Gateway's
//! `EnvoyExtensionPolicy` pull it, written as an OCI image layout (a directory and a tar of it)
//! without a container engine. Shared by `examples/oci.rs` (`make oci`) and `tests/oci.rs`.
//!
//! The image is the *oci* variant of the Wasm image specification (solo-io/wasm, spec/spec.md),
//! laid out the way its reference tool `wasme` pushed it and the way the fetchers of Istio
//! (`pkg/wasm/imagefetcher.go`) and Envoy Gateway (`internal/wasm/imagefetcher.go`, a copy of
//! Istio's) read it:
//!
//! - the config is the runtime configuration, `application/vnd.module.wasm.config.v1+json`;
//! - the manifest has exactly two layers, the same runtime configuration blob again and the raw
//!   module as `application/vnd.module.wasm.content.layer.v1+wasm`. Both fetchers refuse an
//!   *oci*-variant image whose manifest lists other than two layers ("number of layers must be 2"),
//!   then take the layer of the Wasm media type and read its bytes as they are.
//!
//! Everything is deterministic: no timestamps anywhere, JSON with sorted keys and no spaces, tar
//! entries in a fixed order with zero times and owners. The same module gives the same digests.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io;
use std::path::Path;

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.module.wasm.config.v1+json";
pub const WASM_MEDIA_TYPE: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
/// The content of the `oci-layout` file of an image layout.
pub const OCI_LAYOUT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;
/// The tar of the layout, written inside the layout directory.
pub const TAR_NAME: &str = "oauth-filter-oci.tar";
/// The names the layers carry (`org.opencontainers.image.title`): what `oras pull` writes.
pub const CONFIG_FILE_NAME: &str = "runtime-config.json";
pub const WASM_FILE_NAME: &str = "plugin.wasm";

/// What the image says about itself.
#[derive(Clone, Debug)]
pub struct Meta {
    /// The tag: `org.opencontainers.image.ref.name` of the manifest in `index.json`.
    pub tag: String,
    pub title: String,
    pub version: String,
    pub description: String,
    /// SPDX expression (`org.opencontainers.image.licenses`).
    pub licenses: String,
    /// Where the source is (`org.opencontainers.image.source`); left out when `None`.
    pub source: Option<String>,
    /// The proxy-wasm root id the module is meant to run under (runtime configuration).
    pub root_id: String,
}

/// One content-addressed blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    /// `sha256:<hex>`.
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    pub fn new(bytes: Vec<u8>) -> Blob {
        Blob {
            digest: sha256_digest(&bytes),
            bytes,
        }
    }

    /// The path of the blob inside the layout: `blobs/sha256/<hex>`.
    pub fn path(&self) -> String {
        format!("blobs/{}", self.digest.replacen(':', "/", 1))
    }

    fn descriptor(&self, media_type: &str) -> Value {
        json!({ "mediaType": media_type, "digest": self.digest, "size": self.bytes.len() })
    }
}

/// The whole image layout, in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub index: Vec<u8>,
    pub manifest: Blob,
    pub config: Blob,
    pub wasm: Blob,
}

impl Layout {
    /// The files of the layout, in the order the tar holds them: `oci-layout`, `index.json`,
    /// then the blobs sorted by digest.
    pub fn files(&self) -> Vec<(String, &[u8])> {
        let mut blobs = [&self.manifest, &self.config, &self.wasm];
        blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
        let mut files = vec![
            ("oci-layout".to_string(), OCI_LAYOUT.as_bytes()),
            ("index.json".to_string(), self.index.as_slice()),
        ];
        files.extend(blobs.iter().map(|b| (b.path(), b.bytes.as_slice())));
        files
    }

    /// The layout as a POSIX ustar archive: the directories `blobs/` and `blobs/sha256/` and the
    /// files, with mode 0644/0755, owner 0, time 0.
    pub fn tar(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let files = self.files();
        let (head, blobs) = files.split_at(2);
        for (name, bytes) in head {
            tar_entry(&mut out, name, Some(bytes));
        }
        tar_entry(&mut out, "blobs/", None);
        tar_entry(&mut out, "blobs/sha256/", None);
        for (name, bytes) in blobs {
            tar_entry(&mut out, name, Some(bytes));
        }
        // End of archive: two zero blocks.
        out.resize(out.len() + 1024, 0);
        out
    }

    /// Writes the layout into `dir` (created if needed; a previous `blobs/` there is replaced so
    /// that no stale blob stays) and its tar as `dir/TAR_NAME`.
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let blobs = dir.join("blobs");
        if blobs.exists() {
            std::fs::remove_dir_all(&blobs)?;
        }
        std::fs::create_dir_all(blobs.join("sha256"))?;
        for (name, bytes) in self.files() {
            std::fs::write(dir.join(name), bytes)?;
        }
        std::fs::write(dir.join(TAR_NAME), self.tar())
    }
}

/// `sha256:<lowercase hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for byte in hash {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// JSON with object keys sorted at every level and no whitespace.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                let mut out = serde_json::Map::new();
                for key in keys {
                    out.insert(key.clone(), sorted(&map[key]));
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    // A `Value` always serialises; the map is a BTreeMap (sorted) unless serde_json's
    // `preserve_order` is on, in which case the insertion order above is the sorted order.
    serde_json::to_vec(&sorted(value)).unwrap_or_default()
}

/// The image of `wasm` described by `meta`.
pub fn build(wasm: &[u8], meta: &Meta) -> Layout {
    let config = Blob::new(canonical_json(&json!({
        "type": "envoy_proxy",
        "abiVersions": ["proxy_abi_version_0_2_1"],
        "config": { "rootIds": [meta.root_id] },
    })));
    let wasm = Blob::new(wasm.to_vec());

    let mut config_layer = config.descriptor(CONFIG_MEDIA_TYPE);
    config_layer["annotations"] = json!({ "org.opencontainers.image.title": CONFIG_FILE_NAME });
    let mut wasm_layer = wasm.descriptor(WASM_MEDIA_TYPE);
    wasm_layer["annotations"] = json!({ "org.opencontainers.image.title": WASM_FILE_NAME });

    let mut annotations = json!({
        "org.opencontainers.image.title": meta.title,
        "org.opencontainers.image.version": meta.version,
        "org.opencontainers.image.description": meta.description,
        "org.opencontainers.image.licenses": meta.licenses,
        "module.wasm.runtime/type": "envoy_proxy",
        "module.wasm.runtime/abi_version": "proxy_abi_version_0_2_1",
    });
    if let Some(source) = &meta.source {
        annotations["org.opencontainers.image.source"] = json!(source);
    }
    let manifest = Blob::new(canonical_json(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config.descriptor(CONFIG_MEDIA_TYPE),
        "layers": [config_layer, wasm_layer],
        "annotations": annotations,
    })));

    let mut entry = manifest.descriptor(MANIFEST_MEDIA_TYPE);
    entry["annotations"] = json!({
        "org.opencontainers.image.ref.name": meta.tag,
        "org.opencontainers.image.title": meta.title,
    });
    let index = canonical_json(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [entry],
    }));

    Layout {
        index,
        manifest,
        config,
        wasm,
    }
}

/// Appends one ustar entry: a regular file with `bytes`, or a directory when `None`.
fn tar_entry(out: &mut Vec<u8>, name: &str, bytes: Option<&[u8]>) {
    let mut header = [0u8; 512];
    let name = name.as_bytes();
    // Every name here (at most `blobs/sha256/` and 64 hex digits) fits the 100-byte field.
    let len = name.len().min(100);
    header[..len].copy_from_slice(&name[..len]);
    let size = bytes.map_or(0, <[u8]>::len);
    let (mode, kind) = if bytes.is_some() {
        (0o644, b'0')
    } else {
        (0o755, b'5')
    };
    octal(&mut header[100..108], mode); // mode
    octal(&mut header[108..116], 0); // uid
    octal(&mut header[116..124], 0); // gid
    octal(&mut header[124..136], size as u64); // size
    octal(&mut header[136..148], 0); // mtime
    header[148..156].fill(b' '); // checksum, counted as spaces
    header[156] = kind;
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    octal(&mut header[329..337], 0); // devmajor
    octal(&mut header[337..345], 0); // devminor
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    // Six octal digits, NUL, space.
    header[148..154].copy_from_slice(format!("{sum:06o}").as_bytes());
    header[154] = 0;
    header[155] = b' ';
    out.extend_from_slice(&header);
    if let Some(bytes) = bytes {
        out.extend_from_slice(bytes);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
}

/// `value` in octal, zero-padded to fill `field` but its last byte, which is NUL.
fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let text = format!("{value:0width$o}");
    field[..width].copy_from_slice(&text.as_bytes()[text.len() - width..]);
    field[width] = 0;
}
