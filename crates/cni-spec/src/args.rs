//! `CNI_ARGS` (`K=V;K=V`), read as libcni's `types.LoadArgs` reads it, and what a runtime
//! asks of an attachment through it or through the `ips` and `mac` capabilities.

use std::net::IpAddr;
use std::str::FromStr;

use crate::error::{CniError, Code};

/// A hardware address, `aa:bb:cc:dd:ee:ff` in text.
pub type Mac = [u8; 6];

/// An address a runtime asks for: `<ip>[/<prefix>]`, as the `IP` key of `CNI_ARGS` and the
/// `ips` capability write it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestedIp {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length, when the request gives one.
    pub prefix: Option<u8>,
}

impl FromStr for RequestedIp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => None,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => Some(n),
                _ => return Err(format!("{s:?} has an invalid prefix length")),
            },
        };
        Ok(RequestedIp { addr, prefix })
    }
}

/// Parses a unicast hardware address `aa:bb:cc:dd:ee:ff` (or with `-`), as the kernel accepts
/// one for an interface: not multicast, not all zeros.
pub fn parse_mac(s: &str) -> Result<Mac, String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let mut mac = [0u8; 6];
    let well_formed = parts.len() == 6
        && parts.iter().zip(mac.iter_mut()).all(|(part, byte)| {
            part.len() == 2
                && part.bytes().all(|c| c.is_ascii_hexdigit())
                && u8::from_str_radix(part, 16).map(|b| *byte = b).is_ok()
        });
    if !well_formed {
        return Err(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
    }
    if mac[0] & 1 == 1 || mac == [0; 6] {
        return Err(format!("{s:?} is not a unicast MAC address"));
    }
    Ok(mac)
}

/// The keys of `CNI_ARGS` this suite knows; any other is refused unless `IgnoreUnknown` is
/// set, as libcni's `LoadArgs` refuses it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// `IgnoreUnknown`: `1`/`true` (any case) lets unknown keys through.
    pub ignore_unknown: bool,
    /// `K8S_POD_NAMESPACE`, set by kubelet and CRI runtimes.
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub pod_name: Option<String>,
    /// `K8S_POD_INFRA_CONTAINER_ID`.
    pub pod_infra_container_id: Option<String>,
    /// `K8S_POD_UID`.
    pub pod_uid: Option<String>,
    /// `IP`: the address asked for (host-local's and static's convention).
    pub ip: Option<RequestedIp>,
    /// `MAC`: the pod interface's hardware address (the reference bridge's convention).
    pub mac: Option<Mac>,
}

impl CniArgs {
    /// Parses `CNI_ARGS` as libcni does: empty means none; otherwise pairs split at `;`, each
    /// exactly one `=` (so an empty pair, a trailing `;`, or a value with `=` is malformed);
    /// the last of a repeated key wins. Malformed text, a bad value of a known key, or an
    /// unknown key without `IgnoreUnknown` is code 4, naming `CNI_ARGS`.
    pub fn parse(text: &str) -> Result<CniArgs, CniError> {
        let mut args = CniArgs::default();
        if text.is_empty() {
            return Ok(args);
        }
        let mut unknown = Vec::new();
        for pair in text.split(';') {
            let (key, value) = match pair.split('=').collect::<Vec<_>>()[..] {
                [key, value] => (key, value),
                _ => return Err(invalid(format!("CNI_ARGS has an invalid pair {pair:?}"))),
            };
            let bad_value =
                |why: String| invalid(format!("CNI_ARGS: bad value of {key} in {pair:?}: {why}"));
            match key {
                "IgnoreUnknown" => {
                    args.ignore_unknown = match value.to_ascii_lowercase().as_str() {
                        "1" | "true" => true,
                        "0" | "false" => false,
                        _ => return Err(bad_value("expected 1, true, 0 or false".into())),
                    }
                }
                "K8S_POD_NAMESPACE" => args.pod_namespace = Some(value.to_string()),
                "K8S_POD_NAME" => args.pod_name = Some(value.to_string()),
                "K8S_POD_INFRA_CONTAINER_ID" => {
                    args.pod_infra_container_id = Some(value.to_string())
                }
                "K8S_POD_UID" => args.pod_uid = Some(value.to_string()),
                "IP" => args.ip = Some(value.parse().map_err(bad_value)?),
                "MAC" => args.mac = Some(parse_mac(value).map_err(bad_value)?),
                _ => unknown.push(pair),
            }
        }
        if !unknown.is_empty() && !args.ignore_unknown {
            return Err(
                invalid(format!("CNI_ARGS has unknown keys {unknown:?}")).with_details(
                    "known: IgnoreUnknown, K8S_POD_NAMESPACE, K8S_POD_NAME, \
                     K8S_POD_INFRA_CONTAINER_ID, K8S_POD_UID, IP, MAC; \
                     add IgnoreUnknown=1 to ignore the others",
                ),
            );
        }
        Ok(args)
    }
}

