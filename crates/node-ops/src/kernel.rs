//! What the node's kernel holds, read from the network namespace the command runs in: links
//! (one rtnetlink dump), addresses, sysctls, nftables tables, and processes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use netlink_packet_core::NLM_F_DUMP;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netsetup::{Request, Socket};

use crate::Error;

/// A link as the doctor and teardown need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfoLite {
    /// Index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// `bridge`, `veth`, `vxlan`, ... (None for links without a kind, like physical NICs).
    pub kind: Option<String>,
    /// Administratively up.
    pub up: bool,
    /// Index of its master (the bridge of a port).
    pub master: Option<u32>,
    /// MTU.
    pub mtu: u32,
    /// For a veth whose peer lives in another network namespace, that namespace's id here
    /// (`IFLA_LINK_NETNSID`): a pod's namespace that still exists, since the kernel deletes
    /// the pair with it. None when the peer is in this namespace.
    pub peer_netns: Option<i32>,
}

/// The node's links, from one dump.
pub struct Links {
    /// Every link.
    pub all: Vec<LinkInfoLite>,
    sock: Socket,
}

impl Links {
    /// Dumps the links of the current network namespace.
    pub fn read() -> Result<Links, Error> {
        let mut sock = Socket::new()?;
        let replies = sock.request(Request::new(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
            "list links",
        ))?;
        let all = replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(lite(l)),
                _ => None,
            })
            .collect();
        Ok(Links { all, sock })
    }

    /// The link named `name`.
    pub fn get(&self, name: &str) -> Option<&LinkInfoLite> {
        self.all.iter().find(|l| l.name == name)
    }

    /// The ports of link `index` (a bridge's members).
    pub fn ports_of(&self, index: u32) -> Vec<&LinkInfoLite> {
        self.all
            .iter()
            .filter(|l| l.master == Some(index))
            .collect()
    }

    /// The addresses on link `index`: IPv4, then IPv6 without link-local ones.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<IpNet>, Error> {
        let mut all = netsetup::link::addresses_of(&mut self.sock, index, false)?;
        // IPv6 too, for dual-stack bridges; the kernel's own link-local address says nothing
        // about the suite's setup, so it is left out.
        all.extend(
            netsetup::link::addresses_of(&mut self.sock, index, true)?
                .into_iter()
                .filter(|a| !matches!(a, IpNet::V6(n) if n.addr().is_unicast_link_local())),
        );
        Ok(all)
    }

    /// The socket, for other lookups in the same namespace.
    pub fn socket(&mut self) -> &mut Socket {
        &mut self.sock
    }
}

