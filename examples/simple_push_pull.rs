//! The classic ORAS example, with the `oras_fs` library: push a file kept in memory to a
//! registry as an artifact, then pull it back into a directory.
//!
//! Needs a registry speaking plain HTTP at `$ORAS_FS_TEST_REGISTRY`, else `localhost:5000`:
//!
//! ```sh
//! eval "$(scripts/registry.sh start)"
//! cargo run --example simple_push_pull
//! ```

use oras_fs::content::file::FileStoreOptions;
use oras_fs::content::{FileStore, MemoryStore};
use oras_fs::manifest::{annotation, media_type, EMPTY_JSON};
use oras_fs::oras::{self, CopyOptions, LayerFilter, PackOptions};
use oras_fs::reference::Reference;
use oras_fs::registry::{ClientOptions, Repository};

const HELLO_TYPE: &str = "application/vnd.example.hello";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry =
        std::env::var("ORAS_FS_TEST_REGISTRY").unwrap_or_else(|_| "localhost:5000".into());
    let reference: Reference = format!("{registry}/hello:latest").parse()?;

    // 1. The content, in memory: one file of a custom media type, titled so that a pull knows
    //    its file name, and the empty config `{}` that artifacts without a config point to.
    let store = MemoryStore::new();
    let mut layer = store.add(HELLO_TYPE, &b"Hello, world!\n"[..]);
    layer.set_annotation(annotation::TITLE, "hello.txt");
    store.add(media_type::EMPTY, EMPTY_JSON);

    // 2. The manifest: empty config, one layer, artifactType application/vnd.unknown.artifact.v1.
    let (manifest, manifest_bytes) = oras::pack_manifest(vec![layer], &PackOptions::default());

    // 3. Copy the graph (blobs first, then the manifest, tagged) to the remote repository.
    let options = ClientOptions {
        plain_http: true,
        ..Default::default()
    };
    let repo = Repository::for_reference(&reference, options)?;
    let tag = reference.target();
    oras::copy_graph(
        &store,
        &repo,
        &manifest,
        manifest_bytes,
        std::slice::from_ref(&tag),
        &CopyOptions::default(),
    )
    .await?;
    println!("Pushed {reference}\nDigest: {}", manifest.digest);

    // 4. Pull it back into a directory. Only the default layer type is taken unless told
    //    otherwise, so allow ours.
    let dir = tempfile::tempdir()?;
    let files = FileStore::new(dir.path(), FileStoreOptions::default());
    let filter = LayerFilter {
        media_types: vec![HELLO_TYPE.to_string()],
        allow_all: false,
    };
    let report = oras::pull(&repo, &tag, &files, &filter, None, &CopyOptions::default()).await?;
    for layer in &report.pulled {
        let title = layer.title().unwrap_or_default();
        let text = std::fs::read_to_string(dir.path().join(title))?;
        print!("Pulled {title} ({}): {text}", layer.media_type);
    }
    Ok(())
}