/// What a runtime asks of one attachment: the addresses and the MAC of its interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttachmentRequest {
    /// Addresses asked for; empty lets the plugin choose.
    pub ips: Vec<RequestedIp>,
    /// The pod interface's MAC; None lets the plugin choose.
    pub mac: Option<Mac>,
}

impl AttachmentRequest {
    /// Reads `{"ips": [...], "mac": "..."}` from `object` (a `runtimeConfig` or `args.cni`
    /// object) at `path`, for messages; a value that does not parse is code 7.
    pub fn from_object(
        object: Option<&serde_json::Value>,
        path: &str,
    ) -> Result<AttachmentRequest, CniError> {
        let mut request = AttachmentRequest::default();
        let Some(object) = object else {
            return Ok(request);
        };
        let wrong = |field: &str, why: String| {
            CniError::new(
                Code::InvalidNetworkConfig,
                format!("{path}.{field} is invalid: {why}"),
            )
        };
        match object.get("ips") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Array(list)) => {
                for (i, ip) in list.iter().enumerate() {
                    let text = ip
                        .as_str()
                        .ok_or_else(|| wrong(&format!("ips[{i}]"), "not a string".into()))?;
                    let ip = text.parse().map_err(|e| wrong(&format!("ips[{i}]"), e))?;
                    request.ips.push(ip);
                }
            }
            Some(_) => return Err(wrong("ips", "not a list".into())),
        }
        match object.get("mac") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(mac)) if mac.is_empty() => {}
            Some(serde_json::Value::String(mac)) => {
                request.mac = Some(parse_mac(mac).map_err(|e| wrong("mac", e))?);
            }
            Some(_) => return Err(wrong("mac", "not a string".into())),
        }
        Ok(request)
    }

    /// The request that applies, each part from the first source that sets it: the
    /// capabilities (`runtimeConfig`), then `args.cni`, then `CNI_ARGS`. CONVENTIONS.md: a
    /// plugin that understands `args` must ignore the equivalent `CNI_ARGS` field; the
    /// reference bridge lets `runtimeConfig.mac` win the same way.
    pub fn first_set(
        runtime_config: &AttachmentRequest,
        args_cni: &AttachmentRequest,
        cni_args: &CniArgs,
    ) -> AttachmentRequest {
        let ips = [&runtime_config.ips, &args_cni.ips]
            .into_iter()
            .find(|ips| !ips.is_empty())
            .cloned()
            .unwrap_or_else(|| cni_args.ip.into_iter().collect());
        AttachmentRequest {
            ips,
            mac: runtime_config.mac.or(args_cni.mac).or(cni_args.mac),
        }
    }
}

