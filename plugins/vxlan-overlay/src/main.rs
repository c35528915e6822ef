//! `vxlan-overlay`: the CNI plugin. The work is in the `overlay` crate. The node agent is
//! `vxlan-overlay-agent`; `vxlan-overlay agent …`, its command in earlier releases, still
//! works: it execs the agent, found next to this binary or on `PATH`.

use std::os::unix::process::CommandExt;
use std::process::Command;

use cni_skel::About;
use overlay::VxlanOverlay;

const ABOUT: About = About {
    name: "vxlan-overlay",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Attaches pods to the node bridge with addresses from the node's subnet of a \
              flannel-style VXLAN overlay. The node agent (subnet lease in etcd, VTEP, routes, \
              ARP and FDB entries per peer) is `vxlan-overlay-agent --config <conflist>`.",
};

/// The agent's binary.
const AGENT: &str = "vxlan-overlay-agent";

fn main() {
    // The CNI path (no arguments, `CNI_*` variables) goes straight to the skeleton.
    if std::env::args_os().nth(1).is_some_and(|a| a == "agent") {
        // Next to this binary (the image's /opt/cni-suite/bin), else on PATH (the .deb's
        // /usr/sbin).
        let agent = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join(AGENT)))
            .filter(|a| a.is_file())
            .unwrap_or_else(|| AGENT.into());
        let err = Command::new(&agent)
            .args(std::env::args_os().skip(2))
            .exec();
        eprintln!(
            "vxlan-overlay agent: the agent is the {AGENT} binary; cannot run {}: {err}",
            agent.display()
        );
        std::process::exit(1);
    }
    std::process::exit(cni_skel::run(&VxlanOverlay, &ABOUT));
}
