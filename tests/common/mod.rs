//! What the root package's tests share: free loopback ports, the tenant image they run, and
//! removing the Docker network a test made. Each test file is its own crate and includes this
//! module with `mod common;`.
//!
//! Helpers that only one test needs stay in that test.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::process::Command;

/// A TCP port on 127.0.0.1 that was free a moment ago (the listener is closed again, so a
/// process started next can bind it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
}

/// The tenant image the tests start servers from: `BERTH_TEST_IMAGE`, or the image
/// `scripts/test` builds.
pub fn tenant_image() -> String {
    std::env::var("BERTH_TEST_IMAGE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "berth/tenant:bookworm".into())
}

/// `docker network rm NAME`, ignoring failure (the network may never have been created).
pub fn remove_network(name: &str) {
    let _ = Command::new("docker")
        .args(["network", "rm", name])
        .output();
}
