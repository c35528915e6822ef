//! Traffic between test namespaces: reachability by ping, and the source address a UDP
//! datagram arrives with, which is what masquerading rewrites.

use std::io::{BufRead, BufReader, Lines};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, ChildStdout, Stdio};

use crate::netns::Netns;
pub use crate::netns::{ping, ping_ip};

/// Debian's interpreter, which install-test-deps.sh guarantees (a pyenv shim on PATH might not
/// behave the same inside `ip netns exec`).
pub const PYTHON: &str = "/usr/bin/python3";

/// How long the listener waits for a datagram before reporting none, in seconds.
const LISTEN_TIMEOUT_SECS: &str = "5";

/// Binds a UDP socket, says "ready", then prints the source address of the first datagram (or
/// "timeout").
const LISTENER_PY: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
s.settimeout(float(sys.argv[3]))
try:
    _, src = s.recvfrom(64)
    print(src[0], flush=True)
except socket.timeout:
    print("timeout", flush=True)
"#;

/// Sends five datagrams, 200 ms apart: the first can be lost while ARP resolves.
const SENDER_PY: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(5):
    try:
        s.sendto(b"probe", (sys.argv[1], int(sys.argv[2])))
    except OSError:
        pass
    time.sleep(0.2)
"#;

/// A UDP listener in a namespace that reports where the first datagram came from. The
/// listener process is killed when this is dropped.
pub struct UdpSourceListener {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    netns: String,
}

impl UdpSourceListener {
    /// Starts a listener on `addr:port` inside `netns` and waits until it is bound.
    pub fn start(netns: &Netns, addr: impl Into<IpAddr>, port: u16) -> UdpSourceListener {
        let addr: IpAddr = addr.into();
        let mut child = netns
            .command(PYTHON)
            .args(["-c", LISTENER_PY, &addr.to_string(), &port.to_string()])
            .arg(LISTEN_TIMEOUT_SECS)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {PYTHON} in netns {}: {e}", netns.name()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut listener = UdpSourceListener {
            child,
            lines: BufReader::new(stdout).lines(),
            netns: netns.name().to_owned(),
        };
        let first = listener.next_line();
        assert_eq!(
            first.as_deref(),
            Some("ready"),
            "UDP listener on {addr}:{port} in netns {} did not start",
            listener.netns
        );
        listener
    }

    /// The IPv4 source address of the first datagram received, or `None` if none arrived in
    /// time.
    pub fn source(self) -> Option<Ipv4Addr> {
        match self.source_ip()? {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(a) => panic!("an IPv4 listener saw IPv6 source {a}"),
        }
    }

    /// The source address of the first datagram received (either family), or `None` if none
    /// arrived in time.
    pub fn source_ip(mut self) -> Option<IpAddr> {
        let line = self.next_line()?;
        if line == "timeout" {
            return None;
        }
        Some(line.parse().unwrap_or_else(|e| {
            panic!(
                "UDP listener in netns {} printed {line:?}, not an address: {e}",
                self.netns
            )
        }))
    }

    fn next_line(&mut self) -> Option<String> {
        self.lines.next().and_then(Result::ok)
    }
}

impl Drop for UdpSourceListener {
    fn drop(&mut self) {
        // Never panic here; the process may already have exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a few UDP datagrams from inside `from` to `to:port`; panics if the sender fails.
pub fn send_udp(from: &Netns, to: impl Into<IpAddr>, port: u16) {
    let to: IpAddr = to.into();
    let out = from.run(
        PYTHON,
        &["-c", SENDER_PY, &to.to_string(), &port.to_string()],
    );
    assert!(
        out.status.success(),
        "UDP sender in netns {} failed: {}",
        from.name(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The source address with which a datagram from `from` arrives at `to` (an address in
/// `listener_netns`), or `None` if nothing arrives.
pub fn observed_source(from: &Netns, listener_netns: &Netns, to: Ipv4Addr) -> Option<Ipv4Addr> {
    const PORT: u16 = 5599;
    let listener = UdpSourceListener::start(listener_netns, to, PORT);
    send_udp(from, to, PORT);
    listener.source()
}

/// [`observed_source`] for either family: the source address with which a datagram from
/// `from` arrives at `to`, or `None` if nothing arrives.
pub fn observed_source_ip(from: &Netns, listener_netns: &Netns, to: IpAddr) -> Option<IpAddr> {
    const PORT: u16 = 5598;
    let listener = UdpSourceListener::start(listener_netns, to, PORT);
    send_udp(from, to, PORT);
    listener.source_ip()
}
