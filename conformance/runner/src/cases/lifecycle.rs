//! The attachment lifecycle: VERSION, ADD (result shape, the kernel agreeing with it,
//! chaining), CHECK, DEL in its variants, and a duplicate ADD.
//!
//! Levels, from the spec text of each version: ADD's result and chaining are MUSTs ("must
//! output a result structure", "MUST handle prevResult by either passing it through, or
//! modifying it appropriately"); CHECK after ADD is a MUST from 0.4.0 ("must handle CHECK
//! being called immediately after an ADD"); repeated DELs and DEL without `CNI_NETNS` became
//! MUSTs in 1.0.0 ("Plugins MUST accept multiple DEL calls", `CNI_NETNS` listed as optional for
//! DEL) and were SHOULDs before; DEL without `prevResult` or after the namespace is gone, and
//! CHECK noticing a broken attachment, are SHOULDs.

use std::collections::BTreeSet;

use ipnet::IpNet;
use serde_json::{json, Value};

use super::{Case, CaseCtx};
use crate::judge::{self, Refusal};
use crate::kernel;
use crate::netns::ping_ip;
use crate::runtime::Pod;
use crate::shape::{check_add_result, check_version_result, VersionEcho};
use crate::verdict::{skip, CaseLevel, Findings, Level, Step};
use crate::version_at_least;

/// The lifecycle cases of `list`, in table order.
pub fn cases(list: &crate::network::NetworkList) -> Vec<Case> {
    let mut cases = Vec::new();
    for (index, plugin) in list.plugins.iter().enumerate() {
        let name = if list.plugins.len() > 1 {
            format!("version: output of {}", plugin.kind)
        } else {
            "version: output".to_owned()
        };
        let mut case = Case::new(name, CaseLevel::Must, move |ctx, f| {
            version_output(ctx, f, index)
        });
        case.needs_support = false;
        cases.push(case);
    }
    cases.extend([
        Case::new("add: result shape", CaseLevel::Must, add_result_shape),
        Case::new(
            "add: result matches the pod",
            CaseLevel::Must,
            add_matches_pod,
        ),
        Case::new(
            "add: addresses and default routes per family match the kernel",
            CaseLevel::Must,
            families_match_kernel,
        ),
        Case::new(
            "add: pod reaches its gateway",
            CaseLevel::Should,
            pod_reaches_gateway,
        ),
        Case::new(
            "chain: prevResult passed on",
            CaseLevel::Must,
            chain_passes_prev_result,
        ),
        Case::new(
            "add: duplicate adds no address",
            CaseLevel::Must,
            duplicate_add,
        ),
        Case::new("check: after add passes", CaseLevel::Must, check_after_add),
        Case::new(
            "check: detects a lost address",
            CaseLevel::Should,
            check_detects_lost_address,
        ),
        Case::new("check: after del fails", CaseLevel::Should, check_after_del),
        Case::new("del: twice", CaseLevel::MustFrom("1.0.0"), del_twice),
        Case::new(
            "del: without CNI_NETNS",
            CaseLevel::MustFrom("1.0.0"),
            del_without_netns,
        ),
        Case::new(
            "del: without prevResult",
            CaseLevel::Should,
            del_without_prev_result,
        ),
        Case::new(
            "del: after the netns is gone",
            CaseLevel::Should,
            del_after_netns_gone,
        ),
    ]);
    cases
}

/// VERSION with only `CNI_COMMAND` and `{"cniVersion"}` on stdin, as the spec defines it.
fn version_output(ctx: &CaseCtx, f: &mut Findings, index: usize) -> Step<()> {
    let version = ctx.version();
    let mut call = ctx.runtime.call(index, "VERSION", None, None);
    call.unset("CNI_PATH");
    call.config = json!({ "cniVersion": version });
    let inv = ctx.exec(&call);
    let out = judge::success(f, Level::Must, "VERSION", &inv)?;
    let advertised = ctx.supported[index].iter().any(|v| v == version);
    let echo = match (advertised, version_at_least(version, "1.0.0")) {
        (false, _) => VersionEcho::Free,
        (true, true) => VersionEcho::Required,
        (true, false) => VersionEcho::Expected,
    };
    let what = format!("{} VERSION output", inv.plugin);
    check_version_result(f, &what, version, &out, echo);
    Ok(())
}

