//! chorus-gossip
