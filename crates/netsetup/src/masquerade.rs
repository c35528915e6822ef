//! Source NAT for pod traffic leaving the cluster: one nftables table per node bridge and
//! address family (`table ip <name>` for IPv4, `table ip6 <name>` for IPv6: the IPv4 table is
//! the one of releases before dual-stack, unchanged, so an upgraded node reprograms nothing,
//! and an IPv4-only network looks up one table per ADD, as before).
//!
//! The table carries a comment that fingerprints its rules. Each ADD asks the kernel for the
//! table over one netfilter netlink round trip (no fork); only when it is missing or its
//! fingerprint differs is `nft -f -` run, once, to replace it in one transaction.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::socket::{Netfilter, RawMessage, Request, Socket};
use crate::Error;
use ipnet::IpNet;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_USERDATA: u16 = 6;
const NFTNL_UDATA_TABLE_COMMENT: u8 = 0;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

/// A netlink attribute: (type, payload).
type Attr = (u16, Vec<u8>);

/// What to masquerade.
#[derive(Clone, Debug)]
pub struct MasqueradeSpec<'a> {
    /// The nftables table that holds the rule (family ip, or ip6 for an IPv6 `pod_cidr`).
    pub table: &'a str,
    /// Sources to masquerade: the node's pod range of one family.
    pub pod_cidr: IpNet,
    /// Destinations not masqueraded (the cluster, kubenet's nonMasqueradeCIDR), of
    /// `pod_cidr`'s family; empty masquerades every destination off the bridge.
    pub non_masquerade: &'a [IpNet],
    /// The bridge: traffic that goes back out of it stays on the node and is not NATed.
    pub bridge: &'a str,
}

impl MasqueradeSpec<'_> {
    /// The comment the table carries: ADD reprograms the table when it differs, and
    /// `cni-suite doctor` compares it with what each network wants.
    pub fn fingerprint(&self) -> String {
        format!(
            "cni-suite masquerade v1 src={} keep={} bridge={}",
            self.pod_cidr,
            self.keep_list(","),
            self.bridge
        )
    }

    fn keep_list(&self, sep: &str) -> String {
        self.non_masquerade
            .iter()
            .map(IpNet::to_string)
            .collect::<Vec<_>>()
            .join(sep)
    }

    /// True for the ip6 table.
    pub fn is_ipv6(&self) -> bool {
        matches!(self.pod_cidr, IpNet::V6(_))
    }

    fn script(&self) -> String {
        let (family, proto) = nft_family(self.is_ipv6());
        let keep = match self.non_masquerade {
            [] => String::new(),
            [one] => format!("{proto} daddr != {one} "),
            _ => format!("{proto} daddr != {{ {} }} ", self.keep_list(", ")),
        };
        format!(
            "table {family} {t}\ndelete table {family} {t}\ntable {family} {t} {{\n  comment \"{c}\"\n  \
             chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
             {proto} saddr {src} {keep}oifname != \"{br}\" masquerade\n  }}\n}}\n",
            t = self.table,
            c = self.fingerprint(),
            src = self.pod_cidr,
            br = self.bridge
        )
    }
}

/// The nft table family and the match protocol of one address family.
fn nft_family(v6: bool) -> (&'static str, &'static str) {
    if v6 {
        ("ip6", "ip6")
    } else {
        ("ip", "ip")
    }
}

/// Makes sure the masquerade table exists with exactly these rules.
pub fn ensure_masquerade(spec: &MasqueradeSpec) -> Result<(), Error> {
    check_table_name(spec.table)?;
    let want = spec.fingerprint();
    let v6 = spec.is_ipv6();
    if table_comment_of(spec.table, v6)?.as_deref() == Some(want.as_str()) {
        return Ok(());
    }
    let (family, _) = nft_family(v6);
    log::info!("programming nftables table {family} {}: {want}", spec.table);
    run_nft(&spec.script())
}

/// What one network wants of its masquerade tables, one per family of its ranges.
#[derive(Clone, Debug)]
pub enum Want<'a> {
    /// The table with exactly this rule.
    Rule(MasqueradeSpec<'a>),
    /// No table `table` of this family (IPv6 when `v6`): masquerade off.
    Absent {
        /// The table's name.
        table: &'a str,
        /// Its family.
        v6: bool,
    },
}

/// Makes every table of `wants` as it says: all of them looked up in one batch on one
/// netfilter socket (a dual-stack ADD costs one round trip, as an IPv4-only one), and `nft`
/// run only for those that differ.
pub fn ensure_all(wants: &[Want]) -> Result<(), Error> {
    let lookups: Vec<(&str, bool)> = wants
        .iter()
        .map(|w| match w {
            Want::Rule(spec) => (spec.table, spec.is_ipv6()),
            Want::Absent { table, v6 } => (*table, *v6),
        })
        .collect();
    for (table, _) in &lookups {
        check_table_name(table)?;
    }
    let found = get_tables(&lookups)?;
    for (want, attrs) in wants.iter().zip(found) {
        match want {
            Want::Rule(spec) => {
                let fingerprint = spec.fingerprint();
                if attrs.as_deref().and_then(comment_of).as_deref() == Some(fingerprint.as_str()) {
                    continue;
                }
                let (family, _) = nft_family(spec.is_ipv6());
                log::info!(
                    "programming nftables table {family} {}: {fingerprint}",
                    spec.table
                );
                run_nft(&spec.script())?;
            }
            Want::Absent { table, v6 } => {
                if attrs.is_some() {
                    let (family, _) = nft_family(*v6);
                    run_nft(&format!(
                        "table {family} {table}\ndelete table {family} {table}\n"
                    ))?;
                }
            }
        }
    }
    Ok(())
}

