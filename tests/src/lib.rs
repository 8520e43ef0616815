//! Integration tests that start real `neo` processes on 127.0.0.1 and break them. Empty until
//! the `neo` binary exists (cluster issue); the protocol's own tests live in `wire/tests`.
