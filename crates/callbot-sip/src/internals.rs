//! The two halves of [`UserAgentCore::handle_datagram`], so `callbot-benches` can time
//! the transaction layer on its own (cargo feature `bench-internals`, off by default;
//! not a stable API).
//!
//! [`UserAgentCore::receive_datagram`] is the transaction layer: it parses the datagram,
//! answers what cannot be parsed, matches the message to its transaction (absorbing
//! retransmissions) or opens a server transaction (sending 100 Trying for a new
//! INVITE). [`UserAgentCore::deliver_received`] hands what it returned to the
//! transaction user (dialogs, calls, registration). Deliver every [`Received`]: one
//! that is dropped leaves its server transaction without a final answer.

use std::net::SocketAddr;
use std::time::Instant;

use crate::core::{Incoming, UserAgentCore};

/// A message the transaction layer let through, not yet seen by the transaction user.
#[derive(Debug)]
pub struct Received<'a>(Incoming<'a>);

impl UserAgentCore {
    /// The transaction layer's half of [`handle_datagram`](Self::handle_datagram).
    /// `None`: nothing for the transaction user (a retransmission, a keep-alive, a
    /// request answered with an error or a dropped datagram).
    pub fn receive_datagram<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &'a [u8],
    ) -> Option<Received<'a>> {
        self.receive(now, from, bytes).map(Received)
    }

    /// The transaction user's half: handles what [`receive_datagram`](Self::receive_datagram)
    /// returned.
    pub fn deliver_received(&mut self, now: Instant, received: Received<'_>) {
        self.deliver(now, received.0);
    }
}
