//! What a stateless plugin's call sends back to the connection whose message it is
//! handling: kept beside the call, for the connection to encode when the call returns,
//! instead of crossing the registry and the connection's queue. A leaf: the host
//! imports consult it, the inline path fills and empties it.

use super::{ConnId, Outgoing};

/// Messages one call may send straight back to its connection; later ones take the
/// connection's queue (and its limits), after these.
const REPLIES_HERE: usize = 64;
/// Bytes one call may send straight back to its connection.
const REPLY_BYTES_HERE: usize = 256 * 1024;

/// A call handling a message of `conn`: its sends to `conn`, up to the bounds.
#[derive(Debug)]
pub struct Replying {
    conn: ConnId,
    replies: Vec<Outgoing>,
    bytes: usize,
    /// Something for `conn` took its queue (a close, or a send past the bounds): later
    /// sends take it too, to stay in order.
    queued: bool,
}

impl Replying {
    /// Replies to `conn`, added to `replies` (given for its room).
    pub fn new(conn: ConnId, replies: Vec<Outgoing>) -> Self {
        Self {
            conn,
            replies,
            bytes: 0,
            queued: false,
        }
    }

    /// Keeps `message` for `conn` if it is a reply: returns it if it must go through
    /// the connection's queue instead.
    pub fn keep(&mut self, conn: ConnId, message: Outgoing) -> Option<Outgoing> {
        if conn != self.conn || self.queued {
            return Some(message);
        }
        let bytes = self.bytes + message.len();
        if self.replies.len() >= REPLIES_HERE || bytes > REPLY_BYTES_HERE {
            self.queued = true;
            return Some(message);
        }
        self.bytes = bytes;
        self.replies.push(message);
        None
    }

    /// Notes that something for `conn` takes its queue: if it is the connection
    /// replied to, later sends take the queue too, so that they stay in order.
    pub fn queued_for(&mut self, conn: ConnId) {
        self.queued |= conn == self.conn;
    }

    /// Notes that output for many connections, perhaps `conn` among them, took their
    /// queues: later sends to `conn` take the queue too, so that they stay in order.
    pub fn queued_for_many(&mut self) {
        self.queued = true;
    }

    /// Gives up keeping replies: returns the connection and what was kept, in order,
    /// for the caller to send through the queue; later sends take the queue too.
    pub fn divert(&mut self) -> (ConnId, Vec<Outgoing>) {
        self.queued = true;
        self.bytes = 0;
        (self.conn, self.replies.drain(..).collect())
    }

    /// The replies kept, in order.
    pub fn into_replies(self) -> Vec<Outgoing> {
        self.replies
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Outgoing {
        Outgoing::Text(s.to_owned().into())
    }

    #[test]
    fn replies_are_kept_up_to_the_bounds_then_everything_takes_the_queue() {
        let mut replying = Replying::new(7, Vec::new());
        assert!(replying.keep(8, text("other")).is_some(), "not a reply");
        for _ in 0..REPLIES_HERE {
            assert!(replying.keep(7, text("r")).is_none());
        }
        assert!(replying.keep(7, text("one too many")).is_some());
        // From then on, in order: the queue.
        assert!(replying.keep(7, text("later")).is_some());
        assert_eq!(replying.into_replies().len(), REPLIES_HERE);

        let mut replying = Replying::new(7, Vec::new());
        let big = Outgoing::Binary(vec![0; REPLY_BYTES_HERE].into());
        assert!(replying.keep(7, big).is_none());
        assert!(replying.keep(7, text("x")).is_some(), "past the byte bound");

        let mut replying = Replying::new(7, Vec::new());
        replying.queued_for(8);
        assert!(replying.keep(7, text("a")).is_none());
        replying.queued_for(7);
        assert!(replying.keep(7, text("b")).is_some(), "after a close went to the queue");

        let mut replying = Replying::new(7, Vec::new());
        assert!(replying.keep(7, text("a")).is_none());
        replying.queued_for_many();
        assert!(
            replying.keep(7, text("b")).is_some(),
            "after a broadcast went to the queues"
        );
        assert_eq!(replying.into_replies().len(), 1);
    }
}
