//! Registry mirrors and remapped locations, read from the containers ecosystem's
//! `registries.conf` (version 2, containers-registries.conf(5)): which endpoints serve the reads
//! of a repository, in order. Writes always go to the repository as written.
//!
//! A mirror is never trusted: everything it serves is checked against a digest (the digest
//! asked for, or the one a tag resolved to), and a mirror that fails or serves bytes that do
//! not match is passed over for the next endpoint.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde::Deserialize;

use super::{ClientOptions, Repository};
use crate::content::{ByteStream, Target};
use crate::digest::{Digest, Verifier};
use crate::error::{Error, Result};
use crate::manifest::{Descriptor, EMPTY_JSON, MAX_MANIFEST_SIZE};
use crate::reference::Reference;

/// The system-wide file, read when the user has none (`$HOME/.config/containers/…`).
pub const SYSTEM_CONF: &str = "/etc/containers/registries.conf";

/// Which reads a mirror serves (`pull-from-mirror`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullFromMirror {
    #[default]
    All,
    DigestOnly,
    TagOnly,
}

/// What a read looks up: content by digest, or something a tag (or another mutable name)
/// points to. Mirrors may serve only one of the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Digest,
    Tag,
}

impl PullFromMirror {
    fn serves(self, lookup: Lookup) -> bool {
        match self {
            PullFromMirror::All => true,
            PullFromMirror::DigestOnly => lookup == Lookup::Digest,
            PullFromMirror::TagOnly => lookup == Lookup::Tag,
        }
    }
}

/// A `[[registry.mirror]]` table. Unknown keys are ignored, as containers/image does.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct MirrorTable {
    #[serde(default)]
    location: String,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    pull_from_mirror: PullFromMirror,
}

/// A `[[registry]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RegistryTable {
    prefix: Option<String>,
    #[serde(default)]
    location: String,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror_by_digest_only: bool,
    #[serde(default)]
    mirror: Vec<MirrorTable>,
}

#[derive(Debug, Deserialize)]
struct ConfFile {
    #[serde(default)]
    registry: Vec<RegistryTable>,
}

/// A parsed `registries.conf`.
#[derive(Debug, Clone)]
pub struct RegistriesConf {
    path: PathBuf,
    registries: Vec<RegistryTable>,
}

/// One endpoint of a rule: a repository at a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub registry: String,
    pub repository: String,
    /// Plain HTTP and any TLS certificate are allowed.
    pub insecure: bool,
}

/// What `registries.conf` says about one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The primary location of reads (the repository as written, unless remapped).
    pub primary: Location,
    pub mirrors: Vec<(Location, PullFromMirror)>,
    pub blocked: bool,
}

