//! Spec versions this suite speaks, and the rules that tie verbs to versions.

use std::fmt;
use std::str::FromStr;

/// A CNI specification version that this suite implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// 0.3.0: first version with the interfaces/ips/routes result.
    V0_3_0,
    /// 0.3.1: as 0.3.0.
    V0_3_1,
    /// 0.4.0: adds CHECK and prevResult on DEL.
    V0_4_0,
    /// 1.0.0: drops `ips[].version`.
    V1_0_0,
    /// 1.1.0: adds STATUS and GC.
    V1_1_0,
}

/// Every version we speak, oldest first; VERSION prints this list.
pub const SUPPORTED: [Version; 5] = [
    Version::V0_3_0,
    Version::V0_3_1,
    Version::V0_4_0,
    Version::V1_0_0,
    Version::V1_1_0,
];

/// What every binary of the suite prints after its name on `--version`: its own version, then
/// the spec versions it speaks (`spoken`, oldest first). Plugins, `cni-suite` and the
/// conformance tools all print this one shape, so one script reads any of them.
pub fn version_text(version: &str, spoken: &[&str]) -> String {
    format!("{version}\nCNI spec versions: {}", spoken.join(", "))
}

impl Version {
    /// The newest version we speak.
    pub const LATEST: Version = Version::V1_1_0;

    /// The version as it is written in configs.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// STATUS and GC exist from 1.1.0 on.
    pub fn has_status_and_gc(self) -> bool {
        self >= Version::V1_1_0
    }

    /// Results before 1.0.0 carry `ips[].version`.
    pub fn ips_carry_version(self) -> bool {
        self < Version::V1_0_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A version string that names no version we speak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedVersion(pub String);

impl fmt::Display for UnsupportedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unsupported CNI version {:?}; supported: {}",
            self.0,
            SUPPORTED.map(Version::as_str).join(", ")
        )
    }
}

impl std::error::Error for UnsupportedVersion {}

impl FromStr for Version {
    type Err = UnsupportedVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SUPPORTED
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnsupportedVersion(s.to_string()))
    }
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_version_and_rejects_others() {
        for v in SUPPORTED {
            assert_eq!(v.as_str().parse::<Version>(), Ok(v));
        }
        for bad in ["0.1.0", "0.2.0", "1.2.0", "", "1.0"] {
            assert!(bad.parse::<Version>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn verb_rules_follow_the_spec() {
        assert!(!Version::V0_3_1.has_check());
        assert!(Version::V0_4_0.has_check());
        assert!(!Version::V1_0_0.has_status_and_gc());
        assert!(Version::V1_1_0.has_status_and_gc());
        assert!(Version::V0_4_0.ips_carry_version());
        assert!(!Version::V1_0_0.ips_carry_version());
    }
}
