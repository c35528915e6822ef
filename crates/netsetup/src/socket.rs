//! A synchronous netlink socket, generic over the protocol (rtnetlink for links, addresses,
//! routes and neighbours; netfilter for the masquerade table), that sends requests in bounded
//! batches and matches every reply and acknowledgement to its request by sequence number.
//!
//! Bounded, because the kernel answers each request of a send with its own acknowledgement
//! queued on our socket, and drops what does not fit the receive buffer (ENOBUFS): one send of
//! a few hundred requests overflowed the default buffer, and the acknowledgements it lost left
//! the caller waiting for them. So a batch goes out in chunks of at most [`CHUNK_REQUESTS`]
//! requests (a dump alone, since the kernel sends its parts as we read them), each chunk's
//! replies are read before the next is sent, acknowledgements are capped to their header
//! (`NETLINK_CAP_ACK`), the buffer is raised where the process may, and no receive waits
//! longer than [`RECEIVE_TIMEOUT`].

use std::io;
use std::time::Duration;

use netlink_packet_core::{
    Emitable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{
    protocols::{NETLINK_NETFILTER, NETLINK_ROUTE},
    Socket as RawSocket, SocketAddr,
};

use crate::Error;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;

/// Requests sent in one `send`: their capped acknowledgements (one small skb each, about
/// 1 KiB of buffer accounting) fit the default 208 KiB receive buffer with room to spare.
pub const CHUNK_REQUESTS: usize = 128;
/// Bytes of requests in one `send`, well under the default send buffer.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// The receive buffer asked for (with `SO_RCVBUFFORCE` when privileged, else capped by
/// `net.core.rmem_max`).
pub const RECEIVE_BUFFER: usize = 1 << 20;
/// The longest one receive may wait: a kernel answers rtnetlink requests in microseconds to
/// milliseconds; past this something is wrong, and the caller gets an error, not a hang.
pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The fixed header of one netlink message, read with its bounds checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Length of the message, header included.
    pub len: usize,
    /// Message type (`NLMSG_ERROR`, `NLMSG_DONE`, or the protocol's own).
    pub kind: u16,
    /// Sequence number.
    pub seq: u32,
}

impl Header {
    /// The header at the start of `b`, when `b` holds the whole message it announces.
    pub fn parse(b: &[u8]) -> Option<Header> {
        let head = b.get(..NLMSG_HDRLEN)?;
        let len = u32::from_ne_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            return None;
        }
        Some(Header {
            len,
            kind: u16::from_ne_bytes([head[4], head[5]]),
            seq: u32::from_ne_bytes([head[8], head[9], head[10], head[11]]),
        })
    }

    /// The errno of an `NLMSG_ERROR` (0 for an acknowledgement) or of a failed dump's
    /// `NLMSG_DONE` (its payload is the same `int`), from the message `b` starts with; None
    /// when the message is too short to carry one.
    pub fn error_code(&self, b: &[u8]) -> Option<i32> {
        let code = b
            .get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4)
            .filter(|_| self.len >= NLMSG_HDRLEN + 4)?;
        Some(i32::from_ne_bytes([code[0], code[1], code[2], code[3]]))
    }

    /// The offset of the next message after this one (messages are 4-byte aligned).
    pub fn next(&self) -> usize {
        (self.len + 3) & !3
    }

    /// Whether this is `NLMSG_ERROR`.
    pub fn is_error(&self) -> bool {
        self.kind == NLMSG_ERROR
    }
}

