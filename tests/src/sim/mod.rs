//! Deterministic simulation of a whole chorus cluster (being written).
