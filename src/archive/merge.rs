//! Image layers merged (placeholder; see docs/DESIGN.md).