/// Makes a netlink socket fit for bounded batches: acknowledgements capped to their header,
/// the larger receive buffer where allowed, and a receive timeout. Shared by the route and the
/// netfilter sockets.
pub fn bound(raw: &RawSocket) -> Result<(), Error> {
    use nix::sys::socket::{setsockopt, sockopt};
    // Failures of the first two are not fatal: the chunking alone keeps replies within the
    // default buffer.
    let _ = raw.set_cap_ack(true);
    if setsockopt(raw, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err() {
        let _ = raw.set_rx_buf_sz(RECEIVE_BUFFER);
    }
    let timeout = nix::sys::time::TimeVal::new(RECEIVE_TIMEOUT.as_secs() as _, 0);
    setsockopt(raw, sockopt::ReceiveTimeout, &timeout)
        .map_err(|e| Error::io("set netlink receive timeout", e.into()))
}

/// Reads from `raw` into `buf`, naming a timeout and an overrun as what they are.
pub fn receive(raw: &RawSocket, buf: &mut [u8]) -> Result<usize, Error> {
    raw.recv(&mut &mut buf[..], 0)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EAGAIN) => Error::io(
                "receive netlink reply",
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no reply within {RECEIVE_TIMEOUT:?}"),
                ),
            ),
            _ => Error::io("receive netlink reply", e),
        })
}

/// A netlink protocol: its number, and how its messages become bytes and back.
pub trait Protocol {
    /// The protocol number (`NETLINK_ROUTE`, `NETLINK_NETFILTER`).
    const ID: isize;
    /// One message of the protocol (its type and payload; the header is the socket's).
    type Message;
    /// Bytes `msg` takes with its header, for sizing chunks.
    fn size(msg: &Self::Message) -> usize;
    /// Appends `msg` to `out` with a header of these flags and sequence number.
    fn emit(msg: Self::Message, flags: u16, seq: u32, out: &mut Vec<u8>);
    /// Decodes one whole message (header included) that is neither an error nor DONE.
    fn parse(bytes: &[u8]) -> Result<Self::Message, Error>;
}

/// rtnetlink, through netlink-packet-route.
#[derive(Debug)]
pub struct Route;

impl Protocol for Route {
    const ID: isize = NETLINK_ROUTE;
    type Message = RouteNetlinkMessage;

    fn size(msg: &RouteNetlinkMessage) -> usize {
        msg.buffer_len() + NLMSG_HDRLEN
    }

    fn emit(msg: RouteNetlinkMessage, flags: u16, seq: u32, out: &mut Vec<u8>) {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        msg.finalize();
        let start = out.len();
        out.resize(start + msg.buffer_len(), 0);
        msg.serialize(&mut out[start..]);
    }

    fn parse(bytes: &[u8]) -> Result<RouteNetlinkMessage, Error> {
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
            .map_err(|e| Error::Decode(e.to_string()))?;
        match msg.payload {
            NetlinkPayload::InnerMessage(inner) => Ok(inner),
            other => Err(Error::Decode(format!(
                "unexpected netlink payload {:?}",
                other.message_type()
            ))),
        }
    }
}

/// nfnetlink, as raw messages: the few nftables requests the suite makes are built by hand
/// (see `masquerade`), with no crate for the nftables message set.
#[derive(Debug)]
pub struct Netfilter;

/// A netfilter message: its type (`subsystem << 8 | message`) and the payload after the
/// netlink header (the `nfgenmsg` and the attributes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawMessage {
    /// The netlink message type.
    pub kind: u16,
    /// Everything after the 16-byte header.
    pub payload: Vec<u8>,
}

impl Protocol for Netfilter {
    const ID: isize = NETLINK_NETFILTER;
    type Message = RawMessage;

    fn size(msg: &RawMessage) -> usize {
        NLMSG_HDRLEN + msg.payload.len()
    }

    fn emit(msg: RawMessage, flags: u16, seq: u32, out: &mut Vec<u8>) {
        let len = NLMSG_HDRLEN + msg.payload.len();
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&msg.kind.to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        out.extend_from_slice(&msg.payload);
        out.resize(out.len() + ((4 - len % 4) % 4), 0);
    }

    fn parse(bytes: &[u8]) -> Result<RawMessage, Error> {
        let head = Header::parse(bytes)
            .ok_or_else(|| Error::Decode("truncated netfilter message".into()))?;
        Ok(RawMessage {
            kind: head.kind,
            payload: bytes[NLMSG_HDRLEN..head.len].to_vec(),
        })
    }
}

