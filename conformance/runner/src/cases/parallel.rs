//! Concurrent ADDs for different containers: "Plugins must handle being executed concurrently
//! across different containers. If necessary, they must implement locking on shared resources
//! (e.g. IPAM databases)." Every pod must get its own addresses, in the kernel as in the
//! results, and the concurrent DELs must succeed too.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::thread;

use super::{Case, CaseCtx};
use crate::judge;
use crate::kernel;
use crate::runtime::{ChainRun, Pod};
use crate::verdict::{skip, CaseLevel, Findings, Level, Step};

/// The parallel case (its name carries no count: the count is an option).
pub fn case() -> Case {
    Case::new(
        "parallel: ADDs get distinct addresses",
        CaseLevel::Must,
        parallel_adds,
    )
}

fn parallel_adds(ctx: &CaseCtx, f: &mut Findings) -> Step<()> {
    let pods: Vec<Pod> = (0..ctx.parallel).map(|_| Pod::new()).collect();
    let adds = run_all(&pods, |_, pod| ctx.add(&pod.id));
    let mut holders: BTreeMap<IpAddr, Vec<usize>> = BTreeMap::new();
    let mut failed = 0;
    for (i, (pod, run)) in pods.iter().zip(&adds).enumerate() {
        let what = format!("ADD {} of {}", i + 1, pods.len());
        let Ok(result) = judge::chain_success(f, Level::Must, &what, run) else {
            failed += 1;
            continue;
        };
        let mut addresses: Vec<IpAddr> = ctx
            .facts(&result, pod)
            .addresses
            .iter()
            .map(|a| a.addr())
            .collect();
        addresses.extend(
            kernel::addresses(&pod.netns, &pod.id.ifname)
                .iter()
                .map(|a| a.addr()),
        );
        addresses.sort();
        addresses.dedup();
        for address in addresses {
            holders.entry(address).or_default().push(i + 1);
        }
    }
    if failed == 0 && holders.is_empty() {
        return skip("the results hold no addresses to compare");
    }
    let shared: Vec<String> = holders
        .iter()
        .filter(|(_, pods)| pods.len() > 1)
        .map(|(address, pods)| format!("{address} in pods {pods:?}"))
        .collect();
    f.must(shared.is_empty(), || {
        format!(
            "{} concurrent ADDs handed out the same address: {}",
            pods.len(),
            shared.join(", ")
        )
    });

    let dels = run_all(&pods, |i, pod| {
        ctx.del(&pod.id, adds[i].result.as_ref(), true)
    });
    for (i, run) in dels.iter().enumerate() {
        let _ = judge::chain_success(
            f,
            Level::Must,
            &format!("concurrent DEL {} of {}", i + 1, pods.len()),
            run,
        );
    }
    Ok(())
}

/// Runs `op(index, pod)` for every pod at once, one thread each; results in pod order.
fn run_all(pods: &[Pod], op: impl Fn(usize, &Pod) -> ChainRun + Sync) -> Vec<ChainRun> {
    thread::scope(|s| {
        let op = &op;
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| s.spawn(move || op(i, pod)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}
