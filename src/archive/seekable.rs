//! Seekable layers (placeholder).
