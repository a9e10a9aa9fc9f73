//! `push` and `pull`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use oras_fs::content::file::{FileStore, FileStoreOptions, UnpackLimit};
use oras_fs::fs::cache::DiskBlobs;
use oras_fs::manifest::{media_type, Annotations, Descriptor};
use oras_fs::oras::{self, BlobStash, CopyOptions, FileLayer, LayerFilter, PackOptions};
use oras_fs::{Error, Result};

use super::output::{label, Bars, Described, FormatArgs, Pulled, PulledFile, Pushed};
use super::target::{self, TargetArgs};

#[derive(Args, Debug)]
pub struct PushArgs {
    /// Where to push: registry/repository[:tag[,tag...]]
    pub reference: String,
    /// Files or directories to push, each optionally with a media type: FILE[:TYPE].
    /// `-` reads stdin (with --title); write `-- -:TYPE` to give it a media type.
    #[arg(value_name = "FILE[:TYPE]")]
    pub files: Vec<String>,
    /// The artifact type of the manifest.
    #[arg(long)]
    pub artifact_type: Option<String>,
    /// A config file to use instead of the empty config: FILE[:TYPE]
    #[arg(long, value_name = "FILE[:TYPE]")]
    pub config: Option<String>,
    /// Manifest annotation key=value (repeatable).
    #[arg(short = 'a', long = "annotation", value_name = "KEY=VALUE")]
    pub annotations: Vec<String>,
    /// JSON file of annotations: {"$manifest": {...}, "FILE": {...}}
    #[arg(long, value_name = "FILE")]
    pub annotation_file: Option<PathBuf>,
    /// Also write the pushed manifest to this file.
    #[arg(long, value_name = "FILE")]
    pub export_manifest: Option<PathBuf>,
    /// Blobs uploaded at once.
    #[arg(long, default_value_t = oras::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// The title of the layer read from stdin (`-`).
    #[arg(long, value_name = "NAME")]
    pub title: Option<String>,
    /// Allow absolute paths and '..' in file names (they become titles as given).
    #[arg(long)]
    pub disable_path_validation: bool,
    /// No `created` timestamp unless given, and fixed tar metadata: same inputs, same digest.
    #[arg(long)]
    pub reproducible: bool,
    /// Manifest format: v1.1 (artifactType and an empty config), or v1.0 for registries that
    /// know only image manifests (the artifact type becomes the config's media type).
    #[arg(long, value_enum, default_value_t)]
    pub image_spec: ImageSpec,
    #[command(flatten)]
    pub format: FormatArgs,
    /// Don't draw progress bars.
    #[arg(long)]
    pub no_tty: bool,
    #[command(flatten)]
    pub target: TargetArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImageSpec {
    #[value(name = "v1.0")]
    V1_0,
    #[default]
    #[value(name = "v1.1")]
    V1_1,
}

/// `FILE[:TYPE]`, split on the last ':' (media types contain no ':').
pub(super) fn split_file_arg(arg: &str) -> (&str, Option<&str>) {
    match arg.rsplit_once(':') {
        Some((file, ty)) if !file.is_empty() && !ty.is_empty() && ty.contains('/') => {
            (file, Some(ty))
        }
        _ => (arg, None),
    }
}

/// Title of a pushed file: the path as given, '/'-separated; no escape unless allowed.
pub(super) fn title_for(path: &str, allow_any: bool) -> Result<String> {
    let title = path.trim_end_matches('/').to_string();
    let title = if title.is_empty() {
        path.to_string()
    } else {
        title
    };
    if !allow_any {
        // Validate the way pull will: a relative path that stays inside.
        oras_fs::content::file::safe_join(Path::new("."), &title, false).map_err(|e| match e {
            Error::UnsafePath { path, reason } => Error::Usage(format!(
                "file name {path:?} is unsafe as a title ({reason}); use --disable-path-validation to push it as given"
            )),
            e => e,
        })?;
    }
    Ok(title)
}

pub(super) fn parse_annotations(items: &[String]) -> Result<Annotations> {
    let mut out = BTreeMap::new();
    for item in items {
        let (k, v) = item
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| Error::Usage(format!("annotation {item:?} is not KEY=VALUE")))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

fn read_annotation_file(path: &Path) -> Result<BTreeMap<String, Annotations>> {
    let bytes =
        std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::Usage(format!(
            "{}: expected {{\"$manifest\": {{\"key\": \"value\"}}, \"FILE\": {{...}}}}: {e}",
            path.display()
        ))
    })
}

