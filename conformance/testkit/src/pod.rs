//! A pod sandbox as the suites drive it directly (no cnitool): its network namespace and the
//! container id a runtime would give it.

use crate::netns::Netns;
use crate::unique_name;

/// A pod: a fresh namespace (deleted when dropped) and a unique `CNI_CONTAINERID`.
pub struct Pod {
    /// The pod's network namespace.
    pub netns: Netns,
    /// Its container id.
    pub id: String,
}

impl Pod {
    /// A new pod.
    pub fn new() -> Pod {
        Pod {
            netns: Netns::new("cnit-pod-"),
            id: unique_name("pod-"),
        }
    }
}

impl Default for Pod {
    fn default() -> Self {
        Pod::new()
    }
}
