//! Before a dev cluster's node starts: are its ports free and its data directory unlocked? A
//! server left from an earlier run (whose starter was SIGKILLed, say) would otherwise answer the
//! health check in the new run's place. When something is taken, the holder is named, with its
//! process id when `/proc` tells it.
//!
//! Never does: signal, stop or otherwise touch the holder; deciding what to do is the caller's.

use super::DevNode;
use ballot_storage::dir_lock::LOCK_FILE_NAME;
use std::fmt;
use std::fs::{File, TryLockError};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// Longest command line quoted when naming a process.
const COMMAND_LINE_CHARS_MAX: usize = 160;

/// What keeps a node from starting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Busy {
    /// One of the node's ports is bound by another socket.
    Port {
        node: String,
        /// `client`, `peer` or `metrics`.
        role: &'static str,
        port: u16,
        holder: Option<Holder>,
    },
    /// The node's data directory is locked by a running server.
    DataDir {
        node: String,
        dir: PathBuf,
        holder: Option<Holder>,
    },
}

/// A process found holding a port or lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// Its command line, shortened; empty when unreadable.
    pub command_line: String,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.command_line.is_empty() {
            write!(f, "process {}", self.pid)
        } else {
            write!(f, "process {} ({})", self.pid, self.command_line)
        }
    }
}

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let by = |holder: &Option<Holder>| match holder {
            Some(holder) => format!("by {holder}"),
            None => "by a process this user cannot see".to_string(),
        };
        match self {
            Busy::Port {
                node,
                role,
                port,
                holder,
            } => write!(
                f,
                "{node}'s {role} port 127.0.0.1:{port} is in use {}; stop it first (a server left \
                 from an earlier run of this cluster?)",
                by(holder)
            ),
            Busy::DataDir { node, dir, holder } => write!(
                f,
                "{node}'s data directory {} is locked {}: a server from an earlier run still \
                 uses it; stop it first",
                dir.display(),
                by(holder)
            ),
        }
    }
}

impl Busy {
    pub fn is_port(&self) -> bool {
        matches!(self, Busy::Port { .. })
    }
}

/// The node's data directory lock first (it names a leftover server surely), then its ports.
pub fn check_node(node_dir: &Path, node: &DevNode) -> Result<(), Busy> {
    check_data_dir(&node.name, &node_dir.join("data"))?;
    for (role, port) in [
        ("client", node.client_port),
        ("peer", node.peer_port),
        ("metrics", node.metrics_port),
    ] {
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            return Err(Busy::Port {
                node: node.name.clone(),
                role,
                port,
                holder: port_holder(port),
            });
        }
    }
    Ok(())
}

/// Fails when a running server holds the lock of `data_dir` (see `ballot_storage::dir_lock`).
pub fn check_data_dir(node: &str, data_dir: &Path) -> Result<(), Busy> {
    let path = data_dir.join(LOCK_FILE_NAME);
    let Ok(file) = File::open(&path) else {
        return Ok(()); // never started, or no lock file: nobody can hold it
    };
    match file.try_lock() {
        // Dropping the file releases the probe's lock at once.
        Ok(()) | Err(TryLockError::Error(_)) => Ok(()),
        Err(TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| text.trim().parse().ok());
            Err(Busy::DataDir {
                node: node.to_string(),
                dir: data_dir.to_path_buf(),
                holder: pid.map(holder),
            })
        }
    }
}

fn holder(pid: u32) -> Holder {
    let command_line = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| {
            let text: String = String::from_utf8_lossy(&bytes)
                .split('\0')
                .filter(|word| !word.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            shorten(&text)
        })
        .unwrap_or_default();
    Holder { pid, command_line }
}

fn shorten(text: &str) -> String {
    if text.chars().count() <= COMMAND_LINE_CHARS_MAX {
        return text.to_string();
    }
    let mut short: String = text.chars().take(COMMAND_LINE_CHARS_MAX).collect();
    short.push_str("...");
    short
}

/// The process with a socket bound to loopback `port`: the socket's inode from
/// `/proc/net/tcp{,6}` (a listening one first), then the process whose descriptors include it.
fn port_holder(port: u16) -> Option<Holder> {
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            sockets.extend(sockets_on_port(&text, port));
        }
    }
    sockets.sort_by_key(|socket| !socket.listening);
    sockets
        .iter()
        .find_map(|socket| process_with_socket(socket.inode))
        .map(holder)
}

#[derive(Debug, PartialEq, Eq)]
struct Socket {
    inode: u64,
    listening: bool,
}

/// The sockets in a `/proc/net/tcp` table whose local port is `port`.
fn sockets_on_port(table: &str, port: u16) -> Vec<Socket> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit_once(':')?.1;
            if u16::from_str_radix(local_port, 16).ok()? != port {
                return None;
            }
            let inode = fields.get(9)?.parse().ok().filter(|inode| *inode != 0)?;
            Some(Socket {
                inode,
                listening: *fields.get(3)? == LISTEN,
            })
        })
        .collect()
}

fn process_with_socket(inode: u64) -> Option<u32> {
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let descriptors = std::fs::read_dir(entry.path().join("fd")).ok()?;
            descriptors
                .flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == &*wanted)
                })
                .then_some(pid)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:9C41 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:9C41 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 5151 1 0000000000000000 100 0 0 10 0
   3: 0100007F:9C41 0100007F:D432 06 00000000:00000000 03:00000F6E 00000000     0        0 0 3 0000000000000000
";

    #[test]
    fn sockets_are_found_by_local_port_and_time_wait_ones_without_an_inode_are_skipped() {
        assert_eq!(
            sockets_on_port(TABLE, 0x9C41),
            vec![
                Socket {
                    inode: 4242,
                    listening: true
                },
                Socket {
                    inode: 4343,
                    listening: false
                }
            ]
        );
        assert_eq!(sockets_on_port(TABLE, 1), vec![]);
    }

    #[test]
    fn a_port_bound_by_this_process_is_busy_and_names_this_process() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let node = DevNode {
            name: "n1".into(),
            client_port: port,
            peer_port: port,
            metrics_port: port,
        };
        let dir = std::env::temp_dir().join(format!("ballot-preflight-{}", std::process::id()));
        let error = check_node(&dir, &node).unwrap_err();
        let Busy::Port { role, holder, .. } = &error else {
            panic!("{error}")
        };
        assert_eq!(*role, "client");
        assert_eq!(holder.as_ref().map(|h| h.pid), Some(std::process::id()));
        assert!(error
            .to_string()
            .contains(&format!("process {}", std::process::id())));
        drop(listener);
        check_node(&dir, &node).expect("free once the listener is gone");
    }

    #[test]
    fn a_locked_data_directory_names_the_holder_and_an_unlocked_one_passes() {
        let dir =
            std::env::temp_dir().join(format!("ballot-preflight-lock-{}", std::process::id()));
        let lock = ballot_storage::dir_lock::DirLock::acquire(&dir).unwrap();
        let error = check_data_dir("n2", &dir).unwrap_err();
        assert_eq!(
            error,
            Busy::DataDir {
                node: "n2".into(),
                dir: dir.clone(),
                holder: Some(holder(std::process::id())),
            }
        );
        drop(lock);
        check_data_dir("n2", &dir).expect("released");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
