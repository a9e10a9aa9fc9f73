//! Helpers shared by the integration tests; `use common::*;` brings them all but the fault
//! proxy (`common::faults`).
//!
//! The tests talk to a real registry (CNCF Distribution) started by `scripts/test.sh`, which
//! exports:
//! - `ORAS_FS_TEST_REGISTRY`: `127.0.0.1:PORT` of the main (plain HTTP, anonymous) registry;
//! - `ORAS_FS_TEST_REGISTRY_DIR`: its storage root (Distribution's filesystem layout);
//! - `ORAS_FS_TEST_REGISTRY_LOG`: its log, with one access-log line per request;
//! - `ORAS_FS_PYTHON`: a Python with the ORAS SDK (an independent client for interop tests);
//! - `ORAS_FS_SCRIPTS`: the scripts directory (`registry.sh` starts extra registries);
//! - `ORAS_FS_REQUIRE_REGISTRY=1`: a missing registry fails tests instead of skipping them.
//!
//! Every test uses its own repository ([`unique_repo`]) and its own content, so tests can run
//! in parallel against one registry without seeing each other's blobs.
//!
//! A test that needs that environment (the registry, or what `scripts/test.sh` sets up with
//! it: FUSE, extra registries, skopeo, the Python SDK) starts with [`require_registry!`], so a
//! plain `cargo test` runs everything else and skips these (see [`registry_available`]).
//!
//! Not every test file uses every helper, hence the `dead_code` allowance.
#![allow(dead_code)]

mod cli;
mod content;
mod env;
pub mod faults;
mod interop;
mod mount;
mod process;
mod registry;
mod registry_log;
mod stall_proxy;

// Each test binary uses only some of them.
#[allow(unused_imports)]
pub use {
    cli::*, content::*, env::*, interop::*, mount::*, process::*, registry::*, registry_log::*,
    stall_proxy::*,
};
