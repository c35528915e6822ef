//! The spec's error object and its well-known codes.

use serde::Serialize;
use serde_json::Value;

/// Error codes the spec reserves (1-99), plus this suite's own (100 and up).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid or missing environment variables.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODING_FAILURE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin is not available (cannot serve ADD).
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// STATUS: limited connectivity.
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// The node's address range has no free address.
    pub const RANGE_EXHAUSTED: u32 = 100;
    /// A link, address or route could not be set up over netlink.
    pub const NETLINK: u32 = 101;
    /// The sandbox already has this interface: DEL it before a new ADD.
    pub const ALREADY_ATTACHED: u32 = 102;
    /// A link with the bridge's name exists and is not a bridge.
    pub const NOT_A_BRIDGE: u32 = 103;
    /// CHECK found the sandbox differing from the recorded result.
    pub const CHECK_MISMATCH: u32 = 104;
    /// The node firewall (nftables) could not be programmed.
    pub const FIREWALL: u32 = 105;
    /// The cloud route table is full (route quota reached).
    pub const ROUTE_QUOTA: u32 = 110;
    /// A route for the pod CIDR exists and points elsewhere.
    pub const ROUTE_CONFLICT: u32 = 111;
    /// The cloud API did not answer within the deadline.
    pub const CLOUD_DEADLINE: u32 = 112;
    /// The cloud API refused or failed a request.
    pub const CLOUD_API: u32 = 113;
    /// No route table of the cluster was found (or a listed one does not exist).
    pub const NO_ROUTE_TABLES: u32 = 114;
    /// A node-level cloud operation (deregister, gc) finished only in part.
    pub const CLOUD_INCOMPLETE: u32 = 115;
    /// A bug: the plugin panicked. Never expected; the details say where.
    pub const INTERNAL: u32 = 199;
}

/// The error object a plugin prints on stdout: `{cniVersion, code, msg, details}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CniError {
    /// One of [`code`].
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer detail, left out when empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// An error with a code and a message.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
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
        out.insert("code".into(), Value::from(self.code));
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
        let e = CniError::new(code::INVALID_ENVIRONMENT, "CNI_IFNAME is missing");
        let v = e.to_json("1.0.0");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["code"], 4);
        assert_eq!(v["msg"], "CNI_IFNAME is missing");
        assert!(v.get("details").is_none());
        let v = e.with_details("set it").to_json("0.4.0");
        assert_eq!(v["details"], "set it");
    }
}
