//! Source NAT for pod traffic leaving the cluster: one nftables table per node bridge.
//!
//! The table carries a comment that fingerprints its rules. Each ADD asks the kernel for the
//! table over one netfilter netlink round trip (no fork); only when it is missing or its
//! fingerprint differs is `nft -f -` run, once, to replace it in one transaction.

use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket as RawSocket, SocketAddr};

use crate::socket::{self, Header};
use crate::Error;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_USERDATA: u16 = 6;
const NFTNL_UDATA_TABLE_COMMENT: u8 = 0;
const NFPROTO_IPV4: u8 = 2;

/// A netlink attribute: (type, payload).
type Attr = (u16, Vec<u8>);

/// What to masquerade.
#[derive(Clone, Debug)]
pub struct MasqueradeSpec<'a> {
    /// The nftables table (family ip) that holds the rule.
    pub table: &'a str,
    /// Sources to masquerade: the node's pod CIDR.
    pub pod_cidr: Ipv4Net,
    /// Destinations not masqueraded (the cluster, kubenet's nonMasqueradeCIDR).
    pub non_masquerade: Ipv4Net,
    /// The bridge: traffic that goes back out of it stays on the node and is not NATed.
    pub bridge: &'a str,
}

impl MasqueradeSpec<'_> {
    /// The comment the table carries: ADD reprograms the table when it differs, and
    /// `cni-suite doctor` compares it with what each network wants.
    pub fn fingerprint(&self) -> String {
        format!(
            "cni-suite masquerade v1 src={} keep={} bridge={}",
            self.pod_cidr, self.non_masquerade, self.bridge
        )
    }

    fn script(&self) -> String {
        format!(
            "table ip {t}\ndelete table ip {t}\ntable ip {t} {{\n  comment \"{c}\"\n  \
             chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
             ip saddr {src} ip daddr != {keep} oifname != \"{br}\" masquerade\n  }}\n}}\n",
            t = self.table,
            c = self.fingerprint(),
            src = self.pod_cidr,
            keep = self.non_masquerade,
            br = self.bridge
        )
    }
}

/// Makes sure the masquerade table exists with exactly these rules.
pub fn ensure_masquerade(spec: &MasqueradeSpec) -> Result<(), Error> {
    check_table_name(spec.table)?;
    let want = spec.fingerprint();
    if table_comment(spec.table)?.as_deref() == Some(want.as_str()) {
        return Ok(());
    }
    log::info!("programming nftables table ip {}: {want}", spec.table);
    run_nft(&spec.script())
}

/// Removes the table if it exists (masquerade turned off, or the node torn down).
pub fn remove_masquerade(table: &str) -> Result<bool, Error> {
    check_table_name(table)?;
    if table_comment(table)?.is_none() && !table_exists(table)? {
        return Ok(false);
    }
    run_nft(&format!("table ip {table}\ndelete table ip {table}\n"))?;
    Ok(true)
}

fn check_table_name(table: &str) -> Result<(), Error> {
    let ok = table
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && table.len() < 64;
    if ok {
        Ok(())
    } else {
        Err(Error::Firewall(format!(
            "invalid nftables table name {table:?}"
        )))
    }
}

/// The `nft` binary: from PATH, else the usual system locations (runtimes may exec plugins
/// with a minimal environment).
fn nft_binary() -> std::path::PathBuf {
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(std::path::PathBuf::from))
        .map(|dir| dir.join("nft"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| "nft".into())
}

