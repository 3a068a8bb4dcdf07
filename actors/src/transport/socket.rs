//! The UDP seam: quinn's [`AsyncUdpSocket`], given to the transport from outside.
//!
//! The daemon passes a real socket ([`udp_socket`]); tests pass a
//! [`MemorySocket`] from a [`MemoryNetwork`], a minimal in-process fabric that
//! delivers every datagram to the socket bound at its destination address,
//! through a bounded queue, and drops it (as UDP would) when that queue is full
//! or nobody is bound there. It has no latency, loss or partitions; the
//! simulation harness brings its own fabric through the same trait.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};
use tokio::sync::mpsc;

/// Datagrams queued at one in-memory socket before further ones are dropped.
pub const MEMORY_SOCKET_QUEUE_DATAGRAMS_MAX: usize = 4_096;

/// A real UDP socket bound at `addr`, wrapped for quinn's tokio runtime.
pub fn udp_socket(addr: SocketAddr) -> io::Result<Arc<dyn AsyncUdpSocket>> {
    let socket = std::net::UdpSocket::bind(addr)?;
    quinn::TokioRuntime.wrap_udp_socket(socket)
}

/// One datagram queued for an in-process socket.
#[derive(Debug)]
pub struct Datagram {
    /// Where it came from.
    pub from: SocketAddr,
    /// Its payload.
    pub bytes: Vec<u8>,
}

/// `AsyncUdpSocket::poll_recv` for an in-process socket whose datagrams
/// arrive on `inbox`: fills as many of `bufs` as are ready, waiting only for
/// the first. A closed inbox (network gone, socket unbound) is `Pending`
/// forever: nothing will arrive again, which is what a dead link looks like.
pub fn poll_recv_datagrams(
    inbox: &Mutex<mpsc::Receiver<Datagram>>,
    local: SocketAddr,
    cx: &mut Context,
    bufs: &mut [IoSliceMut<'_>],
    meta: &mut [RecvMeta],
) -> Poll<io::Result<usize>> {
    let mut inbox = inbox
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut filled = 0;
    for (buf, meta) in bufs.iter_mut().zip(meta.iter_mut()) {
        let next = if filled == 0 {
            match inbox.poll_recv(cx) {
                Poll::Ready(Some(datagram)) => datagram,
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        } else {
            match inbox.try_recv() {
                Ok(datagram) => datagram,
                Err(_) => break,
            }
        };
        let len = next.bytes.len().min(buf.len());
        buf[..len].copy_from_slice(&next.bytes[..len]);
        *meta = RecvMeta {
            addr: next.from,
            len,
            stride: len,
            ecn: None,
            dst_ip: Some(local.ip()),
        };
        filled += 1;
    }
    Poll::Ready(Ok(filled))
}

/// An in-process "network": a map from address to the socket bound there.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    routes: Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Datagram>>>>,
}

impl fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryNetwork").finish_non_exhaustive()
    }
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// A socket at `addr`. Binding an address again replaces the earlier
    /// socket (a restarted node takes its old address back).
    pub fn bind(&self, addr: SocketAddr) -> Arc<MemorySocket> {
        let (tx, rx) = mpsc::channel(MEMORY_SOCKET_QUEUE_DATAGRAMS_MAX);
        self.routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(addr, tx);
        Arc::new(MemorySocket {
            addr,
            network: self.clone(),
            inbox: Mutex::new(rx),
        })
    }

    /// Two sockets at `a` and `b` on a fresh network.
    pub fn pair(a: SocketAddr, b: SocketAddr) -> (Arc<MemorySocket>, Arc<MemorySocket>) {
        let network = Self::new();
        (network.bind(a), network.bind(b))
    }

    fn deliver(&self, to: SocketAddr, datagram: Datagram) {
        let routes = self
            .routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(tx) = routes.get(&to) {
            // Full or gone: dropped, exactly like an overrun UDP buffer.
            let _ = tx.try_send(datagram);
        }
    }
}

/// One end of a [`MemoryNetwork`].
pub struct MemorySocket {
    addr: SocketAddr,
    network: MemoryNetwork,
    // Only quinn's endpoint driver receives; the lock is never contended.
    inbox: Mutex<mpsc::Receiver<Datagram>>,
}

impl fmt::Debug for MemorySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySocket")
            .field("addr", &self.addr)
            .finish()
    }
}

#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        // Sends never block: a full queue drops the datagram instead.
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for MemorySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        // max_transmit_segments is 1, so quinn never hands us a GSO batch;
        // still, split by segment size rather than trust that.
        let segment = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for chunk in transmit.contents.chunks(segment) {
            self.network.deliver(
                transmit.destination,
                Datagram {
                    from: self.addr,
                    bytes: chunk.to_vec(),
                },
            );
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        poll_recv_datagrams(&self.inbox, self.addr, cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }

    fn may_fragment(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(from: &MemorySocket, to: SocketAddr, bytes: &[u8]) {
        from.try_send(&Transmit {
            destination: to,
            ecn: None,
            contents: bytes,
            segment_size: None,
            src_ip: None,
        })
        .expect("memory sends never fail");
    }

    fn recv(socket: &MemorySocket) -> Option<(SocketAddr, Vec<u8>)> {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut buf = [0u8; 64];
        let mut meta = [RecvMeta::default()];
        let mut bufs = [IoSliceMut::new(&mut buf)];
        match socket.poll_recv(&mut cx, &mut bufs, &mut meta) {
            Poll::Ready(Ok(1)) => Some((meta[0].addr, buf[..meta[0].len].to_vec())),
            Poll::Pending => None,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn delivers_to_the_bound_address_and_drops_otherwise() {
        let a_addr = SocketAddr::from(([10, 0, 0, 1], 1));
        let b_addr = SocketAddr::from(([10, 0, 0, 2], 1));
        let network = MemoryNetwork::new();
        let (a, b) = (network.bind(a_addr), network.bind(b_addr));
        send(&a, b_addr, b"hi");
        assert_eq!(recv(&b), Some((a_addr, b"hi".to_vec())));
        assert_eq!(recv(&b), None);
        // Nobody there: dropped, like UDP.
        send(&a, SocketAddr::from(([10, 0, 0, 9], 1)), b"lost");
        assert_eq!(recv(&a), None);
        // A restarted node takes its address back; the old socket hears nothing more.
        let b2 = network.bind(b_addr);
        send(&a, b_addr, b"again");
        assert_eq!(recv(&b), None);
        assert_eq!(recv(&b2), Some((a_addr, b"again".to_vec())));
    }
}
