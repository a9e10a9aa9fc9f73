//! Artifact references: `registry[:port]/repository[:tag][@digest]`, as the oras CLI takes them.
//!
//! The registry part is never guessed (no implicit docker.io): the first path component is
//! always the registry host, as in the oras CLI. Docker Hub, named explicitly, behaves as in the
//! docker CLI: `docker.io/alpine` is `docker.io/library/alpine`, served by
//! `registry-1.docker.io`, with credentials stored under `https://index.docker.io/v1/`.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Host with optional port, e.g. `localhost:5000` or `ghcr.io`.
    pub registry: String,
    /// Repository path, e.g. `org/data`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// What to ask the registry for: the digest if pinned, else the tag, else `latest`.
    pub fn target(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The same repository at another tag or digest.
    pub fn with_target(&self, target: &str) -> Result<Reference> {
        let mut r = Reference {
            tag: None,
            digest: None,
            ..self.clone()
        };
        if target.contains(':') {
            r.digest = Some(target.parse()?);
        } else {
            validate_tag(target).map_err(|reason| invalid(target, reason))?;
            r.tag = Some(target.to_string());
        }
        Ok(r)
    }

    /// Whether the registry is this machine, where oras defaults to plain HTTP.
    pub fn is_localhost(&self) -> bool {
        let host = host_of(&self.registry);
        host == "localhost" || host == "127.0.0.1" || host == "[::1]" || host == "::1"
    }
}

/// The name users give Docker Hub.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API is served.
pub const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";
/// The key of Docker Hub's credentials in the Docker config (and its credential helpers).
pub const DOCKER_HUB_CREDENTIAL_KEY: &str = "https://index.docker.io/v1/";

fn is_docker_hub(registry: &str) -> bool {
    matches!(
        registry,
        DOCKER_HUB | "index.docker.io" | DOCKER_HUB_ENDPOINT
    )
}

/// The `host[:port]` to connect to for a registry name: Docker Hub's API host for `docker.io`.
pub fn endpoint(registry: &str) -> &str {
    if is_docker_hub(registry) {
        DOCKER_HUB_ENDPOINT
    } else {
        registry
    }
}

/// The key a registry's credentials are stored under, as docker and oras store them.
pub fn credential_key(registry: &str) -> &str {
    if is_docker_hub(registry) {
        DOCKER_HUB_CREDENTIAL_KEY
    } else {
        registry
    }
}

/// The host of `host[:port]`, keeping IPv6 brackets.
fn host_of(registry: &str) -> &str {
    if registry.starts_with('[') {
        return registry.split_inclusive(']').next().unwrap_or(registry);
    }
    registry.split(':').next().unwrap_or(registry)
}

fn invalid(reference: &str, reason: impl Into<String>) -> Error {
    Error::InvalidReference {
        reference: reference.to_string(),
        reason: reason.into(),
    }
}

/// Checks a tag against the distribution-spec grammar (`[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`).
pub fn validate_tag(tag: &str) -> std::result::Result<(), String> {
    let ok_first = tag
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let ok_rest = tag
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if tag.is_empty() || tag.len() > 128 || !ok_first || !ok_rest {
        return Err(format!(
            "tag {tag:?} must be 1-128 characters of [A-Za-z0-9_.-], not starting with . or -"
        ));
    }
    Ok(())
}

