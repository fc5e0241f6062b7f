//! Loopback ports for tests that start real servers, the one place every test binary of the
//! workspace takes them from (`#[path]`-included where the binary lives in another crate).
//!
//! Asking the kernel for port 0 and releasing it races twice: the kernel may hand the same port
//! to the next bind(0) of this process (two members of one cluster on one port), and any
//! outgoing connection may take it as its local port before the server binds it. Ports here come
//! from below the kernel's ephemeral range (32768 and up on Linux), where neither can happen, and
//! each is handed out once per test process: a counter starting at an offset taken from the
//! process id, so test processes running at once start far apart. A port something else holds
//! is skipped.

#![allow(dead_code)]

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The first and one past the last port handed out.
const RANGE_START: u32 = 20_000;
const RANGE_END: u32 = 32_000;

/// `count` distinct loopback ports, free when picked and handed out to no one else in this
/// process.
pub fn free_ports(count: usize) -> Vec<u16> {
    (0..count).map(|_| free_port()).collect()
}

/// One loopback port, free when picked and handed out to no one else in this process.
pub fn free_port() -> u16 {
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let span = RANGE_END - RANGE_START;
        AtomicU32::new(std::process::id().wrapping_mul(7_919) % span)
    });
    let span = RANGE_END - RANGE_START;
    for _ in 0..span {
        let port = (RANGE_START + next.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {RANGE_START} and {RANGE_END}");
}
