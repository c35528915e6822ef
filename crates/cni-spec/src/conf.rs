//! The network configuration on stdin: the fields every plugin shares, and the raw rest.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::args::{AttachmentRequest, CniArgs};
use crate::env::is_valid_identifier;
use crate::error::{CniError, Code};
use crate::result::CniResult;
use crate::version::{Version, SUPPORTED};

/// One attachment named in a GC request.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize)]
pub struct Attachment {
    /// The container id of the attachment.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name of the attachment.
    pub ifname: String,
}

/// The common part of a plugin's configuration, parsed and checked.
#[derive(Clone, Debug)]
pub struct NetConf {
    /// `cniVersion`: also the version of the result we print.
    pub cni_version: Version,
    /// `name`: the network's name.
    pub name: String,
    /// `type`: the plugin's name.
    pub plugin_type: String,
    /// `disableCheck`: CHECK succeeds without looking.
    pub disable_check: bool,
    /// `disableGC`: GC does nothing.
    pub disable_gc: bool,
    /// `prevResult`, converted to the newest shape.
    pub prev_result: Option<CniResult>,
    /// `prevResult` exactly as received, for chained plugins that pass it on unchanged.
    pub prev_result_raw: Option<Value>,
    /// `cni.dev/valid-attachments` (or the draft's `cni.dev/attachments`) of a GC request.
    pub valid_attachments: Option<Vec<Attachment>>,
    /// `runtimeConfig.ips` and `runtimeConfig.mac`: the `ips` and `mac` capabilities.
    pub runtime_request: AttachmentRequest,
    /// `args.cni.ips` and `args.cni.mac` (CONVENTIONS.md's `args`).
    pub args_request: AttachmentRequest,
    /// The whole object, for the plugin's own fields.
    pub raw: Value,
}

/// The version string of a config that may not parse, for the `cniVersion` of an error.
pub fn version_hint(stdin: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Hint {
        #[serde(rename = "cniVersion")]
        cni_version: Option<String>,
    }
    let hint: Hint = serde_json::from_slice(stdin).ok()?;
    hint.cni_version.filter(|v| v.len() < 16)
}