fn invalid(msg: String) -> CniError {
    CniError::new(Code::InvalidEnvironment, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_args_parse() {
        let a = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=9f1c",
        )
        .unwrap();
        assert!(a.ignore_unknown);
        assert_eq!(a.pod_namespace.as_deref(), Some("default"));
        assert_eq!(a.pod_name.as_deref(), Some("web-0"));
        assert_eq!(a.pod_infra_container_id.as_deref(), Some("abc123"));
        assert_eq!(a.pod_uid.as_deref(), Some("9f1c"));
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
    }

    #[test]
    fn malformed_text_is_code_4_naming_cni_args() {
        for bad in [";", "A", "K8S_POD_NAME=a;", "K8S_POD_NAME=a=b", "=;", "IP"] {
            let e = CniArgs::parse(bad).unwrap_err();
            assert_eq!(e.code, Code::InvalidEnvironment, "{bad:?}");
            assert!(e.msg.contains("CNI_ARGS"), "{bad:?}: {}", e.msg);
        }
        // An empty key or value is still a pair, as in libcni.
        assert!(CniArgs::parse("K8S_POD_NAME=").is_ok());
    }

    #[test]
    fn unknown_keys_need_ignore_unknown_wherever_it_stands() {
        let e = CniArgs::parse("FOO=bar;K8S_POD_NAME=x").unwrap_err();
        assert_eq!(e.code, 4);
        assert!(
            e.msg.contains("CNI_ARGS") && e.msg.contains("FOO=bar"),
            "{}",
            e.msg
        );
        for ok in [
            "FOO=bar;IgnoreUnknown=1",
            "IgnoreUnknown=true;FOO=bar",
            "IgnoreUnknown=TRUE;FOO=bar",
            "IgnoreUnknown=True;FOO=bar",
        ] {
            assert!(CniArgs::parse(ok).unwrap().ignore_unknown, "{ok}");
        }
        assert_eq!(
            CniArgs::parse("IgnoreUnknown=0;FOO=bar").unwrap_err().code,
            4
        );
        assert_eq!(
            CniArgs::parse("IgnoreUnknown=false;FOO=bar")
                .unwrap_err()
                .code,
            4
        );
        assert_eq!(CniArgs::parse("IgnoreUnknown=yes").unwrap_err().code, 4);
        // Keys are case-sensitive, as Go's field lookup is.
        assert_eq!(CniArgs::parse("ignoreunknown=1").unwrap_err().code, 4);
    }

    #[test]
    fn capabilities_win_over_args_which_win_over_cni_args() {
        let runtime = AttachmentRequest::from_object(
            Some(&serde_json::json!({"ips": ["10.244.1.7/24"], "mac": "0a:58:00:00:00:07"})),
            "runtimeConfig",
        )
        .unwrap();
        let args_cni = AttachmentRequest::from_object(
            Some(&serde_json::json!({"ips": ["10.244.1.8"]})),
            "args.cni",
        )
        .unwrap();
        let cni_args = CniArgs::parse("IP=10.244.1.9;MAC=0a:58:00:00:00:09").unwrap();
        let none = AttachmentRequest::default();
        let ip = |s: &str| s.parse::<RequestedIp>().unwrap();
        let r = AttachmentRequest::first_set(&runtime, &args_cni, &cni_args);
        assert_eq!(r.ips, [ip("10.244.1.7/24")]);
        assert_eq!(r.mac, Some([0x0a, 0x58, 0, 0, 0, 7]));
        let r = AttachmentRequest::first_set(&none, &args_cni, &cni_args);
        assert_eq!(r.ips, [ip("10.244.1.8")]);
        assert_eq!(r.mac, Some([0x0a, 0x58, 0, 0, 0, 9]));
        let r = AttachmentRequest::first_set(&none, &none, &cni_args);
        assert_eq!(r.ips, [ip("10.244.1.9")]);
        let r = AttachmentRequest::first_set(&none, &none, &CniArgs::default());
        assert_eq!(r, AttachmentRequest::default());
        for bad in [
            serde_json::json!({"ips": "10.0.0.1"}),
            serde_json::json!({"ips": [1]}),
            serde_json::json!({"ips": ["x"]}),
            serde_json::json!({"mac": "ff:ff:ff:ff:ff:ff"}),
            serde_json::json!({"mac": 7}),
        ] {
            let e = AttachmentRequest::from_object(Some(&bad), "runtimeConfig").unwrap_err();
            assert_eq!(e.code, Code::InvalidNetworkConfig, "{bad}");
            assert!(e.msg.starts_with("runtimeConfig."), "{}", e.msg);
        }
    }

    #[test]
    fn ip_and_mac_values_are_checked() {
        let a = CniArgs::parse("IP=10.244.1.42;MAC=0a:58:0a:f4:01:2a").unwrap();
        assert_eq!(
            a.ip,
            Some(RequestedIp {
                addr: "10.244.1.42".parse().unwrap(),
                prefix: None
            })
        );
        assert_eq!(a.mac, Some([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x2a]));
        let a = CniArgs::parse("IP=10.244.1.42/24").unwrap();
        assert_eq!(a.ip.unwrap().prefix, Some(24));
        assert_eq!(
            CniArgs::parse("IP=fd00::5/64").unwrap().ip.unwrap().prefix,
            Some(64)
        );
        for bad in [
            "IP=banana",
            "IP=",
            "IP=10.0.0.1/33",
            "MAC=01:00:5e:00:00:01",
            "MAC=00:00:00:00:00:00",
            "MAC=0a:58:0a",
            "MAC=zz:58:0a:f4:01:2a",
        ] {
            let e = CniArgs::parse(bad).unwrap_err();
            assert_eq!(e.code, 4, "{bad}");
            assert!(e.msg.starts_with("CNI_ARGS"), "{bad}: {}", e.msg);
        }
    }
}
