//! Mounts that show more than one manifest and change while mounted: a whole repository (one
//! directory per tag, `@sha256:<hex>` directories on lookup), a whole registry (one directory
//! per repository path), and a tag mount that follows its tag (`--follow`). What is listed at
//! mount, what is loaded on first access, and the periodic refresh (docs/SEMANTICS.md,
//! "Repository and registry mounts").
//!
//! A tag's directory shows what a mount of that tag shows: the same view (`view::show_in`),
//! loaded once, on the first lookup or readdir below it. A refresh lists tags (and the
//! catalog) again and re-resolves the tags already loaded; a moved tag's directory gets the
//! new manifest's files, while open files keep their old blobs (a handle holds its source).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use super::cache::Errno;
use super::filesystem::{Attr, OrasFs, Snapshot};
use super::tree::{Ino, Kind, Pending, Tree, ROOT};
use super::view;
use crate::content::{ByteStream, Target};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{Descriptor, Manifest, Platform};
use crate::reference::Reference;
use crate::registry::mirrors::RegistriesConf;
use crate::registry::{Client, ClientOptions, Repository};

/// Where a repository or registry mount lists what it shows.
#[async_trait]
pub trait Browse: Send + Sync {
    /// The registry's repositories (`_catalog`).
    async fn repositories(&self) -> Result<Vec<String>>;
    /// A repository's tags (`tags/list`).
    async fn tags(&self, repository: &str) -> Result<Vec<String>>;
    /// A repository, to resolve tags and fetch manifests and blobs from (refused, for one
    /// that registries.conf blocks).
    fn target(&self, repository: &str) -> Result<Arc<dyn Target>>;
    /// How the user names a repository (`registry/repo`).
    fn display(&self, repository: &str) -> String;
}

/// A registry, spoken to over the distribution protocol. Each repository is opened as the
/// other commands open it: with the mirrors, locations and blocks of registries.conf.
pub struct RegistryBrowse {
    /// The registry itself: its catalog.
    client: Arc<Client>,
    options: ClientOptions,
    conf: Option<RegistriesConf>,
    /// Opened once each: one client (connections, tokens) per repository.
    opened: Mutex<HashMap<String, Arc<Repository>>>,
}

impl RegistryBrowse {
    /// `client` lists the catalog; repositories are opened with `options` and `conf`.
    pub fn new(client: Arc<Client>, options: ClientOptions, conf: Option<RegistriesConf>) -> Self {
        RegistryBrowse {
            client,
            options,
            conf,
            opened: Mutex::default(),
        }
    }

    fn open(&self, repository: &str) -> Result<Arc<Repository>> {
        if let Some(r) = self.opened.lock().unwrap().get(repository) {
            return Ok(r.clone());
        }
        let reference: Reference = self.display(repository).parse()?;
        let repo = Arc::new(Repository::open(
            &reference,
            self.options.clone(),
            self.conf.as_ref(),
        )?);
        let mut opened = self.opened.lock().unwrap();
        Ok(opened.entry(repository.to_string()).or_insert(repo).clone())
    }
}

#[async_trait]
impl Browse for RegistryBrowse {
    async fn repositories(&self) -> Result<Vec<String>> {
        Repository::catalog(&self.client, None).await
    }

    async fn tags(&self, repository: &str) -> Result<Vec<String>> {
        self.open(repository)?.tags(None).await
    }

    fn target(&self, repository: &str) -> Result<Arc<dyn Target>> {
        Ok(self.open(repository)?)
    }

    fn display(&self, repository: &str) -> String {
        format!("{}/{repository}", self.client.host())
    }
}

/// The block cache's source in a repository or registry mount: each blob comes from a
/// repository whose manifest, loaded by the mount, names it (the cache has one source).
/// A blob shared by repositories is fetched from the one that named it last, then from the
/// others (one may have been deleted since). Read-only: such a mount never pushes.
#[derive(Default)]
pub struct Router {
    /// Most recent first, at most `ROUTES_PER_BLOB`, one per repository.
    by_digest: Mutex<HashMap<Digest, Routes>>,
}

/// Where a blob can be fetched: (repository, its target), most recent first.
type Routes = Vec<(String, Arc<dyn Target>)>;

const ROUTES_PER_BLOB: usize = 4;

