//! What runtimes and chains send beyond the basic lifecycle: a `prevResult` from a plugin
//! before the list (Multus delegates, a runtime's own first plugin), and `CNI_ARGS`.
//!
//! Levels, from the spec text: a plugin given a `prevResult` "must output it as their result,
//! with any possible modifications made by that plugin included" from 1.0.0 on; before 1.0.0
//! plugins "SHOULD echo the contents of the prevResult field" and may suppress it, so the case
//! is a SHOULD there. `CNI_ARGS` is only "alphanumeric key-value pairs separated by
//! semicolons" in the spec; libcni's `LoadArgs` (refuse malformed pairs, refuse unknown keys
//! unless `IgnoreUnknown` is `1` or `true`) and the `IP` key (CONVENTIONS.md, honoured by
//! host-local and static) are conventions, so every `CNI_ARGS` case is a SHOULD.

use serde_json::{json, Value};

use super::{Case, CaseCtx};
use crate::judge;
use crate::kernel;
use crate::runtime::Pod;
use crate::verdict::{skip, CaseLevel, Findings, Level, Step};
use crate::version_at_least;

/// The cases of this file, in table order.
pub fn cases() -> Vec<Case> {
    vec![
        Case::new(
            "chain: first plugin keeps a prevResult",
            CaseLevel::MustFrom("1.0.0"),
            first_plugin_keeps_prev_result,
        ),
        Case::new(
            "args: IgnoreUnknown and kubelet's keys accepted",
            CaseLevel::Should,
            kubelet_args_accepted,
        ),
        Case::new(
            "args: IP= gets that address",
            CaseLevel::Should,
            ip_arg_gets_the_address,
        ),
        Case::new(
            "args: IP= of a taken address refused (code >= 100)",
            CaseLevel::Should,
            ip_arg_of_a_taken_address_refused,
        ),
    ]
}

/// A result as a plugin before the list would leave it, in `version`'s shape: a host and a
/// sandbox interface, an IPv4 address on the sandbox one and an IPv6 one on the host one, an
/// address on no interface, a route and DNS. Documentation ranges only (RFC 5737, 3849), so
/// nothing in it can clash with what the plugin under test sets up. (The test kit feeds it to
/// our plugins too.)
pub fn earlier_result(version: &str, netns_path: &str) -> Value {
    let old = !version_at_least(version, "1.0.0");
    let ip = |address: &str, family: &str, interface: Option<usize>, gateway: Option<&str>| {
        let mut ip = json!({ "address": address });
        if let Some(i) = interface {
            ip["interface"] = json!(i);
        }
        if let Some(g) = gateway {
            ip["gateway"] = json!(g);
        }
        if old {
            ip["version"] = json!(family);
        }
        ip
    };
    json!({
        "cniVersion": version,
        "interfaces": [
            { "name": "cnct-prev-host", "mac": "02:00:5e:10:00:01" },
            { "name": "net9", "mac": "02:00:5e:10:00:02", "sandbox": netns_path },
        ],
        "ips": [
            ip("192.0.2.10/24", "4", Some(1), Some("192.0.2.1")),
            ip("2001:db8:cc::10/64", "6", Some(0), None),
            ip("198.51.100.7/32", "4", None, None),
        ],
        "routes": [ { "dst": "203.0.113.0/24", "gw": "192.0.2.1" } ],
        "dns": {
            "nameservers": ["192.0.2.53"],
            "domain": "prev.example",
            "search": ["prev.example"],
            "options": ["ndots:3"],
        },
    })
}

fn list_of<'v>(value: &'v Value, key: &str) -> &'v [Value] {
    value[key].as_array().map(Vec::as_slice).unwrap_or_default()
}

/// The name of the interface `ip` points at in `result`, if it points at one.
fn interface_name_of<'v>(result: &'v Value, ip: &Value) -> Option<&'v str> {
    let index = usize::try_from(ip["interface"].as_u64()?).ok()?;
    list_of(result, "interfaces").get(index)?["name"].as_str()
}