pub async fn push(args: PushArgs) -> Result<()> {
    let output = args.format.output()?;
    let opened = args.target.open(&args.reference, true)?;
    if opened.digest.is_some() {
        return Err(Error::Usage("push to a tag, not a digest".into()));
    }
    let tags = if opened.tags.is_empty() {
        vec!["latest".to_string()]
    } else {
        opened.tags.clone()
    };
    let mut by_file = match &args.annotation_file {
        Some(p) => read_annotation_file(p)?,
        None => BTreeMap::new(),
    };
    let mut manifest_annotations = by_file.remove("$manifest").unwrap_or_default();
    manifest_annotations.extend(parse_annotations(&args.annotations)?);
    let store = FileStore::new(
        ".",
        FileStoreOptions {
            reproducible: args.reproducible,
            ..Default::default()
        },
    );
    let mut files = Vec::new();
    let mut titles = std::collections::HashSet::new();
    // `-` reads one layer from stdin, spooled to a temporary file so its digest is known
    // before the upload starts.
    let mut _stdin_spool = None;
    for arg in &args.files {
        let (file, ty) = split_file_arg(arg);
        if file == "-" {
            let title = args.title.clone().ok_or_else(|| {
                Error::Usage("reading a file from stdin (-) needs --title NAME".into())
            })?;
            let title = title_for(&title, args.disable_path_validation)?;
            let mut spool = tempfile::NamedTempFile::new()
                .map_err(|e| Error::io("creating a temporary file", e))?;
            std::io::copy(&mut std::io::stdin().lock(), spool.as_file_mut())
                .map_err(|e| Error::io("reading stdin", e))?;
            if !titles.insert(title.clone()) {
                return Err(Error::Usage(format!("{title:?} is given twice")));
            }
            files.push(FileLayer {
                title,
                media_type: ty.map(str::to_string),
                path: spool.path().to_path_buf(),
                annotations: Default::default(),
            });
            _stdin_spool = Some(spool);
            continue;
        }
        let title = title_for(file, args.disable_path_validation)?;
        if !titles.insert(title.clone()) {
            return Err(Error::Usage(format!(
                "{title:?} is given twice: each file becomes one layer, and titles must be unique"
            )));
        }
        let annotations = by_file
            .get(file)
            .or_else(|| by_file.get(&title))
            .cloned()
            .unwrap_or_default();
        files.push(FileLayer {
            title,
            media_type: ty.map(str::to_string),
            path: PathBuf::from(file),
            annotations,
        });
    }
    let config = match &args.config {
        Some(arg) => {
            let (file, ty) = split_file_arg(arg);
            let data =
                std::fs::read(file).map_err(|e| Error::io(format!("reading config {file}"), e))?;
            let mut desc = store.add_bytes(ty.unwrap_or(media_type::UNKNOWN_CONFIG), data);
            if let Some(a) = by_file.get("$config") {
                desc.annotations = Some(a.clone());
            }
            Some(desc)
        }
        None => None,
    };
    let (artifact_type, config) = match (args.image_spec, config) {
        (ImageSpec::V1_1, config) => (args.artifact_type.clone(), config),
        // Image-spec 1.0 has no artifactType: as oras, the type is the config's media type,
        // and the config is `{}` unless given.
        (ImageSpec::V1_0, Some(_)) if args.artifact_type.is_some() => {
            return Err(Error::Usage(
                "with --image-spec v1.0 the artifact type is the config's media type: \
                 give it as --config FILE:TYPE instead of --artifact-type"
                    .into(),
            ))
        }
        (ImageSpec::V1_0, Some(config)) => (None, Some(config)),
        (ImageSpec::V1_0, None) => {
            let ty = args
                .artifact_type
                .as_deref()
                .unwrap_or(media_type::UNKNOWN_CONFIG);
            (None, Some(store.add_bytes(ty, &b"{}"[..])))
        }
    };
    let pack = PackOptions {
        artifact_type,
        config,
        annotations: manifest_annotations,
        subject: None,
        reproducible: args.reproducible,
    };
    let opts = CopyOptions {
        concurrency: args.concurrency,
        progress: Arc::new(Bars::new("Uploading", args.no_tty, !output.is_text())),
    };
    let (desc, bytes) =
        oras::push(&store, &files, &pack, opened.target.as_ref(), &tags, &opts).await?;
    if let Some(path) = &args.export_manifest {
        std::fs::write(path, &bytes)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    let manifest = oras_fs::manifest::Manifest::parse(&bytes, None)?;
    let mut pushed = desc.clone();
    pushed.artifact_type = manifest.artifact_type.clone();
    pushed.annotations = manifest.annotations.clone();
    let model = Pushed {
        manifest: Described::new(&opened.base, &pushed),
        reference_as_tags: tags
            .iter()
            .map(|t| format!("{}:{t}", opened.base))
            .collect(),
    };
    output.print(&model, || {
        outln!(
            "Pushed [{}] {}:{}",
            kind(&opened),
            opened.base,
            tags.join(",")
        );
        if let Some(t) = &manifest.artifact_type {
            outln!("ArtifactType: {t}");
        }
        outln!("Digest: {}", desc.digest);
    })
}

fn kind(o: &target::Opened) -> &'static str {
    if o.registry.is_some() {
        "registry"
    } else {
        "oci-layout"
    }
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// What to pull: registry/repository[:tag|@digest]
    pub reference: String,
    /// Directory to write the files to.
    #[arg(short = 'o', long, default_value = ".")]
    pub output: PathBuf,
    /// Pull layers of this media type (repeatable). Default: application/vnd.oci.image.layer.v1.tar
    #[arg(short = 't', long = "media-type")]
    pub media_types: Vec<String>,
    /// Pull every layer that has a title, whatever its media type.
    #[arg(short = 'a', long)]
    pub allow_all: bool,
    /// Fail instead of replacing existing files.
    #[arg(short = 'k', long)]
    pub keep_old_files: bool,
    /// Allow titles that write outside the output directory.
    #[arg(short = 'T', long)]
    pub allow_path_traversal: bool,
    /// Also write the config blob to this file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Most a directory layer may unpack to (e.g. 10G, or `unlimited`). Default: 32 times
    /// its compressed size, at least 256M, which stops gzip bombs.
    #[arg(long, value_name = "SIZE", value_parser = parse_unpack_limit)]
    pub max_unpacked_size: Option<UnpackLimit>,
    /// Blobs downloaded at once.
    #[arg(long, default_value_t = oras::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// Also pull the subject of the artifact (e.g. what a signature signs), and its subject,
    /// recursively, into the same directory.
    #[arg(long)]
    pub include_subject: bool,
    /// Of an image index, pull the manifest for this platform: os/arch[/variant][:os_version]
    /// (an index is refused without it, with the list of its platforms).
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<oras_fs::manifest::Platform>,
    /// Blob cache shared with mounts (default: ~/.cache/oras-fs): layers found there are
    /// copied (and verified) instead of downloaded, and downloaded layers are added to it.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Bound of the blob cache: a download is kept only if it fits beside what the cache
    /// holds (a pull evicts nothing; mounts evict to their own bounds).
    #[arg(long, value_name = "SIZE", default_value = super::mount::DEFAULT_CACHE_SIZE, value_parser = super::mount::parse_size)]
    pub cache_size: u64,
    /// Neither read nor fill the blob cache (also when ORAS_FS_NO_CACHE=1).
    #[arg(long)]
    pub no_cache: bool,
    #[command(flatten)]
    pub format: FormatArgs,
    /// Don't draw progress bars.
    #[arg(long)]
    pub no_tty: bool,
    #[command(flatten)]
    pub target: TargetArgs,
}