fn validate_repository(repo: &str) -> std::result::Result<(), String> {
    if repo.is_empty() {
        return Err("missing repository (expected registry/repository[:tag])".into());
    }
    if repo.len() > 255 {
        return Err("repository name longer than 255 characters".into());
    }
    for comp in repo.split('/') {
        // [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
        let bytes = comp.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let mut ok = !bytes.is_empty() && alnum(bytes[0]) && alnum(bytes[bytes.len() - 1]);
        let mut i = 0;
        while ok && i < bytes.len() {
            if alnum(bytes[i]) {
                i += 1;
                continue;
            }
            let sep_start = i;
            while i < bytes.len() && !alnum(bytes[i]) {
                i += 1;
            }
            let sep = &comp[sep_start..i];
            ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        }
        if !ok {
            return Err(format!(
                "repository component {comp:?} must be lowercase letters and digits, \
                 separated by '.', '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

fn validate_registry(registry: &str) -> std::result::Result<(), String> {
    let ok = !registry.is_empty()
        && registry
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !ok {
        return Err(format!("registry {registry:?} is not a host[:port]"));
    }
    if let Some((_, port)) = registry.rsplit_once(':') {
        if !registry.ends_with(']') && port.parse::<u16>().is_err() {
            return Err(format!("registry port {port:?} is not a number"));
        }
    }
    Ok(())
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let (registry, rest) = s.split_once('/').ok_or_else(|| {
            invalid(
                s,
                "missing registry or repository (expected registry/repository[:tag])",
            )
        })?;
        validate_registry(registry).map_err(|r| invalid(s, r))?;
        let (name_tag, digest) = match rest.split_once('@') {
            Some((n, d)) => (
                n,
                Some(
                    d.parse::<Digest>()
                        .map_err(|_| invalid(s, format!("bad digest {d:?}")))?,
                ),
            ),
            None => (rest, None),
        };
        // A tag follows the last ':' after the last '/'.
        let last_slash = name_tag.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (repository, tag) = match name_tag[last_slash..].find(':') {
            Some(i) => {
                let at = last_slash + i;
                (&name_tag[..at], Some(&name_tag[at + 1..]))
            }
            None => (name_tag, None),
        };
        validate_repository(repository).map_err(|r| invalid(s, r))?;
        if let Some(t) = tag {
            validate_tag(t).map_err(|r| invalid(s, r))?;
        }
        // Docker Hub keeps official images under `library/`, as the docker CLI assumes for
        // `docker.io` (and `index.docker.io`), not for the API host named directly.
        let repository =
            if matches!(registry, DOCKER_HUB | "index.docker.io") && !repository.contains('/') {
                format!("library/{repository}")
            } else {
                repository.to_string()
            };
        Ok(Reference {
            registry: registry.to_string(),
            repository,
            tag: tag.map(str::to_string),
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        let r: Reference = "localhost:5000/hello:v1".parse().unwrap();
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.repository, "hello");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert!(r.is_localhost());
        let d = format!("sha256:{}", "a".repeat(64));
        let r: Reference = format!("ghcr.io/org/a/b@{d}").parse().unwrap();
        assert_eq!(r.repository, "org/a/b");
        assert_eq!(r.target(), d);
        assert!(!r.is_localhost());
        let r: Reference = "127.0.0.1:80/x".parse().unwrap();
        assert_eq!(r.target(), "latest");
        assert_eq!(r.to_string(), "127.0.0.1:80/x");
    }

    #[test]
    fn docker_hub_as_the_docker_cli_names_it() {
        for (given, repository) in [
            ("docker.io/library/alpine:3", "library/alpine"),
            ("docker.io/alpine:3", "library/alpine"),
            ("index.docker.io/alpine:3", "library/alpine"),
            ("docker.io/someone/tool:3", "someone/tool"),
        ] {
            let r: Reference = given.parse().unwrap();
            assert_eq!(r.repository, repository, "{given}");
            assert_eq!(endpoint(&r.registry), "registry-1.docker.io", "{given}");
            assert_eq!(
                credential_key(&r.registry),
                "https://index.docker.io/v1/",
                "{given}"
            );
        }
        let r: Reference = "docker.io/alpine".parse().unwrap();
        assert_eq!(r.to_string(), "docker.io/library/alpine");
        // The API host named directly is taken as given, as docker does.
        let r: Reference = "registry-1.docker.io/alpine".parse().unwrap();
        assert_eq!(r.repository, "alpine");
        // Other registries keep one-component names as given.
        let r: Reference = "ghcr.io/alpine".parse().unwrap();
        assert_eq!(r.repository, "alpine");
        assert_eq!(endpoint("ghcr.io"), "ghcr.io");
        assert_eq!(credential_key("localhost:5000"), "localhost:5000");
    }

    #[test]
    fn rejects_bad_forms() {
        for bad in [
            "hello:v1",
            "localhost:5000/",
            "localhost:5000/Upper",
            "localhost:5000/a:bad tag",
            "localhost:5000/a@sha256:xyz",
            "localhost:x/a",
            "localhost:5000/a:-x",
            "localhost:5000/a..b",
        ] {
            assert!(
                bad.parse::<Reference>().is_err(),
                "{bad} should be rejected"
            );
        }
    }
}