fn run_nft(script: &str) -> Result<(), Error> {
    let mut child = Command::new(nft_binary())
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Firewall(format!("cannot run nft (is nftables installed?): {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| Error::Firewall(format!("writing to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Firewall(format!("waiting for nft: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Firewall(format!(
            "nft failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn table_exists(table: &str) -> Result<bool, Error> {
    Ok(get_table(table)?.is_some())
}

/// The table's comment, or None when the table or its comment is missing.
pub fn table_comment(table: &str) -> Result<Option<String>, Error> {
    let Some(attrs) = get_table(table)? else {
        return Ok(None);
    };
    Ok(attrs
        .iter()
        .find(|(kind, _)| *kind == NFTA_TABLE_USERDATA)
        .and_then(|(_, udata)| parse_comment(udata)))
}

/// Userdata is a list of (type u8, len u8, value) records; the comment is NUL-terminated.
fn parse_comment(mut udata: &[u8]) -> Option<String> {
    while udata.len() >= 2 {
        let (kind, len) = (udata[0], udata[1] as usize);
        let value = udata.get(2..2 + len)?;
        if kind == NFTNL_UDATA_TABLE_COMMENT {
            let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
            return Some(String::from_utf8_lossy(&value[..end]).into_owned());
        }
        udata = &udata[2 + len..];
    }
    None
}

/// NFT_MSG_GETTABLE for `table` in family ip: its attributes, or None if it does not exist.
fn get_table(table: &str) -> Result<Option<Vec<Attr>>, Error> {
    let io = |what: &str, e: std::io::Error| Error::Firewall(format!("{what}: {e}"));
    let mut sock = RawSocket::new(NETLINK_NETFILTER).map_err(|e| io("open netfilter socket", e))?;
    sock.bind_auto()
        .map_err(|e| io("bind netfilter socket", e))?;
    sock.connect(&SocketAddr::new(0, 0))
        .map_err(|e| io("connect netfilter socket", e))?;
    socket::bound(&sock).map_err(|e| Error::Firewall(e.to_string()))?;
    let mut name = table.as_bytes().to_vec();
    name.push(0);
    let attr_len = 4 + name.len();
    let len = 16 + 4 + ((attr_len + 3) & !3);
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE).to_ne_bytes());
    msg.extend_from_slice(&(1u16 | 4).to_ne_bytes()); // NLM_F_REQUEST | NLM_F_ACK
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id
    msg.extend_from_slice(&[NFPROTO_IPV4, 0, 0, 0]); // nfgenmsg: family, version, res_id
    msg.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    msg.extend_from_slice(&NFTA_TABLE_NAME.to_ne_bytes());
    msg.extend_from_slice(&name);
    msg.resize(len, 0);
    sock.send(&msg, 0).map_err(|e| io("send to netfilter", e))?;
    let mut found = None;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = socket::receive(&sock, &mut buf).map_err(|e| Error::Firewall(e.to_string()))?;
        let mut off = 0;
        while off < n {
            let b = &buf[off..n];
            let head = Header::parse(b)
                .ok_or_else(|| Error::Firewall("malformed netfilter reply".into()))?;
            if head.is_error() {
                let code = head
                    .error_code(b)
                    .ok_or_else(|| Error::Firewall("netfilter error without its code".into()))?;
                return match code {
                    0 => Ok(found),
                    c if -c == libc::ENOENT => Ok(None),
                    c => Err(io(
                        "netfilter GETTABLE",
                        std::io::Error::from_raw_os_error(-c),
                    )),
                };
            }
            if head.kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE {
                found = Some(parse_attrs(b.get(20..head.len).unwrap_or_default()));
            }
            off += head.next();
        }
    }
}

fn parse_attrs(mut b: &[u8]) -> Vec<Attr> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((kind, b[4..len].to_vec()));
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_names_the_settings_of_the_rule() {
        let spec = MasqueradeSpec {
            table: "cni-suite-cbr0",
            pod_cidr: "10.244.1.0/24".parse().unwrap_or_default(),
            non_masquerade: "10.0.0.0/8".parse().unwrap_or_default(),
            bridge: "cbr0",
        };
        assert_eq!(
            spec.fingerprint(),
            "cni-suite masquerade v1 src=10.244.1.0/24 keep=10.0.0.0/8 bridge=cbr0"
        );
        assert!(spec
            .script()
            .contains(&format!("comment \"{}\"", spec.fingerprint())));
    }

    #[test]
    fn parses_table_comment_userdata() {
        let mut udata = vec![NFTNL_UDATA_TABLE_COMMENT, 6];
        udata.extend_from_slice(b"hello\0");
        assert_eq!(parse_comment(&udata).as_deref(), Some("hello"));
        assert_eq!(parse_comment(&[1, 2, 0, 0]), None);
        assert_eq!(parse_comment(&[0, 9, b'x']), None);
    }

    #[test]
    fn rejects_table_names_that_would_inject_nft_syntax() {
        assert!(check_table_name("kubenet_cbr0").is_ok());
        for bad in ["", "1abc", "a b", "a;flush ruleset", "a-b"] {
            assert!(check_table_name(bad).is_err(), "{bad:?}");
        }
    }
}
