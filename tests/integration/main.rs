//! Integration tests: the real binary driven by real clients.
