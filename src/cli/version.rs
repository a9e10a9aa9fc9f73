//! `oras-fs version`, laid out as `oras version` prints it.

/// The lines of `oras-fs version`: name, then the value aligned after the longest name.
pub fn lines() -> Vec<String> {
    let platform = oras_fs::manifest::Platform::host();
    let items = [
        ("Version", env!("CARGO_PKG_VERSION").to_string()),
        ("Rust version", env!("ORAS_FS_RUSTC_VERSION").to_string()),
        (
            "OS/Arch",
            format!("{}/{}", platform.os, platform.architecture),
        ),
        ("Git commit", env!("ORAS_FS_GIT_COMMIT").to_string()),
    ];
    let width = items.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    items
        .iter()
        .map(|(k, v)| format!("{k}: {:pad$}{v}", "", pad = width - k.len()))
        .collect()
}

pub fn print() {
    for line in lines() {
        outln!("{line}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn aligned_as_oras() {
        let lines = super::lines();
        assert!(lines[0].starts_with("Version:      "), "{lines:?}");
        assert!(lines[1].starts_with("Rust version: "), "{lines:?}");
        assert!(lines[2].starts_with("OS/Arch:      "), "{lines:?}");
        assert!(lines[3].starts_with("Git commit:   "), "{lines:?}");
        let column = lines[0].len() - env!("CARGO_PKG_VERSION").len();
        assert!(lines.iter().all(|l| l.as_bytes()[column - 1] == b' '));
    }
}
