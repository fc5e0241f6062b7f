//! Loopback ports for the servers a process starts on this machine (`ballot dev`'s nodes, the
//! tests' clusters), picked below the kernel's ephemeral range (32768 and up on Linux).
//!
//! Asking the kernel for port 0 and releasing the port races twice: the kernel may hand the same
//! port to the next bind(0) of this process (two members of one cluster on one port), and any
//! outgoing connection on the machine may take it as its local port before the server binds it,
//! or while a killed server waits to be started again on it. Below the ephemeral range neither
//! happens. A picker hands each port out once, counting from an offset the caller derives from
//! its process (so processes picking at once start far apart), and skips ports something holds.

use std::net::TcpListener;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};

/// Hands out free loopback ports of one range, each at most once.
#[derive(Debug)]
pub struct PortPicker {
    start: u32,
    span: u32,
    next: AtomicU32,
}

impl PortPicker {
    /// Ports from `range`, the first tried at `offset` into it (wrapping).
    pub fn new(range: Range<u16>, offset: u32) -> Self {
        assert!(!range.is_empty(), "a port range holds at least one port");
        let (start, end) = (u32::from(range.start), u32::from(range.end));
        let span = end - start;
        Self {
            start,
            span,
            next: AtomicU32::new(offset % span),
        }
    }

    /// A port free when picked and never handed out before by this picker; `None` once a whole
    /// turn of the range found nothing free.
    pub fn pick(&self) -> Option<u16> {
        (0..self.span).find_map(|_| {
            let port = (self.start + self.next.fetch_add(1, Ordering::Relaxed) % self.span) as u16;
            TcpListener::bind(("127.0.0.1", port))
                .is_ok()
                .then_some(port)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_the_range_once_each_and_skip_held_ones() {
        let picker = PortPicker::new(21_000..21_010, 3);
        let held = TcpListener::bind(("127.0.0.1", 21_004));
        let picked: Vec<u16> = (0..5).filter_map(|_| picker.pick()).collect();
        assert!(picked.iter().all(|port| (21_000..21_010).contains(port)));
        assert_eq!(picked[0], 21_003, "the first try is at the offset");
        if held.is_ok() {
            assert!(
                !picked.contains(&21_004),
                "a held port is skipped: {picked:?}"
            );
        }
        let mut unique = picked.clone();
        unique.dedup();
        assert_eq!(unique, picked, "no port twice");
    }
}