/// The first plugin of the list, given a prevResult as from a plugin before it, outputs that
/// prevResult with its own interfaces and addresses merged in, every `interface` index
/// pointing at the right entry.
fn first_plugin_keeps_prev_result(ctx: &CaseCtx, f: &mut Findings) -> Step<()> {
    let level = ctx.level(CaseLevel::MustFrom("1.0.0"));
    let pod = Pod::new();
    let netns_path = pod.id.netns_path.to_string_lossy().into_owned();
    let earlier = earlier_result(ctx.version(), &netns_path);
    ctx.remember(&pod.id, None);
    let call = ctx.runtime.call(0, "ADD", Some(&pod.id), Some(&earlier));
    let inv = ctx.exec(&call);
    let out = judge::success(f, Level::Must, "ADD with a prevResult", &inv)?;
    ctx.remember(&pod.id, Some(out.clone()));
    let plugin = &inv.plugin;
    for want in list_of(&earlier, "interfaces") {
        let kept = list_of(&out, "interfaces").iter().any(|got| {
            ["name", "mac", "sandbox"]
                .iter()
                .all(|key| got[key] == want[key] || (want[key].is_null() && got[key] == ""))
        });
        f.check(level, kept, || {
            format!("{plugin} dropped or changed prevResult interface {want}: got {out}")
        });
    }
    for want in list_of(&earlier, "ips") {
        let got = list_of(&out, "ips")
            .iter()
            .find(|got| got["address"] == want["address"]);
        let Some(got) = got else {
            f.check(level, false, || {
                format!(
                    "{plugin} dropped prevResult address {}: got {out}",
                    want["address"]
                )
            });
            continue;
        };
        let (wanted, found) = (
            interface_name_of(&earlier, want),
            interface_name_of(&out, got),
        );
        f.check(level, wanted == found, || {
            format!(
                "{plugin}: prevResult address {} pointed at interface {wanted:?}, its output points at {found:?}: got {out}",
                want["address"]
            )
        });
    }
    for want in list_of(&earlier, "routes") {
        let kept = list_of(&out, "routes")
            .iter()
            .any(|got| got["dst"] == want["dst"] && got["gw"] == want["gw"]);
        f.check(level, kept, || {
            format!("{plugin} dropped prevResult route {want}: got {out}")
        });
    }
    for key in ["nameservers", "search", "options"] {
        for want in list_of(&earlier["dns"], key) {
            f.check(level, list_of(&out["dns"], key).contains(want), || {
                format!("{plugin} dropped prevResult dns.{key} {want}: got {out}")
            });
        }
    }
    // Its own changes included: each address the kernel shows on the pod's interface is in
    // the output, on an interface of that name.
    for held in kernel::addresses(&pod.netns, &pod.id.ifname) {
        let on = list_of(&out, "ips")
            .iter()
            .find(|ip| ip["address"] == held.to_string())
            .map(|ip| interface_name_of(&out, ip));
        f.check(level, on == Some(Some(pod.id.ifname.as_str())), || {
            format!(
                "{plugin}: the pod holds {held} on {}, its output has it on {on:?}: got {out}",
                pod.id.ifname
            )
        });
    }
    Ok(())
}

/// `CNI_ARGS` as kubelet and CRI runtimes send it, with one key no plugin knows.
fn kubelet_args(pod: &Pod) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=cnct;K8S_POD_NAME={id};\
         K8S_POD_INFRA_CONTAINER_ID={id};K8S_POD_UID=0f2c6b1e-cnct;CNCT_UNKNOWN_KEY=1",
        id = pod.id.container_id
    )
}

/// With `IgnoreUnknown=1`, kubelet's `K8S_POD_*` keys and an unknown key do not stop ADD.
fn kubelet_args_accepted(ctx: &CaseCtx, f: &mut Findings) -> Step<()> {
    let pod = Pod::new();
    let run = ctx.add_with_args(&pod.id, &kubelet_args(&pod));
    judge::chain_success(f, Level::Should, "ADD with kubelet's CNI_ARGS", &run)?;
    Ok(())
}

/// The IPv4 address a plain ADD gives a pod, read from the kernel, and the ADD's result;
/// skips when there is none (a list without IPv4 IPAM).
fn first_address(ctx: &CaseCtx, f: &mut Findings, pod: &Pod) -> Step<(ipnet::IpNet, Value)> {
    let result = ctx.add_ok(f, pod)?;
    match kernel::addresses(&pod.netns, &pod.id.ifname)
        .into_iter()
        .find(|a| a.addr().is_ipv4())
    {
        Some(address) => Ok((address, result)),
        None => skip("the pod got no IPv4 address"),
    }
}

/// `IP=<address>` asks for a free address of the range and gets it: the address a first pod
/// held, after that pod is deleted.
fn ip_arg_gets_the_address(ctx: &CaseCtx, f: &mut Findings) -> Step<()> {
    let first = Pod::new();
    let (address, result) = first_address(ctx, f, &first)?;
    judge::chain_success(
        f,
        Level::Must,
        "DEL",
        &ctx.del(&first.id, Some(&result), true),
    )?;
    let pod = Pod::new();
    let args = format!("IgnoreUnknown=1;IP={}", address.addr());
    let run = ctx.add_with_args(&pod.id, &args);
    judge::chain_success(f, Level::Should, &format!("ADD with CNI_ARGS {args}"), &run)?;
    let held = kernel::addresses(&pod.netns, &pod.id.ifname);
    f.should(held.iter().any(|a| a.addr() == address.addr()), || {
        format!("CNI_ARGS {args} asked for {address}, the pod holds {held:?}")
    });
    Ok(())
}

/// `IP=<address>` of an address another pod holds is refused with a code of the plugin's
/// own (100 and up: none of the spec's codes means "address taken"), and the holder keeps it.
fn ip_arg_of_a_taken_address_refused(ctx: &CaseCtx, f: &mut Findings) -> Step<()> {
    let holder = Pod::new();
    let (address, _) = first_address(ctx, f, &holder)?;
    let pod = Pod::new();
    let args = format!("IgnoreUnknown=1;IP={}", address.addr());
    let run = ctx.add_with_args(&pod.id, &args);
    judge::no_crash(f, &run.steps);
    let what = format!("ADD with CNI_ARGS {args} (held by another pod)");
    match run.halted {
        None => {
            f.should(false, || format!("{what} succeeded: {:?}", run.result));
        }
        Some(_) => {
            let last = run.steps.last().map(|s| s.output.stdout.as_str());
            let code = last
                .and_then(|out| serde_json::from_str::<Value>(out).ok())
                .and_then(|e| e["code"].as_u64());
            f.should(code.is_some_and(|c| c >= 100), || {
                format!("{what}: expected a plugin code (100 or more), got {code:?}: {last:?}")
            });
        }
    }
    let kept = kernel::addresses(&holder.netns, &holder.id.ifname);
    f.must(kept.contains(&address), || {
        format!("the holder of {address} lost it to a refused request: it holds {kept:?}")
    });
    Ok(())
}
