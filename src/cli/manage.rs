//! The rest of the oras command set: copy, tag, resolve, manifest, blob, repo, attach, discover.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use oras_fs::content::file::UnpackLimit;
use oras_fs::content::{self, FileStore, Target};
use oras_fs::manifest::{media_type, Descriptor, Manifest, Platform, MAX_MANIFEST_SIZE};
use oras_fs::oras::{self, CopyOptions, PackOptions};
use oras_fs::reference::Reference;
use oras_fs::registry::Repository;
use oras_fs::{Error, Result};

use super::output::{Bars, Described, Fetched, FormatArgs, Referrers};
use super::remote::{copy_sides, FromRemoteArgs, RemoteArgs, ToRemoteArgs};
use super::target::{self, Opened, TargetArgs};

pub(super) fn write_out(path: &str, data: &[u8]) -> Result<()> {
    if path == "-" {
        std::io::stdout()
            .write_all(data)
            .map_err(|e| Error::io(super::output::WRITING_STDOUT, e))
    } else {
        std::fs::write(path, data).map_err(|e| Error::io(format!("writing {path}"), e))
    }
}

/// Resolves and fetches (verified) the manifest an opened reference names; of an image index
/// with `platform`, its child for that platform.
async fn manifest_of(o: &Opened, platform: Option<&Platform>) -> Result<(Descriptor, Bytes)> {
    let f = content::fetch_platform_bytes(o.target.as_ref(), &o.reference(), platform).await?;
    Ok((f.descriptor, f.bytes))
}

/// What an opened reference resolves to; of an image index with `platform`, its child for
/// that platform (without one, nothing is fetched).
async fn subject_of(o: &Opened, platform: Option<&Platform>) -> Result<Descriptor> {
    match platform {
        Some(_) => Ok(manifest_of(o, platform).await?.0),
        None => o.target.resolve(&o.reference()).await,
    }
}

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// Source: registry/repo[:tag|@digest] (or a layout with --from-oci-layout).
    pub from: String,
    /// Destination: registry/repo[:tag[,tag]] (or a layout with --to-oci-layout).
    pub to: String,
    /// Also copy the artifacts that refer to it (signatures, SBOMs), recursively.
    #[arg(short = 'r', long)]
    pub recursive: bool,
    #[arg(long)]
    pub from_oci_layout: bool,
    #[arg(long)]
    pub to_oci_layout: bool,
    /// The source is the OCI layout (directory or .tar) at PATH; FROM is only a tag or digest.
    #[arg(long, value_name = "PATH")]
    pub from_oci_layout_path: Option<String>,
    /// The destination is the OCI layout directory at PATH; TO is only tags (or empty).
    #[arg(long, value_name = "PATH")]
    pub to_oci_layout_path: Option<String>,
    /// Of an image index, copy only the manifest for this platform: os/arch[/variant][:os_version]
    /// (default: the whole index with every child).
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<Platform>,
    #[arg(long, default_value_t = oras::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    #[arg(long)]
    pub no_tty: bool,
    /// Remote flags for both sides (each side's --from-*/--to-* flags take precedence).
    #[command(flatten)]
    pub remote: RemoteArgs,
    // Boxed: they would make `copy` the one large variant of the command enum.
    #[command(flatten)]
    pub from_remote: Box<FromRemoteArgs>,
    #[command(flatten)]
    pub to_remote: Box<ToRemoteArgs>,
}