/// The blob cache a pull from a registry reads and fills, unless `--no-cache`. A default
/// cache that cannot be opened is skipped with a warning; one asked for is an error.
fn pull_cache(args: &PullArgs, opened: &target::Opened) -> Result<Option<Arc<dyn BlobStash>>> {
    // An OCI layout is local already.
    if args.no_cache || super::remote::env_flag("ORAS_FS_NO_CACHE")? || opened.registry.is_none() {
        return Ok(None);
    }
    let dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(oras_fs::fs::paths::default_cache_dir);
    match DiskBlobs::open(&dir, args.cache_size) {
        Ok(blobs) => Ok(Some(Arc::new(blobs))),
        Err(e) if args.cache_dir.is_none() => {
            eprintln!(
                "Warning: not using the blob cache {}: {e} (pick one with --cache-dir, or \
                 --no-cache)",
                dir.display()
            );
            Ok(None)
        }
        Err(e) => Err(Error::io(format!("opening the cache {}", dir.display()), e)),
    }
}

/// What a pull reads: the reference, or of an image index with `--platform`, the digest of
/// its child for that platform.
async fn pull_reference(args: &PullArgs, opened: &target::Opened) -> Result<String> {
    let reference = opened.reference();
    let Some(platform) = &args.platform else {
        return Ok(reference);
    };
    let fetched =
        oras_fs::content::fetch_platform_bytes(opened.target.as_ref(), &reference, Some(platform))
            .await?;
    Ok(fetched.descriptor.digest.to_string())
}

