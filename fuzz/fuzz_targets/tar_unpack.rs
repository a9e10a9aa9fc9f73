//! Directory layers from untrusted registries: `unpack_directory` on arbitrary tar (or gzip)
//! bytes never panics, and whatever it does, nothing appears outside the destination's parent
//! (the pull's output directory) and no symlink it leaves there points outside it.
#![no_main]

use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use oras_fs::content::file::{unpack_directory, FileStoreOptions};
use oras_fs::digest::Digest;
use oras_fs::manifest::{annotation, media_type, Descriptor};

/// One scratch directory per fuzzing process (`oras-fs-fuzz-tar-PID` in the temp dir); each run
/// works in a fresh `run/` inside it. libFuzzer exits without running destructors, so the
/// directories of processes that are gone are removed here.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = std::env::temp_dir();
        if let Ok(rd) = std::fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("oras-fs-fuzz-tar-") {
                    if !Path::new("/proc").join(pid).exists() {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let dir = tmp.join(format!("oras-fs-fuzz-tar-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    })
}

/// `path` with `.` and `..` resolved lexically (no filesystem access).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

fn check_tree(dir: &Path, root: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).expect("readlink");
            let resolved = normalize(&path.parent().unwrap().join(&target));
            assert!(
                !target.is_absolute() && resolved.starts_with(root),
                "{} -> {} points outside {}",
                path.display(),
                target.display(),
                root.display()
            );
        } else if meta.is_dir() {
            check_tree(&path, root);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let base = scratch();
    let run = base.join("run");
    let _ = std::fs::remove_dir_all(&run);
    let out = run.join("out");
    std::fs::create_dir_all(&out).expect("creating out/");
    // Gzip bytes are taken as they are; anything else is taken as a tar and compressed.
    let tgz = run.join("layer.tgz");
    let bytes = if data.starts_with(&[0x1f, 0x8b]) {
        data.to_vec()
    } else {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).expect("gzip");
        gz.finish().expect("gzip")
    };
    std::fs::write(&tgz, &bytes).expect("writing the layer");
    let mut desc = Descriptor::new(
        media_type::DIRECTORY_LAYER,
        Digest::of(&bytes),
        bytes.len() as u64,
    );
    desc.set_annotation(annotation::TITLE, "d");
    desc.set_annotation(annotation::UNPACK, "true");
    let dest = out.join("d");
    let _ = unpack_directory(&tgz, &dest, &desc, &FileStoreOptions::default());

    // Nothing beside out/ and the layer in run/, nothing but d and staging leftovers in out/.
    let mut names: Vec<String> = std::fs::read_dir(&run)
        .expect("listing run/")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["layer.tgz", "out"], "unpacking wrote outside out/");
    for e in std::fs::read_dir(&out).expect("listing out/").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            name == "d" || name.starts_with(".oras-fs-unpack-"),
            "unpacking left {name:?} in out/"
        );
        if name.starts_with(".oras-fs-unpack-") {
            panic!("unpacking left its staging directory {name:?} behind");
        }
    }
    let top: Vec<String> = std::fs::read_dir(base)
        .expect("listing the scratch dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(top, ["run"], "unpacking wrote outside its run directory");
    // Links may point anywhere inside the pull's output directory, never outside it.
    check_tree(&out, &out);
});
