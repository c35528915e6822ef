//! `kubenet-bridge`: kubenet's node bridge as a CNI plugin. All the work is in `pod-bridge`.

use cni_skel::About;
use pod_bridge::KubenetBridge;

const ABOUT: About = About {
    name: "kubenet-bridge",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Attaches pods to the node bridge (default cbr0) with a veth pair each, an address \
              from the node's pod CIDR, a default route via the bridge, hairpin, and one \
              masquerade rule for traffic leaving nonMasqueradeCIDR.",
};

fn main() {
    std::process::exit(cni_skel::run(&KubenetBridge, &ABOUT));
}
