//! Storage engines behind one trait (being written).
