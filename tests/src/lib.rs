//! chorus-tests
