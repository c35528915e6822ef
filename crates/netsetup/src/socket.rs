//! A synchronous rtnetlink socket that sends requests in batches and matches every reply and
//! acknowledgement to its request by sequence number.

use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket as RawSocket, SocketAddr};

use crate::Error;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;

/// One request of a batch: a message, its extra `NLM_F_*` flags, and what it does (for errors).
pub struct Request {
    /// The message.
    pub message: RouteNetlinkMessage,
    /// Flags besides `NLM_F_REQUEST | NLM_F_ACK` (`NLM_F_CREATE`, `NLM_F_EXCL`, `NLM_F_DUMP`).
    pub flags: u16,
    /// What the request does, as error messages name it ("create veth veth1234").
    pub what: String,
}

impl Request {
    /// A request with its flags and a description.
    pub fn new(message: RouteNetlinkMessage, flags: u16, what: impl Into<String>) -> Self {
        Request {
            message,
            flags,
            what: what.into(),
        }
    }
}

/// The outcome of one request: the messages it got back, or the kernel's error.
pub type Reply = Result<Vec<RouteNetlinkMessage>, io::Error>;

/// An rtnetlink socket bound to the network namespace it was opened in.
pub struct Socket {
    raw: RawSocket,
    seq: u32,
    buf: Vec<u8>,
}

impl Socket {
    /// Opens a socket in the calling thread's current network namespace.
    pub fn new() -> Result<Socket, Error> {
        let mut raw =
            RawSocket::new(NETLINK_ROUTE).map_err(|e| Error::io("open netlink socket", e))?;
        raw.bind_auto()
            .map_err(|e| Error::io("bind netlink socket", e))?;
        // Strict checking makes filtered dumps (addresses of one link) filter in the kernel.
        let _ = raw.set_netlink_get_strict_chk(true);
        raw.connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::io("connect netlink socket", e))?;
        Ok(Socket {
            raw,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Sends every request in one `send` and collects each one's reply. The kernel handles
    /// them in order and keeps going after a failed one.
    pub fn batch(&mut self, requests: Vec<Request>) -> Result<Vec<(String, Reply)>, Error> {
        let first_seq = self.seq.wrapping_add(1);
        let mut out = Vec::with_capacity(requests.len());
        let mut packet = Vec::new();
        for req in requests {
            self.seq = self.seq.wrapping_add(1);
            let mut header = NetlinkHeader::default();
            header.flags = NLM_F_REQUEST | NLM_F_ACK | req.flags;
            header.sequence_number = self.seq;
            let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(req.message));
            msg.finalize();
            let start = packet.len();
            packet.resize(start + msg.buffer_len(), 0);
            msg.serialize(&mut packet[start..]);
            log::trace!("netlink send seq={} {}", self.seq, req.what);
            out.push((req.what, Ok(Vec::new())));
        }
        self.raw
            .send(&packet, 0)
            .map_err(|e| Error::io("send netlink batch", e))?;
        let mut pending = out.len();
        let mut finished = vec![false; out.len()];
        while pending > 0 {
            let n = self
                .raw
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|e| Error::io("receive netlink reply", e))?;
            let mut off = 0;
            while off + NLMSG_HDRLEN <= n {
                let b = &self.buf[off..n];
                let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
                let kind = u16::from_ne_bytes([b[4], b[5]]);
                let seq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
                if len < NLMSG_HDRLEN || len > b.len() {
                    return Err(Error::Decode(format!("netlink message length {len}")));
                }
                off += (len + 3) & !3;
                let idx = seq.wrapping_sub(first_seq) as usize;
                if idx >= out.len() || finished[idx] {
                    continue;
                }
                let mut finish = false;
                match kind {
                    NLMSG_ERROR => {
                        let code = i32::from_ne_bytes([b[16], b[17], b[18], b[19]]);
                        if code != 0 {
                            out[idx].1 = Err(io::Error::from_raw_os_error(-code));
                        }
                        finish = true;
                    }
                    NLMSG_DONE => {
                        // A dump that fails reports its errno in the DONE message.
                        if len >= NLMSG_HDRLEN + 4 {
                            let code = i32::from_ne_bytes([b[16], b[17], b[18], b[19]]);
                            if code < 0 {
                                out[idx].1 = Err(io::Error::from_raw_os_error(-code));
                            }
                        }
                        finish = true;
                    }
                    _ => {
                        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&b[..len])
                            .map_err(|e| Error::Decode(e.to_string()))?;
                        if let (NetlinkPayload::InnerMessage(inner), Ok(list)) =
                            (msg.payload, &mut out[idx].1)
                        {
                            list.push(inner);
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
    pub fn request(&mut self, req: Request) -> Result<Vec<RouteNetlinkMessage>, Error> {
        let mut replies = self.batch(vec![req])?;
        let (what, reply) = replies
            .pop()
            .ok_or_else(|| Error::Decode("no reply".into()))?;
        reply.map_err(|source| Error::Netlink { what, source })
    }
}

/// Turns a batch's replies into the first error, if any, ignoring those `ok_if` accepts.
pub fn first_error(
    replies: Vec<(String, Reply)>,
    ok_if: impl Fn(&str, &io::Error) -> bool,
) -> Result<Vec<Vec<RouteNetlinkMessage>>, Error> {
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
