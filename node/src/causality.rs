//! Dotted version vector sets: per-key causality (being written).
