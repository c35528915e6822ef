//! CNI specification types for versions 0.3.0 to 1.1.0: pure data, no I/O.
//!
//! The spec is containernetworking/cni's SPEC.md; results are held in their newest shape
//! ([`CniResult`]) and converted when read or written.

pub mod args;
pub mod cidr;
pub mod conf;
pub mod conflist;
pub mod env;
pub mod error;
pub mod result;
pub mod version;

pub use args::{parse_mac, AttachmentRequest, CniArgs, Mac, RequestedIp};
pub use conf::{version_hint, Attachment, NetConf};
pub use conflist::ConfList;
pub use env::{command_from, validate_ifname, Command, Env};
pub use error::{CniError, Code, ErrorCode};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use version::{version_text, Version, SUPPORTED};
