//! `backup` and `restore`, as oras 1.3: a repository's tags and their whole graphs (with
//! referrers, on request for backup and by default for restore) to and from an OCI image
//! layout, a directory or a `.tar` archive. Built from `copy_graph`/`copy_referrers` between a
//! registry repository and an [`OciLayout`]; an archive is written from a layout directory
//! made beside it, then renamed into place.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use oras_fs::content::layout::is_tar_name;
use oras_fs::content::layout_tar::{parent_dir, write_archive};
use oras_fs::content::{self, OciLayout, Target};
use oras_fs::manifest::{Descriptor, Index};
use oras_fs::oras::{self, CopyOptions};
use oras_fs::{Error, Result};

use super::output::Bars;
use super::remote::RemoteArgs;
use super::target::{self, Opened, Place};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  oras-fs backup -o hello localhost:5000/hello:v1
  oras-fs backup -o hello.tar localhost:5000/hello:v1,v2
  oras-fs backup -o hello.tar --include-referrers localhost:5000/hello")]
pub struct BackupArgs {
    /// The repository and, optionally, the tags to back up: registry/repo[:tag[,tag...]]
    /// (every tag of the repository if none is given).
    pub reference: String,
    /// Where to write: a tar archive if the path ends in .tar (written whole, then renamed
    /// into place), otherwise an OCI layout directory (created or added to).
    #[arg(short = 'o', long, value_name = "PATH")]
    pub output: PathBuf,
    /// Back up the artifacts with their referrers (e.g. signatures, SBOMs), recursively.
    #[arg(long)]
    pub include_referrers: bool,
    /// Blobs copied at once.
    #[arg(long, default_value_t = 3)]
    pub concurrency: usize,
    /// Never draw progress bars.
    #[arg(long)]
    pub no_tty: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  oras-fs restore --input hello.tar localhost:5000/hello
  oras-fs restore --input hello localhost:5000/hello:v1,v2
  oras-fs restore --input hello.tar --dry-run localhost:5000/hello")]
pub struct RestoreArgs {
    /// The repository to restore into and, optionally, the tags to restore:
    /// registry/repo[:tag[,tag...]] (every tag of the backup if none is given).
    pub reference: String,
    /// The backup: an OCI layout directory or a .tar archive of one (read in place).
    #[arg(long, value_name = "PATH")]
    pub input: PathBuf,
    /// Restore the tagged artifacts only, not their referrers.
    #[arg(long)]
    pub exclude_referrers: bool,
    /// Say what would be pushed, push nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Blobs copied at once.
    #[arg(long, default_value_t = 5)]
    pub concurrency: usize,
    /// Never draw progress bars.
    #[arg(long)]
    pub no_tty: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Opens `registry/repo[:tags]`, refusing a digest (backup and restore name tags).
fn open_repository(reference: &str, remote: &RemoteArgs) -> Result<Opened> {
    let o = target::open(reference, Place::Registry, remote, false)?;
    if o.digest.is_some() {
        return Err(Error::InvalidReference {
            reference: reference.into(),
            reason: "backup and restore take tags, not a digest: registry/repo[:tag[,tag...]]"
                .into(),
        });
    }
    Ok(o)
}

/// `tags` resolved in `src`, in order; an error names the tag that does not resolve.
async fn resolve_all(src: &dyn Target, tags: &[String]) -> Result<Vec<Descriptor>> {
    let mut out = Vec::with_capacity(tags.len());
    for t in tags {
        out.push(src.resolve(t).await?);
    }
    Ok(out)
}

pub async fn backup(a: BackupArgs) -> Result<()> {
    let started = Instant::now();
    let src = open_repository(&a.reference, &a.remote)?;
    let to_tar = is_tar_name(&a.output);
    if to_tar && a.output.is_dir() {
        return Err(Error::Usage(format!(
            "{} is a directory: give another file name to back up into a tar archive, or \
             leave out .tar to back up into a layout directory",
            a.output.display()
        )));
    }
    if !to_tar && a.output.exists() && !a.output.is_dir() {
        return Err(Error::Usage(format!(
            "{} is a file, not a layout directory: name a new directory to back up into, or \
             a file ending in .tar to back up into a tar archive",
            a.output.display()
        )));
    }
    // A tar is made from a layout directory beside it (same filesystem, removed on any error
    // and on Ctrl-C; only a process killed outright leaves `.oras-fs-backup-*` behind).
    let work = match to_tar {
        true => Some(
            tempfile::Builder::new()
                .prefix(".oras-fs-backup-")
                .tempdir_in(parent_dir(&a.output))
                .map_err(|e| {
                    Error::io(
                        format!("creating a directory beside {}", a.output.display()),
                        e,
                    )
                })?,
        ),
        false => None,
    };
    let dst_root = work.as_ref().map_or(a.output.as_path(), |w| w.path());
    let dst = OciLayout::open(dst_root, true)?;

    let tags = match src.tags.is_empty() {
        false => src.tags.clone(),
        true => {
            let repo = src.repository.as_ref().expect("a registry reference");
            repo.tags(None).await?
        }
    };
    if tags.is_empty() {
        return Err(Error::NotFound {
            what: "tags",
            name: format!(
                "in repository {} (list them with `oras-fs repo tags {}`)",
                src.base, src.base
            ),
        });
    }
    let roots = resolve_all(src.target.as_ref(), &tags).await?;
    outln!(
        "Found {} tag(s) in {}: {}",
        tags.len(),
        src.base,
        tags.join(", ")
    );

    let opts = CopyOptions {
        concurrency: a.concurrency,
        progress: Arc::new(Bars::new("Pulling", a.no_tty, false)),
    };
    let from = src.target.as_ref();
    for (tag, root) in tags.iter().zip(&roots) {
        let bytes = content::read_manifest(from, root).await?;
        oras::copy_graph(
            from,
            &dst,
            root,
            bytes.clone(),
            std::slice::from_ref(tag),
            &opts,
        )
        .await
        .map_err(|e| failed("back up", tag, e))?;
        let referrers = match a.include_referrers {
            true => oras::copy_referrers(from, &dst, root, &bytes, &opts)
                .await
                .map_err(|e| failed("back up", tag, e))?,
            false => 0,
        };
        outln!("Pulled tag {tag} and {referrers} referrer(s)");
    }

    if let Some(work) = &work {
        outln!("Exporting to {}", a.output.display());
        let (dir, dest) = (work.path().to_path_buf(), a.output.clone());
        let size = tokio::task::spawn_blocking(move || write_archive(&dir, &dest))
            .await
            .expect("archive writer panicked")?;
        outln!("Exported to {} ({size} bytes)", a.output.display());
    }
    outln!(
        "Successfully backed up {} tag(s) from {} to {} in {:.2?}",
        tags.len(),
        src.base,
        a.output.display(),
        started.elapsed()
    );
    Ok(())
}

pub async fn restore(a: RestoreArgs) -> Result<()> {
    let started = Instant::now();
    let dst = open_repository(&a.reference, &a.remote)?;
    let meta = std::fs::metadata(&a.input)
        .map_err(|e| Error::io(format!("opening the backup {}", a.input.display()), e))?;
    let src = OciLayout::open(&a.input, false)?;
    if src.is_archive() {
        outln!(
            "Loaded backup archive: {} ({} bytes)",
            a.input.display(),
            meta.len()
        );
    }
    let tags = match dst.tags.is_empty() {
        false => dst.tags.clone(),
        true => {
            // A layout lists tags in no order of its own: sorted, as registries list them.
            let mut tags = src.tags()?;
            tags.sort();
            tags.dedup();
            tags
        }
    };
    if tags.is_empty() {
        return Err(Error::NotFound {
            what: "tags",
            name: format!(
                "in the OCI layout {} (list them with `oras-fs repo tags --oci-layout {}`)",
                a.input.display(),
                a.input.display()
            ),
        });
    }
    let roots = resolve_all(&src, &tags).await?;
    outln!(
        "Found {} tag(s) in the backup: {}",
        tags.len(),
        tags.join(", ")
    );

    let opts = CopyOptions {
        concurrency: a.concurrency,
        progress: Arc::new(Bars::new("Pushing", a.no_tty, false)),
    };
    let to = dst.target.as_ref();
    for (tag, root) in tags.iter().zip(&roots) {
        let bytes = content::read_manifest(&src, root).await?;
        let referrers = if a.dry_run {
            match a.exclude_referrers {
                true => 0,
                false => count_referrers(&src, root, &bytes).await?,
            }
        } else {
            oras::copy_graph(
                &src,
                to,
                root,
                bytes.clone(),
                std::slice::from_ref(tag),
                &opts,
            )
            .await
            .map_err(|e| failed("restore", tag, e))?;
            match a.exclude_referrers {
                true => 0,
                false => oras::copy_referrers(&src, to, root, &bytes, &opts)
                    .await
                    .map_err(|e| failed("restore", tag, e))?,
            }
        };
        match a.dry_run {
            true => outln!("Would push tag {tag} and {referrers} referrer(s) (dry run)"),
            false => outln!("Pushed tag {tag} and {referrers} referrer(s)"),
        }
    }
    match a.dry_run {
        true => outln!(
            "Dry run: {} tag(s) would be restored to {:?}; nothing was pushed",
            tags.len(),
            dst.base
        ),
        false => outln!(
            "Successfully restored {} tag(s) to {:?} in {:.2?}",
            tags.len(),
            dst.base,
            started.elapsed()
        ),
    }
    Ok(())
}

/// How many referrers `copy_referrers` would copy (for `--dry-run`): the same walk, reading
/// manifests only.
async fn count_referrers(src: &dyn Target, root: &Descriptor, bytes: &[u8]) -> Result<usize> {
    let mut subjects = vec![root.clone()];
    if oras_fs::manifest::is_index(bytes, Some(&root.media_type)) {
        subjects.extend(Index::parse(bytes)?.manifests);
    }
    let mut seen = std::collections::HashSet::new();
    while let Some(subject) = subjects.pop() {
        for r in src.referrers(&subject).await? {
            if seen.insert(r.digest.clone()) {
                subjects.push(r);
            }
        }
    }
    Ok(seen.len())
}

/// An error of one tag's copy, naming the tag.
fn failed(what: &str, tag: &str, e: Error) -> Error {
    Error::Other(format!("failed to {what} tag {tag:?}: {e}"))
}
