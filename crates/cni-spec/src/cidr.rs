//! CIDRs (IPv4, or either family) in plugin configurations, decoded with a message that names the value: ipnet's
//! own ("invalid IP address syntax") does not say which of a config's CIDRs is wrong.

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Deserializer};

/// Parses `a.b.c.d/n` (n from 0 to 32); the error quotes the text.
pub fn parse_ipv4(text: &str) -> Result<Ipv4Net, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an IPv4 CIDR (a.b.c.d/n with n from 0 to 32)"))
}

/// `#[serde(deserialize_with = "cni_spec::cidr::ipv4")]` for an `Ipv4Net` field.
pub fn ipv4<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Net, D::Error> {
    let text = String::deserialize(d)?;
    parse_ipv4(&text).map_err(serde::de::Error::custom)
}

/// `#[serde(default, deserialize_with = "cni_spec::cidr::optional_ipv4")]` for an
/// `Option<Ipv4Net>` field (absent or `null` is `None`).
pub fn optional_ipv4<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Net>, D::Error> {
    match Option::<String>::deserialize(d)? {
        Some(text) => parse_ipv4(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
        None => Ok(None),
    }
}

/// Parses an IPv4 (`a.b.c.d/n`) or IPv6 (`fd00::/64`) CIDR; the error quotes the text.
pub fn parse_ip(text: &str) -> Result<IpNet, String> {
    text.parse().map_err(|_| {
        format!("{text:?} is not a CIDR (a.b.c.d/n with n up to 32, or an IPv6 prefix such as fd00::/64)")
    })
}

/// `#[serde(default, deserialize_with = "cni_spec::cidr::optional_ip")]` for an
/// `Option<IpNet>` field of either family (absent or `null` is `None`).
pub fn optional_ip<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpNet>, D::Error> {
    match Option::<String>::deserialize(d)? {
        Some(text) => parse_ip(&text).map(Some).map_err(serde::de::Error::custom),
        None => Ok(None),
    }
}

/// `#[serde(default, deserialize_with = "cni_spec::cidr::optional_ip_list")]` for an
/// `Option<Vec<IpNet>>` field: a list of CIDRs of either family (absent or `null` is `None`).
pub fn optional_ip_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<IpNet>>, D::Error> {
    match Option::<Vec<String>>::deserialize(d)? {
        Some(list) => list
            .iter()
            .map(|t| parse_ip(t))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
            .map_err(serde::de::Error::custom),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Conf {
        #[serde(deserialize_with = "ipv4")]
        range: Ipv4Net,
        #[serde(default, deserialize_with = "optional_ipv4")]
        extra: Option<Ipv4Net>,
    }

    fn decode(json: &str) -> Result<Conf, String> {
        serde_json::from_str::<Conf>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn accepts_cidrs_and_names_the_bad_value() {
        let c = decode(r#"{"range":"10.1.0.0/16"}"#).unwrap();
        assert_eq!(c.range.to_string(), "10.1.0.0/16");
        assert_eq!(c.extra, None);
        let c = decode(r#"{"range":"10.1.0.0/16","extra":"10.2.0.0/24"}"#).unwrap();
        assert_eq!(c.extra.map(|n| n.prefix_len()), Some(24));
        for bad in [
            "100.96.300.0/24",
            "100.96.3.0/33",
            "10.0.0.0",
            "fd00::/64",
            "",
        ] {
            let e = decode(&format!(r#"{{"range":"{bad}"}}"#)).unwrap_err();
            assert!(
                e.contains(&format!("{bad:?} is not an IPv4 CIDR")),
                "{bad}: {e}"
            );
            let e = decode(&format!(r#"{{"range":"10.0.0.0/8","extra":"{bad}"}}"#)).unwrap_err();
            assert!(e.contains("is not an IPv4 CIDR"), "{bad}: {e}");
        }
        assert!(decode(r#"{"range":8}"#).is_err());
    }

    #[test]
    fn either_family_and_lists_name_the_bad_value() {
        assert_eq!(
            parse_ip("fd00:10::/64").unwrap().to_string(),
            "fd00:10::/64"
        );
        assert_eq!(parse_ip("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        for bad in ["fd00::/129", "fd00::", "10.0.0.0/33", "x"] {
            assert!(parse_ip(bad)
                .unwrap_err()
                .contains(&format!("{bad:?} is not a CIDR")));
        }
        #[derive(Debug, Deserialize)]
        struct L {
            #[serde(default, deserialize_with = "optional_ip_list")]
            list: Option<Vec<IpNet>>,
        }
        let l: L = serde_json::from_str(r#"{"list":["10.0.0.0/8","fc00::/7"]}"#).unwrap();
        assert_eq!(l.list.map(|v| v.len()), Some(2));
        let e = serde_json::from_str::<L>(r#"{"list":["10.0.0.0/8","nope"]}"#).unwrap_err();
        assert!(e.to_string().contains("\"nope\" is not a CIDR"), "{e}");
    }
}