impl NetConf {
    /// Parses stdin: undecodable input is code 6, an unsupported `cniVersion` code 1, a
    /// missing or invalid `name` or `type` code 7.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        NetConf::parse_with(stdin, false)
    }

    /// As [`NetConf::parse`]; with `lenient` (DEL), a `prevResult`, `runtimeConfig.ips`/`mac`
    /// or `args.cni` request that does not decode is dropped instead of failing the verb.
    pub fn parse_with(stdin: &[u8], lenient: bool) -> Result<NetConf, CniError> {
        let raw: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                Code::DecodingFailure,
                "network configuration is not valid JSON",
            )
            .with_details(e.to_string())
        })?;
        let obj = raw.as_object().ok_or_else(|| {
            CniError::new(
                Code::DecodingFailure,
                "network configuration is not a JSON object",
            )
        })?;
        let cni_version = match obj.get("cniVersion") {
            None => {
                return Err(CniError::new(
                    Code::InvalidNetworkConfig,
                    "cniVersion is missing",
                ))
            }
            Some(Value::String(s)) => s.parse::<Version>().map_err(|e| {
                CniError::new(Code::IncompatibleVersion, e.to_string()).with_details(format!(
                    "supported versions: {}",
                    SUPPORTED.map(Version::as_str).join(", ")
                ))
            })?,
            Some(_) => {
                return Err(CniError::new(
                    Code::InvalidNetworkConfig,
                    "cniVersion is not a string",
                ))
            }
        };
        let name = string_field(obj, "name")?;
        if !is_valid_identifier(&name) {
            return Err(CniError::new(
                Code::InvalidNetworkConfig,
                format!("invalid network name {name:?}"),
            )
            .with_details(
                "must start with a letter or digit, then letters, digits, '_', '.' or '-'",
            ));
        }
        let plugin_type = string_field(obj, "type")?;
        let flag = |key: &str| obj.get(key).and_then(Value::as_bool).unwrap_or(false);
        let prev_result_raw = obj.get("prevResult").filter(|v| !v.is_null()).cloned();
        let prev_result = match &prev_result_raw {
            None => None,
            Some(v) => match decode_prev_result(v) {
                Ok(r) => Some(r),
                // DEL must clean up even when a runtime's cached result is corrupt: the
                // prevResult is only a hint there.
                Err(_) if lenient => None,
                Err(e) => return Err(e),
            },
        };
        let valid_attachments = ["cni.dev/valid-attachments", "cni.dev/attachments"]
            .iter()
            .find_map(|key| obj.get(*key))
            .map(|v| {
                // libcni marshals an empty Go slice as null: no valid attachment at all.
                if v.is_null() {
                    return Ok(Vec::new());
                }
                serde_json::from_value::<Vec<Attachment>>(v.clone()).map_err(|e| {
                    CniError::new(
                        Code::DecodingFailure,
                        "cni.dev/valid-attachments does not decode",
                    )
                    .with_details(e.to_string())
                })
            })
            .transpose()?;
        // DEL uses neither, and must clean up whatever they say.
        let request =
            |object: Option<&Value>, path: &str| match AttachmentRequest::from_object(object, path)
            {
                Err(_) if lenient => Ok(AttachmentRequest::default()),
                other => other,
            };
        let runtime_request = request(obj.get("runtimeConfig"), "runtimeConfig")?;
        let args_request = request(obj.get("args").and_then(|a| a.get("cni")), "args.cni")?;
        Ok(NetConf {
            runtime_request,
            args_request,
            cni_version,
            name,
            plugin_type,
            disable_check: flag("disableCheck"),
            disable_gc: flag("disableGC"),
            prev_result,
            prev_result_raw,
            valid_attachments,
            raw,
        })
    }

    /// What the runtime asks of the attachment, from the capabilities, `args` and `CNI_ARGS`
    /// (see [`AttachmentRequest::first_set`]).
    pub fn attachment_request(&self, cni_args: &CniArgs) -> AttachmentRequest {
        AttachmentRequest::first_set(&self.runtime_request, &self.args_request, cni_args)
    }

    /// Decodes the plugin's own fields from the whole object; a failure is code 7.
    pub fn plugin_config<T: DeserializeOwned>(&self) -> Result<T, CniError> {
        T::deserialize(&self.raw).map_err(|e| {
            CniError::new(Code::InvalidNetworkConfig, "invalid plugin configuration")
                .with_details(e.to_string())
        })
    }
}

/// A prevResult in the newest shape; its own `cniVersion`, when present, must be one we speak.
fn decode_prev_result(v: &Value) -> Result<CniResult, CniError> {
    if let Some(version) = v.get("cniVersion") {
        let ok = version
            .as_str()
            .is_some_and(|s| s.parse::<Version>().is_ok());
        if !ok {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                format!("prevResult has unsupported cniVersion {version}"),
            ));
        }
    }
    CniResult::from_json(v).map_err(|e| {
        CniError::new(Code::DecodingFailure, "prevResult does not decode")
            .with_details(e.to_string())
    })
}