pub async fn copy(a: CopyArgs) -> Result<()> {
    let (from_remote, to_remote) = copy_sides(&a.remote, &a.from_remote, &a.to_remote)?;
    let from = target::Place::from_flags(
        a.from_oci_layout,
        a.from_oci_layout_path.as_deref(),
        "from-",
    )?;
    let to = target::Place::from_flags(a.to_oci_layout, a.to_oci_layout_path.as_deref(), "to-")?;
    let src = target::open(&a.from, from, &from_remote, false)?;
    let dst = target::open(&a.to, to, &to_remote, true)?;
    let (desc, bytes) = manifest_of(&src, a.platform.as_ref()).await?;
    let tags = if !dst.tags.is_empty() {
        dst.tags.clone()
    } else if src.digest.is_none() {
        vec![src.reference()]
    } else {
        Vec::new()
    };
    let opts = CopyOptions {
        concurrency: a.concurrency,
        progress: Arc::new(Bars::new("Copying", a.no_tty, false)),
    };
    let (from, to) = (src.target.as_ref(), dst.target.as_ref());
    oras::copy_graph(from, to, &desc, bytes.clone(), &tags, &opts).await?;
    if a.recursive {
        oras::copy_referrers(from, to, &desc, &bytes, &opts).await?;
    }
    outln!("Copied {} => {}", a.from, a.to);
    outln!("Digest: {}", desc.digest);
    Ok(())
}

#[derive(Args, Debug)]
pub struct TagArgs {
    /// The manifest to tag: registry/repo:tag|@digest
    pub reference: String,
    /// New tags.
    #[arg(required = true)]
    pub tags: Vec<String>,
    #[command(flatten)]
    pub target: TargetArgs,
}

