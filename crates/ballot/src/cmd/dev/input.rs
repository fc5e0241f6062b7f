//! Where `ballot dev`'s events come from, each on a thread of its own that feeds one channel:
//! lines on standard input, lines on the loopback control port, and SIGINT / SIGTERM. The
//! supervisor reads the channel; nothing here touches the cluster.
//!
//! Control port protocol: a line per command; each answer is its lines followed by an empty
//! line; the connection stays open until the client closes it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;

/// Longest command line read; a longer one is refused whole.
const LINE_BYTES_MAX: u64 = 4096;
/// Control connections served at once; more are refused.
const CONTROL_CONNECTIONS_MAX: usize = 16;

pub enum Event {
    /// A command line, and where its answer goes.
    Line {
        text: String,
        reply: Reply,
    },
    StdinClosed,
    /// SIGINT or SIGTERM (named): stop the cluster.
    Signal(&'static str),
}

pub enum Reply {
    /// Printed by `ballot dev` (answers on stdout, errors on stderr).
    Console,
    /// Sent back on a control connection.
    Control(Sender<Result<String, String>>),
}

/// Reads standard input line by line until it closes; `ballot dev` goes on without it.
pub fn read_stdin(events: Sender<Event>) {
    std::thread::Builder::new()
        .name("dev-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            while let Some(line) = read_line(&mut stdin) {
                let text = match line {
                    Ok(text) => text,
                    Err(error) => {
                        eprintln!("error: {error}");
                        continue;
                    }
                };
                if events
                    .send(Event::Line {
                        text,
                        reply: Reply::Console,
                    })
                    .is_err()
                {
                    return;
                }
            }
            let _ = events.send(Event::StdinClosed);
        })
        .expect("stdin thread");
}

/// `None` at end of input (or on a read error); an error for a line over [`LINE_BYTES_MAX`],
/// which is skipped whole.
fn read_line(input: &mut impl BufRead) -> Option<Result<String, String>> {
    let mut bytes = Vec::new();
    match input
        .by_ref()
        .take(LINE_BYTES_MAX + 1)
        .read_until(b'\n', &mut bytes)
    {
        Ok(0) | Err(_) => return None,
        Ok(_) => {}
    }
    if bytes.len() as u64 > LINE_BYTES_MAX && bytes.last() != Some(&b'\n') {
        // Skip the rest of the long line.
        let mut rest = Vec::new();
        let _ = input.read_until(b'\n', &mut rest);
        return Some(Err(format!("a line over {LINE_BYTES_MAX} bytes, ignored")));
    }
    Some(Ok(String::from_utf8_lossy(&bytes).trim().to_string()))
}

/// Binds the control port on loopback (0: a free one) and serves it on background threads.
pub fn listen_control(port: u16, events: Sender<Event>) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .map_err(|e| format!("cannot listen for commands on 127.0.0.1:{port}: {e}"))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let open = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("dev-control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if open.fetch_add(1, Ordering::SeqCst) >= CONTROL_CONNECTIONS_MAX {
                    open.fetch_sub(1, Ordering::SeqCst);
                    let _ = (&stream).write_all(
                        format!("error: {CONTROL_CONNECTIONS_MAX} control connections are open already\n\n").as_bytes(),
                    );
                    continue;
                }
                let (events, open) = (events.clone(), open.clone());
                let spawned = std::thread::Builder::new()
                    .name("dev-control-conn".into())
                    .spawn(move || {
                        serve_connection(stream, &events);
                        open.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    // The connection was moved into the closure and is closed with it.
                    continue;
                }
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(address)
}

fn serve_connection(stream: TcpStream, events: &Sender<Event>) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    while let Some(line) = read_line(&mut reader) {
        let answer = match line {
            Ok(text) => {
                let (reply, answer) = mpsc::channel();
                let event = Event::Line {
                    text,
                    reply: Reply::Control(reply),
                };
                if events.send(event).is_err() {
                    return;
                }
                let Ok(answer) = answer.recv() else {
                    return; // `ballot dev` is stopping
                };
                answer
            }
            Err(error) => Err(error),
        };
        let text = match answer {
            Ok(text) => text,
            Err(error) => format!("error: {error}"),
        };
        let text = if text.is_empty() { text } else { text + "\n" };
        if writer.write_all(format!("{text}\n").as_bytes()).is_err() {
            return;
        }
    }
}

/// SIGINT and SIGTERM become [`Event::Signal`]; a second one ends `ballot dev` at once (its
/// servers then stop by themselves: their standard input closes). Returns once the handlers
/// are installed, so that no signal after it takes the default action.
pub fn watch_signals(events: Sender<Event>) {
    let (installed, handlers_ready) = mpsc::channel();
    std::thread::Builder::new()
        .name("dev-signals".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
                let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
                let _ = installed.send(());
                let mut received = 0;
                loop {
                    let name = tokio::select! {
                        _ = interrupt.recv() => "SIGINT",
                        _ = terminate.recv() => "SIGTERM",
                    };
                    received += 1;
                    if received > 1 {
                        eprintln!(
                            "{name} again: exiting now; the servers stop as their stdin closes"
                        );
                        std::process::exit(130);
                    }
                    let _ = events.send(Event::Signal(name));
                }
            });
        })
        .expect("signal thread");
    let _ = handlers_ready.recv();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_trimmed_and_an_overlong_one_is_refused_whole() {
        let long = "x".repeat(LINE_BYTES_MAX as usize + 10);
        let text = format!("kill n1\r\n{long}\nstatus");
        let mut input = std::io::Cursor::new(text.into_bytes());
        assert_eq!(read_line(&mut input), Some(Ok("kill n1".into())));
        assert!(matches!(read_line(&mut input), Some(Err(_))));
        assert_eq!(read_line(&mut input), Some(Ok("status".into())));
        assert_eq!(read_line(&mut input), None);
    }
}