fn string_field(obj: &serde_json::Map<String, Value>, key: &str) -> Result<String, CniError> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) | None => Err(CniError::new(
            Code::InvalidNetworkConfig,
            format!("{key} is missing"),
        )),
        Some(_) => Err(CniError::new(
            Code::InvalidNetworkConfig,
            format!("{key} is not a string"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConf, CniError> {
        NetConf::parse(s.as_bytes())
    }

    #[test]
    fn parses_common_fields() {
        let c = parse(
            r#"{"cniVersion":"1.0.0","name":"net1","type":"kubenet-bridge","disableCheck":true}"#,
        )
        .unwrap();
        assert_eq!(c.cni_version, Version::V1_0_0);
        assert_eq!(c.name, "net1");
        assert_eq!(c.plugin_type, "kubenet-bridge");
        assert!(c.disable_check);
        assert!(c.prev_result.is_none());
    }

    #[test]
    fn maps_bad_input_to_spec_codes() {
        assert_eq!(parse("{").unwrap_err().code, 6);
        assert_eq!(parse("[]").unwrap_err().code, 6);
        assert_eq!(parse(r#"{"name":"n","type":"t"}"#).unwrap_err().code, 7);
        let v = r#"{"cniVersion":"0.2.0","name":"n","type":"t"}"#;
        assert_eq!(parse(v).unwrap_err().code, 1);
        assert_eq!(
            parse(r#"{"cniVersion":"1.0.0","type":"t"}"#)
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(
            parse(r#"{"cniVersion":"1.0.0","name":"n"}"#)
                .unwrap_err()
                .code,
            7
        );
        let escape = r#"{"cniVersion":"1.0.0","name":"../../etc","type":"t"}"#;
        assert_eq!(parse(escape).unwrap_err().code, 7);
        let prev = r#"{"cniVersion":"1.0.0","name":"n","type":"t","prevResult":{"ip4":{}}}"#;
        assert_eq!(parse(prev).unwrap_err().code, 6);
        assert!(NetConf::parse_with(prev.as_bytes(), true)
            .unwrap()
            .prev_result
            .is_none());
        let future =
            r#"{"cniVersion":"1.0.0","name":"n","type":"t","prevResult":{"cniVersion":"9.9.9"}}"#;
        assert_eq!(parse(future).unwrap_err().code, 1);
    }

    #[test]
    fn reads_both_gc_attachment_keys() {
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            let s = format!(
                r#"{{"cniVersion":"1.1.0","name":"n","type":"t","{key}":[{{"containerID":"a","ifname":"eth0"}}]}}"#
            );
            let c = parse(&s).unwrap();
            let a = c.valid_attachments.unwrap();
            assert_eq!(a[0].container_id, "a");
            assert_eq!(a[0].ifname, "eth0");
        }
    }

    #[test]
    fn gc_attachment_list_null_is_empty_and_absent_is_none() {
        let null =
            r#"{"cniVersion":"1.1.0","name":"n","type":"t","cni.dev/valid-attachments":null}"#;
        assert_eq!(parse(null).unwrap().valid_attachments, Some(Vec::new()));
        let absent = r#"{"cniVersion":"1.1.0","name":"n","type":"t"}"#;
        assert_eq!(parse(absent).unwrap().valid_attachments, None);
        let wrong =
            r#"{"cniVersion":"1.1.0","name":"n","type":"t","cni.dev/valid-attachments":{}}"#;
        assert_eq!(parse(wrong).unwrap_err().code, 6);
    }

    #[test]
    fn runtime_config_ips_and_mac_are_read_and_bad_ones_refused_except_on_del() {
        let c = parse(
            r#"{"cniVersion":"1.0.0","name":"n","type":"t",
                "runtimeConfig":{"ips":["10.244.1.9/24"],"mac":"0a:58:0a:f4:01:09"},
                "args":{"cni":{"ips":["10.244.1.10"]}}}"#,
        )
        .unwrap();
        let r = c.attachment_request(&CniArgs::default());
        assert_eq!(r.ips.len(), 1);
        assert_eq!(r.ips[0].addr.to_string(), "10.244.1.9");
        assert_eq!(r.mac, Some([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x09]));
        assert_eq!(c.args_request.ips[0].addr.to_string(), "10.244.1.10");
        let bad = r#"{"cniVersion":"1.0.0","name":"n","type":"t","runtimeConfig":{"ips":["x"]}}"#;
        let e = parse(bad).unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("runtimeConfig.ips[0]"), "{}", e.msg);
        let del = NetConf::parse_with(bad.as_bytes(), true).unwrap();
        assert_eq!(del.runtime_request, AttachmentRequest::default());
    }

    #[test]
    fn version_hint_survives_bad_configs() {
        assert_eq!(
            version_hint(br#"{"cniVersion":"0.4.0"}"#).as_deref(),
            Some("0.4.0")
        );
        assert_eq!(version_hint(b"nope"), None);
    }
}
