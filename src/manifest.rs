//! OCI manifests and descriptors, hand-written rather than taken from oci-spec so that what we
//! write is reproducible (annotations in a `BTreeMap`) and what we read survives a round trip
//! (unknown fields are kept in `extra`). See docs/DESIGN.md.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};

pub mod media_type {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const OCI_ARTIFACT_MANIFEST: &str = "application/vnd.oci.artifact.manifest.v1+json";
    pub const EMPTY: &str = "application/vnd.oci.empty.v1+json";
    /// The default media type of a file layer, as in the oras CLI.
    pub const DEFAULT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    /// A directory packed by oras: tar + gzip.
    pub const DIRECTORY_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const UNKNOWN_CONFIG: &str = "application/vnd.unknown.config.v1+json";
    /// What we accept when fetching a manifest.
    pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
        application/vnd.docker.distribution.manifest.v2+json, \
        application/vnd.oci.image.index.v1+json, \
        application/vnd.docker.distribution.manifest.list.v2+json, \
        application/vnd.oci.artifact.manifest.v1+json";
}

pub mod annotation {
    pub const TITLE: &str = "org.opencontainers.image.title";
    pub const CREATED: &str = "org.opencontainers.image.created";
    /// sha256 of the uncompressed tar of a directory layer.
    pub const CONTENT_DIGEST: &str = "io.deis.oras.content.digest";
    pub const UNPACK: &str = "io.deis.oras.content.unpack";
}

/// The empty JSON object `{}` used as config of artifacts without one.
pub const EMPTY_JSON: &[u8] = b"{}";

/// Manifests larger than this are refused before parsing (oras-go uses the same cap).
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;

pub type Annotations = BTreeMap<String, String>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Annotations>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Descriptor {
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.into(),
            artifact_type: None,
            digest,
            size,
            urls: None,
            annotations: None,
            data: None,
            platform: None,
            extra: BTreeMap::new(),
        }
    }

    /// The descriptor of `data` as a blob of `media_type`.
    pub fn of(media_type: impl Into<String>, data: &[u8]) -> Self {
        Descriptor::new(media_type, Digest::of(data), data.len() as u64)
    }

    /// The empty config `{}`.
    pub fn empty() -> Self {
        Descriptor::of(media_type::EMPTY, EMPTY_JSON)
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }

    pub fn title(&self) -> Option<&str> {
        self.annotation(annotation::TITLE).filter(|t| !t.is_empty())
    }

    pub fn set_annotation(&mut self, key: &str, value: impl Into<String>) {
        self.annotations
            .get_or_insert_with(Default::default)
            .insert(key.to_string(), value.into());
    }

    /// A directory packed as tar+gzip that pull unpacks.
    pub fn is_directory(&self) -> bool {
        self.annotation(annotation::UNPACK) == Some("true")
    }

    pub fn is_manifest(&self) -> bool {
        matches!(
            self.media_type.as_str(),
            media_type::OCI_MANIFEST
                | media_type::DOCKER_MANIFEST
                | media_type::OCI_INDEX
                | media_type::DOCKER_MANIFEST_LIST
                | media_type::OCI_ARTIFACT_MANIFEST
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Annotations>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Manifest {
    /// An OCI image manifest with `config` and `layers`.
    pub fn new(config: Descriptor, layers: Vec<Descriptor>) -> Self {
        Manifest {
            schema_version: 2,
            media_type: Some(media_type::OCI_MANIFEST.to_string()),
            artifact_type: None,
            config,
            layers,
            subject: None,
            annotations: None,
            extra: BTreeMap::new(),
        }
    }

    /// Parses and checks a manifest received from somewhere untrusted.
    /// `media_type` is what the registry said it is (Content-Type), if anything.
    pub fn parse(bytes: &[u8], media_type: Option<&str>) -> Result<Manifest> {
        check_size(bytes)?;
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let declared = value
            .get("mediaType")
            .and_then(|v| v.as_str())
            .or(media_type)
            .unwrap_or("");
        if matches!(
            declared,
            media_type::OCI_INDEX | media_type::DOCKER_MANIFEST_LIST
        ) || value.get("manifests").is_some()
        {
            let children = serde_json::from_value::<Index>(value)
                .map(|i| i.children_list())
                .unwrap_or_else(|e| format!("its list of manifests cannot be read ({e})"));
            return Err(invalid(format!(
                "this is an image index (a list of manifests), not a manifest; choose one of \
                 its manifests with --platform (or by digest): {children}"
            )));
        }
        let m: Manifest = serde_json::from_value(value)
            .map_err(|e| invalid(format!("not an OCI manifest: {e}")))?;
        check_schema_version(m.schema_version)?;
        Ok(m)
    }

    /// The canonical bytes we push: compact JSON in struct order.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serializes")
    }

    pub fn media_type(&self) -> &str {
        self.media_type
            .as_deref()
            .unwrap_or(media_type::OCI_MANIFEST)
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

/// An OCI platform (`os/arch[/variant][:os_version]`, as `--platform` takes it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub os_version: Option<String>,
}

impl Platform {
    /// The platform this program runs on, as images name it.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "x86" => ("386", None),
            // Which ARM variant this is cannot be told here: any will do.
            "arm" => ("arm", None),
            "powerpc64" => ("ppc64le", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
            os_version: None,
        }
    }

    /// A descriptor's `platform` object.
    pub fn of(value: &serde_json::Value) -> Option<Platform> {
        let field = |k: &str| value.get(k).and_then(|v| v.as_str()).map(str::to_string);
        Some(Platform {
            os: field("os")?,
            architecture: field("architecture")?,
            variant: field("variant"),
            os_version: field("os.version"),
        })
    }

    /// The `platform` object of an index's child descriptor.
    pub fn to_value(&self) -> serde_json::Value {
        let mut v = serde_json::json!({"architecture": self.architecture, "os": self.os});
        if let Some(os_version) = &self.os_version {
            v["os.version"] = os_version.clone().into();
        }
        if let Some(variant) = &self.variant {
            v["variant"] = variant.clone().into();
        }
        v
    }

    /// The platform an image config (its `os`, `architecture`, `variant`, `os.version`) names;
    /// `None` for other configs (an artifact's `{}`), as oras decides.
    pub fn of_config(config: &[u8]) -> Option<Platform> {
        let value: serde_json::Value = serde_json::from_slice(config).ok()?;
        Platform::of(&value).filter(|p| !p.os.is_empty() && !p.architecture.is_empty())
    }

    /// A directory name for this platform, as docker buildx names multi-platform local
    /// output: `linux_amd64`, `linux_arm64_v8`, `windows_amd64_10.0.20348`.
    pub fn dir_name(&self) -> String {
        let mut parts = vec![self.os.as_str(), self.architecture.as_str()];
        parts.extend(self.variant.as_deref());
        parts.extend(self.os_version.as_deref());
        parts.join("_").replace(['/', '\0'], "-")
    }

    /// Whether `other` (a child of an index) is this platform: what is not given here
    /// matches anything.
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
            && (self.os_version.is_none() || self.os_version == other.os_version)
    }
}