impl RegistriesConf {
    /// The file to read: `explicit`, else `$HOME/.config/containers/registries.conf`, else
    /// the system's; `None` when there is none.
    pub fn find(explicit: Option<&Path>) -> Option<PathBuf> {
        if let Some(p) = explicit {
            return Some(p.to_path_buf());
        }
        let user = std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".config/containers/registries.conf"));
        [user, Some(PathBuf::from(SYSTEM_CONF))]
            .into_iter()
            .flatten()
            .find(|p| p.is_file())
    }

    /// Reads the file [`find`](Self::find) picks. A file given explicitly must exist.
    pub fn load(explicit: Option<&Path>) -> Result<Option<Self>> {
        let Some(path) = Self::find(explicit) else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Self::parse(&path, &text).map(Some)
    }

    /// Parses the text of `path`. Errors name the file, and for TOML errors the line.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let bad = |what: String| {
            Error::Usage(format!(
                "{}: {what} (see containers-registries.conf(5))",
                path.display()
            ))
        };
        let file: ConfFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        for (i, r) in file.registry.iter().enumerate() {
            let n = i + 1;
            let prefix = r.prefix.as_deref().unwrap_or(&r.location);
            if prefix.is_empty() {
                return Err(bad(format!(
                    "[[registry]] #{n} has neither prefix nor location"
                )));
            }
            if prefix.starts_with("*.") && !r.location.is_empty() {
                return Err(bad(format!(
                    "[[registry]] #{n}: a wildcard prefix ({prefix}) cannot have a location"
                )));
            }
            if prefix.contains('*') && !prefix.starts_with("*.") {
                return Err(bad(format!(
                    "[[registry]] #{n}: a wildcard prefix is *.DOMAIN, not {prefix}"
                )));
            }
            if r.mirror.iter().any(|m| m.location.is_empty()) {
                return Err(bad(format!(
                    "[[registry]] #{n} has a mirror without a location"
                )));
            }
        }
        Ok(RegistriesConf {
            path: path.to_path_buf(),
            registries: file.registry,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The rule for `registry/repository`: the table whose prefix is the longest match, with
    /// its locations rewritten for this repository; `None` when no table matches.
    pub fn rule_for(&self, registry: &str, repository: &str) -> Result<Option<Rule>> {
        let name = format!("{registry}/{repository}");
        let best = self
            .registries
            .iter()
            .filter_map(|r| {
                let prefix = r.prefix.as_deref().unwrap_or(&r.location);
                matched(prefix, &name).map(|m| (prefix.len(), m, r))
            })
            // The first of equally long prefixes wins.
            .rev()
            .max_by_key(|(len, _, _)| *len);
        let Some((_, matched, table)) = best else {
            return Ok(None);
        };
        let rest = &name[matched..];
        let at = |location: &str, insecure: bool| -> Result<Location> {
            let rewritten = format!("{location}{rest}");
            match rewritten.split_once('/') {
                Some((registry, repository)) if !registry.is_empty() && !repository.is_empty() => {
                    Ok(Location {
                        registry: registry.to_string(),
                        repository: repository.to_string(),
                        insecure,
                    })
                }
                _ => Err(Error::Usage(format!(
                    "{}: location {location} makes {name} into {rewritten}, which is not \
                     HOST/REPOSITORY",
                    self.path.display()
                ))),
            }
        };
        let primary = if table.location.is_empty() {
            Location {
                registry: registry.to_string(),
                repository: repository.to_string(),
                insecure: table.insecure,
            }
        } else {
            at(&table.location, table.insecure)?
        };
        let mirrors = table
            .mirror
            .iter()
            .map(|m| {
                let pull = if table.mirror_by_digest_only {
                    PullFromMirror::DigestOnly
                } else {
                    m.pull_from_mirror
                };
                Ok((at(&m.location, m.insecure)?, pull))
            })
            .collect::<Result<_>>()?;
        Ok(Some(Rule {
            primary,
            mirrors,
            blocked: table.blocked,
        }))
    }
}

/// How much of `name` (`host/repository`) `prefix` matches: all of a host or path component,
/// never part of one; `*.DOMAIN` matches hosts under DOMAIN.
fn matched(prefix: &str, name: &str) -> Option<usize> {
    let host = name.split('/').next().unwrap_or(name);
    if let Some(domain) = prefix.strip_prefix('*') {
        return host.ends_with(domain).then_some(host.len());
    }
    let rest = name.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(prefix.len())
}

/// One mirror of a repository's reads.
pub(super) struct Mirror {
    repo: Repository,
    pull: PullFromMirror,
    /// It served a blob whose bytes did not match their digest: passed over from then on.
    corrupt: Arc<AtomicBool>,
}

/// Where a repository's reads go: its mirrors in order, then the primary location.
pub(super) struct Reads {
    mirrors: Vec<Mirror>,
    primary: Repository,
}

impl Reads {
    /// The endpoint a blob read tries first.
    pub(super) fn first_blob_endpoint(&self) -> &Repository {
        self.blob_mirrors()
            .next()
            .map_or(&self.primary, |m| &m.repo)
    }

    /// The mirrors that serve blobs: by digest, and not caught serving corrupt bytes.
    fn blob_mirrors(&self) -> impl Iterator<Item = &Mirror> {
        self.mirrors
            .iter()
            .filter(|m| m.pull.serves(Lookup::Digest) && !m.corrupt.load(Ordering::Relaxed))
    }
}

impl Repository {
    /// Opens the repository `reference` names, at the client `options` give, with the mirrors
    /// and location `conf` gives its reads. A mirror's client keeps the transport options
    /// (timeouts, CAs, `--resolve`) but not the origin's credentials, headers or client
    /// certificate: it finds its own credentials in the credential store, by its host.
    pub fn open(
        reference: &Reference,
        options: ClientOptions,
        conf: Option<&RegistriesConf>,
    ) -> Result<Repository> {
        let rule = match conf {
            Some(c) => c
                .rule_for(&reference.registry, &reference.repository)?
                .map(|r| (c, r)),
            None => None,
        };
        let Some((conf, rule)) = rule else {
            return Repository::for_reference(reference, options);
        };
        if rule.blocked {
            return Err(Error::Usage(format!(
                "{}/{} is blocked by {} (blocked = true)",
                reference.registry,
                reference.repository,
                conf.path().display()
            )));
        }
        let mut origin_options = options.clone();
        let as_written = rule.primary.registry == reference.registry
            && rule.primary.repository == reference.repository;
        if rule.primary.registry == reference.registry && rule.primary.insecure {
            origin_options.insecure = true;
        }
        let origin = Repository::for_reference(reference, origin_options)?;
        let mut endpoints = Vec::new();
        for (location, pull) in &rule.mirrors {
            for repo in connect(location, &options, &reference.registry)? {
                endpoints.push(Mirror {
                    repo,
                    pull: *pull,
                    corrupt: Arc::default(),
                });
            }
        }
        // An insecure primary location is tried over TLS with any certificate, then over
        // plain HTTP, like a mirror; writes to it only get the first.
        let mut primary = if as_written && !rule.primary.insecure {
            vec![origin.clone()]
        } else {
            connect(&rule.primary, &options, &reference.registry)?
        };
        let last = primary.pop().expect("at least one connection");
        endpoints.extend(primary.into_iter().map(|repo| Mirror {
            repo,
            pull: PullFromMirror::All,
            corrupt: Arc::default(),
        }));
        tracing::debug!(
            "{}/{}: reads try {}{}",
            reference.registry,
            reference.repository,
            endpoints
                .iter()
                .map(|m| format!("{} ({:?}), ", m.repo.endpoint(), m.pull))
                .collect::<String>(),
            last.endpoint()
        );
        Ok(Repository {
            reads: Some(Arc::new(Reads {
                mirrors: endpoints,
                primary: last,
            })),
            ..origin
        })
    }

    /// Where this repository is, as a URL without scheme, for messages.
    fn endpoint(&self) -> String {
        format!("{}{}", self.client.url(""), self.name)
    }

    /// Runs the read `op` at each endpoint that serves `lookup` until one succeeds (see
    /// [`Reads::first`]).
    pub(super) async fn read<T: Send + 'static>(
        &self,
        lookup: Lookup,
        what: &str,
        op: impl Fn(Repository) -> BoxFuture<'static, Result<T>>,
    ) -> Result<T> {
        let Some(reads) = &self.reads else {
            return op(self.clone()).await;
        };
        let mirrors = reads.mirrors.iter().filter(|m| m.pull.serves(lookup));
        Ok(reads.first(mirrors, what, op).await?.0)
    }

    /// Resolves `reference` at the endpoints: a digest at those that serve digests, a tag at
    /// those that serve tags. A digest's answer is checked against it (see `resolve`).
    pub(super) async fn resolve_by_endpoints(&self, reference: &str) -> Result<Descriptor> {
        let lookup = match reference.parse::<Digest>() {
            Ok(_) => Lookup::Digest,
            Err(_) => Lookup::Tag,
        };
        let owned = reference.to_string();
        self.read(lookup, &format!("resolving {reference}"), |r| {
            let reference = owned.clone();
            Box::pin(async move { r.resolve(&reference).await })
        })
        .await
    }

    /// A manifest's bytes, read whole (at most 4 MiB) and verified, so that a mirror serving
    /// the wrong bytes is passed over.
    pub(super) async fn fetch_manifest_by_endpoints(
        &self,
        desc: &Descriptor,
    ) -> Result<ByteStream> {
        let what = format!("manifest {}", desc.digest);
        let owned = desc.clone();
        let bytes = self
            .read(Lookup::Digest, &what, |r| {
                let desc = owned.clone();
                Box::pin(async move {
                    let stream = r.fetch_manifest(&desc).await?;
                    crate::content::collect(&desc, stream, MAX_MANIFEST_SIZE).await
                })
            })
            .await?;
        Ok(crate::content::once(bytes))
    }

    /// Bytes `start..end` of a blob, from the first endpoint that answers. A whole blob from a
    /// mirror is hashed as it streams: if it does not match, the stream ends in an error and
    /// the mirror is passed over from then on, so the reader's retry reaches the next
    /// endpoint. (A part of a blob cannot be checked here: its reader verifies what it can.)
    pub(super) async fn read_blob(
        &self,
        desc: &Descriptor,
        start: u64,
        end: u64,
    ) -> Result<ByteStream> {
        let Some(reads) = &self.reads else {
            if start == 0 && end == desc.size && desc.size >= super::PARTS_MIN {
                return Ok(self.download_in_parts(desc));
            }
            return self.download(desc, start, end).await;
        };
        // The empty JSON blob (`{}`, oras's config) is known by its digest. A pull never
        // fetches it, so a pull-through cache filled by pulls lacks it: a mount would then
        // need the origin for two bytes everyone has.
        let empty = Descriptor::empty();
        if desc.digest == empty.digest && desc.size == empty.size {
            let bytes = Bytes::from_static(EMPTY_JSON);
            return Ok(crate::content::once(
                bytes.slice(start as usize..end as usize),
            ));
        }
        let what = format!("{} bytes {start}..{end}", desc.digest);
        let owned = desc.clone();
        let (stream, from) = reads
            .first(reads.blob_mirrors(), &what, |r| {
                let desc = owned.clone();
                Box::pin(async move { r.download(&desc, start, end).await })
            })
            .await?;
        match from {
            Some(m) if start == 0 && end == desc.size => Ok(distrust_if_corrupt(m, desc, stream)),
            _ => Ok(stream),
        }
    }
}

