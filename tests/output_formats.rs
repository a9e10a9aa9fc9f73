//! `--format json` and `--format go-template` against oras 1.3's output, and `version`.
//!
//! The JSON of push, pull, attach, discover and manifest fetch must have the shape of oras's
//! (tests/fixtures/oras/, with their sources in SOURCES.md): the same keys, recursively, with
//! values of the same JSON types, so that scripts written for oras keep working. Run with
//! `scripts/test.sh`; the tests that need no registry run under plain `cargo test` too.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

// --- Helpers ----------------------------------------------------------------------------------

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/oras")
        .join(name);
    json(&read_file(&path))
}

/// Keys whose values are free-form objects (annotations, a whole manifest): only their type
/// is compared.
const FREE_FORM: [&str; 2] = ["annotations", "content"];

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Panics unless `actual` has `expected`'s shape: the same keys at every level and values of
/// the same types. Each element of an array is compared with the fixture's first one.
#[track_caller]
fn assert_shape(actual: &Value, expected: &Value) {
    if let Err(problem) = shape_problem(actual, expected, "$") {
        panic!("{problem}\nactual:\n{actual:#}\noras (fixture):\n{expected:#}");
    }
}

fn shape_problem(actual: &Value, expected: &Value, at: &str) -> Result<(), String> {
    if kind(actual) != kind(expected) {
        return Err(format!(
            "{at}: a {} where oras has a {}",
            kind(actual),
            kind(expected)
        ));
    }
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => {
            let keys = |m: &serde_json::Map<String, Value>| {
                m.keys().cloned().collect::<std::collections::BTreeSet<_>>()
            };
            if keys(a) != keys(e) {
                return Err(format!("{at}: keys {:?}, oras has {:?}", keys(a), keys(e)));
            }
            for (k, v) in a {
                if FREE_FORM.contains(&k.as_str()) {
                    continue;
                }
                shape_problem(v, &e[k], &format!("{at}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(a), Value::Array(e)) => match e.first() {
            Some(first) => a
                .iter()
                .enumerate()
                .try_for_each(|(i, v)| shape_problem(v, first, &format!("{at}[{i}]"))),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// `oras-fs ARGS...` run in `dir`, which must succeed; its stdout.
#[track_caller]
fn ok_in(dir: &Path, args: &[&str]) -> String {
    assert_ok(&oras_fs_in(dir, args))
}

/// A repository with `v1`: a file and a directory, artifact type `application/vnd.test.out`,
/// and tags v1 and v2. Returns the push's JSON.
fn push_sample(dir: &Path, repo: &str) -> Value {
    write_file(&dir.join("a.txt"), format!("a of {repo}"));
    write_file(&dir.join("tree/b.txt"), format!("b of {repo}"));
    let base = format!("{}/{repo}", registry());
    json(
        ok_in(
            dir,
            &[
                "push",
                &format!("{base}:v1,v2"),
                "a.txt",
                "tree",
                "--artifact-type",
                "application/vnd.test.out",
                "--format",
                "json",
            ],
        )
        .as_bytes(),
    )
}

// --- JSON shapes --------------------------------------------------------------------------------

#[test]
fn push_json_is_orass() {
    require_registry!();
    let repo = unique_repo("fmt-push");
    let tmp = temp_dir();
    let v = push_sample(tmp.path(), &repo);
    assert_shape(&v, &fixture("push.json"));
    let base = format!("{}/{repo}", registry());
    let digest = v["digest"].as_str().unwrap();
    assert_eq!(v["reference"], format!("{base}@{digest}").as_str());
    assert_eq!(
        v["referenceAsTags"],
        serde_json::json!([format!("{base}:v1"), format!("{base}:v2")])
    );
    assert_eq!(v["artifactType"], "application/vnd.test.out");
    assert!(
        v["annotations"]["org.opencontainers.image.created"].is_string(),
        "{v}"
    );
}

#[test]
fn pull_json_is_orass_with_absolute_paths() {
    require_registry!();
    let repo = unique_repo("fmt-pull");
    let tmp = temp_dir();
    let pushed = push_sample(tmp.path(), &repo);
    let out = tmp.path().join("out");
    let v = json(assert_ok(&pull(&reference(&repo, "v1"), &out, &["--format", "json"])).as_bytes());
    assert_shape(&v, &fixture("pull.json"));
    assert_eq!(v["reference"], pushed["reference"]);
    let mut paths: Vec<&str> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    paths.sort();
    let out = std::path::absolute(&out).unwrap();
    // As oras: absolute, and a directory's path ends with the separator.
    assert_eq!(
        paths,
        [
            format!("{}/a.txt", out.display()),
            format!("{}/tree/", out.display())
        ]
    );
    for f in v["files"].as_array().unwrap() {
        let digest = f["digest"].as_str().unwrap();
        assert_eq!(
            f["reference"],
            format!("{}/{repo}@{digest}", registry()).as_str()
        );
    }
}

#[test]
fn attach_and_discover_json_are_orass_with_nested_referrers() {
    require_registry!();
    let repo = unique_repo("fmt-discover");
    let tmp = temp_dir();
    let pushed = push_sample(tmp.path(), &repo);
    write_file(&tmp.path().join("sbom.json"), format!("sbom of {repo}"));
    write_file(&tmp.path().join("sig.txt"), format!("sig of {repo}"));
    let attach = |subject: &str, ty: &str, file: &str| {
        json(
            ok_in(
                tmp.path(),
                &[
                    "attach",
                    "--artifact-type",
                    ty,
                    subject,
                    file,
                    "--format",
                    "json",
                ],
            )
            .as_bytes(),
        )
    };
    let sbom = attach(
        &reference(&repo, "v1"),
        "application/vnd.test.sbom",
        "sbom.json",
    );
    assert_shape(&sbom, &fixture("attach.json"));
    assert_eq!(sbom["artifactType"], "application/vnd.test.sbom");
    let sig = attach(
        sbom["reference"].as_str().unwrap(),
        "application/vnd.test.sig",
        "sig.txt",
    );

    let v = json(ok(&["discover", &reference(&repo, "v1"), "--format", "json"]).as_bytes());
    let expected = fixture("discover.json");
    assert_shape(&v, &expected);
    assert_eq!(v["digest"], pushed["digest"]);
    let referrers = v["referrers"].as_array().unwrap();
    assert_eq!(referrers.len(), 1, "{v}");
    assert_eq!(referrers[0]["digest"], sbom["digest"]);
    // The signature of the SBOM sits under the SBOM, with the same shape.
    let nested = referrers[0]["referrers"].as_array().unwrap();
    assert_eq!(nested.len(), 1, "{v}");
    assert_shape(&nested[0], &expected["referrers"][0]);
    assert_eq!(nested[0]["digest"], sig["digest"]);
    assert_eq!(nested[0]["referrers"], serde_json::json!([]));

    // --artifact-type filters every level.
    let only_sbom = json(
        ok(&[
            "discover",
            &reference(&repo, "v1"),
            "--artifact-type",
            "application/vnd.test.sbom",
            "--format",
            "json",
        ])
        .as_bytes(),
    );
    assert_eq!(
        only_sbom["referrers"][0]["referrers"],
        serde_json::json!([])
    );
}

#[test]
fn manifest_fetch_json_is_orass() {
    require_registry!();
    let repo = unique_repo("fmt-fetch");
    let tmp = temp_dir();
    let pushed = push_sample(tmp.path(), &repo);
    let saved = tmp.path().join("manifest.json");
    let v = json(
        ok(&[
            "manifest",
            "fetch",
            &reference(&repo, "v1"),
            "--format",
            "json",
            "--output",
            path_str(&saved),
        ])
        .as_bytes(),
    );
    assert_shape(&v, &fixture("manifest_fetch.json"));
    assert_eq!(v["digest"], pushed["digest"]);
    assert_eq!(v["content"]["artifactType"], "application/vnd.test.out");
    // --output still receives the manifest's exact bytes.
    assert_eq!(
        sha256_file(&saved),
        pushed["digest"].as_str().unwrap(),
        "the saved manifest"
    );
    assert_eq!(json(&read_file(&saved)), v["content"]);

    let d = json(ok(&["manifest", "fetch", "--descriptor", &reference(&repo, "v1")]).as_bytes());
    assert_shape(&d, &fixture("manifest_fetch_descriptor.json"));
}

// --- Go templates ------------------------------------------------------------------------------

#[test]
fn go_templates_see_the_json_fields() {
    require_registry!();
    let repo = unique_repo("fmt-template");
    let tmp = temp_dir();
    let pushed = push_sample(tmp.path(), &repo);
    let digest = pushed["digest"].as_str().unwrap();
    let r = reference(&repo, "v1");

    // Both spellings, as oras takes them.
    write_file(&tmp.path().join("c.txt"), "c");
    let out = ok_in(
        tmp.path(),
        &[
            "push",
            &reference(&repo, "c"),
            "c.txt",
            "--format",
            "go-template={{.digest}}",
        ],
    );
    assert!(is_sha256_digest(&out), "{out:?}");
    // `manifest fetch REF --format FORMAT...`.
    let fetch_as = |format: &[&str]| {
        let mut args = vec!["manifest", "fetch", r.as_str(), "--format"];
        args.extend_from_slice(format);
        ok(&args)
    };
    assert_eq!(
        fetch_as(&["go-template", "--template", "{{ .digest }}"]),
        digest
    );
    assert_eq!(
        fetch_as(&["go-template={{.content.config.mediaType}}"]),
        "application/vnd.oci.empty.v1+json"
    );

    let out_dir = tmp.path().join("out");
    let listed = assert_ok(&pull(
        &r,
        &out_dir,
        &[
            "--format",
            "go-template",
            "--template",
            "{{range .files}}{{if .annotations}}{{index .annotations \"org.opencontainers.image.title\"}}{{end}}{{\"\\n\"}}{{end}}",
        ],
    ));
    let mut titles: Vec<&str> = listed.lines().collect();
    titles.sort();
    assert_eq!(titles, ["a.txt", "tree"]);

    // toJson gives back the value --format json prints (keys sorted, as Go does).
    let as_json = json(fetch_as(&["go-template={{toJson .}}"]).as_bytes());
    let plain = json(fetch_as(&["json"]).as_bytes());
    assert_eq!(as_json, plain);

    let sbom = tmp.path().join("s.json");
    write_file(&sbom, "{}");
    ok_in(
        tmp.path(),
        &[
            "attach",
            "--artifact-type",
            "application/vnd.test.sbom",
            &r,
            "s.json",
        ],
    );
    assert_eq!(
        ok(&[
            "discover",
            &r,
            "--format",
            "go-template={{range .referrers}}{{.artifactType}} {{len .referrers}}{{end}}"
        ]),
        "application/vnd.test.sbom 0"
    );
    // oras calls discover's text output `tree`.
    assert_eq!(
        ok(&["discover", &r, "--format", "tree"]),
        ok(&["discover", &r])
    );
}

#[test]
fn bad_format_flags_fail_before_any_request() {
    // No registry needed: the flags are checked before the reference is even opened.
    let fetch: &[&str] = &["manifest", "fetch"];
    let cases: [(&[&str], &[&str]); 8] = [
        (fetch, &["--format", "yaml"]),
        (fetch, &["--format", "tree"]),
        (fetch, &["--format", "go-template"]),
        (fetch, &["--format", "json", "--template", "{{.digest}}"]),
        (fetch, &["--format", "go-template={{.digest"]),
        (fetch, &["--format", "go-template={{nosuch .}}"]),
        (fetch, &["--format", "json", "-o", "-"]),
        (&["pull"], &["--format", "json", "-o", "-"]),
    ];
    for (command, flags) in cases {
        let mut args = command.to_vec();
        args.push("127.0.0.1:9/none/such:v1");
        args.extend_from_slice(flags);
        let stderr = assert_fails(&oras_fs(&args), "--");
        assert!(
            stderr.contains("--format") || stderr.contains("--template"),
            "{flags:?}: {stderr}"
        );
        assert!(
            !stderr.contains("127.0.0.1:9"),
            "{flags:?} went to the network: {stderr}"
        );
    }
}

// --- version -----------------------------------------------------------------------------------

#[test]
fn version_is_laid_out_as_orass() {
    let out = ok(&["version"]);
    let names = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| l.split_once(':').expect("NAME: value").0.to_string())
            .collect()
    };
    let oras = String::from_utf8(read_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/oras/version.txt"),
    ))
    .unwrap();
    // oras's lines, with Rust's compiler for Go's, and no tree state.
    let expected: Vec<String> = names(&oras)
        .into_iter()
        .filter(|n| n != "Git tree state")
        .map(|n| n.replace("Go version", "Rust version"))
        .collect();
    assert_eq!(names(&out), expected, "{out}");
    let column = |l: &str| l.len() - l.split_once(": ").unwrap().1.trim_start().len();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.iter().all(|l| column(l) == column(lines[0])), "{out}");
    assert!(
        out.starts_with(&format!("Version:      {}\n", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    assert!(out.contains("Rust version: 1."), "{out}");
    assert!(
        out.contains(&format!("OS/Arch:      {}/", std::env::consts::OS)),
        "{out}"
    );
}
