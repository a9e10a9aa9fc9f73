//! `backup` and `restore` (as oras 1.3) against the test registry: round trips through a layout
//! directory and a `.tar` archive keep every tag's bytes and referrers; chosen tags,
//! `--exclude-referrers` and `--dry-run` do what they say; a failed backup leaves no archive
//! behind; a backup whose blob lies is refused. Run with `scripts/test.sh`.

mod common;

use std::collections::BTreeSet;

use common::*;

/// The digests of the direct referrers `discover` lists for `reference`.
#[track_caller]
fn referrers(reference: &str) -> BTreeSet<String> {
    digests_of(&discovered(&[reference]))
}

/// A repository with two tagged artifacts, `v1` (with one referrer) and `v2`; returns the
/// referrer's digest.
fn seed(repo: &str) -> String {
    push_contents(
        &reference(repo, "v1"),
        &[
            ("a.txt", format!("first {repo}\n").as_bytes()),
            ("big.bin", &random_bytes(repo, 3 << 20)),
        ],
    );
    push_contents(
        &reference(repo, "v2"),
        &[("b.txt", format!("second {repo}\n").as_bytes())],
    );
    let tmp = temp_dir();
    write_file(
        &tmp.path().join("sbom.json"),
        format!("{{\"sbom\":\"{repo}\"}}"),
    );
    attach(
        tmp.path(),
        "application/vnd.test.sbom",
        &reference(repo, "v1"),
        &["sbom.json"],
    )
}

#[test]
fn backup_and_restore_round_trip_through_a_directory_and_a_tar() {
    require_registry!();
    let repo = unique_repo("backup-src");
    let sbom = seed(&repo);
    let out = temp_dir();
    let dir = out.path().join("layout");
    let tar = out.path().join("backup.tar");
    let src = format!("{}/{repo}", registry());

    // All tags, with referrers, to a directory and to a tar.
    let printed = backup_to(&dir, &["--include-referrers", &src]);
    assert!(
        printed.contains("Pulled tag v1 and 1 referrer(s)"),
        "{printed}"
    );
    assert!(printed.contains("Successfully backed up"), "{printed}");
    let printed = backup_to(&tar, &["--include-referrers", &src]);
    assert!(
        printed.contains(&format!("Exported to {}", tar.display())),
        "{printed}"
    );
    assert!(
        leftovers(out.path()).is_empty(),
        "{:?}",
        leftovers(out.path())
    );
    // The mode a new file gets (0666 minus the umask), not a temporary file's 0600.
    let umask = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|m| u32::from_str_radix(m.trim(), 8).unwrap())
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&tar).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666 & !umask, "{mode:o}");
    for layout in [&dir, &tar] {
        let t = tags(&["--oci-layout", path_str(layout)]);
        assert!(t.contains("v1") && t.contains("v2"), "{t:?}");
    }

    // Restore the tar (every tag, referrers by default) into a new repository.
    let back = unique_repo("backup-back");
    let printed = ok(&[
        "restore",
        "--input",
        path_str(&tar),
        &format!("{}/{back}", registry()),
        "--no-tty",
    ]);
    assert!(printed.contains("Loaded backup archive"), "{printed}");
    assert!(
        printed.contains("Pushed tag v1 and 1 referrer(s)"),
        "{printed}"
    );
    for tag in ["v1", "v2"] {
        assert_eq!(
            pulled_tree(&reference(&back, tag)),
            pulled_tree(&reference(&repo, tag)),
            "{tag}"
        );
        assert_eq!(
            resolve(&[&reference(&back, tag)]),
            resolve(&[&reference(&repo, tag)]),
            "{tag} keeps its digest"
        );
    }
    assert_eq!(
        referrers(&reference(&back, "v1")),
        BTreeSet::from([sbom.clone()])
    );

    // Restore only v2 from the directory, without referrers.
    let only = unique_repo("backup-only");
    ok(&[
        "restore",
        "--input",
        path_str(&dir),
        "--exclude-referrers",
        &reference(&only, "v2"),
        "--no-tty",
    ]);
    assert_eq!(
        tags(&[&format!("{}/{only}", registry())]),
        BTreeSet::from(["v2".to_string()])
    );
    assert_eq!(
        pulled_tree(&reference(&only, "v2")),
        pulled_tree(&reference(&repo, "v2"))
    );
}