impl Reads {
    /// Runs the read `op` at each of `mirrors` until one succeeds, then at the primary
    /// location; returns what it read and the mirror that served it (`None`: the primary).
    /// The primary's error is the one returned, naming the mirrors that failed before it.
    /// `what` names the read in messages.
    async fn first<'m, T: Send + 'static>(
        &'m self,
        mirrors: impl Iterator<Item = &'m Mirror>,
        what: &str,
        op: impl Fn(Repository) -> BoxFuture<'static, Result<T>>,
    ) -> Result<(T, Option<&'m Mirror>)> {
        let mut failed = Vec::new();
        for m in mirrors {
            match op(m.repo.clone()).await {
                Ok(v) => {
                    tracing::debug!("{what}: from mirror {}", m.repo.endpoint());
                    return Ok((v, Some(m)));
                }
                Err(e) => {
                    tracing::debug!(
                        "{what}: mirror {} failed ({e}); trying the next endpoint",
                        m.repo.endpoint()
                    );
                    failed.push(format!("{}: {e}", m.repo.endpoint()));
                }
            }
        }
        match op(self.primary.clone()).await {
            Ok(v) => {
                tracing::debug!("{what}: from {}", self.primary.endpoint());
                Ok((v, None))
            }
            Err(e) if failed.is_empty() => Err(e),
            Err(e) => Err(e.with_note(&format!("mirrors tried: {}", failed.join("; ")))),
        }
    }
}

