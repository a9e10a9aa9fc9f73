//! `manifest index create` and `manifest index update`: image indexes (multi-platform images)
//! made of manifests in one repository, as in oras 1.3.

use bytes::Bytes;
use clap::{Args, Subcommand};
use oras_fs::content;
use oras_fs::digest::Digest;
use oras_fs::manifest::{Annotations, Descriptor, Index};
use oras_fs::oras;
use oras_fs::{Error, Result};

use super::output::{Described, FormatArgs, Output, Pushed};
use super::target::{Opened, TargetArgs};

#[derive(Subcommand, Debug)]
pub enum IndexCommand {
    /// Create and push an image index of manifests in the same repository: each source is a
    /// tag or digest; an image's platform is taken from its config (artifacts get none).
    /// Example: oras-fs manifest index create localhost:5000/hello:v1 linux-amd64 linux-arm64
    #[command(alias = "pack")]
    Create(CreateArgs),
    /// Update an image index and push it: add manifests, merge other indexes' manifests,
    /// remove manifests by digest, set annotations. A tag moves to the new index.
    /// Example: oras-fs manifest index update localhost:5000/hello:v1 --add linux-s390x --remove sha256:…
    Update(UpdateArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The index to create: registry/repo[:tag[,tag...]] (untagged without a tag).
    pub reference: String,
    /// Its manifests: tags or digests in the same repository.
    #[arg(value_name = "TAG|DIGEST")]
    pub sources: Vec<String>,
    /// Index annotation key=value (repeatable).
    #[arg(short = 'a', long = "annotation", value_name = "KEY=VALUE")]
    pub annotations: Vec<String>,
    /// Write the index to this file (`-`: stdout) instead of pushing it.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<String>,
    #[command(flatten)]
    pub format: FormatArgs,
    #[command(flatten)]
    pub target: TargetArgs,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// The index to update: registry/repo:tag|@digest
    pub reference: String,
    /// A manifest to add: tag or digest in the same repository (repeatable).
    #[arg(long, value_name = "TAG|DIGEST")]
    pub add: Vec<String>,
    /// An index whose manifests to add: tag or digest (repeatable).
    #[arg(long, value_name = "TAG|DIGEST")]
    pub merge: Vec<String>,
    /// The digest of a manifest to remove (repeatable).
    #[arg(long, value_name = "DIGEST")]
    pub remove: Vec<Digest>,
    /// Index annotation key=value to set (repeatable).
    #[arg(short = 'a', long = "annotation", value_name = "KEY=VALUE")]
    pub annotations: Vec<String>,
    /// Also tag the updated index (repeatable).
    #[arg(long = "tag", value_name = "TAG", conflicts_with = "output")]
    pub tags: Vec<String>,
    /// Write the index to this file (`-`: stdout) instead of pushing it.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<String>,
    #[command(flatten)]
    pub format: FormatArgs,
    #[command(flatten)]
    pub target: TargetArgs,
}

pub async fn run(c: IndexCommand) -> Result<()> {
    match c {
        IndexCommand::Create(a) => create(a).await,
        IndexCommand::Update(a) => update(a).await,
    }
}

/// Status lines (`Fetched …`), left out when stdout carries JSON or the index itself.
struct Status {
    quiet: bool,
}

impl Status {
    fn new(out: &Output, output: Option<&str>) -> Status {
        Status {
            quiet: !out.is_text() || output == Some("-"),
        }
    }

