//! Loopback ports for tests that start real servers, the one place every test binary of the
//! workspace takes them from (`#[path]`-included where the binary lives in another crate): a
//! `ballot_server::ports::PortPicker` over 20000-31999, below the kernel's ephemeral range and
//! apart from `ballot dev`'s, each port handed out once per test process, counting from an offset
//! taken from the process id so test processes running at once start far apart.

#![allow(dead_code)]

use ballot_server::ports::PortPicker;
use std::sync::OnceLock;

const RANGE: std::ops::Range<u16> = 20_000..32_000;

/// `count` distinct loopback ports, free when picked and handed out to no one else in this
/// process.
pub fn free_ports(count: usize) -> Vec<u16> {
    (0..count).map(|_| free_port()).collect()
}

/// One loopback port, free when picked and handed out to no one else in this process.
pub fn free_port() -> u16 {
    static PICKER: OnceLock<PortPicker> = OnceLock::new();
    PICKER
        .get_or_init(|| PortPicker::new(RANGE, std::process::id().wrapping_mul(7_919)))
        .pick()
        .unwrap_or_else(|| panic!("no free loopback port in {RANGE:?}"))
}