/// Every intermediate and the final ADD result have the version's shape.
fn add_result_shape(ctx: &CaseCtx, f: &mut Findings) -> Step<()> {
    let pod = Pod::new();
    let run = ctx.add(&pod.id);
    let result = judge::chain_success(f, Level::Must, "ADD", &run)?;
    let view = ctx.pod_view(&pod);
    let last = run.steps.len() - 1;
    for (i, step) in run.steps.iter().enumerate().take(last) {
        if let Ok(value) = serde_json::from_str::<Value>(&step.output.stdout) {
            let what = format!("ADD result of {} (plugins[{i}])", step.plugin);
            check_add_result(f, &what, ctx.version(), &value, &view);
        }
    }
    check_add_result(f, "final ADD result", ctx.version(), &result, &view);
    Ok(())
}

/// The pod holds the interface and the addresses the result puts there, and its routes.
fn add_matches_pod(ctx: &CaseCtx, f: &mut Findings) -> Step<()> {
    let pod = Pod::new();
    let result = ctx.add_ok(f, &pod)?;
    let facts = ctx.facts(&result, &pod);
    let view = ctx.pod_view(&pod);
    if !view.has_interface && facts.pod_interface.is_none() {
        return skip(format!("the list creates no {} in the pod", pod.id.ifname));
    }
    f.must(view.has_interface, || {
        format!(
            "the result lists {} in the pod, which has no such link",
            pod.id.ifname
        )
    });
    let held = kernel::addresses(&pod.netns, &pod.id.ifname);
    for address in &facts.pod_addresses {
        f.must(held.contains(address), || {
            format!(
                "the result puts {address} on {}, which holds {held:?}",
                pod.id.ifname
            )
        });
    }
    for route in &facts.routes {
        f.should(kernel::has_route(&pod.netns, route), || {
            format!(
                "the pod has no route to {} as the result says ({route:?})",
                route.dst
            )
        });
    }
    Ok(())
}

/// "Interface" plugins "ensure it has connectivity": the pod pings each gateway of either
/// family (ping6 for IPv6) as soon as ADD returned.
fn pod_reaches_gateway(ctx: &CaseCtx, f: &mut Findings) -> Step<()> {
    let pod = Pod::new();
    let result = ctx.add_ok(f, &pod)?;
    if !ctx.pod_view(&pod).has_interface {
        return skip(format!(
            "the list creates no {} in the pod: no traffic to test",
            pod.id.ifname
        ));
    }
    let gateways = ctx.facts(&result, &pod).gateways;
    if gateways.is_empty() {
        return skip("the result names no gateway");
    }
    for gateway in gateways {
        f.should(ping_ip(&pod.netns, gateway), || {
            format!("the pod cannot ping its gateway {gateway}")
        });
    }
    Ok(())
}

/// Per address family of the pod's addresses: the address is usable (not tentative: an
/// IPv6 address still in duplicate address detection cannot source packets yet), and when
/// the result has a gateway of that family on the pod, the kernel's default route or a route
/// the result lists goes through a gateway of that family; a route of the result never
/// points through the other family. Skipped for a result with no pod address.
fn families_match_kernel(ctx: &CaseCtx, f: &mut Findings) -> Step<()> {
    let pod = Pod::new();
    let result = ctx.add_ok(f, &pod)?;
    let facts = ctx.facts(&result, &pod);
    if facts.pod_addresses.is_empty() {
        return skip("the result puts no address on the pod's interface");
    }
    let tentative = kernel::tentative_addresses(&pod.netns, &pod.id.ifname);
    for address in &facts.pod_addresses {
        f.should(!tentative.contains(address), || {
            format!("{address} is still tentative (duplicate address detection) after ADD returned")
        });
    }
    for v6 in [false, true] {
        let of_family = |a: &IpNet| a.addr().is_ipv6() == v6;
        if !facts.pod_addresses.iter().any(of_family) {
            continue;
        }
        let family = if v6 { "IPv6" } else { "IPv4" };
        let gateways: Vec<_> = facts
            .gateways
            .iter()
            .filter(|g| g.is_ipv6() == v6)
            .collect();
        let listed_default = facts
            .routes
            .iter()
            .find(|r| r.dst.prefix_len() == 0 && r.dst.addr().is_ipv6() == v6);
        if let Some(route) = listed_default {
            f.must(kernel::has_route(&pod.netns, route), || {
                format!(
                    "the result lists the {family} default route {route:?}, which the pod lacks"
                )
            });
            if let Some(gw) = route.gw {
                f.should(gateways.is_empty() || gateways.contains(&&gw), || {
                    format!("the {family} default route goes via {gw}, not a gateway of the result ({gateways:?})")
                });
            }
        }
    }
    Ok(())
}