/// One request of a batch: a message, its extra `NLM_F_*` flags, and what it does (for errors).
pub struct Request<M = RouteNetlinkMessage> {
    /// The message.
    pub message: M,
    /// Flags besides `NLM_F_REQUEST | NLM_F_ACK` (`NLM_F_CREATE`, `NLM_F_EXCL`, `NLM_F_DUMP`).
    pub flags: u16,
    /// What the request does, as error messages name it ("create veth veth1234").
    pub what: String,
}

impl<M> Request<M> {
    /// A request with its flags and a description.
    pub fn new(message: M, flags: u16, what: impl Into<String>) -> Self {
        Request {
            message,
            flags,
            what: what.into(),
        }
    }

    fn is_dump(&self) -> bool {
        self.flags & NLM_F_DUMP == NLM_F_DUMP
    }
}

/// The outcome of one request: the messages it got back, or the kernel's error.
pub type Reply<M = RouteNetlinkMessage> = Result<Vec<M>, io::Error>;

/// Every request's description and reply, in the order sent.
pub type Replies<M = RouteNetlinkMessage> = Vec<(String, Reply<M>)>;

/// A netlink socket of protocol `P` bound to the network namespace it was opened in.
pub struct Socket<P: Protocol = Route> {
    raw: RawSocket,
    seq: u32,
    buf: Vec<u8>,
    protocol: std::marker::PhantomData<P>,
}

impl Socket<Route> {
    /// Opens an rtnetlink socket in the calling thread's current network namespace.
    pub fn new() -> Result<Socket, Error> {
        let sock = Socket::open()?;
        // Strict checking makes filtered dumps (addresses of one link) filter in the kernel.
        let _ = sock.raw.set_netlink_get_strict_chk(true);
        Ok(sock)
    }
}

impl<P: Protocol> Socket<P> {
    /// Opens a socket of protocol `P` in the calling thread's current network namespace.
    pub fn open() -> Result<Socket<P>, Error> {
        let mut raw = RawSocket::new(P::ID).map_err(|e| Error::io("open netlink socket", e))?;
        raw.bind_auto()
            .map_err(|e| Error::io("bind netlink socket", e))?;
        raw.connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::io("connect netlink socket", e))?;
        bound(&raw)?;
        Ok(Socket {
            raw,
            seq: 0,
            buf: vec![0; 64 * 1024],
            protocol: std::marker::PhantomData,
        })
    }

    /// Sends the requests and collects each one's reply, in chunks whose replies fit the
    /// socket's buffer (see the module's doc). The kernel handles them in order and keeps
    /// going after a failed one. An error here (an overrun, a timeout) leaves the socket
    /// usable: replies of an abandoned chunk carry sequence numbers no later batch waits for.
    pub fn batch(
        &mut self,
        requests: Vec<Request<P::Message>>,
    ) -> Result<Replies<P::Message>, Error> {
        let mut out = Vec::with_capacity(requests.len());
        let mut chunk = Vec::new();
        let mut bytes = 0;
        for req in requests {
            let size = P::size(&req.message);
            let full = chunk.len() >= CHUNK_REQUESTS || bytes + size > CHUNK_BYTES;
            if !chunk.is_empty() && (full || req.is_dump()) {
                out.extend(self.exchange(std::mem::take(&mut chunk))?);
                bytes = 0;
            }
            let dump = req.is_dump();
            bytes += size;
            chunk.push(req);
            if dump {
                out.extend(self.exchange(std::mem::take(&mut chunk))?);
                bytes = 0;
            }
        }
        if !chunk.is_empty() {
            out.extend(self.exchange(chunk)?);
        }
        Ok(out)
    }

    /// One send of `requests` and every reply to them.
    fn exchange(
        &mut self,
        requests: Vec<Request<P::Message>>,
    ) -> Result<Replies<P::Message>, Error> {
        let first_seq = self.seq.wrapping_add(1);
        let mut out = Vec::with_capacity(requests.len());
        let mut packet = Vec::new();
        for req in requests {
            self.seq = self.seq.wrapping_add(1);
            P::emit(
                req.message,
                NLM_F_REQUEST | NLM_F_ACK | req.flags,
                self.seq,
                &mut packet,
            );
            log::trace!("netlink send seq={} {}", self.seq, req.what);
            out.push((req.what, Ok(Vec::new())));
        }
        self.raw
            .send(&packet, 0)
            .map_err(|e| Error::io("send netlink batch", e))?;
        let mut pending = out.len();
        let mut finished = vec![false; out.len()];
        while pending > 0 {
            let n = receive(&self.raw, &mut self.buf)?;
            let mut off = 0;
            while off < n {
                let b = &self.buf[off..n];
                let head = Header::parse(b).ok_or_else(|| {
                    Error::Decode(format!("truncated netlink message at byte {off} of {n}"))
                })?;
                off += head.next();
                let idx = head.seq.wrapping_sub(first_seq) as usize;
                if idx >= out.len() || finished[idx] {
                    continue;
                }
                let mut finish = false;
                match head.kind {
                    NLMSG_ERROR => {
                        let code = head.error_code(b).ok_or_else(|| {
                            Error::Decode("netlink error message without its code".into())
                        })?;
                        if code != 0 {
                            out[idx].1 = Err(io::Error::from_raw_os_error(-code));
                        }
                        finish = true;
                    }
                    NLMSG_DONE => {
                        // A dump that fails reports its errno in the DONE message.
                        if let Some(code) = head.error_code(b).filter(|c| *c < 0) {
                            out[idx].1 = Err(io::Error::from_raw_os_error(-code));
                        }
                        finish = true;
                    }
                    _ => {
                        let msg = P::parse(&b[..head.len])?;
                        if let Ok(list) = &mut out[idx].1 {
                            list.push(msg);
                        }
                    }
                }
                // A request ends with its acknowledgement (or error); a dump with DONE, since the
                // kernel acknowledges a dump only when it fails.
                if finish {
                    finished[idx] = true;
                    pending -= 1;
                }
            }
        }
        Ok(out)
    }

    /// Sends one request; its replies, or its error as [`Error::Netlink`].
    pub fn request(&mut self, req: Request<P::Message>) -> Result<Vec<P::Message>, Error> {
        let mut replies = self.batch(vec![req])?;
        let (what, reply) = replies
            .pop()
            .ok_or_else(|| Error::Decode("no reply".into()))?;
        reply.map_err(|source| Error::Netlink { what, source })
    }
}