fn lite(msg: &LinkMessage) -> LinkInfoLite {
    let mut l = LinkInfoLite {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        master: None,
        mtu: 0,
        peer_netns: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Mtu(m) => l.mtu = *m,
            LinkAttribute::Controller(m) => l.master = Some(*m),
            LinkAttribute::LinkNetNsId(id) => l.peer_netns = Some(*id),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        l.kind = Some(match kind {
                            InfoKind::Bridge => "bridge".into(),
                            InfoKind::Veth => "veth".into(),
                            InfoKind::Vxlan => "vxlan".into(),
                            other => format!("{other:?}").to_lowercase(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    l
}

/// `net.ipv4.ip_forward` of the current network namespace (the /proc/sys/net files belong to
/// the namespace of the process that opens them).
pub fn ip_forward() -> Result<bool, Error> {
    let path = Path::new("/proc/sys/net/ipv4/ip_forward");
    let v = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(v.trim() == "1")
}

/// The `nft` binary: PATH, then the usual system directories (the DaemonSet image and
/// minimal environments may not have them on PATH).
pub fn nft_binary() -> Option<PathBuf> {
    find_program("nft")
}

/// `name` on PATH or in the system directories.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path.into_iter()
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Names of the nftables tables of family `ip`.
pub fn nft_tables() -> Result<Vec<String>, Error> {
    nft_tables_of("ip")
}

/// The nftables tables of family ip6 (the IPv6 masquerade tables of dual-stack networks).
pub fn nft_tables_ip6() -> Result<Vec<String>, Error> {
    nft_tables_of("ip6")
}

fn nft_tables_of(family: &str) -> Result<Vec<String>, Error> {
    let nft = nft_binary().ok_or_else(|| Error::Command {
        program: "nft".into(),
        detail: "not found (Debian: apt-get install nftables)".into(),
    })?;
    let out = run(
        Command::new(&nft).args(["list", "tables", family]),
        Duration::from_secs(10),
    )?;
    if !out.0 {
        return Err(Error::Command {
            program: format!("nft list tables {family}"),
            detail: out.2.trim().to_string(),
        });
    }
    let prefix = format!("table {family} ");
    Ok(out
        .1
        .lines()
        .filter_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .map(|t| t.trim().to_string())
        .collect())
}

/// Runs a command to completion within `limit` (killing it after), returning (success,
/// stdout, stderr).
pub fn run(cmd: &mut Command, limit: Duration) -> Result<(bool, String, String), Error> {
    run_with_stdin(cmd, None, limit)
}

/// As [`run`], writing `stdin` to the child first.
pub fn run_with_stdin(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    limit: Duration,
) -> Result<(bool, String, String), Error> {
    use std::io::{Read, Write};
    let program = format!("{:?}", cmd.get_program());
    let fail = |detail: String| Error::Command {
        program: program.clone(),
        detail,
    };
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run: {e}")))?;
    if let (Some(bytes), Some(mut w)) = (stdin, child.stdin.take()) {
        // A child that exits without reading its stdin is not our error.
        let _ = w.write_all(bytes);
    }
    // Read both pipes on threads so that a chatty child never blocks on a full pipe.
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = out_pipe.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("did not finish within {limit:?}")));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(fail(e.to_string())),
        }
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    Ok((status.success(), stdout, stderr))
}

/// A running process: pid and argv.
#[derive(Clone, Debug)]
pub struct Process {
    /// Process id.
    pub pid: u32,
    /// Its command line.
    pub argv: Vec<String>,
}

impl Process {
    /// The file name of argv\[0\].
    pub fn program(&self) -> &str {
        self.argv
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a))
            .unwrap_or("")
    }
}

/// Every process whose command line can be read.
pub fn processes() -> Vec<Process> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let argv: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            (!argv.is_empty()).then_some(Process { pid, argv })
        })
        .collect()
}

/// Running vxlan-overlay agents of this node (`vxlan-overlay-agent`, or `vxlan-overlay agent`
/// of an earlier release): those in the network namespace this command runs in (an agent of
/// another node namespace, or in a test, is someone else's).
pub fn overlay_agents() -> Vec<Process> {
    let here = std::fs::read_link("/proc/self/ns/net").ok();
    processes()
        .into_iter()
        .filter(|p| {
            p.program() == "vxlan-overlay-agent"
                || (p.program() == "vxlan-overlay"
                    && p.argv.get(1).map(String::as_str) == Some("agent"))
        })
        .filter(|p| {
            here.is_some() && std::fs::read_link(format!("/proc/{}/ns/net", p.pid)).ok() == here
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_commands_with_a_time_limit() {
        let (ok, out, _) = run(
            Command::new("sh").args(["-c", "echo hi"]),
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(ok);
        assert_eq!(out, "hi\n");
        let slow = run(Command::new("sleep").arg("5"), Duration::from_millis(100));
        assert!(slow.is_err());
        let (ok, out, _) =
            run_with_stdin(&mut Command::new("cat"), Some(b"x"), Duration::from_secs(5)).unwrap();
        assert!(ok && out == "x");
    }

    #[test]
    fn sees_this_process() {
        let me = std::process::id();
        assert!(processes().iter().any(|p| p.pid == me));
    }
}
