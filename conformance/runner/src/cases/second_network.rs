//! A pod's second attachment on another interface: runtimes give a pod several networks
//! (Multus, podman: one more conflist on `eth1`), and the spec makes `CNI_IFNAME` part of an
//! attachment's identity ("the tuple (network name, CNI_CONTAINERID, CNI_IFNAME)"). The case
//! attaches the list to one pod twice, on `eth0` and on `net1`, and DELs the second alone.
//!
//! A SHOULD: the spec does not say in words that a plugin must accept a second interface in a
//! pod, but a plugin that refuses it cannot serve a multi-network pod. What must hold once both
//! attached: each interface keeps the addresses its own result gives it, the pod keeps at most
//! one IPv4 default route, and DEL of one attachment leaves the other in place.

use serde_json::Value;

use super::{Case, CaseCtx};
use crate::judge;
use crate::kernel;
use crate::runtime::{AttachmentId, Pod};
use crate::shape::{check_add_result, PodView};
use crate::verdict::{skip, CaseLevel, Findings, Level, Step};

/// The interface name of the second attachment (Multus' default for extra networks).
const SECOND_IFNAME: &str = "net1";

/// The case.
pub fn case() -> Case {
    Case::new(
        "add: a second network on another ifname",
        CaseLevel::Should,
        second_network,
    )
}

fn second_network(ctx: &CaseCtx, f: &mut Findings) -> Step<()> {
    let pod = Pod::new();
    let first = ctx.add_ok(f, &pod)?;
    if !ctx.pod_view(&pod).has_interface {
        return skip(format!("the list creates no {} in the pod", pod.id.ifname));
    }
    let second_id = AttachmentId {
        ifname: SECOND_IFNAME.to_owned(),
        ..pod.id.clone()
    };
    let run = ctx.add(&second_id);
    let second = judge::chain_success(f, Level::Should, "ADD of a second ifname", &run)?;

    let defaults = kernel::default_routes_v4(&pod.netns);
    f.should(defaults.len() <= 1, || {
        format!(
            "the pod has {} IPv4 default routes: {defaults:?}",
            defaults.len()
        )
    });
    let first_addrs = addresses_on(ctx, f, &first, &pod, &pod.id.ifname);
    let second_addrs = addresses_on(ctx, f, &second, &pod, SECOND_IFNAME);
    f.should(!second_addrs.is_empty(), || {
        format!("{SECOND_IFNAME} holds no address after its ADD")
    });

    let del = ctx.del(&second_id, Some(&second), true);
    judge::chain_success(f, Level::Should, "DEL of the second ifname", &del)?;
    f.should(!pod.netns.has_link(SECOND_IFNAME), || {
        format!("{SECOND_IFNAME} is still in the pod after its DEL")
    });
    let held = kernel::addresses(&pod.netns, &pod.id.ifname);
    f.should(
        pod.netns.has_link(&pod.id.ifname) && first_addrs.iter().all(|a| held.contains(a)),
        || {
            format!(
                "DEL of {SECOND_IFNAME} took {} or its addresses {first_addrs:?} (holds {held:?})",
                pod.id.ifname
            )
        },
    );
    Ok(())
}

/// The addresses `result` puts on the pod's `ifname`, and each must be there in the kernel.
fn addresses_on(
    ctx: &CaseCtx,
    f: &mut Findings,
    result: &Value,
    pod: &Pod,
    ifname: &str,
) -> Vec<ipnet::IpNet> {
    let netns_path = pod.id.netns_path.to_string_lossy();
    let view = PodView {
        ifname,
        netns_path: &netns_path,
        has_interface: pod.netns.has_link(ifname),
    };
    let mut ignored = Findings::default();
    let wanted =
        check_add_result(&mut ignored, "result", ctx.version(), result, &view).pod_addresses;
    let held = kernel::addresses(&pod.netns, ifname);
    for address in &wanted {
        f.should(held.contains(address), || {
            format!("the result puts {address} on {ifname}, which holds {held:?}")
        });
    }
    wanted
}