impl std::str::FromStr for Platform {
    type Err = Error;

    fn from_str(s: &str) -> Result<Platform> {
        let bad = || {
            Error::Usage(format!(
                "platform {s:?} is not os/arch[/variant][:os_version] (e.g. linux/amd64)"
            ))
        };
        let (rest, os_version) = match s.split_once(':') {
            Some((r, v)) if !v.is_empty() => (r, Some(v.to_string())),
            Some(_) => return Err(bad()),
            None => (s, None),
        };
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() < 2 || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        Ok(Platform {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
            os_version,
        })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        if let Some(v) = &self.os_version {
            write!(f, ":{v}")?;
        }
        Ok(())
    }
}

/// A manifest or index that cannot be used, and why (the caller adds which one).
fn invalid(reason: String) -> Error {
    Error::InvalidManifest {
        context: String::new(),
        reason,
    }
}

/// Manifests and indexes alike are capped before they are parsed.
fn check_size(bytes: &[u8]) -> Result<()> {
    if bytes.len() as u64 > MAX_MANIFEST_SIZE {
        return Err(invalid(format!(
            "{} bytes is over the 4 MiB limit",
            bytes.len()
        )));
    }
    Ok(())
}

fn check_schema_version(version: u32) -> Result<()> {
    if version != 2 {
        return Err(invalid(format!("schemaVersion {version} (expected 2)")));
    }
    Ok(())
}

/// Whether manifest bytes are an image index.
pub fn is_index(bytes: &[u8], media_type: Option<&str>) -> bool {
    matches!(
        media_type,
        Some(media_type::OCI_INDEX | media_type::DOCKER_MANIFEST_LIST)
    ) || serde_json::from_slice::<serde_json::Value>(bytes).is_ok_and(|v| {
        v.get("manifests").is_some()
            || matches!(
                v.get("mediaType").and_then(|m| m.as_str()),
                Some(media_type::OCI_INDEX | media_type::DOCKER_MANIFEST_LIST)
            )
    })
}