impl Router {
    /// Blobs of `snapshot` (its layers and config, and its children's) come from `target`,
    /// the repository `repository`.
    fn learn(&self, snapshot: &Snapshot, repository: &str, target: &Arc<dyn Target>) {
        let mut map = self.by_digest.lock().unwrap();
        let mut add = |m: &Manifest| {
            for d in m.layers.iter().chain([&m.config]) {
                let routes = map.entry(d.digest.clone()).or_default();
                routes.retain(|(r, _)| r != repository);
                routes.insert(0, (repository.to_string(), target.clone()));
                routes.truncate(ROUTES_PER_BLOB);
            }
        };
        add(&snapshot.manifest);
        for (_, c) in &snapshot.children {
            add(&c.manifest);
        }
        // The manifests themselves, for what refers to them (seek-index referrers).
        for s in std::iter::once(snapshot).chain(snapshot.children.iter().map(|(_, c)| c)) {
            let routes = map.entry(s.descriptor.digest.clone()).or_default();
            routes.retain(|(r, _)| r != repository);
            routes.insert(0, (repository.to_string(), target.clone()));
            routes.truncate(ROUTES_PER_BLOB);
        }
    }

    fn routes(&self, desc: &Descriptor) -> Result<Vec<Arc<dyn Target>>> {
        self.by_digest
            .lock()
            .unwrap()
            .get(&desc.digest)
            .map(|routes| routes.iter().map(|(_, t)| t.clone()).collect())
            .ok_or_else(|| Error::Other(format!("no loaded manifest names blob {}", desc.digest)))
    }
}

fn never_pushes() -> Error {
    Error::Usage("a repository or registry mount is read-only: it never pushes".into())
}

#[async_trait]
impl Target for Router {
    fn name(&self) -> String {
        "the mounted repositories".into()
    }

    fn holding(&self, manifest: &Digest) -> Option<Arc<dyn Target>> {
        let map = self.by_digest.lock().unwrap();
        map.get(manifest)?.first().map(|(_, t)| t.clone())
    }

    async fn resolve(&self, reference: &str) -> Result<Descriptor> {
        Err(Error::Usage(format!(
            "{reference}: a repository mount resolves tags per repository"
        )))
    }

    async fn fetch(&self, desc: &Descriptor) -> Result<ByteStream> {
        let mut last = None;
        for t in self.routes(desc)? {
            match t.fetch(desc).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("a route is never empty"))
    }

    async fn fetch_range(&self, desc: &Descriptor, offset: u64, len: u64) -> Result<ByteStream> {
        let mut last = None;
        for t in self.routes(desc)? {
            match t.fetch_range(desc, offset, len).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("a route is never empty"))
    }