/// Each chained plugin's result keeps the interfaces and addresses of its `prevResult`.
fn chain_passes_prev_result(ctx: &CaseCtx, f: &mut Findings) -> Step<()> {
    if ctx.list().plugins.len() < 2 {
        return skip("a single plugin: nothing is chained");
    }
    let pod = Pod::new();
    let run = ctx.add(&pod.id);
    judge::chain_success(f, Level::Must, "ADD", &run)?;
    let results: Vec<Value> = run
        .steps
        .iter()
        .map(|s| serde_json::from_str(&s.output.stdout).unwrap_or(Value::Null))
        .collect();
    for (i, pair) in results.windows(2).enumerate() {
        let (prev, out) = (&pair[0], &pair[1]);
        let plugin = &run.steps[i + 1].plugin;
        let names = |r: &Value| -> BTreeSet<String> {
            r["interfaces"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x["name"].as_str().map(str::to_owned))
                .collect()
        };
        let addresses = |r: &Value| -> BTreeSet<String> {
            r["ips"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x["address"].as_str().map(str::to_owned))
                .collect()
        };
        let lost_ifaces: Vec<String> = names(prev).difference(&names(out)).cloned().collect();
        let lost_ips: Vec<String> = addresses(prev)
            .difference(&addresses(out))
            .cloned()
            .collect();
        f.must(lost_ifaces.is_empty() && lost_ips.is_empty(), || {
            format!(
                "{plugin} (plugins[{}]) dropped from its prevResult interfaces {lost_ifaces:?} and addresses {lost_ips:?}: got {out}",
                i + 1
            )
        });
    }
    Ok(())
}

/// A second ADD for the same container and interface may fail with a CNI error or succeed
/// with the same result, but must not give the pod a second address.
fn duplicate_add(ctx: &CaseCtx, f: &mut Findings) -> Step<()> {
    let pod = Pod::new();
    let first = ctx.add_ok(f, &pod)?;
    let links_before = kernel::links(&pod.netns);
    let held_before = kernel::addresses(&pod.netns, &pod.id.ifname);
    let first_addresses = ctx.facts(&first, &pod).addresses;
    let run = ctx.runtime.add(&pod.id);
    judge::no_crash(f, &run.steps);
    match (&run.halted, &run.result) {
        (None, Some(second)) => {
            let second_addresses = ctx.facts(second, &pod).addresses;
            f.must(same_set(&first_addresses, &second_addresses), || {
                format!("the second ADD succeeded with other addresses: {second_addresses:?}, first {first_addresses:?}")
            });
            // SPEC 1.0.0: "If an interface of the requested name already exists in the
            // container, the CNI plugin MUST return with an error." Reported, not failed: a
            // repeated ADD that changes nothing is allowed by this suite's contract.
            let interface_plugin = !links_before.is_empty();
            f.should(!(interface_plugin && version_at_least(ctx.version(), "1.0.0")), || {
                "the second ADD succeeded although the interface exists (1.0.0: ADD must then return an error)".to_owned()
            });
        }
        _ => {
            if let Some(failed) = run.steps.last() {
                let shape = Refusal {
                    level: Level::Must,
                    codes: &[],
                    input_version: Some(ctx.version()),
                    variable: None,
                };
                judge::error_object(f, ctx.version(), "second ADD", failed, &shape);
            }
        }
    }
    let held_after = kernel::addresses(&pod.netns, &pod.id.ifname);
    f.must(held_after == held_before, || {
        format!("after a second ADD the pod holds {held_after:?}, before it held {held_before:?}")
    });
    let links_after = kernel::links(&pod.netns);
    f.should(links_after == links_before, || {
        format!("after a second ADD the pod has links {links_after:?}, before {links_before:?}")
    });
    Ok(())
}

fn same_set(a: &[IpNet], b: &[IpNet]) -> bool {
    a.iter().collect::<BTreeSet<_>>() == b.iter().collect::<BTreeSet<_>>()
}

fn require_check(ctx: &CaseCtx) -> Step<()> {
    ctx.require_version("0.4.0", "CHECK exists from 0.4.0")?;
    if ctx.list().disable_check {
        return skip("the list sets disableCheck: runtimes must not call CHECK");
    }
    Ok(())
}

/// CHECK right after ADD passes and prints nothing ("must return either nothing or an error").
fn check_after_add(ctx: &CaseCtx, f: &mut Findings) -> Step<()> {
    require_check(ctx)?;
    let pod = Pod::new();
    let result = ctx.add_ok(f, &pod)?;
    let run = ctx.check(&pod.id, &result);
    judge::chain_success(f, Level::Must, "CHECK after ADD", &run)?;
    for step in &run.steps {
        f.must(step.output.stdout.trim().is_empty(), || {
            format!("CHECK must print nothing on success: {}", step.describe())
        });
    }
    Ok(())
}