/// Connections to `location`: one, or for an insecure host that is not localhost, TLS with
/// any certificate and then plain HTTP (what `insecure = true` allows, tried in that order).
fn connect(location: &Location, base: &ClientOptions, origin: &str) -> Result<Vec<Repository>> {
    let reference: Reference = format!("{}/{}", location.registry, location.repository)
        .parse()
        .map_err(|e| {
            Error::Usage(format!(
                "registries.conf location {}/{}: {e}",
                location.registry, location.repository
            ))
        })?;
    let mut options = base.clone();
    if location.registry != origin {
        // The origin's flags are for the origin: its credentials, headers and identity stay
        // there. This host's own credentials come from the store.
        options.credentials.explicit = None;
        options.headers = Default::default();
        options.client_cert = None;
        options.plain_http = reference.is_localhost();
        options.plain_http_by_default = reference.is_localhost();
        options.insecure = false;
    }
    if !location.insecure {
        return Ok(vec![Repository::for_reference(&reference, options)?]);
    }
    options.insecure = true;
    let mut out = Vec::new();
    if !options.plain_http {
        out.push(Repository::for_reference(&reference, options.clone())?);
    }
    options.plain_http = true;
    out.push(Repository::for_reference(&reference, options)?);
    Ok(out)
}

/// Hashes a whole blob as it streams from mirror `m`, and holds its last chunk until the
/// digest matched: on a mismatch the stream ends in the error instead, and `m` is marked
/// corrupt. (A consumer that knows the length, such as an upload body, may stop polling after
/// the last byte: the error must come before it.)
fn distrust_if_corrupt(m: &Mirror, desc: &Descriptor, stream: ByteStream) -> ByteStream {
    struct State {
        stream: ByteStream,
        verifier: Option<Verifier>,
        left: u64,
        corrupt: Arc<AtomicBool>,
        mirror: String,
    }
    let state = State {
        stream,
        verifier: Some(Verifier::new(&desc.digest, desc.size)),
        left: desc.size,
        corrupt: m.corrupt.clone(),
        mirror: m.repo.endpoint(),
    };
    Box::pin(futures_util::stream::unfold(
        state,
        move |mut s| async move {
            let verifier = s.verifier.as_mut()?;
            let checked = match s.stream.next().await {
                Some(Ok(chunk)) => {
                    s.left = s.left.saturating_sub(chunk.len() as u64);
                    match verifier.update(&chunk) {
                        Ok(()) if s.left > 0 => return Some((Ok(chunk), s)),
                        Ok(()) => {
                            let v = s.verifier.take().expect("checked above");
                            v.finish().map(|()| chunk)
                        }
                        Err(e) => Err(e),
                    }
                }
                Some(Err(e)) => return Some((Err(e), s)),
                None => s
                    .verifier
                    .take()
                    .expect("checked above")
                    .finish()
                    .map(|()| Bytes::new()),
            };
            let item = checked.map_err(|e| {
                s.verifier = None;
                s.corrupt.store(true, Ordering::Relaxed);
                Error::MirrorCorrupt {
                    mirror: s.mirror.clone(),
                    source: Box::new(e),
                }
            });
            Some((item, s))
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RetryPolicy;

    fn conf(text: &str) -> RegistriesConf {
        RegistriesConf::parse(Path::new("/test/registries.conf"), text).unwrap()
    }

    #[test]
    fn the_longest_prefix_wins_and_rewrites_the_repository() {
        let c = conf(
            r#"
            unqualified-search-registries = ["example.com"]
            [[registry]]
            prefix = "example.com"
            location = "other.example"
            [[registry]]
            prefix = "example.com/foo"
            location = "internal.example/bar"
            unknown-key = 1
            [[registry.mirror]]
            location = "mirror-0.local/mirror-for-foo"
            [[registry.mirror]]
            location = "mirror-1.local:5000/mirrors/foo"
            insecure = true
            pull-from-mirror = "digest-only"
            "#,
        );
        let r = c.rule_for("example.com", "foo/image").unwrap().unwrap();
        let at = |registry: &str, repository: &str, insecure| Location {
            registry: registry.into(),
            repository: repository.into(),
            insecure,
        };
        assert_eq!(r.primary, at("internal.example", "bar/image", false));
        assert_eq!(
            r.mirrors,
            vec![
                (
                    at("mirror-0.local", "mirror-for-foo/image", false),
                    PullFromMirror::All
                ),
                (
                    at("mirror-1.local:5000", "mirrors/foo/image", true),
                    PullFromMirror::DigestOnly
                ),
            ]
        );
        // A prefix matches whole components only.
        let r = c.rule_for("example.com", "foobar").unwrap().unwrap();
        assert_eq!(r.primary, at("other.example", "foobar", false));
        assert!(c.rule_for("example.org", "foo").unwrap().is_none());
    }

    #[test]
    fn prefixes_default_to_the_location_and_wildcards_match_subdomains() {
        let c = conf(
            r#"
            [[registry]]
            location = "reg.example:5000"
            blocked = true
            [[registry]]
            prefix = "*.corp.example"
            mirror-by-digest-only = true
            [[registry.mirror]]
            location = "cache.local/corp"
            pull-from-mirror = "tag-only"
            "#,
        );
        assert!(
            c.rule_for("reg.example:5000", "a")
                .unwrap()
                .unwrap()
                .blocked
        );
        assert!(c.rule_for("reg.example:50001", "a").unwrap().is_none());
        let r = c.rule_for("eu.corp.example", "x/y").unwrap().unwrap();
        assert_eq!(r.primary.registry, "eu.corp.example");
        assert_eq!(r.mirrors[0].0.registry, "cache.local");
        assert_eq!(r.mirrors[0].0.repository, "corp/x/y");
        // mirror-by-digest-only overrides each mirror's own setting.
        assert_eq!(r.mirrors[0].1, PullFromMirror::DigestOnly);
        assert!(c.rule_for("corp.example", "x").unwrap().is_none());
    }

    #[test]
    fn bad_files_name_the_file_and_the_problem() {
        let err = |text: &str| {
            RegistriesConf::parse(Path::new("/etc/x.conf"), text)
                .unwrap_err()
                .to_string()
        };
        let e = err("[[registry]]\nlocation = \"a\"\n[[registry.mirror]]\nlocation = \n");
        assert!(e.contains("/etc/x.conf") && e.contains("line 4"), "{e}");
        let e = err("[[registry]]\nlocation = \"a\"\n[[registry.mirror]]\npull-from-mirror = \"some\"\nlocation = \"b\"\n");
        assert!(e.contains("/etc/x.conf") && e.contains("line 4"), "{e}");
        let e = err("[[registry]]\ninsecure = true\n");
        assert!(e.contains("neither prefix nor location"), "{e}");
        let e = err("[[registry]]\nprefix = \"*.a.example\"\nlocation = \"b\"\n");
        assert!(e.contains("wildcard"), "{e}");
    }

    #[tokio::test]
    async fn a_corrupt_blob_from_a_mirror_ends_in_an_error_before_its_last_byte() {
        let mirror = || Mirror {
            repo: Repository::new(
                super::super::Client::new("mirror.invalid", ClientOptions::default()).unwrap(),
                "r",
            ),
            pull: PullFromMirror::All,
            corrupt: Arc::default(),
        };
        let desc = Descriptor::of("application/octet-stream", b"hello world");
        let chunks = |a: &'static [u8], b: &'static [u8]| -> ByteStream {
            Box::pin(futures_util::stream::iter([
                Ok(Bytes::from_static(a)),
                Ok(Bytes::from_static(b)),
            ]))
        };
        let good = mirror();
        let got: Vec<_> = distrust_if_corrupt(&good, &desc, chunks(b"hello ", b"world"))
            .collect()
            .await;
        let got: Vec<u8> = got.into_iter().flat_map(|c| c.unwrap().to_vec()).collect();
        assert_eq!(got, b"hello world");
        assert!(!good.corrupt.load(Ordering::Relaxed));

        let bad = mirror();
        let got: Vec<_> = distrust_if_corrupt(&bad, &desc, chunks(b"hello ", b"wxrld"))
            .collect()
            .await;
        assert_eq!(
            got.len(),
            2,
            "the corrupt last chunk is replaced by the error"
        );
        assert_eq!(got[0].as_ref().unwrap(), &b"hello "[..]);
        assert!(matches!(got[1], Err(Error::MirrorCorrupt { .. })));
        assert!(bad.corrupt.load(Ordering::Relaxed));
    }

    #[test]
    fn a_blocked_repository_is_refused_by_name() {
        let c = conf("[[registry]]\nprefix = \"bad.example/x\"\nblocked = true\n");
        let r: Reference = "bad.example/x/y:1".parse().unwrap();
        let e = Repository::open(&r, ClientOptions::default(), Some(&c))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("blocked") && e.contains("/test/registries.conf"),
            "{e}"
        );
    }

    #[test]
    fn reads_size_their_concurrency_at_the_first_blob_mirror_and_writes_at_the_origin() {
        let c = conf(concat!(
            "[[registry]]\nprefix = \"origin.example\"\n",
            "[[registry.mirror]]\nlocation = \"tags.example\"\npull-from-mirror = \"tag-only\"\n",
            "[[registry.mirror]]\nlocation = \"blobs.example\"\n",
        ));
        let r: Reference = "origin.example/x:1".parse().unwrap();
        let repo = Repository::open(&r, ClientOptions::default(), Some(&c)).unwrap();
        let reads = repo.reads.as_ref().unwrap();
        assert_eq!(reads.first_blob_endpoint().client.host(), "blobs.example");
        // Caught serving corrupt bytes: the next one (here the origin) is asked.
        reads.mirrors[1].corrupt.store(true, Ordering::Relaxed);
        assert_eq!(reads.first_blob_endpoint().client.host(), "origin.example");
        assert_eq!(repo.origin().client.host(), "origin.example");
        assert!(repo.origin().reads.is_none());
    }

    #[tokio::test]
    async fn when_every_endpoint_fails_the_error_names_the_mirrors_tried() {
        // Port 1 on loopback: connections are refused at once.
        let c = conf("[[registry]]\nprefix = \"localhost:1\"\n[[registry.mirror]]\nlocation = \"127.0.0.1:1/m\"\n");
        let r: Reference = "localhost:1/x:1".parse().unwrap();
        let options = ClientOptions {
            plain_http: true,
            retry: RetryPolicy {
                attempts: 1,
                ..Default::default()
            },
            ..Default::default()
        };
        let repo = Repository::open(&r, options, Some(&c)).unwrap();
        let e = repo.resolve("1").await.unwrap_err().to_string();
        assert!(
            e.contains("cannot reach localhost:1")
                && e.contains(
                    "(mirrors tried: http://127.0.0.1:1/v2/m/x: cannot reach 127.0.0.1:1"
                ),
            "{e}"
        );
    }
}
