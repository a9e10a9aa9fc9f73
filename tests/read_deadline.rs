//! A stalled blob read on a mount fails at the read deadline as the user sees it (issue #12,
//! item 11): the kernel retries a failed read at once, and that retry must not wait a whole
//! deadline again. The deadline is shortened with `ORAS_FS_READ_DEADLINE_SECS` (60 s by
//! default). Run with `scripts/test.sh`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::faults::*;
use common::*;

const MIB: usize = 1024 * 1024;
const DEADLINE: Duration = Duration::from_secs(4);

/// Every test of this file mounts with the short deadline (the daemon inherits it).
fn short_deadline() {
    std::env::set_var("ORAS_FS_READ_DEADLINE_SECS", DEADLINE.as_secs().to_string());
}

/// Runs `cmd` with a limit well past the deadline (the old behaviour, twice the deadline of
/// 60 s, would pass it); returns its output and how long it took.
fn timed(mut cmd: Command) -> (std::process::Output, Duration) {
    let started = Instant::now();
    let out =
        within(Duration::from_secs(30), move || run(&mut cmd)).expect("the command hung for 30 s");
    (out, started.elapsed())
}

#[test]
fn a_stalled_read_fails_at_the_deadline_as_cat_and_dd_see_it() {
    require_registry!();
    short_deadline();
    let repo = unique_repo("read-deadline");
    let large = random_bytes(&format!("{repo}-large"), 6 * MIB);
    let small = random_bytes(&format!("{repo}-small"), 300_000);
    push_contents(
        &reference(&repo, "v1"),
        &[("large.bin", &large), ("small.bin", &small)],
    );
    let proxy = FaultProxy::start(&registry());
    for data in [&large, &small] {
        proxy.add(Rule::blob_get(
            &sha256_bytes(data),
            Fault::Stall(Duration::from_secs(50)),
        ));
    }
    let m = Mount::new(&proxy.reference(&repo, "v1"), &["--read-only"]);

    let mut cat = Command::new("cat");
    cat.arg(m.join("large.bin"));
    let (out, took) = timed(cat);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr_of(&out).contains("Input/output error"),
        "{}",
        describe(&out)
    );
    eprintln!("cat of a stalled 6 MiB file failed after {took:?}");
    assert!(took >= DEADLINE - Duration::from_millis(500), "{took:?}");
    assert!(
        took < DEADLINE + DEADLINE / 2,
        "{took:?}: {}",
        m.daemon_log()
    );

    // A range read of another stalled file, with a page cache in the way (dd, not O_DIRECT).
    let mut dd = Command::new("dd");
    dd.arg(format!("if={}", m.join("small.bin").display()))
        .args(["of=/dev/null", "bs=4k", "skip=10", "count=2"]);
    let (out, took) = timed(dd);
    assert!(!out.status.success(), "{}", describe(&out));
    eprintln!("dd of a stalled small file failed after {took:?}");
    assert!(
        took < DEADLINE + DEADLINE / 2,
        "{took:?}: {}",
        m.daemon_log()
    );

    // The mount answers everything else meanwhile.
    let root = m.path().to_path_buf();
    let names = within(Duration::from_secs(5), move || list_dir(&root)).expect("ls hung");
    assert!(names.contains(&"large.bin".to_string()), "{names:?}");
}