/// CHECK fails once the pod lost the address the result lists.
fn check_detects_lost_address(ctx: &CaseCtx, f: &mut Findings) -> Step<()> {
    require_check(ctx)?;
    let pod = Pod::new();
    let result = ctx.add_ok(f, &pod)?;
    if ctx.facts(&result, &pod).pod_addresses.is_empty() {
        return skip("the result puts no address on the pod's interface");
    }
    pod.netns
        .ip_ok(&["addr", "flush", "dev", &pod.id.ifname, "scope", "global"]);
    let run = ctx.check(&pod.id, &result);
    judge::no_crash(f, &run.steps);
    f.should(!run.succeeded(), || {
        "CHECK passed although the pod lost its address".to_owned()
    });
    Ok(())
}

/// CHECK fails after the attachment was deleted.
fn check_after_del(ctx: &CaseCtx, f: &mut Findings) -> Step<()> {
    require_check(ctx)?;
    let pod = Pod::new();
    let result = ctx.add_ok(f, &pod)?;
    let del = ctx.del(&pod.id, Some(&result), true);
    judge::chain_success(f, Level::Should, "DEL", &del)?;
    let run = ctx.check(&pod.id, &result);
    judge::no_crash(f, &run.steps);
    f.should(!run.succeeded(), || "CHECK passed after DEL".to_owned());
    Ok(())
}

/// Two DELs succeed, and the first removes the pod's interface.
fn del_twice(ctx: &CaseCtx, f: &mut Findings) -> Step<()> {
    let level = ctx.level(CaseLevel::MustFrom("1.0.0"));
    let pod = Pod::new();
    let result = ctx.add_ok(f, &pod)?;
    let had_interface = ctx.pod_view(&pod).has_interface;
    judge::chain_success(f, level, "DEL", &ctx.del(&pod.id, Some(&result), true))?;
    f.should(
        !(had_interface && pod.netns.has_link(&pod.id.ifname)),
        || format!("DEL left {} in the pod", pod.id.ifname),
    );
    judge::chain_success(
        f,
        level,
        "second DEL",
        &ctx.del(&pod.id, Some(&result), true),
    )?;
    Ok(())
}

/// DEL without `CNI_NETNS` succeeds, and so does the DEL with it that follows.
fn del_without_netns(ctx: &CaseCtx, f: &mut Findings) -> Step<()> {
    let level = ctx.level(CaseLevel::MustFrom("1.0.0"));
    let pod = Pod::new();
    let result = ctx.add_ok(f, &pod)?;
    let run = ctx.del(&pod.id, Some(&result), false);
    judge::chain_success(f, level, "DEL without CNI_NETNS", &run)?;
    ctx.remember(&pod.id, Some(result.clone()));
    let run = ctx.del(&pod.id, Some(&result), true);
    judge::chain_success(f, level, "DEL with CNI_NETNS after one without", &run)?;
    Ok(())
}

/// DEL without `prevResult` (a runtime that lost its cache) succeeds and cleans up.
fn del_without_prev_result(ctx: &CaseCtx, f: &mut Findings) -> Step<()> {
    ctx.require_version(
        "0.4.0",
        "DEL carries no prevResult before 0.4.0, so every DEL case covers it",
    )?;
    let pod = Pod::new();
    ctx.add_ok(f, &pod)?;
    let had_interface = ctx.pod_view(&pod).has_interface;
    judge::chain_success(
        f,
        Level::Should,
        "DEL without prevResult",
        &ctx.del(&pod.id, None, true),
    )?;
    f.should(
        !(had_interface && pod.netns.has_link(&pod.id.ifname)),
        || format!("DEL without prevResult left {} in the pod", pod.id.ifname),
    );
    Ok(())
}

/// DEL succeeds when the pod's namespace was deleted first ("should generally complete a
/// DEL action without error even if some resources are missing").
fn del_after_netns_gone(ctx: &CaseCtx, f: &mut Findings) -> Step<()> {
    let pod = Pod::new();
    let result = ctx.add_ok(f, &pod)?;
    let Pod { netns, id } = pod;
    netns.delete();
    judge::chain_success(
        f,
        Level::Should,
        "DEL after the netns was deleted",
        &ctx.del(&id, Some(&result), true),
    )?;
    Ok(())
}
