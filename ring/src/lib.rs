//! chorus-ring
