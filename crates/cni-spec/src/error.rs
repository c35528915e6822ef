//! The spec's error object and its well-known codes.

use serde::Serialize;
use serde_json::Value;

/// The code of an error object: the spec's (1-99) and this suite's own (100 and up). It
/// serializes as the bare integer the spec prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum Code {
    /// Incompatible CNI version.
    IncompatibleVersion = 1,
    /// Unsupported field in the network configuration.
    UnsupportedField = 2,
    /// Container unknown or does not exist.
    UnknownContainer = 3,
    /// Invalid or missing environment variables.
    InvalidEnvironment = 4,
    /// I/O failure.
    IoFailure = 5,
    /// Failed to decode content.
    DecodingFailure = 6,
    /// Invalid network config.
    InvalidNetworkConfig = 7,
    /// Try again later.
    TryAgainLater = 11,
    /// STATUS: the plugin is not available (cannot serve ADD).
    PluginNotAvailable = 50,
    /// STATUS: limited connectivity.
    LimitedConnectivity = 51,
    /// The node's address range has no free address.
    RangeExhausted = 100,
    /// A link, address or route could not be set up over netlink.
    Netlink = 101,
    /// The sandbox already has this interface: DEL it before a new ADD.
    AlreadyAttached = 102,
    /// A link with the bridge's name exists and is not a bridge.
    NotABridge = 103,
    /// CHECK found the sandbox differing from the recorded result.
    CheckMismatch = 104,
    /// The node firewall (nftables) could not be programmed.
    Firewall = 105,
    /// The address a runtime asked for (`CNI_ARGS` `IP=`, the `ips` capability) cannot be
    /// leased: outside the node's range, reserved, or held by another attachment.
    AddressUnavailable = 106,
    /// The cloud route table is full (route quota reached).
    RouteQuota = 110,
    /// A route for the pod CIDR exists and points elsewhere.
    RouteConflict = 111,
    /// The cloud API did not answer within the deadline.
    CloudDeadline = 112,
    /// The cloud API refused or failed a request.
    CloudApi = 113,
    /// No route table of the cluster was found (or a listed one does not exist).
    NoRouteTables = 114,
    /// A node-level cloud operation (deregister, gc) finished only in part.
    CloudIncomplete = 115,
    /// A bug: the plugin panicked. Never expected; the details say where.
    Internal = 199,
}

impl Code {
    /// The integer printed in the error object.
    pub const fn as_u32(self) -> u32 {
        self as u32
    }
}

impl From<Code> for u32 {
    fn from(c: Code) -> u32 {
        c.as_u32()
    }
}

/// Lets tests compare a code with the number the spec or the README gives.
impl PartialEq<u32> for Code {
    fn eq(&self, other: &u32) -> bool {
        self.as_u32() == *other
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.as_u32())
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.as_u32())
    }
}

/// An error that knows the code it answers with. Each crate implements it once, for its own
/// error type; cni-skel alone turns such an error into the error object a plugin prints.
pub trait ErrorCode: std::error::Error {
    /// The code this error answers with.
    fn code(&self) -> Code;
}

/// The error object a plugin prints on stdout: `{cniVersion, code, msg, details}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CniError {
    /// What kind of failure, as the spec numbers it.
    pub code: Code,
    /// Short message.
    pub msg: String,
    /// Longer detail, left out when empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// An error with a code and a message.
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The JSON printed on stdout, with `cniVersion` first.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut out = serde_json::Map::new();
        out.insert("cniVersion".into(), Value::from(cni_version));
        out.insert("code".into(), Value::from(self.code.as_u32()));
        out.insert("msg".into(), Value::from(self.msg.as_str()));
        if !self.details.is_empty() {
            out.insert("details".into(), Value::from(self.details.as_str()));
        }
        Value::Object(out)
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_spec_shape() {
        let e = CniError::new(Code::InvalidEnvironment, "CNI_IFNAME is missing");
        let v = e.to_json("1.0.0");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["code"], 4);
        assert_eq!(v["msg"], "CNI_IFNAME is missing");
        assert!(v.get("details").is_none());
        assert_eq!(serde_json::to_value(e.code).unwrap_or_default(), 4);
        let v = e.with_details("set it").to_json("0.4.0");
        assert_eq!(v["details"], "set it");
    }

    #[test]
    fn codes_are_the_spec_numbers() {
        let all = [
            (Code::IncompatibleVersion, 1),
            (Code::UnsupportedField, 2),
            (Code::UnknownContainer, 3),
            (Code::InvalidEnvironment, 4),
            (Code::IoFailure, 5),
            (Code::DecodingFailure, 6),
            (Code::InvalidNetworkConfig, 7),
            (Code::TryAgainLater, 11),
            (Code::PluginNotAvailable, 50),
            (Code::LimitedConnectivity, 51),
            (Code::RangeExhausted, 100),
            (Code::Netlink, 101),
            (Code::AlreadyAttached, 102),
            (Code::NotABridge, 103),
            (Code::CheckMismatch, 104),
            (Code::Firewall, 105),
            (Code::AddressUnavailable, 106),
            (Code::RouteQuota, 110),
            (Code::RouteConflict, 111),
            (Code::CloudDeadline, 112),
            (Code::CloudApi, 113),
            (Code::NoRouteTables, 114),
            (Code::CloudIncomplete, 115),
            (Code::Internal, 199),
        ];
        for (c, n) in all {
            assert_eq!(c.as_u32(), n);
            assert_eq!(serde_json::to_string(&c).unwrap_or_default(), n.to_string());
            assert_eq!(CniError::new(c, "m").to_json("1.0.0")["code"], n);
            assert_eq!(CniError::new(c, "m").to_string(), format!("[{n}] m"));
        }
    }
}
