//! What the replica loop waits on: its input queue and the inbound peer connections, behind one
//! `epoll` (mio), so that a peer's message is read by the thread that steps it.
//!
//! With a reader task per connection, every message a follower acknowledges and every
//! acknowledgement a leader counts crossed two wake-ups: the task's (the socket became readable)
//! and then the replica thread's (the task queued the message). On a small VM a wake-up costs tens
//! of microseconds, and a commit waits for two such messages. Here the replica thread sleeps in
//! `epoll_wait` on the peer sockets itself; everything else still comes through the queue, whose
//! senders ring a bell (an eventfd in the same `epoll`) only when the loop is asleep.
//!
//! The bell cannot be missed: the loop marks itself asleep, then looks at the queue once more,
//! then waits; a sender queues, then rings if the mark is set (both sides sequentially
//! consistent). Sockets are registered edge-triggered, so a connection is read until it would
//! block, or kept on the ready list until it is.

use super::Input;
use crate::transport::{FrameReader, InboundConnection, ReadProgress, Transport};
use ballot_core::{GroupId, NodeId, WireMessage};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

const BELL: Token = Token(0);
const EVENTS_PER_WAIT_MAX: usize = 64;

/// Wakes the replica loop when it is asleep.
struct Bell {
    asleep: AtomicBool,
    waker: Waker,
}

impl Bell {
    /// Called after the input is queued.
    fn ring(&self) {
        // Orders the queueing before the look at the mark (the other half is in `wait`).
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.asleep.swap(false, Ordering::SeqCst) {
            // A failed eventfd write leaves the loop to its next tick (at most one tick late).
            let _ = self.waker.wake();
        }
    }
}

/// The sending side of the replica loop's input queue. Cheap to clone.
#[derive(Clone)]
pub(crate) struct InputSender {
    queue: mpsc::Sender<Input>,
    bell: Arc<Bell>,
}

impl InputSender {
    pub fn try_send(&self, input: Input) -> Result<(), mpsc::error::TrySendError<Input>> {
        self.queue.try_send(input)?;
        self.bell.ring();
        Ok(())
    }

    pub async fn send(&self, input: Input) -> Result<(), mpsc::error::SendError<Input>> {
        self.queue.send(input).await?;
        self.bell.ring();
        Ok(())
    }

    /// From a plain thread (never from the runtime's).
    pub fn blocking_send(&self, input: Input) -> Result<(), mpsc::error::SendError<Input>> {
        self.queue.blocking_send(input)?;
        self.bell.ring();
        Ok(())
    }
}

struct Connection {
    stream: TcpStream,
    frames: FrameReader,
    /// Read last time without reaching "would block": there may be more without a new event.
    ready: bool,
}

/// The receiving side: the queue's receiver and the peer connections handed to the loop.
pub(crate) struct Inbox {
    queue: mpsc::Receiver<Input>,
    poll: Poll,
    events: Events,
    bell: Arc<Bell>,
    connections: HashMap<Token, Connection>,
    next_token: usize,
    /// `wait` has just collected the sockets' events: the next read need not poll again.
    events_fresh: bool,
    /// When something was last read from each peer (node liveness).
    heard: HashMap<NodeId, std::time::Instant>,
}

/// The input queue with room for `capacity` inputs, and its inbox.
pub(crate) fn channel(capacity: usize) -> std::io::Result<(InputSender, Inbox)> {
    let (queue, receiver) = mpsc::channel(capacity);
    let poll = Poll::new()?;
    let waker = Waker::new(poll.registry(), BELL)?;
    let bell = Arc::new(Bell {
        asleep: AtomicBool::new(false),
        waker,
    });
    let sender = InputSender {
        queue,
        bell: bell.clone(),
    };
    let inbox = Inbox {
        queue: receiver,
        poll,
        events: Events::with_capacity(EVENTS_PER_WAIT_MAX),
        bell,
        connections: HashMap::new(),
        next_token: 1,
        events_fresh: false,
        heard: HashMap::new(),
    };
    Ok((sender, inbox))
}

/// What [`Inbox::next_input`] found in the queue.
pub(crate) enum Queued {
    Input(Input),
    Empty,
    /// Every sender is gone.
    Closed,
}

impl Inbox {
    pub fn next_input(&mut self) -> Queued {
        match self.queue.try_recv() {
            Ok(input) => Queued::Input(input),
            Err(mpsc::error::TryRecvError::Empty) => Queued::Empty,
            Err(mpsc::error::TryRecvError::Disconnected) => Queued::Closed,
        }
    }