/// Removes the IPv4 table if it exists (masquerade turned off, or the node torn down).
pub fn remove_masquerade(table: &str) -> Result<bool, Error> {
    remove_masquerade_of(table, false)
}

/// Removes the table of one family (ip6 when `v6`) if it exists.
pub fn remove_masquerade_of(table: &str, v6: bool) -> Result<bool, Error> {
    check_table_name(table)?;
    if get_table(table, v6)?.is_none() {
        return Ok(false);
    }
    let (family, _) = nft_family(v6);
    run_nft(&format!(
        "table {family} {table}\ndelete table {family} {table}\n"
    ))?;
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

/// The IPv4 table's comment, or None when the table or its comment is missing.
pub fn table_comment(table: &str) -> Result<Option<String>, Error> {
    table_comment_of(table, false)
}

/// The comment of the table of one family (ip6 when `v6`), or None when the table or its
/// comment is missing.
pub fn table_comment_of(table: &str, v6: bool) -> Result<Option<String>, Error> {
    Ok(get_table(table, v6)?.as_deref().and_then(comment_of))
}

/// The comment among a table's attributes.
fn comment_of(attrs: &[Attr]) -> Option<String> {
    attrs
        .iter()
        .find(|(kind, _)| *kind == NFTA_TABLE_USERDATA)
        .and_then(|(_, udata)| parse_comment(udata))
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

/// NFT_MSG_GETTABLE for `table` in family ip (ip6 when `v6`): its attributes, or None if it
/// does not exist.
fn get_table(table: &str, v6: bool) -> Result<Option<Vec<Attr>>, Error> {
    Ok(get_tables(&[(table, v6)])?.pop().flatten())
}

/// NFT_MSG_GETTABLE for each (table, IPv6?) in one batch on one socket: each one's attributes,
/// or None where it does not exist.
fn get_tables(tables: &[(&str, bool)]) -> Result<Vec<Option<Vec<Attr>>>, Error> {
    let firewall = |e: Error| Error::Firewall(e.to_string());
    let mut sock = Socket::<Netfilter>::open().map_err(firewall)?;
    let requests = tables
        .iter()
        .map(|(table, v6)| {
            let mut name = table.as_bytes().to_vec();
            name.push(0);
            let attr_len = 4 + name.len();
            let mut payload = Vec::with_capacity(4 + ((attr_len + 3) & !3));
            let family = if *v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 };
            payload.extend_from_slice(&[family, 0, 0, 0]); // nfgenmsg: family, version, res_id
            payload.extend_from_slice(&(attr_len as u16).to_ne_bytes());
            payload.extend_from_slice(&NFTA_TABLE_NAME.to_ne_bytes());
            payload.extend_from_slice(&name);
            payload.resize(4 + ((attr_len + 3) & !3), 0);
            Request::new(
                RawMessage {
                    kind: (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE,
                    payload,
                },
                0,
                format!("netfilter GETTABLE {table}"),
            )
        })
        .collect();
    let mut out = Vec::with_capacity(tables.len());
    for (what, reply) in sock.batch(requests).map_err(firewall)? {
        match reply {
            Ok(replies) => out.push(
                replies
                    .iter()
                    .find(|m| m.kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE)
                    // After the nfgenmsg (4 bytes) come the table's attributes.
                    .map(|m| parse_attrs(m.payload.get(4..).unwrap_or_default())),
            ),
            Err(source) if source.raw_os_error() == Some(libc::ENOENT) => out.push(None),
            Err(source) => return Err(firewall(Error::Netlink { what, source })),
        }
    }
    Ok(out)
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
        let keep = ["10.0.0.0/8".parse().unwrap_or_default()];
        let spec = MasqueradeSpec {
            table: "cni-suite-cbr0",
            pod_cidr: "10.244.1.0/24".parse().unwrap_or_default(),
            non_masquerade: &keep,
            bridge: "cbr0",
        };
        // The release before dual-stack wrote exactly this: an upgraded node keeps its table.
        assert_eq!(
            spec.fingerprint(),
            "cni-suite masquerade v1 src=10.244.1.0/24 keep=10.0.0.0/8 bridge=cbr0"
        );
        assert!(spec
            .script()
            .contains(&format!("comment \"{}\"", spec.fingerprint())));
        assert!(spec
            .script()
            .contains("ip saddr 10.244.1.0/24 ip daddr != 10.0.0.0/8 oifname != \"cbr0\""));
    }

    #[test]
    fn ipv6_rules_go_to_an_ip6_table_with_every_kept_range() {
        let keep: Vec<IpNet> = ["fc00::/7", "2001:db8::/32"]
            .iter()
            .map(|s| s.parse().unwrap_or_default())
            .collect();
        let spec = MasqueradeSpec {
            table: "cni_suite_cbr0",
            pod_cidr: "fd00:10:244:1::/64".parse().unwrap_or_default(),
            non_masquerade: &keep,
            bridge: "cbr0",
        };
        assert!(spec.is_ipv6());
        assert_eq!(
            spec.fingerprint(),
            "cni-suite masquerade v1 src=fd00:10:244:1::/64 keep=fc00::/7,2001:db8::/32 bridge=cbr0"
        );
        let script = spec.script();
        assert!(
            script.starts_with("table ip6 cni_suite_cbr0\ndelete table ip6 cni_suite_cbr0\n"),
            "{script}"
        );
        assert!(
            script.contains(
                "ip6 saddr fd00:10:244:1::/64 ip6 daddr != { fc00::/7, 2001:db8::/32 } oifname != \"cbr0\" masquerade"
            ),
            "{script}"
        );
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
