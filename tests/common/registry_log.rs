//! What a registry logged: requests from its access lines, responses (with bytes sent) from
//! its JSON lines, counted from an offset taken before the action under test.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// One request from a registry's access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    /// Path and query, e.g. `/v2/repo/blobs/sha256:...`.
    pub uri: String,
    pub status: u16,
}

/// The requests in a registry log (combined-format access lines) whose URI contains
/// `needle` (e.g. `/v2/<repo>/`), in order.
pub fn logged_requests(log: &Path, needle: &str) -> Vec<LoggedRequest> {
    let text =
        std::fs::read_to_string(log).unwrap_or_else(|e| panic!("reading {}: {e}", log.display()));
    text.lines()
        .filter(|l| !l.starts_with('{'))
        .filter_map(|line| {
            // ... "GET /v2/x/blobs/sha256:... HTTP/1.1" 200 123 "" "agent"
            let start = line.find('"')?;
            let rest = &line[start + 1..];
            let end = rest.find('"')?;
            let mut req = rest[..end].split(' ');
            let method = req.next()?.to_string();
            let uri = req.next()?.to_string();
            let status = rest[end + 1..].split_whitespace().next()?.parse().ok()?;
            uri.contains(needle).then_some(LoggedRequest {
                method,
                uri,
                status,
            })
        })
        .collect()
}

/// The current size of a log: take it before an action, then look at what came after.
pub fn log_offset(log: &Path) -> u64 {
    std::fs::metadata(log).map(|m| m.len()).unwrap_or(0)
}

/// One completed response from a registry's JSON log.
#[derive(Clone, Debug)]
pub struct LogEntry {
    pub method: String,
    pub uri: String,
    pub status: u16,
    /// Bytes of body sent.
    pub written: u64,
}

/// The responses a registry logged after `offset` (JSON lines only; the access-log lines
/// duplicate them).
pub fn log_entries_since(log: &Path, offset: u64) -> Vec<LogEntry> {
    let mut f = match std::fs::File::open(log) {
        Ok(f) => f,
        Err(e) => panic!("opening {}: {e}", log.display()),
    };
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(offset))
        .expect("seeking the log");
    let mut text = Vec::new();
    f.read_to_end(&mut text).expect("reading the log");
    String::from_utf8_lossy(&text)
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            Some(LogEntry {
                method: v.get("http.request.method")?.as_str()?.to_string(),
                uri: v.get("http.request.uri")?.as_str()?.to_string(),
                status: v
                    .get("http.response.status")
                    .and_then(|s| s.as_u64())
                    .unwrap_or(0) as u16,
                written: v
                    .get("http.response.written")
                    .and_then(|s| s.as_u64())
                    .unwrap_or(0),
            })
        })
        .collect()
}

/// Lets responses still in flight reach the log (the registry logs each one as it completes).
pub fn settle_log() {
    std::thread::sleep(Duration::from_millis(500));
}

/// Body bytes the registry sent for GETs of blob `digest` since `offset`.
pub fn bytes_served(log: &Path, offset: u64, digest: &str) -> u64 {
    let needle = format!("/blobs/{digest}");
    log_entries_since(log, offset)
        .iter()
        .filter(|e| e.method == "GET" && e.uri.contains(&needle))
        .map(|e| e.written)
        .sum()
}

/// Blob GETs (of any blob) in `repo` since `offset`.
pub fn blob_gets_since(log: &Path, offset: u64, repo: &str) -> Vec<LogEntry> {
    let needle = format!("/v2/{repo}/blobs/");
    log_entries_since(log, offset)
        .into_iter()
        .filter(|e| e.method == "GET" && e.uri.contains(&needle))
        .collect()
}

/// Blob uploads to `repo` since `offset`: each completed upload ends with a `PUT` to
/// `/blobs/uploads/...` (a one-request `POST ...?digest=` upload counts too).
pub fn uploads_since(log: &Path, offset: u64, repo: &str) -> usize {
    upload_requests_since(log, offset, repo)
        .iter()
        .filter(|e| e.method == "PUT" || (e.method == "POST" && e.uri.contains("digest=")))
        .count()
}

/// Every request of the upload protocol (`POST`, `PATCH`, `PUT` under `/blobs/uploads/`) to
/// `repo` since `offset`, except mounts answered 201: that is how a push asks whether a blob
/// is there already, and nothing is uploaded.
pub fn upload_requests_since(log: &Path, offset: u64, repo: &str) -> Vec<LogEntry> {
    let needle = format!("/v2/{repo}/blobs/uploads/");
    log_entries_since(log, offset)
        .into_iter()
        .filter(|e| e.method != "GET" && e.method != "HEAD" && e.uri.contains(&needle))
        .filter(|e| !(e.method == "POST" && e.status == 201))
        .collect()
}
