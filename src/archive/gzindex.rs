//! Gzip seek index (placeholder).