pub async fn tag(a: TagArgs) -> Result<()> {
    let o = a.target.open(&a.reference, false)?;
    // Check every tag before setting any.
    for t in &a.tags {
        target::validate_tag(t)?;
    }
    let desc = o.target.resolve_for_write(&o.reference()).await?;
    for t in &a.tags {
        o.target.tag(&desc, t).await?;
        outln!("Tagged {t}");
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ResolveArgs {
    pub reference: String,
    /// Print the full reference (registry/repo@digest) instead of the digest alone.
    #[arg(short = 'l', long)]
    pub full_reference: bool,
    /// Of an image index, print the digest of the manifest for this platform:
    /// os/arch[/variant][:os_version] (default: the index's own).
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<Platform>,
    #[command(flatten)]
    pub target: TargetArgs,
}

pub async fn resolve(a: ResolveArgs) -> Result<()> {
    let o = a.target.open(&a.reference, false)?;
    let digest = subject_of(&o, a.platform.as_ref()).await?.digest;
    if a.full_reference {
        outln!("{}@{digest}", o.base);
    } else {
        outln!("{digest}");
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum ManifestCommand {
    /// Print (or save) a manifest.
    Fetch {
        reference: String,
        /// Write to FILE instead of stdout. With --format json or go-template, the manifest
        /// goes to FILE and the descriptor with the parsed manifest (`content`) to stdout.
        #[arg(short = 'o', long, value_name = "FILE")]
        output: Option<String>,
        /// Print the manifest's descriptor instead.
        #[arg(long)]
        descriptor: bool,
        /// Of an image index, the manifest for this platform: os/arch[/variant][:os_version]
        /// (default: the index itself).
        #[arg(long, value_name = "PLATFORM")]
        platform: Option<Platform>,
        #[command(flatten)]
        format: FormatArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Push a manifest file (`-` for stdin).
    Push {
        reference: String,
        file: String,
        /// Media type (default: the file's mediaType field).
        #[arg(long)]
        media_type: Option<String>,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Delete a manifest (asks on a terminal; scripts need --force).
    #[command(visible_aliases = ["remove", "rm"])]
    Delete {
        reference: String,
        /// Delete without asking; a missing manifest is not an error ("Missing REF").
        #[arg(short = 'f', long)]
        force: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Print (or save) the config blob of a manifest.
    FetchConfig {
        reference: String,
        #[arg(short = 'o', long, value_name = "FILE")]
        output: Option<String>,
        /// Of an image index, the config of the manifest for this platform.
        #[arg(long, value_name = "PLATFORM")]
        platform: Option<Platform>,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Create or update image indexes (multi-platform images).
    #[command(subcommand)]
    Index(super::index::IndexCommand),
}

pub async fn manifest(c: ManifestCommand) -> Result<()> {
    match c {
        ManifestCommand::Fetch {
            reference,
            output,
            descriptor,
            format,
            platform,
            target,
        } => {
            let printer = format.output()?;
            if !printer.is_text() && output.as_deref() == Some("-") {
                return Err(Error::Usage(
                    "--output - and --format both write to stdout: give --output a file".into(),
                ));
            }
            let o = target.open(&reference, false)?;
            let (desc, bytes) = manifest_of(&o, platform.as_ref()).await?;
            if descriptor {
                // The descriptor as JSON is the text output; a format applies to it too.
                return printer.print(&Described::new(&o.base, &desc), || {
                    outln!("{}", serde_json::to_string(&desc).expect("JSON"))
                });
            }
            if printer.is_text() {
                return write_out(output.as_deref().unwrap_or("-"), &bytes);
            }
            if let Some(path) = &output {
                write_out(path, &bytes)?;
            }
            let model = Fetched {
                manifest: Described::new(&o.base, &desc),
                content: serde_json::from_slice(&bytes).ok(),
            };
            printer.print(&model, || {})
        }
        ManifestCommand::Push {
            reference,
            file,
            media_type,
            target,
        } => {
            let o = target.open(&reference, true)?;
            let bytes = if file == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(
                    &mut std::io::Read::take(std::io::stdin(), MAX_MANIFEST_SIZE + 1),
                    &mut b,
                )
                .map_err(|e| Error::io("reading stdin", e))?;
                b
            } else {
                std::fs::read(&file).map_err(|e| Error::io(format!("reading {file}"), e))?
            };
            let mt = match media_type {
                Some(m) => m,
                None => serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("mediaType")?.as_str().map(str::to_string))
                    .ok_or_else(|| {
                        Error::Usage("the manifest has no mediaType: give --media-type".into())
                    })?,
            };
            if mt != media_type::OCI_INDEX && mt != media_type::DOCKER_MANIFEST_LIST {
                Manifest::parse(&bytes, Some(&mt))?;
            }
            let desc = Descriptor::of(mt, &bytes);
            let tag = o
                .digest
                .is_none()
                .then(|| o.tags.first().cloned())
                .flatten();
            if let Some(d) = &o.digest {
                if d != &desc.digest {
                    return Err(Error::DigestMismatch {
                        expected: d.clone(),
                        actual: desc.digest,
                    });
                }
            }
            o.target
                .push_manifest(&desc, bytes.into(), tag.as_deref())
                .await?;
            for t in o.tags.iter().skip(1) {
                o.target.tag(&desc, t).await?;
            }
            outln!("Pushed {}\nDigest: {}", reference, desc.digest);
            Ok(())
        }
        ManifestCommand::Delete {
            reference,
            force,
            target,
        } => {
            let o = target.open(&reference, false)?;
            let desc = match o.target.resolve_for_write(&o.reference()).await {
                Err(Error::NotFound { .. }) if force => {
                    outln!("Missing {reference}");
                    return Ok(());
                }
                r => r?,
            };
            let action = format!(
                "delete the manifest \"{}\" and all tags associated with it",
                desc.digest
            );
            if !super::confirm::confirm(&action, force)? {
                return Ok(());
            }
            if let Some(repo) = &o.repository {
                repo.delete(&desc).await?;
            } else if let Some(layout) = &o.layout {
                layout.unlist(&desc.digest)?;
            }
            outln!("Deleted {}", desc.digest);
            Ok(())
        }
        ManifestCommand::FetchConfig {
            reference,
            output,
            platform,
            target,
        } => {
            let o = target.open(&reference, false)?;
            let (_, _, m, _) = content::fetch_platform_manifest(
                o.target.as_ref(),
                &o.reference(),
                platform.as_ref(),
            )
            .await?;
            let config = content::read_all(o.target.as_ref(), &m.config, MAX_MANIFEST_SIZE).await?;
            write_out(output.as_deref().unwrap_or("-"), &config)
        }
        ManifestCommand::Index(c) => super::index::run(c).await,
    }
}

#[derive(Subcommand, Debug)]
pub enum BlobCommand {
    /// Download a blob (verified) to a file, or to stdout with `-o -`.
    Fetch {
        /// registry/repo@digest
        reference: String,
        #[arg(short = 'o', long, value_name = "FILE")]
        output: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Upload a file as a blob; `-` reads stdin (then --size and REF@digest are required).
    Push {
        /// registry/repo[@digest]
        reference: String,
        file: String,
        #[arg(long)]
        size: Option<u64>,
        #[arg(long, default_value = "application/octet-stream")]
        media_type: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Delete a blob (asks on a terminal; scripts need --force).
    #[command(visible_aliases = ["remove", "rm"])]
    Delete {
        /// registry/repo@digest
        reference: String,
        /// Delete without asking; a missing blob is not an error ("Missing REF").
        #[arg(short = 'f', long)]
        force: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
}

async fn blob_descriptor(o: &Opened) -> Result<Descriptor> {
    let digest = o
        .digest
        .clone()
        .ok_or_else(|| Error::Usage("a blob is named by digest: REF@sha256:...".into()))?;
    let size = o
        .target
        .stat(&digest)
        .await?
        .ok_or_else(|| Error::NotFound {
            what: "blob",
            name: digest.to_string(),
        })?;
    Ok(Descriptor::new("application/octet-stream", digest, size))
}

pub async fn blob(c: BlobCommand) -> Result<()> {
    match c {
        BlobCommand::Fetch {
            reference,
            output,
            target,
        } => {
            let o = target.open(&reference, false)?;
            let desc = blob_descriptor(&o).await?;
            if output == "-" {
                // Streamed: a mismatch is detected at the end and fails the command.
                let mut stream = content::verified(&desc, o.target.fetch(&desc).await?);
                let mut out = std::io::stdout().lock();
                while let Some(chunk) = stream.next().await {
                    out.write_all(&chunk?)
                        .map_err(|e| Error::io(super::output::WRITING_STDOUT, e))?;
                }
                return Ok(());
            }
            let path = PathBuf::from(&output);
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| Error::Usage(format!("{output} is not a file name")))?;
            let store = FileStore::new(dir, Default::default());
            let mut d = desc.clone();
            d.set_annotation(oras_fs::manifest::annotation::TITLE, name);
            store.push(&d, o.target.fetch(&desc).await?).await?;
            Ok(())
        }
        BlobCommand::Push {
            reference,
            file,
            size,
            media_type,
            target,
        } => {
            let o = target.open(&reference, true)?;
            let (desc, stream): (Descriptor, content::ByteStream) = if file == "-" {
                let (Some(size), Some(digest)) = (size, o.digest.clone()) else {
                    return Err(Error::Usage(
                        "reading a blob from stdin needs --size and REF@digest".into(),
                    ));
                };
                let stdin = tokio_util::io::ReaderStream::new(tokio::io::stdin());
                let desc = Descriptor::new(media_type, digest, size);
                // Checked here too, so a wrong --size or digest is named as such.
                let stream = content::verified(
                    &desc,
                    Box::pin(stdin.map(|r| r.map_err(|e| Error::io("reading stdin", e)))),
                );
                (desc, stream)
            } else {
                let (digest, size) = content::file::hash_file(Path::new(&file)).await?;
                if let Some(d) = &o.digest {
                    if d != &digest {
                        return Err(Error::DigestMismatch {
                            expected: d.clone(),
                            actual: digest,
                        });
                    }
                }
                let desc = Descriptor::new(media_type, digest, size);
                let f = tokio::fs::File::open(&file)
                    .await
                    .map_err(|e| Error::io(format!("reading {file}"), e))?;
                let s = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20);
                (
                    desc,
                    Box::pin(s.map(|r| r.map_err(|e| Error::io("reading the file", e)))),
                )
            };
            if o.target.exists(&desc).await? {
                outln!("Exists {}", desc.digest);
            } else {
                o.target.push(&desc, stream).await?;
                outln!("Pushed {}", desc.digest);
            }
            outln!("Digest: {}", desc.digest);
            Ok(())
        }
        BlobCommand::Delete {
            reference,
            force,
            target,
        } => {
            let o = target.open(&reference, false)?;
            let desc = match blob_descriptor(&o).await {
                Err(Error::NotFound { .. }) if force => {
                    outln!("Missing {reference}");
                    return Ok(());
                }
                r => r?,
            };
            let action = format!("delete the blob \"{}\"", desc.digest);
            if !super::confirm::confirm(&action, force)? {
                return Ok(());
            }
            if let Some(repo) = &o.repository {
                repo.delete(&desc).await?;
            } else if let Some(layout) = &o.layout {
                layout.delete_blob(&desc.digest)?;
            }
            outln!("Deleted {}", desc.digest);
            Ok(())
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum RepoCommand {
    /// List the repositories of a registry.
    #[command(alias = "list")]
    Ls {
        /// registry host[:port]
        registry: String,
        /// Start after this repository.
        #[arg(long)]
        last: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// List the tags of a repository.
    #[command(visible_alias = "show-tags")]
    Tags {
        /// registry/repo (or a layout directory with --oci-layout)
        repository: String,
        /// Start after this tag.
        #[arg(long)]
        last: Option<String>,
        /// Leave out digest-like tags such as `sha256-<hex>` (the referrers tag schema's).
        #[arg(long)]
        exclude_digest_tags: bool,
        #[command(flatten)]
        target: TargetArgs,
    },
}

pub async fn repo(c: RepoCommand) -> Result<()> {
    match c {
        RepoCommand::Ls {
            registry,
            last,
            remote,
        } => {
            let host = registry.trim_end_matches('/');
            let probe: Reference = format!("{host}/x").parse()?;
            let client =
                oras_fs::registry::Client::new(host, remote.client_options(probe.is_localhost())?)?;
            for r in Repository::catalog(&client, last.as_deref()).await? {
                outln!("{r}");
            }
            Ok(())
        }
        RepoCommand::Tags {
            repository,
            last,
            exclude_digest_tags,
            target,
        } => {
            let o = target.open(&repository, false)?;
            let tags = match (&o.repository, &o.layout) {
                (Some(r), _) => r.tags(last.as_deref()).await?,
                (_, Some(l)) => {
                    // A layout has no order of its own: sorted, as registries list them.
                    let mut tags = l.tags()?;
                    tags.sort();
                    tags.retain(|t| last.as_ref().is_none_or(|l| t > l));
                    tags
                }
                _ => Vec::new(),
            };
            for t in tags {
                if exclude_digest_tags && is_digest_tag(&t) {
                    continue;
                }
                outln!("{t}");
            }
            Ok(())
        }
    }
}

/// Whether a tag is a digest spelled with '-' (`sha256-<hex>`), as oras judges it.
fn is_digest_tag(tag: &str) -> bool {
    tag.replacen('-', ":", 1)
        .parse::<oras_fs::digest::Digest>()
        .is_ok()
}

#[derive(Args, Debug)]
pub struct AttachArgs {
    /// The artifact type of what is attached (e.g. application/vnd.example.sbom).
    #[arg(long, required = true)]
    pub artifact_type: String,
    /// The subject: registry/repo:tag|@digest
    pub subject: String,
    /// Files to attach: FILE[:TYPE]
    pub files: Vec<String>,
    #[arg(short = 'a', long = "annotation", value_name = "KEY=VALUE")]
    pub annotations: Vec<String>,
    /// Allow absolute paths and '..' in file names (they become titles as given).
    #[arg(long)]
    pub disable_path_validation: bool,
    /// Of an image index, attach to the manifest for this platform: os/arch[/variant][:os_version]
    /// (default: to the index).
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<Platform>,
    #[command(flatten)]
    pub format: FormatArgs,
    #[command(flatten)]
    pub target: TargetArgs,
}

pub async fn attach(a: AttachArgs) -> Result<()> {
    let output = a.format.output()?;
    // The referrer is pushed to the repository itself: its subject is what the tag names
    // there, not at a mirror.
    let o = a.target.open(&a.subject, false)?.origin();
    let subject = subject_of(&o, a.platform.as_ref()).await?;
    let store = FileStore::new(".", Default::default());
    let mut files = Vec::new();
    for f in &a.files {
        let (file, ty) = super::transfer::split_file_arg(f);
        files.push(oras::FileLayer {
            title: super::transfer::title_for(file, a.disable_path_validation)?,
            media_type: ty.map(str::to_string),
            path: file.into(),
            annotations: Default::default(),
        });
    }
    let mut annotations = std::collections::BTreeMap::new();
    for item in &a.annotations {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("annotation {item:?} is not KEY=VALUE")))?;
        annotations.insert(k.to_string(), v.to_string());
    }
    let pack = PackOptions {
        artifact_type: Some(a.artifact_type.clone()),
        config: None,
        annotations,
        subject: Some(subject.clone()),
        reproducible: false,
    };
    let (mut desc, bytes) = oras::push(
        &store,
        &files,
        &pack,
        o.target.as_ref(),
        &[],
        &CopyOptions::default(),
    )
    .await?;
    let manifest = Manifest::parse(&bytes, None)?;
    desc.artifact_type = manifest.artifact_type;
    desc.annotations = manifest.annotations;
    output.print(&Described::new(&o.base, &desc), || {
        outln!(
            "Attached to [{}] {}@{}",
            if o.registry.is_some() {
                "registry"
            } else {
                "oci-layout"
            },
            o.base,
            subject.digest
        );
        outln!("Digest: {}", desc.digest);
    })
}

#[derive(Args, Debug)]
#[command(after_help = "--format json prints {reference, indexed, referrer}.")]
pub struct IndexArgs {
    /// What to index: registry/repo:tag|@digest (an artifact or a container image)
    pub reference: String,
    /// Most a layer may decompress to while it is indexed (e.g. 10G, or `unlimited`).
    /// Default: 32 times its compressed size, at least 256M.
    #[arg(long, value_name = "SIZE", value_parser = super::transfer::parse_unpack_limit)]
    pub max_unpacked_size: Option<UnpackLimit>,
    /// Of an image index, index the manifest for this platform (default: this machine's),
    /// the one a mount with the same --platform reads.
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<Platform>,
    #[command(flatten)]
    pub format: FormatArgs,
    #[command(flatten)]
    pub target: TargetArgs,
}

/// Builds the seek indexes of a manifest's gzip layers (one streaming pass each) and attaches
/// them as one referrer, so that mounts anywhere read single files of those layers lazily.
pub async fn index(a: IndexArgs) -> Result<()> {
    let output = a.format.output()?;
    let o = a.target.open(&a.reference, false)?;
    let platform = a.platform.clone().unwrap_or_else(Platform::host);
    let (subject, _, manifest, _) =
        content::fetch_platform_manifest(o.target.as_ref(), &o.reference(), Some(&platform))
            .await?;
    let limit = a.max_unpacked_size.unwrap_or(UnpackLimit::Auto);
    let published = oras_fs::layer_index::publish(o.target.as_ref(), &subject, &manifest, |l| {
        limit.for_layer(l.size).unwrap_or(u64::MAX)
    })
    .await?;
    let reference = |d: &Descriptor| format!("{}@{}", o.base, d.digest);
    let model = serde_json::json!({
        "reference": reference(&subject),
        "indexed": published.as_ref().map_or(0, |(_, n)| *n),
        "referrer": published.as_ref().map(|(d, _)| reference(d)),
    });
    output.print(&model, || match &published {
        None => outln!(
            "No layer of {} needs a seek index (none is tar+gzip without a TOC)",
            reference(&subject)
        ),
        Some((d, n)) => {
            outln!("Indexed {n} layer(s) of {}", reference(&subject));
            outln!("Referrer: {}", reference(d));
        }
    })
}

#[derive(Args, Debug)]
#[command(
    after_help = "--format tree (or text) prints the referrers as a tree; --format json prints the subject with its `referrers`, each with its own `referrers`, as oras 1.3."
)]
pub struct DiscoverArgs {
    /// The subject: registry/repo:tag|@digest
    pub subject: String,
    /// Only referrers of this artifact type.
    #[arg(long)]
    pub artifact_type: Option<String>,
    /// How many levels of referrers to show (referrers of referrers...); 0: all (at most
    /// 64: a registry that lists a referrer among its own referrers cannot make it loop).
    #[arg(long, default_value_t = 0)]
    pub depth: usize,
    /// Of an image index, the referrers of the manifest for this platform:
    /// os/arch[/variant][:os_version] (default: of the index).
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<Platform>,
    #[command(flatten)]
    pub format: FormatArgs,
    #[command(flatten)]
    pub target: TargetArgs,
}

pub async fn discover(a: DiscoverArgs) -> Result<()> {
    let output = a.format.output_named("tree")?;
    let o = a.target.open(&a.subject, false)?;
    let subject = subject_of(&o, a.platform.as_ref()).await?;
    // Referrer lists come from the registry: a lying one could make the graph a loop, or
    // list the same referrers again at every level.
    const MAX_DEPTH: usize = 64;
    const MAX_REFERRERS: usize = 10_000;
    let shown = std::sync::atomic::AtomicUsize::new(0);
    let keep = |d: &Descriptor| {
        a.artifact_type
            .as_ref()
            .is_none_or(|t| d.artifact_type.as_ref() == Some(t))
            && shown.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < MAX_REFERRERS
    };
    let depth = if a.depth > 0 { a.depth } else { MAX_DEPTH };
    let model = referrer_tree(o.target.as_ref(), &o.base, &subject, depth, &keep).await?;
    output.print(&model, || {
        outln!("{}", model.subject.reference);
        print_tree(&model.referrers, "");
    })?;
    if shown.into_inner() > MAX_REFERRERS {
        eprintln!(
            "Warning: stopped after {MAX_REFERRERS} referrers; the registry lists more (or the \
             same ones again): narrow with --artifact-type or --depth"
        );
    }
    Ok(())
}

/// `subject` with its referrers, recursively, `depth` levels deep (the model both of
/// `discover --format json` and of its tree).
fn referrer_tree<'a>(
    target: &'a dyn Target,
    base: &'a str,
    subject: &'a Descriptor,
    depth: usize,
    keep: &'a (dyn Fn(&Descriptor) -> bool + Sync),
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Referrers>> + Send + 'a>> {
    Box::pin(async move {
        let mut referrers = Vec::new();
        if depth > 0 {
            for r in target.referrers(subject).await? {
                if keep(&r) {
                    referrers.push(referrer_tree(target, base, &r, depth - 1, keep).await?);
                }
            }
        }
        Ok(Referrers {
            subject: Described::new(base, subject),
            referrers,
        })
    })
}

/// Prints referrers as a tree (`discover`'s text output), each with its own below it.
fn print_tree(referrers: &[Referrers], indent: &str) {
    for (i, r) in referrers.iter().enumerate() {
        let last = i + 1 == referrers.len();
        outln!(
            "{indent}{} {}  {}",
            if last { "└──" } else { "├──" },
            r.subject
                .artifact_type
                .as_deref()
                .unwrap_or("(no artifact type)"),
            r.subject.digest
        );
        let child = format!("{indent}{}", if last { "    " } else { "│   " });
        print_tree(&r.referrers, &child);
    }
}