#[test]
fn backup_of_chosen_tags_leaves_out_referrers_unless_asked() {
    require_registry!();
    let repo = unique_repo("backup-chosen");
    let sbom = seed(&repo);
    let out = temp_dir();
    let dir = out.path().join("layout");
    backup_to(&dir, &[&reference(&repo, "v1")]);
    assert_eq!(
        tags(&["--oci-layout", path_str(&dir)]),
        BTreeSet::from(["v1".to_string()])
    );
    let index = json(&read_file(&dir.join("index.json")));
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1, "{index}");
    assert!(!dir.join("blobs/sha256").join(&sbom[7..]).exists());

    // A dry run says what it would push, and pushes nothing.
    let with = out.path().join("with");
    backup_to(&with, &["--include-referrers", &reference(&repo, "v1")]);
    let none = unique_repo("backup-dry");
    let printed = ok(&[
        "restore",
        "--input",
        path_str(&with),
        "--dry-run",
        &format!("{}/{none}", registry()),
    ]);
    assert!(printed.contains("v1 and 1 referrer(s)"), "{printed}");
    assert!(printed.contains("nothing was pushed"), "{printed}");
    assert_fails(&oras_fs(["resolve", &reference(&none, "v1")]), "not found");
}

#[test]
fn a_failed_backup_leaves_no_archive() {
    require_registry!();
    let repo = unique_repo("backup-fail");
    push_contents(&reference(&repo, "v1"), &[("a.txt", b"a\n")]);
    let out = temp_dir();
    let tar = out.path().join("x.tar");
    assert_fails(
        &oras_fs([
            "backup",
            "-o",
            path_str(&tar),
            &reference(&repo, "v1,nope"),
            "--no-tty",
        ]),
        "nope",
    );
    assert!(!tar.exists());
    assert!(
        leftovers(out.path()).is_empty(),
        "{:?}",
        leftovers(out.path())
    );
    // A digest is not a tag.
    let d = resolve(&[&reference(&repo, "v1")]);
    assert_fails(
        &oras_fs([
            "backup",
            "-o",
            path_str(&tar),
            &format!("{}/{repo}@{d}", registry()),
        ]),
        "not a digest",
    );
    // An output ending in .tar that is a directory is refused before anything is fetched.
    std::fs::create_dir(out.path().join("d.tar")).unwrap();
    assert_fails(
        &oras_fs([
            "backup",
            "-o",
            path_str(&out.path().join("d.tar")),
            &reference(&repo, "v1"),
        ]),
        "is a directory",
    );
    // An existing file not ending in .tar is not taken for a layout directory or an archive.
    let file = out.path().join("notes.txt");
    std::fs::write(&file, "keep me").unwrap();
    assert_fails(
        &oras_fs(["backup", "-o", path_str(&file), &reference(&repo, "v1")]),
        "is a file, not a layout directory",
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[test]
fn restore_refuses_a_backup_whose_blob_lies() {
    require_registry!();
    let repo = unique_repo("backup-lie");
    push_contents(
        &reference(&repo, "v1"),
        &[("a.txt", format!("honest {repo}\n").as_bytes())],
    );
    let out = temp_dir();
    let dir = out.path().join("layout");
    backup_to(&dir, &[&reference(&repo, "v1")]);
    // Change one byte of the layer, keeping its size, then pack it with GNU tar ("./" names).
    let manifest = json(ok(&["manifest", "fetch", &reference(&repo, "v1")]).as_bytes());
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = dir.join("blobs/sha256").join(&layer[7..]);
    let mut bytes = read_file(&blob);
    bytes[0] ^= 0x20;
    write_file(&blob, &bytes);
    let tar = out.path().join("lying.tar");
    let status = std::process::Command::new("tar")
        .args(["-cf", path_str(&tar), "-C", path_str(&dir), "."])
        .status()
        .unwrap();
    assert!(status.success());

    let back = unique_repo("backup-lie-back");
    let err = assert_fails(
        &oras_fs([
            "restore",
            "--input",
            path_str(&tar),
            &reference(&back, "v1"),
            "--no-tty",
        ]),
        "digest",
    );
    assert!(err.contains("v1"), "{err}");
    assert_fails(&oras_fs(["resolve", &reference(&back, "v1")]), "not found");
    // The same archive's lie is caught on pull too, and nothing half-written is kept.
    let pull_out = temp_dir();
    assert_fails(
        &pull(
            &format!("{}:v1", path_str(&tar)),
            pull_out.path(),
            &["--oci-layout"],
        ),
        "digest",
    );
    assert!(tree(pull_out.path()).is_empty());
}
