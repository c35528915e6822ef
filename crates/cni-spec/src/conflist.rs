//! Network configuration lists as runtimes read them from their conf dir, and finding one
//! plugin's entry in them.

use serde_json::Value;

use crate::error::{CniError, Code};

/// A network configuration list (a `.conflist`); a single plugin config (a `.conf`) reads as
/// a list of one. The plugin objects are kept as written: each plugin decodes its own.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfList {
    /// `name`.
    pub name: String,
    /// `cniVersion`.
    pub cni_version: String,
    /// The plugin objects, in chain order; each has a non-empty `type`.
    pub plugins: Vec<Value>,
}

impl ConfList {
    /// Parses a conflist or a single plugin config. Refuses what a runtime cannot run: no
    /// `name` or `cniVersion`, an empty `plugins`, a plugin without `type`.
    pub fn parse(bytes: &[u8]) -> Result<ConfList, CniError> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| CniError::new(Code::DecodingFailure, format!("not JSON: {e}")))?;
        let invalid = |msg: &str| CniError::new(Code::InvalidNetworkConfig, msg);
        let obj = v.as_object().ok_or_else(|| invalid("not a JSON object"))?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid("no \"name\""))?
            .to_string();
        let cni_version = obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("no \"cniVersion\""))?
            .to_string();
        let plugins = match obj.get("plugins") {
            Some(Value::Array(list)) if !list.is_empty() => list.clone(),
            Some(_) => return Err(invalid("\"plugins\" is not a non-empty list")),
            None => vec![v.clone()],
        };
        for (i, p) in plugins.iter().enumerate() {
            if p["type"].as_str().is_none_or(str::is_empty) {
                return Err(invalid(&format!("plugin {i} has no \"type\"")));
            }
        }
        Ok(ConfList {
            name,
            cni_version,
            plugins,
        })
    }

    /// The `type` of every plugin, in chain order.
    pub fn types(&self) -> Vec<&str> {
        self.plugins
            .iter()
            .map(|p| p["type"].as_str().unwrap_or(""))
            .collect()
    }

    /// The first plugin object whose `type` is `plugin_type`.
    pub fn entry(&self, plugin_type: &str) -> Option<&Value> {
        self.plugins.iter().find(|p| p["type"] == plugin_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lists_and_single_configs() {
        let l = ConfList::parse(br#"{"cniVersion":"1.0.0","name":"k","plugins":[{"type":"kubenet-bridge","podCIDR":"10.1.0.0/24"},{"type":"portmap"},{"type":"portmap","x":1}]}"#);
        let l = l.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((l.name.as_str(), l.cni_version.as_str()), ("k", "1.0.0"));
        assert_eq!(l.types(), ["kubenet-bridge", "portmap", "portmap"]);
        assert_eq!(
            l.entry("kubenet-bridge").map(|p| &p["podCIDR"]),
            Some(&Value::from("10.1.0.0/24"))
        );
        assert_eq!(l.entry("portmap").map(|p| p.get("x").is_none()), Some(true));
        assert_eq!(l.entry("bridge"), None);
        let one = ConfList::parse(br#"{"cniVersion":"0.4.0","name":"b","type":"bridge"}"#);
        let one = one.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(one.types(), ["bridge"]);
        assert_eq!(
            one.entry("bridge").map(|p| &p["name"]),
            Some(&Value::from("b"))
        );
    }

    #[test]
    fn refuses_what_a_runtime_cannot_run() {
        let code = |text: &str| ConfList::parse(text.as_bytes()).map_err(|e| (e.code, e.msg));
        assert_eq!(code("{").map_err(|e| e.0), Err(Code::DecodingFailure));
        for (text, msg) in [
            ("[]", "not a JSON object"),
            (r#"{"cniVersion":"1.0.0","type":"t"}"#, "no \"name\""),
            (r#"{"name":"x","type":"t"}"#, "no \"cniVersion\""),
            (
                r#"{"cniVersion":"1.0.0","name":"x","plugins":[]}"#,
                "\"plugins\" is not a non-empty list",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"a"},{}]}"#,
                "plugin 1 has no \"type\"",
            ),
        ] {
            assert_eq!(
                code(text),
                Err((Code::InvalidNetworkConfig, msg.to_string())),
                "{text}"
            );
        }
    }
}