/// `--max-unpacked-size`: a size, or `unlimited`.
pub(super) fn parse_unpack_limit(s: &str) -> std::result::Result<UnpackLimit, String> {
    if s.eq_ignore_ascii_case("unlimited") {
        return Ok(UnpackLimit::Unlimited);
    }
    super::mount::parse_size(s)
        .map(UnpackLimit::Bytes)
        .map_err(|e| format!("{e}, or `unlimited`"))
}

pub async fn pull(args: PullArgs) -> Result<()> {
    let output = args.format.output()?;
    if args.output.as_os_str() == "-" && !output.is_text() {
        return Err(Error::Usage(
            "-o - writes the file to stdout, where --format writes too: pull to a directory".into(),
        ));
    }
    let opened = args.target.open(&args.reference, false)?;
    if args.output.as_os_str() == "-" {
        return pull_to_stdout(&args, &opened).await;
    }
    std::fs::create_dir_all(&args.output)
        .map_err(|e| Error::io(format!("creating {}", args.output.display()), e))?;
    let store = FileStore::new(
        &args.output,
        FileStoreOptions {
            allow_path_traversal: args.allow_path_traversal,
            keep_old_files: args.keep_old_files,
            reproducible: false,
            max_unpacked_size: args.max_unpacked_size.unwrap_or(UnpackLimit::Auto),
        },
    );
    let filter = LayerFilter {
        media_types: args.media_types.clone(),
        allow_all: args.allow_all,
    };
    let opts = CopyOptions {
        concurrency: args.concurrency,
        progress: Arc::new(Bars::new("Downloading", args.no_tty, !output.is_text())),
    };
    let stash = pull_cache(&args, &opened)?;
    let mut report = oras::pull(
        opened.target.as_ref(),
        &pull_reference(&args, &opened).await?,
        &store,
        &filter,
        stash.as_ref(),
        &opts,
    )
    .await?;
    if args.include_subject {
        let mut seen = std::collections::HashSet::from([report.manifest_descriptor.digest.clone()]);
        let mut next = report.manifest.subject.clone();
        // A cycle of subjects cannot be made with digests, but a registry could lie: stop at
        // any manifest seen before.
        while let Some(subject) = next.filter(|s| seen.insert(s.digest.clone())) {
            // A signature of a multi-platform tag has an index for subject: it holds no files
            // of its own, and which child's files to pull is for --platform on a pull of it.
            if oras_fs::manifest::is_index(b"", Some(&subject.media_type)) {
                eprintln!(
                    "Note: the subject {} is an image index; its files are not pulled (pull it \
                     with --platform)",
                    subject.digest
                );
                break;
            }
            let sub = oras::pull(
                opened.target.as_ref(),
                subject.digest.as_str(),
                &store,
                &filter,
                stash.as_ref(),
                &opts,
            )
            .await?;
            report.pulled.extend(sub.pulled);
            report.skipped.extend(sub.skipped);
            next = sub.manifest.subject;
        }
    }
    if let Some(path) = &args.config {
        let config = report.manifest.config.clone();
        let data = oras_fs::content::read_all(opened.target.as_ref(), &config, 64 << 20).await?;
        std::fs::write(path, &data)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    let titled_skipped: Vec<&Descriptor> = report
        .skipped
        .iter()
        .filter(|d| d.title().is_some())
        .collect();
    if report.pulled.is_empty() && titled_skipped.is_empty() {
        eprintln!("Warning: the artifact has no files (no layer has a title)");
    }
    if !titled_skipped.is_empty() {
        let types: std::collections::BTreeSet<&str> = titled_skipped
            .iter()
            .map(|d| d.media_type.as_str())
            .collect();
        let names: Vec<String> = titled_skipped.iter().take(5).map(|d| label(d)).collect();
        eprintln!(
            "Skipped {} layer(s) of other media types ({}): {}{}\n  \
             pull them with -t TYPE, or all with -a/--allow-all",
            titled_skipped.len(),
            types.into_iter().collect::<Vec<_>>().join(", "),
            names.join(", "),
            if titled_skipped.len() > 5 {
                ", ..."
            } else {
                ""
            }
        );
    }
    let dir = std::path::absolute(&args.output)
        .map_err(|e| Error::io(format!("finding {}", args.output.display()), e))?;
    let model = Pulled {
        reference: format!("{}@{}", opened.base, report.manifest_descriptor.digest),
        files: report
            .pulled
            .iter()
            .map(|d| PulledFile {
                path: pulled_path(&dir, d),
                layer: Described::new(&opened.base, d),
            })
            .collect(),
    };
    output.print(&model, || {
        outln!("Pulled [{}] {}", kind(&opened), args.reference);
        outln!("Digest: {}", report.manifest_descriptor.digest);
    })
}

/// Where a pulled layer landed, as oras reports it: absolute, and a directory's path ends
/// with the separator.
fn pulled_path(dir: &Path, layer: &Descriptor) -> String {
    let mut path = lexically_clean(&dir.join(layer.title().unwrap_or_default()))
        .display()
        .to_string();
    if layer.is_directory() && !path.ends_with(std::path::MAIN_SEPARATOR) {
        path.push(std::path::MAIN_SEPARATOR);
    }
    path
}

/// `path` without `.` and `..` components, as Go's `filepath.Clean` (oras prints such paths);
/// symbolic links are not followed.
fn lexically_clean(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                // `/..` is `/`; a relative path keeps the `..` it cannot resolve.
                if !out.pop() && !out.has_root() {
                    out.push(c);
                }
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// `pull -o -`: streams the one file of an artifact to stdout. The digest is checked as the
/// bytes pass; a mismatch fails the command at the end (the bytes are already out).
async fn pull_to_stdout(args: &PullArgs, opened: &target::Opened) -> Result<()> {
    use futures_util::StreamExt;
    use std::io::Write;
    let reference = pull_reference(args, opened).await?;
    let (_, _, manifest) =
        oras_fs::content::fetch_manifest(opened.target.as_ref(), &reference).await?;
    let filter = LayerFilter {
        media_types: args.media_types.clone(),
        allow_all: args.allow_all,
    };
    let (taken, _) = filter.select(&manifest)?;
    let layer = match taken.as_slice() {
        [one] if !one.is_directory() => one.clone(),
        [dir] => {
            return Err(Error::Usage(format!(
                "the matching layer {} is a directory: pull it to a directory (-o DIR)",
                dir.title().unwrap_or_default()
            )))
        }
        [] => return Err(Error::Usage("no file to write to stdout (try -a or -t TYPE)".into())),
        _ => {
            return Err(Error::Usage(format!(
                "-o - writes a single file, but {} layers match; pick one with -t TYPE or pull to a directory",
                taken.len()
            )))
        }
    };
    let mut stream = oras_fs::content::verified(&layer, opened.target.fetch(&layer).await?);
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = stream.next().await {
        out.write_all(&chunk?)
            .map_err(|e| Error::io(super::output::WRITING_STDOUT, e))?;
    }
    out.flush()
        .map_err(|e| Error::io(super::output::WRITING_STDOUT, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulled_paths_are_cleaned_as_go_cleans_them() {
        for (given, clean) in [
            ("/a/./b/../c", "/a/c"),
            ("/out/../../x", "/x"),
            ("/out/dir/", "/out/dir"),
            ("a/../../b", "../b"),
        ] {
            assert_eq!(
                lexically_clean(Path::new(given)),
                Path::new(clean),
                "{given}"
            );
        }
    }
}
