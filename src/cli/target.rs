//! Turning a command-line reference into a [`Target`]: a registry repository
//! (`registry/repo[:tag[,tag]][@digest]`) or, with `--oci-layout`, an OCI image layout directory
//! or `.tar` archive (`PATH[:tag[,tag]][@digest]`); with `--oci-layout-path PATH` the reference
//! is only the `tag[,tag]` or digest, so a path with ':' or '@' in it needs no escaping.

use std::sync::Arc;

use oras_fs::content::{OciLayout, Target};
use oras_fs::digest::Digest;
use oras_fs::reference::Reference;
use oras_fs::registry::Repository;
use oras_fs::{Error, Result};

use super::remote::RemoteArgs;

pub struct Opened {
    pub target: Arc<dyn Target>,
    /// Tags given (`:t1,t2`), possibly none.
    pub tags: Vec<String>,
    pub digest: Option<Digest>,
    /// Where the reference points without its tag or digest (`registry/repo` or the directory).
    pub base: String,
    /// Set for registry references.
    pub registry: Option<Reference>,
    /// The concrete store, for what only one kind can do (delete, list, blob sizes).
    pub repository: Option<Repository>,
    pub layout: Option<Arc<OciLayout>>,
}

impl Opened {
    /// What to resolve: the digest, else the first tag, else `latest`.
    pub fn reference(&self) -> String {
        match (&self.digest, self.tags.first()) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The same reference without mirrors: for a command whose reads decide a write (the
    /// subject `attach` refers to), which must see the repository as written, not a mirror's
    /// possibly stale copy.
    pub fn origin(mut self) -> Opened {
        if let Some(repo) = &self.repository {
            let origin = repo.origin();
            self.target = Arc::new(origin.clone());
            self.repository = Some(origin);
        }
        self
    }

    /// A stable name of what is referenced, for keys and messages.
    pub fn canonical(&self) -> String {
        format!("{}:{}", self.base, self.reference())
    }
}

/// Splits `BASE[:t1,t2][@digest]`, where the tag part follows the last ':' after the last '/'.
fn split(spec: &str) -> Result<(String, Vec<String>, Option<Digest>)> {
    let (rest, digest) = match spec.rsplit_once('@') {
        Some((r, d)) => (
            r,
            Some(d.parse::<Digest>().map_err(|_| Error::InvalidReference {
                reference: spec.to_string(),
                reason: format!("bad digest {d:?}"),
            })?),
        ),
        None => (spec, None),
    };
    let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
    match rest[last_slash..].rfind(':') {
        Some(i) => {
            let at = last_slash + i;
            let tags = rest[at + 1..].split(',').map(str::to_string).collect();
            Ok((rest[..at].to_string(), tags, digest))
        }
        None => Ok((rest.to_string(), Vec::new(), digest)),
    }
}

/// Checks a tag as the distribution spec defines it (for layouts too, so they stay portable).
pub fn validate_tag(tag: &str) -> Result<()> {
    let probe: Reference = "localhost/x".parse().expect("a valid reference");
    probe
        .with_target(tag)
        .map_err(|_| Error::InvalidReference {
            reference: tag.to_string(),
            reason: "a tag is 1-128 characters of [A-Za-z0-9_.-], not starting with . or -".into(),
        })?;
    if tag.contains(':') {
        return Err(Error::InvalidReference {
            reference: tag.to_string(),
            reason: "a tag cannot contain ':'".into(),
        });
    }
    Ok(())
}

/// Which kind of place a reference names, from `--oci-layout` / `--oci-layout-path` (or their
/// `--from-`/`--to-` forms).
#[derive(Clone, Copy, Debug, Default)]
pub enum Place<'a> {
    #[default]
    Registry,
    /// The reference is `PATH[:tags][@digest]`.
    Layout,
    /// The layout is at this path; the reference is only `tags` or a digest.
    LayoutAt(&'a str),
}

impl<'a> Place<'a> {
    /// From the two flags; giving both is refused (as oras does).
    pub fn from_flags(oci_layout: bool, path: Option<&'a str>, prefix: &str) -> Result<Self> {
        match (oci_layout, path) {
            (true, Some(_)) => Err(Error::Usage(format!(
                "--{prefix}oci-layout-path already says the target is an OCI layout: give \
                 either it or --{prefix}oci-layout, not both"
            ))),
            (true, None) => Ok(Place::Layout),
            (false, Some(p)) => Ok(Place::LayoutAt(p)),
            (false, None) => Ok(Place::Registry),
        }
    }
}

/// Where a command's reference points: a registry (with the remote flags), or with
/// `--oci-layout`/`--oci-layout-path` an OCI image layout (a directory, or a `.tar` archive
/// read in place). Flattened into every command that takes one.
#[derive(clap::Args, Clone, Debug)]
pub struct TargetArgs {
    /// The reference is an OCI image layout: PATH[:tag|@digest], PATH a directory or a .tar
    /// archive (read-only) (no registry needed).
    #[arg(long)]
    pub oci_layout: bool,
    /// The OCI image layout (directory or .tar archive) is at PATH; the reference is then
    /// only a tag (or tags, comma-separated) or a digest.
    #[arg(long, value_name = "PATH")]
    pub oci_layout_path: Option<String>,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

impl TargetArgs {
    /// Opens the target `spec` names. `create`: a missing layout directory is made (and an
    /// archive, which is read-only, is refused).
    pub fn open(&self, spec: &str, create: bool) -> Result<Opened> {
        let place = Place::from_flags(self.oci_layout, self.oci_layout_path.as_deref(), "")?;
        open(spec, place, &self.remote, create)
    }
}

/// Splits what follows `--oci-layout-path`: a digest (`sha256:…`, or `@sha256:…`), else tags
/// (`t1,t2`), else nothing.
fn split_layout_reference(spec: &str) -> Result<(Vec<String>, Option<Digest>)> {
    let bare = spec.strip_prefix('@').unwrap_or(spec);
    if bare.contains(':') {
        let d = bare
            .parse::<Digest>()
            .map_err(|_| Error::InvalidReference {
                reference: spec.to_string(),
                reason: "with --oci-layout-path the reference is a tag or a digest \
                         (sha256:<hex>), not a path"
                    .into(),
            })?;
        return Ok((Vec::new(), Some(d)));
    }
    let tags = spec
        .split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    Ok((tags, None))
}

/// Opens the target a reference names. `create`: a missing layout directory is made.
pub fn open(spec: &str, place: Place<'_>, remote: &RemoteArgs, create: bool) -> Result<Opened> {
    let (base, tags, digest) = match place {
        Place::LayoutAt(path) => {
            let (tags, digest) = split_layout_reference(spec)?;
            (path.to_string(), tags, digest)
        }
        _ => split(spec)?,
    };
    if !matches!(place, Place::Registry) {
        if base.is_empty() {
            return Err(Error::InvalidReference {
                reference: spec.into(),
                reason: "missing the layout's path".into(),
            });
        }
        for t in &tags {
            validate_tag(t)?;
        }
        let layout = Arc::new(OciLayout::open(&base, create)?);
        return Ok(Opened {
            target: layout.clone(),
            tags,
            digest,
            base,
            registry: None,
            repository: None,
            layout: Some(layout),
        });
    }
    // Validate as a registry reference (first tag only; the rest one by one).
    let first = match (&digest, tags.first()) {
        (Some(d), Some(t)) => format!("{base}:{t}@{d}"),
        (Some(d), None) => format!("{base}@{d}"),
        (None, Some(t)) => format!("{base}:{t}"),
        (None, None) => base.clone(),
    };
    let reference: Reference = first.parse().map_err(|e| match e {
        Error::InvalidReference { reason, .. } => Error::InvalidReference {
            reference: spec.into(),
            reason,
        },
        e => e,
    })?;
    for t in tags.iter().skip(1) {
        reference
            .with_target(t)
            .map_err(|e| Error::InvalidReference {
                reference: spec.to_string(),
                reason: format!("tag {t:?}: {e}"),
            })?;
    }
    let repo = remote.repository(&reference)?;
    Ok(Opened {
        target: Arc::new(repo.clone()),
        tags,
        digest,
        base: format!("{}/{}", reference.registry, reference.repository),
        registry: Some(reference),
        repository: Some(repo),
        layout: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_tags_and_digests() {
        let (b, t, d) = split("localhost:5000/a/b:v1,v2").unwrap();
        assert_eq!(
            (b.as_str(), t, d),
            (
                "localhost:5000/a/b",
                vec!["v1".to_string(), "v2".to_string()],
                None
            )
        );
        let (b, t, _) = split("./store:v1").unwrap();
        assert_eq!((b.as_str(), t), ("./store", vec!["v1".to_string()]));
        let (b, t, d) = split(&format!("dir@sha256:{}", "a".repeat(64))).unwrap();
        assert_eq!((b.as_str(), t.len(), d.is_some()), ("dir", 0, true));
        let (b, t, _) = split("localhost:5000/x").unwrap();
        assert_eq!((b.as_str(), t.len()), ("localhost:5000/x", 0));
    }

    #[test]
    fn a_layout_path_leaves_only_tags_or_a_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            split_layout_reference(&d).unwrap(),
            (vec![], Some(d.parse().unwrap()))
        );
        assert_eq!(
            split_layout_reference(&format!("@{d}")).unwrap().1,
            Some(d.parse().unwrap())
        );
        assert_eq!(
            split_layout_reference("v1,v2").unwrap(),
            (vec!["v1".to_string(), "v2".to_string()], None)
        );
        assert_eq!(split_layout_reference("").unwrap(), (vec![], None));
        assert!(split_layout_reference("dir:v1").is_err());
        assert!(Place::from_flags(true, Some("x"), "from-").is_err());
    }
}
