//! `vxlan-overlay`: the CNI plugin, and with `agent --config <conflist>` the node agent. The
//! work is in the `overlay` crate.

use cni_skel::About;
use overlay::VxlanOverlay;

const ABOUT: About = About {
    name: "vxlan-overlay",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Attaches pods to the node bridge with addresses from the node's subnet of a \
              flannel-style VXLAN overlay. `vxlan-overlay agent --config <conflist>` runs the \
              node agent: subnet lease in etcd, VTEP, routes, ARP and FDB entries per peer.",
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("agent") {
        std::process::exit(match overlay::agent::run_from_args(&args[1..]) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("vxlan-overlay agent: {e}");
                1
            }
        });
    }
    std::process::exit(cni_skel::run(&VxlanOverlay, &ABOUT));
}
