//! The mount helper calling convention, so that `/etc/fstab` lines and `mount -t
//! fuse.oras-fs` work: util-linux `mount` runs `/sbin/mount.fuse` (fuse3's `mount.fuse3`),
//! which runs `oras-fs SOURCE MOUNTPOINT -o OPTIONS`; a `mount.fuse.oras-fs` link to the
//! binary is called the same way (with `-n`, `-s`, `-v` from mount(8)). Such a command line
//! is rewritten into `oras-fs mount SOURCE MOUNTPOINT --flags…` before parsing, so the mount
//! options are one more spelling of the CLI's flags, with nothing of their own to keep in
//! step.

use std::ffi::OsString;

use oras_fs::{Error, Result};

/// Mount options with a value, and the flag each one is.
const VALUED: &[(&str, &str)] = &[
    ("cache_dir", "--cache-dir"),
    ("cache_size", "--cache-size"),
    ("memory_cache", "--memory-cache"),
    ("platform", "--platform"),
    ("media_type", "--media-type"),
    ("write_media_type", "--write-media-type"),
    ("registry_config", "--registry-config"),
    ("ca_file", "--ca-file"),
    ("refresh", "--refresh"),
    ("registries_conf", "--registries-conf"),
    ("oci_layout_path", "--oci-layout-path"),
    ("chunk_size", "--chunk-size"),
];

/// Mount options without a value, and the flag each one is.
const FLAGS: &[(&str, &str)] = &[
    ("ro", "--read-only"),
    ("allow_other", "--allow-other"),
    ("allow_all", "--allow-all"),
    ("layers", "--layers"),
    ("follow", "--follow"),
    ("plain_http", "--plain-http"),
    ("insecure", "--insecure"),
    ("oci_layout", "--oci-layout"),
    ("debug", "--debug"),
    ("http1_1", "--http1.1"),
];

/// Options for mount(8) itself, or that every FUSE mount has anyway (`nosuid,nodev`):
/// accepted and ignored, as other FUSE filesystems do.
const IGNORED: &[&str] = &[
    "rw",
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "async",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nodiratime",
    "lazytime",
    "nolazytime",
    "silent",
    "loud",
];

/// The command line to parse: `args` as they are, or rewritten to `oras-fs mount …` when the
/// binary is called as a mount helper (by its name, or as `oras-fs SOURCE MOUNTPOINT [-o
/// OPTIONS]`, which is no command of its own).
pub fn command_line(args: Vec<OsString>, subcommands: &[&str]) -> Result<Vec<OsString>> {
    let called_as_helper = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n.to_string_lossy().starts_with("mount."));
    // Not a command, and more than a typo's worth of evidence: mount options, or a
    // mountpoint that is a directory (`oras-fs pul REF` must stay clap's "did you mean").
    let first = args.get(1).map(|a| a.to_string_lossy().into_owned());
    let looks_like_helper = match &first {
        Some(f) => {
            !f.starts_with('-')
                && !subcommands.contains(&f.as_str())
                && args.len() >= 3
                && (args.iter().any(|a| a.to_string_lossy().starts_with("-o"))
                    || std::path::Path::new(&args[2]).is_dir())
        }
        None => false,
    };
    if !called_as_helper && !looks_like_helper {
        return Ok(args);
    }
    rewrite(&args[1..])
}

fn rewrite(args: &[OsString]) -> Result<Vec<OsString>> {
    let usage = || {
        Error::Usage(
            "as a mount helper, oras-fs takes SOURCE MOUNTPOINT [-o OPTIONS] (from fstab: \
             `REF DIR fuse.oras-fs ro,cache_dir=/var/cache/oras-fs 0 0`)"
                .into(),
        )
    };
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("-o") => options.push(it.next().ok_or_else(usage)?.clone()),
            // From mount(8): no mtab, sloppy, verbose; fake (`-f`) mounts nothing.
            Some("-n" | "-s" | "-v") => {}
            Some("-f") => return Err(Error::Usage("mount -f (fake): nothing to do".into())),
            Some(o) if o.starts_with("-o") => options.push(OsString::from(&o[2..])),
            Some(o) if o.starts_with('-') => {
                return Err(Error::Usage(format!("unknown mount helper flag '{o}'")))
            }
            _ => positional.push(a.clone()),
        }
    }
    let [source, mountpoint] = <[OsString; 2]>::try_from(positional).map_err(|_| usage())?;
    let mut out: Vec<OsString> = vec!["oras-fs".into(), "mount".into(), source, mountpoint];
    for list in &options {
        for option in list.to_str().ok_or_else(usage)?.split(',') {
            out.extend(flag_of(option)?.into_iter().map(OsString::from));
        }
    }
    Ok(out)
}