    async fn exists(&self, desc: &Descriptor) -> Result<bool> {
        for t in self.routes(desc).unwrap_or_default() {
            if let Ok(true) = t.exists(desc).await {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn push(&self, _: &Descriptor, _: ByteStream) -> Result<()> {
        Err(never_pushes())
    }

    async fn push_manifest(&self, _: &Descriptor, _: Bytes, _: Option<&str>) -> Result<()> {
        Err(never_pushes())
    }

    async fn tag(&self, _: &Descriptor, _: &str) -> Result<()> {
        Err(never_pushes())
    }
}

/// What a mount of more than one manifest shows at its root.
#[derive(Clone, Debug)]
pub enum Scope {
    /// One directory per repository path (`_catalog`).
    Registry,
    /// One directory per tag of this repository.
    Repository(String),
}

/// What a directory of such a mount stands for.
#[derive(Clone)]
enum Dir {
    /// The registry's root: its repositories below, refreshed from the catalog.
    Registry,
    /// A repository: its tags are the directories here, once listed.
    Repository { name: String, listed: bool },
    /// A tag or digest: the manifest it shows.
    Manifest(Shown),
}

#[derive(Clone)]
struct Shown {
    target: Arc<dyn Target>,
    /// The repository `target` stands for (`registry/repo`): blobs are routed by it.
    repository: String,
    /// `registry/repo:tag` (or `@digest`), for messages and status.
    display: String,
    /// The tag or digest resolved.
    reference: String,
    /// Of an image index, the platform whose manifest is shown (`--follow --platform`).
    platform: Option<Box<Platform>>,
    /// A tag, which may move (a digest never does).
    movable: bool,
    /// What `reference` resolved to when last loaded (an index chosen from by platform, not
    /// the manifest chosen, so that a refresh compares like with like).
    digest: Option<Digest>,
    /// Why it could not be loaded (the directory is empty).
    failed: Option<String>,
    moves: u32,
}

/// The state of a repository, registry or following mount.
pub(super) struct Browsing {
    browse: Option<Arc<dyn Browse>>,
    router: Option<Arc<Router>>,
    refresh: Duration,
    /// Locked after the tree, never before it.
    dirs: Mutex<HashMap<Ino, Dir>>,
    /// Loads and refreshes one at a time: a tag's manifest is fetched once.
    loading: tokio::sync::Mutex<()>,
    /// Set on a tag mount that follows its tag.
    follows: bool,
    /// Files still open when a refresh took them out of the tree: the kernel asks for their
    /// attributes (its size checks, `fstat`) until they are closed.
    detached: Mutex<HashMap<Ino, Attr>>,
}

/// What the kernel must forget after a refresh changed the tree (see `fuse` and
/// docs/SEMANTICS.md: without it, cached names live for the entry TTL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// The name `name` in `parent` changed or is gone.
    Entry { parent: Ino, name: OsString },
    /// The attributes (and listing) of `ino` changed.
    Inode(Ino),
}

/// A snapshot standing for a mount that shows no single manifest.
fn placeholder(reference: &str) -> Snapshot {
    Snapshot {
        reference: reference.to_string(),
        descriptor: Descriptor::empty(),
        manifest_bytes: Bytes::new(),
        manifest: Manifest::new(Descriptor::empty(), Vec::new()),
        config_bytes: Bytes::new(),
        index: None,
        children: Vec::new(),
    }
}

const DIR_PERM: u16 = 0o555;

fn pending_dir(p: Pending) -> Kind {
    Kind::Dir {
        children: Default::default(),
        pending: Some(Box::new(p)),
    }
}

impl OrasFs {
    /// A read-only mount of a whole repository or registry, over `cache` (whose source must
    /// be `router`). Lists the tags (or the catalog) now: a registry without a catalog API
    /// fails here, with what to do instead.
    pub async fn browsing(
        cache: Arc<super::cache::BlobCache>,
        router: Arc<Router>,
        browse: Arc<dyn Browse>,
        scope: Scope,
        options: super::filesystem::MountOptions,
        refresh: Duration,
    ) -> Result<OrasFs> {
        let (display, root) = match &scope {
            Scope::Registry => (
                browse.display("").trim_end_matches('/').to_string(),
                Dir::Registry,
            ),
            Scope::Repository(r) => (
                browse.display(r),
                Dir::Repository {
                    name: r.clone(),
                    listed: true,
                },
            ),
        };
        let options = super::filesystem::MountOptions {
            read_only: true,
            ..options
        };
        let mut fs = OrasFs::new(cache, placeholder(&display), options, None, None)?;
        {
            // Tag names never start with '.', but a repository mount has no `.oras/` to show.
            let tree = fs.tree.get_mut().unwrap();
            if let Some(meta) = tree.lookup(ROOT, OsStr::new(".oras")).map(|n| n.ino) {
                tree.remove(meta);
            }
        }
        fs.notices = vec![format!(
            "mounted read-only: {display} is shown whole (one directory per {}); mount one \
             tag to change it",
            if matches!(scope, Scope::Registry) {
                "repository, then per tag"
            } else {
                "tag"
            }
        )];
        fs.browsing = Some(Browsing {
            browse: Some(browse.clone()),
            router: Some(router),
            refresh,
            dirs: Mutex::new(HashMap::from([(ROOT, root)])),
            loading: tokio::sync::Mutex::new(()),
            follows: false,
            detached: Mutex::default(),
        });
        let mut inv = Vec::new();
        match &scope {
            Scope::Registry => {
                let repos = browse.repositories().await.map_err(|e| {
                    Error::Usage(format!(
                        "{display} does not list its repositories ({e}): it has no catalog \
                         API, or not for you. Mount one repository instead: oras-fs mount \
                         {display}/REPOSITORY DIR"
                    ))
                })?;
                fs.apply_catalog(repos, &mut inv);
            }
            Scope::Repository(r) => {
                let tags = browse.tags(r).await?;
                fs.apply_tags(ROOT, tags, &mut inv);
            }
        }
        Ok(fs)
    }

    /// Makes a read-only tag mount follow its tag: every `refresh`, `reference` is resolved
    /// again on `target`, and when it moved the mount shows the new manifest (for
    /// `platform`, as mounted, if it is an index).
    pub fn following(
        mut self,
        target: Arc<dyn Target>,
        reference: &str,
        platform: Option<Platform>,
        refresh: Duration,
    ) -> Result<OrasFs> {
        if !self.read_only() {
            return Err(Error::Usage(
                "--follow needs a read-only mount (--read-only): a writable mount pushes to its \
                 tag, and following it would lose the changes"
                    .into(),
            ));
        }
        let snap = self.snapshot();
        let shown = Shown {
            target,
            repository: snap.reference.clone(),
            display: snap.reference.clone(),
            reference: reference.to_string(),
            platform: platform.map(Box::new),
            movable: true,
            digest: Some(resolved_digest(&snap).clone()),
            failed: None,
            moves: 0,
        };
        self.browsing = Some(Browsing {
            browse: None,
            router: None,
            refresh,
            dirs: Mutex::new(HashMap::from([(ROOT, Dir::Manifest(shown))])),
            loading: tokio::sync::Mutex::new(()),
            follows: true,
            detached: Mutex::default(),
        });
        Ok(self)
    }

    /// How often the mount refreshes, if it does.
    pub fn refresh_interval(&self) -> Option<Duration> {
        self.browsing.as_ref().map(|b| b.refresh)
    }

    /// Whether the mount shows a repository or registry rather than one manifest.
    pub fn shows_many(&self) -> bool {
        self.browsing.as_ref().is_some_and(|b| !b.follows)
    }

    /// Lists (`Pending::Tags`) or loads (`Pending::Manifest`) a directory on first access.
    /// A manifest that cannot be loaded leaves the directory empty, with the reason in
    /// `status` and the log; a tag list that cannot be fetched fails the call (`EIO`).
    pub(super) async fn load_browsed(&self, ino: Ino) -> std::result::Result<(), Errno> {
        let Some(b) = &self.browsing else {
            return Ok(());
        };
        let _one = b.loading.lock().await;
        let pending = self.with_node_kind(ino);
        let dir = b.dirs.lock().unwrap().get(&ino).cloned();
        match (pending, dir) {
            (Some(Pending::Tags), Some(Dir::Repository { name, .. })) => {
                let browse = b.browse.as_ref().expect("a repository mount lists");
                let tags = browse.tags(&name).await.map_err(|e| {
                    self.eio(format!(
                        "listing the tags of {}: {e}",
                        browse.display(&name)
                    ))
                })?;
                let mut inv = Vec::new();
                self.take_pending(ino);
                self.apply_tags(ino, tags, &mut inv);
            }
            (Some(Pending::Manifest), Some(Dir::Manifest(shown))) => {
                let loaded = self.fetch_shown(&shown).await;
                let mut inv = Vec::new();
                self.show(ino, loaded, &mut inv);
            }
            // A tag or repository this mount no longer knows: nothing to load.
            (Some(Pending::Tags | Pending::Manifest), _) => self.take_pending(ino),
            // Loaded meanwhile: an image's root filesystem (`Pending::Image`) is listed by
            // the caller, so it stays.
            _ => {}
        }
        Ok(())
    }

    /// `EIO` for a lookup below a tag directory whose manifest could not be loaded.
    pub(super) fn check_loaded(&self, ino: Ino) -> std::result::Result<(), Errno> {
        let Some(b) = &self.browsing else {
            return Ok(());
        };
        match b.dirs.lock().unwrap().get(&ino) {
            Some(Dir::Manifest(Shown {
                failed: Some(why), ..
            })) => Err(Errno::new(libc::EIO, why.clone())),
            _ => Ok(()),
        }
    }

    /// A lookup of `@sha256:<hex>` in a repository's directory: a directory showing that
    /// manifest, found but never listed. The digest is resolved first (one request): one
    /// the repository does not have is `ENOENT` and leaves nothing behind, so that a scan of
    /// made-up names does not grow the tree.
    pub(super) async fn add_digest_dir(
        &self,
        parent: Ino,
        name: &OsStr,
    ) -> std::result::Result<(), Errno> {
        let Some(b) = &self.browsing else {
            return Ok(());
        };
        let Some(digest) = name
            .to_str()
            .and_then(|n| n.strip_prefix('@'))
            .and_then(|d| d.parse::<Digest>().ok())
        else {
            return Ok(());
        };
        if self.tree.read().unwrap().lookup(parent, name).is_some() {
            return Ok(());
        }
        let Some(Dir::Repository { name: repo, .. }) = b.dirs.lock().unwrap().get(&parent).cloned()
        else {
            return Ok(());
        };
        let browse = b.browse.as_ref().expect("a repository mount lists");
        let target = browse.target(&repo).map_err(|e| self.eio(e.to_string()))?;
        let shown = Shown {
            target,
            repository: browse.display(&repo),
            display: format!("{}@{digest}", browse.display(&repo)),
            reference: digest.to_string(),
            platform: None,
            movable: false,
            digest: None,
            failed: None,
            moves: 0,
        };
        match shown.target.resolve(&shown.reference).await {
            Ok(_) => {}
            Err(Error::NotFound { .. }) => return Err(Errno::from(libc::ENOENT)),
            Err(e) => return Err(self.eio(format!("resolving {}: {e}", shown.display))),
        }
        let mut tree = self.tree.write().unwrap();
        let mut dirs = b.dirs.lock().unwrap();
        if tree.lookup(parent, name).is_some() || !dirs.contains_key(&parent) {
            return Ok(()); // Added meanwhile, or its repository is gone.
        }
        let mtime = SystemTime::now();
        if let Ok(ino) = tree.add_child(
            parent,
            name,
            pending_dir(Pending::Manifest),
            0,
            DIR_PERM,
            mtime,
        ) {
            tree.get_mut(ino).expect("just added").unlisted = true;
            dirs.insert(ino, Dir::Manifest(shown));
        }
        Ok(())
    }

    /// Lists again what may have changed: the catalog, the tags of listed repositories, and
    /// the tags already loaded (resolved again; a moved one shows its new manifest). Returns
    /// what the kernel must forget. Failures are logged and kept for `status`; what was
    /// shown stays. The network is asked first, without the load lock (a first look into a
    /// tag does not wait for a whole refresh); the answers are applied under it.
    pub async fn refresh(&self) -> Vec<Invalidation> {
        let mut inv = Vec::new();
        let Some(b) = &self.browsing else {
            return inv;
        };
        let dirs: Vec<(Ino, Dir)> = b
            .dirs
            .lock()
            .unwrap()
            .iter()
            .map(|(i, d)| (*i, d.clone()))
            .collect();
        let mut catalog = None;
        let mut tag_lists = Vec::new();
        if let Some(browse) = &b.browse {
            if dirs.iter().any(|(_, d)| matches!(d, Dir::Registry)) {
                catalog = Some(browse.repositories().await);
            }
            for (ino, d) in &dirs {
                let Dir::Repository { name, listed: true } = d else {
                    continue;
                };
                tag_lists.push((*ino, name.clone(), browse.tags(name).await));
            }
        }
        let mut moved = Vec::new();
        for (ino, d) in dirs {
            let Dir::Manifest(shown) = d else { continue };
            if !shown.movable || (shown.digest.is_none() && shown.failed.is_none()) {
                continue; // a digest, or not loaded yet (loads when it is looked into)
            }
            if self.tree.read().unwrap().get(ino).is_none() {
                continue; // its tag was deleted just now
            }
            match shown.target.resolve(&shown.reference).await {
                Ok(d) if Some(&d.digest) == shown.digest.as_ref() => {}
                Ok(_) => moved.push((ino, self.fetch_shown(&shown).await, shown)),
                Err(e) if shown.failed.is_some() => tracing::debug!("{}: {e}", shown.display),
                Err(e) => self.refresh_failed(format!("resolving {}: {e}", shown.display)),
            }
        }

        let _one = b.loading.lock().await;
        let open = self.open_inos();
        b.detached.lock().unwrap().retain(|i, _| open.contains(i));
        match catalog {
            Some(Ok(repos)) => self.apply_catalog(repos, &mut inv),
            Some(Err(e)) => self.refresh_failed(format!("listing the repositories: {e}")),
            None => {}
        }
        let browse = b.browse.as_ref();
        for (ino, name, tags) in tag_lists {
            match tags {
                Ok(tags) => self.apply_tags(ino, tags, &mut inv),
                Err(e) => self.refresh_failed(format!(
                    "listing the tags of {}: {e}",
                    browse.map_or_else(|| name.clone(), |br| br.display(&name))
                )),
            }
        }
        for (ino, loaded, was) in moved {
            let now = match b.dirs.lock().unwrap().get(&ino) {
                Some(Dir::Manifest(s)) => (s.digest.clone(), s.failed.is_some()),
                _ => continue, // gone meanwhile
            };
            if now != (was.digest.clone(), was.failed.is_some()) {
                continue; // another refresh showed something newer meanwhile
            }
            // A moved tag that cannot be loaded keeps showing what it showed.
            if loaded.is_ok() || was.digest.is_none() {
                self.show(ino, loaded, &mut inv);
            } else if let Err(e) = loaded {
                self.refresh_failed(format!("{} moved: {e}", was.display));
            }
        }
        inv
    }

    /// The attributes of a file a refresh took away while it was open.
    pub(super) fn detached_attr(&self, ino: Ino) -> Option<Attr> {
        let b = self.browsing.as_ref()?;
        b.detached.lock().unwrap().get(&ino).cloned()
    }

    fn open_inos(&self) -> HashSet<Ino> {
        self.handles
            .lock()
            .unwrap()
            .values()
            .map(|h| h.ino)
            .collect()
    }

    /// Keeps the attributes of the open files below `dir` (or `dir` itself), which is about
    /// to leave the tree.
    fn detach_open(&self, tree: &Tree, dir: Ino, or_dir_itself: bool) {
        let b = self.browsing.as_ref().expect("browsing");
        let mut detached = b.detached.lock().unwrap();
        for ino in self.open_inos() {
            if (ino != dir || or_dir_itself) && tree.is_within(ino, dir) {
                if let Some(n) = tree.get(ino) {
                    detached.insert(ino, self.attr_of(n));
                }
            }
        }
    }

    /// Removes a directory and what is below it, with their states.
    fn remove_dir(
        &self,
        tree: &mut Tree,
        dirs: &mut HashMap<Ino, Dir>,
        ino: Ino,
        inv: &mut Vec<Invalidation>,
    ) {
        let Some(n) = tree.get(ino) else { return };
        inv.push(Invalidation::Entry {
            parent: n.parent,
            name: n.name.clone(),
        });
        self.detach_open(tree, ino, true);
        dirs.retain(|&i, _| !tree.is_within(i, ino));
        tree.remove(ino);
    }

    fn refresh_failed(&self, what: String) {
        tracing::warn!("refresh: {what}");
        self.record_error(format!("refresh: {what}"));
    }

    /// What `status` says of the directories: tags that could not be loaded, the followed
    /// tag's moves.
    pub(super) fn browsing_notices(&self) -> Vec<String> {
        let Some(b) = &self.browsing else {
            return Vec::new();
        };
        let mut out: Vec<String> =
            b.dirs
                .lock()
                .unwrap()
                .values()
                .filter_map(|d| match d {
                    Dir::Manifest(s) if b.follows => Some(format!(
                    "following {}: shows {} (moved {} time(s) since the mount; checked every {})",
                    s.display,
                    s.digest.as_ref().map_or("nothing".into(), |d| d.to_string()),
                    s.moves,
                    humantime::format_duration(b.refresh)
                )),
                    Dir::Manifest(Shown {
                        display,
                        failed: Some(why),
                        ..
                    }) => Some(format!(
                        "{display} is shown empty: {why} (tried again at the next refresh)"
                    )),
                    _ => None,
                })
                .collect();
        out.sort();
        out
    }

    fn with_node_kind(&self, ino: Ino) -> Option<Pending> {
        match &self.tree.read().unwrap().get(ino)?.kind {
            Kind::Dir {
                pending: Some(p), ..
            } => Some(p.as_ref().clone()),
            _ => None,
        }
    }

    /// Clears a repository's or tag's pending load (and nothing else, such as the
    /// `Pending::Image` a load put there).
    fn take_pending(&self, ino: Ino) {
        if let Some(Kind::Dir { pending, .. }) =
            self.tree.write().unwrap().get_mut(ino).map(|n| &mut n.kind)
        {
            if matches!(pending.as_deref(), Some(Pending::Tags | Pending::Manifest)) {
                pending.take();
            }
        }
    }

    /// Fetches what a tag or digest shows now.
    async fn fetch_shown(&self, shown: &Shown) -> Result<Snapshot> {
        super::mount::snapshot(
            shown.target.as_ref(),
            &shown.display,
            &shown.reference,
            shown.platform.as_deref(),
        )
        .await
    }

    /// Shows `loaded` in the directory `ino` in place of what it showed, or records why it
    /// cannot (the directory is then empty).
    fn show(&self, ino: Ino, loaded: Result<Snapshot>, inv: &mut Vec<Invalidation>) {
        let b = self.browsing.as_ref().expect("browsing");
        let mut tree = self.tree.write().unwrap();
        if tree.get(ino).is_none() {
            return;
        }
        let gone: Vec<(Ino, OsString)> = tree
            .children(ino)
            .iter()
            .filter(|n| !n.internal)
            .map(|n| (n.ino, n.name.clone()))
            .collect();
        let replacing = !gone.is_empty();
        self.detach_open(&tree, ino, false);
        for (child, name) in gone {
            tree.remove(child);
            inv.push(Invalidation::Entry { parent: ino, name });
        }
        if let Some(Kind::Dir { pending, .. }) = tree.get_mut(ino).map(|n| &mut n.kind) {
            pending.take();
        }
        let mut dirs = b.dirs.lock().unwrap();
        let Some(Dir::Manifest(shown)) = dirs.get_mut(&ino) else {
            return;
        };
        match loaded {
            Ok(snap) => {
                let notices = view::show_in(
                    &mut tree,
                    ino,
                    &snap,
                    &self.options.filter,
                    self.options.layers_apart,
                );
                for n in notices {
                    tracing::info!("{}: {n}", shown.display);
                }
                if let Some(r) = &b.router {
                    r.learn(&snap, &shown.repository, &shown.target);
                }
                self.layers.note_subjects(&snap);
                if shown.digest.is_some() && replacing {
                    shown.moves += 1;
                    tracing::info!("{} moved to {}", shown.display, snap.descriptor.digest);
                }
                shown.digest = Some(resolved_digest(&snap).clone());
                shown.failed = None;
                if ino == ROOT {
                    // A followed tag: `.oras/` and `status` describe the new manifest.
                    let notices = self.notices.clone();
                    let changed = view::refresh_meta_dir(&mut tree, &snap, &notices);
                    inv.extend(changed.into_iter().map(Invalidation::Inode));
                    *self.snapshot.write().unwrap() = snap;
                }
            }
            Err(e) => {
                let why = format!("cannot load {}: {e}", shown.display);
                tracing::warn!("{why}");
                self.record_error(&why);
                shown.failed = Some(why);
            }
        }
        inv.push(Invalidation::Inode(ino));
    }

    /// Adds the repositories new in `repos` (directories on their path) and removes those
    /// gone (when no other repository lies below them).
    fn apply_catalog(&self, repos: Vec<String>, inv: &mut Vec<Invalidation>) {
        let b = self.browsing.as_ref().expect("browsing");
        let mut tree = self.tree.write().unwrap();
        let mut dirs = b.dirs.lock().unwrap();
        let known: HashMap<String, Ino> = dirs
            .iter()
            .filter_map(|(i, d)| match d {
                Dir::Repository { name, .. } => Some((name.clone(), *i)),
                _ => None,
            })
            .collect();
        let now: BTreeSet<&str> = repos.iter().map(String::as_str).collect();
        for repo in &now {
            if known.contains_key(*repo) {
                continue;
            }
            let ino = match tree.add_path(repo, pending_dir(Pending::Tags), 0, DIR_PERM, DIR_PERM) {
                Ok(i) => i,
                // `a` after `a/b`: the directory is there, and shows `a`'s tags too.
                Err(super::tree::AddError::Conflict) => {
                    let Some(i) = path_ino(&tree, repo).filter(|i| !dirs.contains_key(i)) else {
                        tracing::warn!("repository {repo} is not shown: its name is taken");
                        continue;
                    };
                    if let Some(Kind::Dir { pending, .. }) = tree.get_mut(i).map(|n| &mut n.kind) {
                        *pending = Some(Box::new(Pending::Tags));
                    }
                    i
                }
                Err(e) => {
                    tracing::warn!("repository {repo:?} is not shown: {e:?}");
                    continue;
                }
            };
            let parent = tree.get(ino).map_or(ROOT, |n| n.parent);
            inv.push(Invalidation::Inode(parent));
            dirs.insert(
                ino,
                Dir::Repository {
                    name: repo.to_string(),
                    listed: false,
                },
            );
        }
        for (repo, ino) in known {
            let below = format!("{repo}/");
            if now.contains(repo.as_str()) || now.iter().any(|r| r.starts_with(&below)) {
                continue;
            }
            self.remove_dir(&mut tree, &mut dirs, ino, inv);
        }
    }

    /// Makes the tag directories of the repository directory `dir` match `tags`: new ones
    /// appear (loaded on first access), deleted ones disappear.
    fn apply_tags(&self, dir: Ino, tags: Vec<String>, inv: &mut Vec<Invalidation>) {
        let b = self.browsing.as_ref().expect("browsing");
        let browse = b.browse.as_ref().expect("a repository mount lists");
        let mut tree = self.tree.write().unwrap();
        let mut dirs = b.dirs.lock().unwrap();
        let Some(Dir::Repository { name: repo, listed }) = dirs.get_mut(&dir) else {
            return;
        };
        *listed = true;
        let repo = repo.clone();
        // A name the kernel would refuse ("", "a/b", "..") would fail the whole listing.
        let now: BTreeSet<&str> = tags
            .iter()
            .map(String::as_str)
            .filter(|t| match crate::reference::validate_tag(t) {
                Ok(()) => true,
                Err(why) => {
                    tracing::warn!("a tag of {repo} is not shown: {why}");
                    false
                }
            })
            .collect();
        let shown: Vec<(Ino, OsString)> = tree
            .children(dir)
            .iter()
            .filter(|n| !n.unlisted)
            .filter(|n| matches!(dirs.get(&n.ino), Some(Dir::Manifest(s)) if s.movable))
            .map(|n| (n.ino, n.name.clone()))
            .collect();
        for (ino, name) in &shown {
            if !name.to_str().is_some_and(|n| now.contains(n)) {
                self.remove_dir(&mut tree, &mut dirs, *ino, inv);
            }
        }
        let mut added = false;
        for tag in now {
            if shown.iter().any(|(_, n)| n == tag) {
                continue;
            }
            let target = match browse.target(&repo) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!("tag {tag} of {repo} is not shown: {e}");
                    continue;
                }
            };
            let kind = pending_dir(Pending::Manifest);
            let mtime = SystemTime::now();
            let Ok(ino) = tree.add_child(dir, OsStr::new(tag), kind, 0, DIR_PERM, mtime) else {
                tracing::warn!("tag {tag} of {repo} is not shown: the name is taken");
                continue;
            };
            added = true;
            dirs.insert(
                ino,
                Dir::Manifest(Shown {
                    target,
                    repository: browse.display(&repo),
                    display: format!("{}:{tag}", browse.display(&repo)),
                    reference: tag.to_string(),
                    platform: None,
                    movable: true,
                    digest: None,
                    failed: None,
                    moves: 0,
                }),
            );
        }
        if added {
            inv.push(Invalidation::Inode(dir));
        }
    }
}

/// What the reference of `snap` resolved to: the index it was chosen from, if any.
fn resolved_digest(snap: &Snapshot) -> &Digest {
    &snap.index.as_ref().unwrap_or(&snap.descriptor).digest
}

/// The inode at a `/`-separated path from the root.
fn path_ino(tree: &Tree, path: &str) -> Option<Ino> {
    path.split('/')
        .try_fold(ROOT, |at, c| tree.lookup(at, OsStr::new(c)).map(|n| n.ino))
}