    /// Takes over a peer connection: its frames are read by [`Inbox::read_peers`] from now on.
    pub fn add(&mut self, connection: InboundConnection) {
        let InboundConnection { stream, frames } = connection;
        let sender = frames.sender();
        if let Err(error) = stream.set_nonblocking(true) {
            tracing::debug!(sender, %error, "dropped a peer connection");
            return;
        }
        let mut stream = TcpStream::from_std(stream);
        let token = Token(self.next_token);
        self.next_token += 1;
        if let Err(error) = self
            .poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)
        {
            tracing::debug!(sender, %error, "could not poll a peer connection; dropped it");
            return;
        }
        // Bytes may have arrived before the registration: read once without waiting.
        let connection = Connection {
            stream,
            frames,
            ready: true,
        };
        self.connections.insert(token, connection);
    }

    /// Reads every connection that has bytes (without waiting) and appends their messages, each
    /// with its group, to `messages`. Returns how many it appended.
    pub fn read_peers<M: WireMessage>(
        &mut self,
        transport: &Transport,
        messages: &mut Vec<(GroupId, M)>,
    ) -> usize {
        if !std::mem::take(&mut self.events_fresh) {
            self.collect_events(Some(std::time::Duration::ZERO));
        }
        let before = messages.len();
        let config = transport.config();
        let mut closed = Vec::new();
        let mut now = None;
        for (token, connection) in &mut self.connections {
            if !connection.ready {
                continue;
            }
            let now = *now.get_or_insert_with(std::time::Instant::now);
            self.heard.insert(connection.frames.sender(), now);
            let stream = &mut connection.stream;
            let progress = connection.frames.read_frames(
                config,
                &transport.stats,
                |buffer| stream.read(buffer),
                |group, message| messages.push((group, message)),
            );
            match progress {
                Ok(ReadProgress::Drained) => connection.ready = false,
                Ok(ReadProgress::More) => {}
                Err(reason) => {
                    tracing::debug!(sender = connection.frames.sender(), %reason, "peer connection closed");
                    closed.push(*token);
                }
            }
        }
        for token in closed {
            if let Some(mut connection) = self.connections.remove(&token) {
                let _ = self.poll.registry().deregister(&mut connection.stream);
            }
        }
        messages.len() - before
    }

    /// When something was last read from `peer` (`None`: never, in this process).
    pub fn last_heard(&self, peer: NodeId) -> Option<std::time::Instant> {
        self.heard.get(&peer).copied()
    }

    /// Sleeps until an input is queued or a peer connection has bytes (returns at once if
    /// either is already so).
    pub fn wait(&mut self) {
        if self.connections.values().any(|connection| connection.ready) {
            return;
        }
        self.bell.asleep.store(true, Ordering::SeqCst);
        // Orders the mark before the look at the queue (the other half is in `Bell::ring`).
        std::sync::atomic::fence(Ordering::SeqCst);
        if !self.queue.is_empty() {
            self.bell.asleep.store(false, Ordering::SeqCst);
            return;
        }
        self.collect_events(None);
        self.bell.asleep.store(false, Ordering::SeqCst);
        self.events_fresh = true;
    }

    fn collect_events(&mut self, timeout: Option<std::time::Duration>) {
        if let Err(error) = self.poll.poll(&mut self.events, timeout) {
            if error.kind() != std::io::ErrorKind::Interrupted {
                tracing::warn!(%error, "epoll_wait on the peer connections failed");
                // Not a busy loop: the ticker's input still comes through the queue.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            return;
        }
        for event in self.events.iter() {
            if let Some(connection) = self.connections.get_mut(&event.token()) {
                connection.ready = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_input_sent_to_a_sleeping_loop_wakes_it() {
        // Room for every input: a lost wake-up must show as a timeout, not as a blocked sender.
        let (sender, mut inbox) = channel(256).unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut received = 0;
            while received < 200 {
                inbox.wait();
                while let Queued::Input(_) = inbox.next_input() {
                    received += 1;
                }
            }
            done.send(received).unwrap();
        });
        for round in 0..200 {
            // Alternately into a sleeping loop and into one that is just waking up.
            if round % 2 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            sender.blocking_send(Input::Tick).unwrap();
        }
        let received = finished
            .recv_timeout(Duration::from_secs(10))
            .expect("a sent input was left in the queue of a sleeping loop");
        assert_eq!(received, 200);
    }
}