/// Turns a batch's replies into the first error, if any, ignoring those `ok_if` accepts.
pub fn first_error<M>(
    replies: Replies<M>,
    ok_if: impl Fn(&str, &io::Error) -> bool,
) -> Result<Vec<Vec<M>>, Error> {
    let mut out = Vec::with_capacity(replies.len());
    for (what, reply) in replies {
        match reply {
            Ok(list) => out.push(list),
            Err(e) if ok_if(&what, &e) => out.push(Vec::new()),
            Err(source) => return Err(Error::Netlink { what, source }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_bounds_checked() {
        // An error message cut after its header has no code, and a length past the buffer
        // or under the header is refused (the old parser read bytes 16..20 regardless).
        let mut ack = Vec::new();
        ack.extend_from_slice(&36u32.to_ne_bytes());
        ack.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack.extend_from_slice(&0u16.to_ne_bytes());
        ack.extend_from_slice(&7u32.to_ne_bytes());
        ack.extend_from_slice(&0u32.to_ne_bytes());
        ack.extend_from_slice(&(-17i32).to_ne_bytes());
        ack.resize(36, 0);
        let h = Header::parse(&ack).unwrap();
        assert_eq!((h.len, h.kind, h.seq, h.next()), (36, NLMSG_ERROR, 7, 36));
        assert_eq!(h.error_code(&ack), Some(-17));
        assert_eq!(Header::parse(&ack[..20]), None, "length past the buffer");
        let mut short = ack[..16].to_vec();
        short[0..4].copy_from_slice(&16u32.to_ne_bytes());
        let h = Header::parse(&short).unwrap();
        assert_eq!(h.error_code(&short), None);
        short[0..4].copy_from_slice(&8u32.to_ne_bytes());
        assert_eq!(Header::parse(&short), None, "length under the header");
        assert_eq!(Header::parse(&[0u8; 10]), None);
    }
}