/// The CLI flag (and value) a mount option stands for; none for options mount(8) handles.
fn flag_of(option: &str) -> Result<Vec<String>> {
    let (name, value) = match option.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (option, None),
    };
    if option.is_empty() || IGNORED.contains(&name) || name.starts_with("x-") || name == "comment" {
        return Ok(Vec::new());
    }
    if matches!(
        name,
        "username" | "user_name" | "password" | "identity_token"
    ) {
        return Err(Error::Usage(format!(
            "mount option '{name}': credentials never go on a mount line (fstab is readable by \
             everyone); log in with `oras-fs login` as the user who mounts, or point \
             registry_config= at a Docker config file"
        )));
    }
    if let Some((_, flag)) = FLAGS.iter().find(|(n, _)| *n == name) {
        return match value {
            None => Ok(vec![flag.to_string()]),
            Some(_) => Err(Error::Usage(format!(
                "mount option '{name}' takes no value"
            ))),
        };
    }
    if let Some((_, flag)) = VALUED.iter().find(|(n, _)| *n == name) {
        return match value {
            Some(v) if !v.is_empty() => Ok(vec![flag.to_string(), v.to_string()]),
            _ => Err(Error::Usage(format!(
                "mount option '{name}' needs a value: {name}=…"
            ))),
        };
    }
    let known: Vec<&str> = FLAGS
        .iter()
        .map(|(n, _)| *n)
        .chain(VALUED.iter().map(|(n, _)| *n))
        .collect();
    Err(Error::Usage(format!(
        "unknown mount option '{name}'; oras-fs knows {} (and ignores mount(8)'s own, such as \
         _netdev, nofail and x-systemd.*)",
        known.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    const SUB: &[&str] = &["mount", "push", "pull"];

    #[test]
    fn ordinary_command_lines_pass_through() {
        for line in [
            vec!["oras-fs", "push", "r:v1", "a.txt"],
            vec!["oras-fs", "--debug", "pull", "r:v1"],
            vec!["oras-fs", "help"],
            vec!["oras-fs"],
            // A typo stays an error of clap's, not a mount of `pul` at a reference.
            vec!["oras-fs", "pul", "localhost:5000/a:v1"],
            vec!["oras-fs", "pul", "localhost:5000/a:v1", "out"],
        ] {
            let args = os(&line);
            let sub = [SUB, &["help"]].concat();
            assert_eq!(command_line(args.clone(), &sub).unwrap(), args);
        }
    }

    #[test]
    fn fuse_helper_lines_become_mount_commands() {
        let got = command_line(
            os(&[
                "oras-fs",
                "localhost:5000/a:v1",
                "/mnt/a",
                "-o",
                "ro,_netdev,nofail,x-systemd.automount,allow_other,cache_dir=/var/cache/x,dev,suid",
            ]),
            SUB,
        )
        .unwrap();
        assert_eq!(
            got,
            os(&[
                "oras-fs",
                "mount",
                "localhost:5000/a:v1",
                "/mnt/a",
                "--read-only",
                "--allow-other",
                "--cache-dir",
                "/var/cache/x"
            ])
        );
        let by_name = command_line(
            os(&[
                "/sbin/mount.fuse.oras-fs",
                "r:v1",
                "/m",
                "-n",
                "-o",
                "rw,platform=linux/arm64",
            ]),
            SUB,
        )
        .unwrap();
        assert_eq!(
            by_name,
            os(&[
                "oras-fs",
                "mount",
                "r:v1",
                "/m",
                "--platform",
                "linux/arm64"
            ])
        );
        let follows = command_line(
            os(&["oras-fs", "r:v1", "/m", "-o", "ro,follow,refresh=30s"]),
            SUB,
        )
        .unwrap();
        assert_eq!(
            follows,
            os(&[
                "oras-fs",
                "mount",
                "r:v1",
                "/m",
                "--read-only",
                "--follow",
                "--refresh",
                "30s"
            ])
        );
    }

    #[test]
    fn bad_options_are_refused_by_name() {
        for (opts, says) in [
            ("ro,bogus", "unknown mount option 'bogus'"),
            ("password=x", "credentials never go on a mount line"),
            ("cache_dir", "needs a value"),
            ("ro=1", "takes no value"),
        ] {
            let e = command_line(os(&["oras-fs", "r:v1", "/m", "-o", opts]), SUB).unwrap_err();
            assert!(e.to_string().contains(says), "{opts}: {e}");
        }
        assert!(command_line(os(&["mount.fuse.oras-fs", "r:v1"]), SUB).is_err());
    }
    #[test]
    fn every_option_names_a_flag_of_mount() {
        use clap::CommandFactory;
        let cli = crate::cli::Cli::command();
        let mount = cli.find_subcommand("mount").expect("a mount command");
        let longs: Vec<String> = mount
            .get_arguments()
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .chain(
                cli.get_arguments()
                    .filter_map(|a| a.get_long().map(|l| format!("--{l}"))),
            )
            .collect();
        for (option, flag) in VALUED.iter().chain(FLAGS) {
            assert!(
                longs.iter().any(|l| l == flag),
                "{option}: mount has no {flag}"
            );
        }
    }
}