/// An image index: a list of manifests (one per platform of an image, or the referrers the
/// tag schema keeps).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Annotations>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Index {
    pub fn new() -> Self {
        Index {
            schema_version: 2,
            media_type: Some(media_type::OCI_INDEX.to_string()),
            manifests: Vec::new(),
            annotations: None,
            extra: BTreeMap::new(),
        }
    }

    /// Parses an image index received from somewhere untrusted (capped like a manifest).
    pub fn parse(bytes: &[u8]) -> Result<Index> {
        check_size(bytes)?;
        let index: Index = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("not an image index: {e}")))?;
        check_schema_version(index.schema_version)?;
        Ok(index)
    }

    /// The canonical bytes we push: compact JSON in struct order.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an index always serializes")
    }

    pub fn media_type(&self) -> &str {
        self.media_type.as_deref().unwrap_or(media_type::OCI_INDEX)
    }

    /// Each child with the platform it declares, if any.
    pub fn children(&self) -> impl Iterator<Item = (Option<Platform>, &Descriptor)> {
        self.manifests
            .iter()
            .map(|c| (c.platform.as_ref().and_then(Platform::of), c))
    }

    /// The first child for `platform` (what is not given there matches anything).
    pub fn find(&self, platform: &Platform) -> Option<&Descriptor> {
        self.children()
            .find(|(p, _)| p.as_ref().is_some_and(|p| platform.matches(p)))
            .map(|(_, c)| c)
    }

    /// The children as messages list them: `os/arch[/variant] sha256:…, …` (the one place
    /// that spells them, so every refusal of an index reads alike).
    pub fn children_list(&self) -> String {
        let listed: Vec<String> = self
            .children()
            .map(|(p, c)| {
                let p = p.map_or("(no platform)".into(), |p| p.to_string());
                format!("{p} {}", c.digest)
            })
            .collect();
        if listed.is_empty() {
            "it lists none".into()
        } else {
            listed.join(", ")
        }
    }
}

impl Default for Index {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_matches_the_well_known_digest() {
        assert_eq!(
            Descriptor::empty().digest.as_str(),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn platforms_parse_match_and_print() {
        let p: Platform = "linux/arm64/v8:10.0".parse().unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8:10.0");
        let plain: Platform = "linux/arm64".parse().unwrap();
        assert!(plain.matches(&p));
        assert!(!p.matches(&plain));
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/amd64:"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
        let child = serde_json::json!({"os": "linux", "architecture": "amd64"});
        assert_eq!(Platform::of(&child).unwrap().to_string(), "linux/amd64");
        assert_eq!(p.dir_name(), "linux_arm64_v8_10.0");
        assert_eq!(Platform::of(&p.to_value()), Some(p));
        let config = br#"{"architecture":"arm","os":"linux","variant":"v7","rootfs":{}}"#;
        assert_eq!(
            Platform::of_config(config).unwrap().to_string(),
            "linux/arm/v7"
        );
        assert_eq!(Platform::of_config(b"{}"), None);
        assert_eq!(Platform::of_config(br#"{"os":"","architecture":""}"#), None);
    }

    #[test]
    fn round_trips_unknown_fields_and_rejects_indexes() {
        let json = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2,"x-extra":1},"layers":[],"future":true}"#;
        let m = Manifest::parse(json, None).unwrap();
        assert_eq!(m.to_bytes(), json.to_vec());
        let idx = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2,"platform":{"os":"linux","architecture":"arm64"}}]}"#;
        let refused = Manifest::parse(idx, None).unwrap_err().to_string();
        assert!(refused.contains("image index"), "{refused}");
        assert!(
            refused.contains("linux/arm64 sha256:44136fa355b3"),
            "{refused}"
        );
        let index = Index::parse(idx).unwrap();
        assert_eq!(index.to_bytes(), idx.to_vec());
        assert!(index.find(&"linux/arm64".parse().unwrap()).is_some());
        assert!(index.find(&"linux/amd64".parse().unwrap()).is_none());
        assert!(Manifest::parse(b"{", None).is_err());
        assert!(Manifest::parse(br#"{"schemaVersion":2}"#, None).is_err());
    }
}