    fn say(&self, line: std::fmt::Arguments<'_>) {
        if !self.quiet {
            outln!("{line}");
        }
    }
}

async fn create(a: CreateArgs) -> Result<()> {
    let o = a.target.open(&a.reference, true)?;
    if o.digest.is_some() {
        return Err(Error::Usage(
            "create an index at a tag or untagged (registry/repo[:tag]), not at a digest".into(),
        ));
    }
    let out = a.format.output()?;
    let status = Status::new(&out, a.output.as_deref());
    let mut manifests = Vec::new();
    for source in &a.sources {
        manifests.push(entry(&o, source, &status).await?);
    }
    let annotations = super::transfer::parse_annotations(&a.annotations)?;
    let (desc, bytes) = oras::pack_index(manifests, annotations);
    finish(
        &o,
        desc,
        bytes,
        o.tags.clone(),
        a.output.as_deref(),
        &out,
        &status,
    )
    .await
}

async fn update(a: UpdateArgs) -> Result<()> {
    let o = a.target.open(&a.reference, false)?;
    let out = a.format.output()?;
    let status = Status::new(&out, a.output.as_deref());
    let reference = o.reference();
    if a.add.is_empty()
        && a.remove.is_empty()
        && a.merge.is_empty()
        && a.annotations.is_empty()
        && a.tags.is_empty()
    {
        return Err(Error::Usage(format!(
            "nothing to update in {reference}: give --add, --remove, --merge, --annotation or \
             --tag"
        )));
    }
    let (_, mut index) = fetch_index(&o, &reference, &status).await?;
    // A digest given twice is removed once.
    let mut removing = std::collections::HashSet::new();
    for digest in a.remove.iter().filter(|d| removing.insert(*d)) {
        let before = index.manifests.len();
        index.manifests.retain(|m| &m.digest != digest);
        if index.manifests.len() == before {
            return Err(Error::Usage(format!(
                "{digest} is not in the index {reference}; it has: {}",
                index.children_list()
            )));
        }
        status.say(format_args!("Removed {digest}"));
    }
    for source in &a.add {
        let added = entry(&o, source, &status).await?;
        status.say(format_args!("Added {} {source}", added.digest));
        index.manifests.push(added);
    }
    for source in &a.merge {
        let (_, other) = fetch_index(&o, source, &status).await?;
        status.say(format_args!("Merged {source}"));
        index.manifests.extend(other.manifests);
    }
    let annotations = super::transfer::parse_annotations(&a.annotations)?;
    if !annotations.is_empty() {
        index
            .annotations
            .get_or_insert_with(Annotations::new)
            .extend(annotations);
    }
    let bytes = Bytes::from(index.to_bytes());
    let desc = Descriptor::of(index.media_type(), &bytes);
    // A tag moves to the new index; an index named by digest stays as it is beside it.
    let tags: Vec<String> = if o.digest.is_none() {
        o.tags.iter().take(1).chain(&a.tags).cloned().collect()
    } else {
        a.tags.clone()
    };
    for t in &tags {
        super::target::validate_tag(t)?;
    }
    finish(&o, desc, bytes, tags, a.output.as_deref(), &out, &status).await
}

/// Fetches and parses the index `reference` names; anything else is refused.
async fn fetch_index(o: &Opened, reference: &str, status: &Status) -> Result<(Descriptor, Index)> {
    status.say(format_args!("Fetching {reference}"));
    let f = content::fetch_platform_bytes(o.target.as_ref(), reference, None).await?;
    if !f.is_index() {
        return Err(Error::Usage(format!(
            "{reference} is not an image index ({})",
            f.descriptor.media_type
        )));
    }
    let index = Index::parse(&f.bytes)?;
    status.say(format_args!("Fetched {} {reference}", f.descriptor.digest));
    Ok((f.descriptor, index))
}

/// The index entry of one source manifest.
async fn entry(o: &Opened, source: &str, status: &Status) -> Result<Descriptor> {
    status.say(format_args!("Fetching {source}"));
    let entry = oras::index_entry(o.target.as_ref(), source)
        .await
        .map_err(|e| match e {
            Error::NotFound { .. } => Error::Usage(format!(
                "could not find the manifest {source} in {}: {e}",
                o.base
            )),
            e => e,
        })?;
    status.say(format_args!("Fetched {} {source}", entry.digest));
    Ok(entry)
}

/// Writes the index to `output`, or pushes it tagged with `tags` (untagged if none), then
/// says what was done.
async fn finish(
    o: &Opened,
    desc: Descriptor,
    bytes: Bytes,
    tags: Vec<String>,
    output: Option<&str>,
    out: &Output,
    status: &Status,
) -> Result<()> {
    status.say(format_args!("Packed {} {}", desc.digest, desc.media_type));
    if let Some(path) = output {
        super::manage::write_out(path, &bytes)?;
    } else {
        o.target
            .push_manifest(&desc, bytes.clone(), tags.first().map(String::as_str))
            .await?;
        for t in tags.iter().skip(1) {
            o.target.tag(&desc, t).await?;
        }
        let kind = if o.registry.is_some() {
            "registry"
        } else {
            "oci-layout"
        };
        match tags.is_empty() {
            true => status.say(format_args!("Pushed [{kind}] {}@{}", o.base, desc.digest)),
            false => status.say(format_args!(
                "Pushed [{kind}] {}:{}",
                o.base,
                tags.join(",")
            )),
        }
    }
    // As `push` prints it (oras prints an index it creates the same way).
    let model = Pushed {
        manifest: Described::new(&o.base, &desc),
        reference_as_tags: tags.iter().map(|t| format!("{}:{t}", o.base)).collect(),
    };
    out.print(&model, || {
        status.say(format_args!("Digest: {}", desc.digest))
    })?;
    Ok(())
}
