//! The cluster-side checks, through kubectl and a kubeconfig: `cluster-dns` and
//! `node-pod-cidr`.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::report::Check;
use super::Options;
use crate::kernel;
use crate::netconf::{Kind, SuiteNetwork};

/// Cluster-side checks through kubectl: DNS pods running (kops: "kube-dns daemonset
/// starts"), and the node's pod CIDR matching the bridge's.
pub(super) fn cluster_checks(opts: &Options, nets: &[SuiteNetwork]) -> Vec<Check> {
    let Some(kubeconfig) = &opts.kubeconfig else {
        let why = "no --kubeconfig given: cluster-side checks need API access";
        return vec![
            Check::skip("cluster-dns", why),
            Check::skip("node-pod-cidr", why),
        ];
    };
    let Some(kubectl) = kernel::find_program("kubectl") else {
        let why = "kubectl not found on PATH: cluster-side checks run through it";
        return vec![
            Check::skip("cluster-dns", why),
            Check::skip("node-pod-cidr", why),
        ];
    };
    let get = |args: &[&str]| -> Result<Value, String> {
        let (ok, out, err) = kernel::run(
            Command::new(&kubectl)
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(args)
                .args(["-o", "json"]),
            Duration::from_secs(15),
        )
        .map_err(|e| e.to_string())?;
        if !ok {
            return Err(err.trim().to_string());
        }
        serde_json::from_str(&out).map_err(|e| e.to_string())
    };
    let mut checks = Vec::new();
    checks.push(match get(&["-n", "kube-system", "get", "pods", "-l", "k8s-app=kube-dns"]) {
        Err(e) => Check::fail("cluster-dns", format!("kubectl failed: {e}"), "check the kubeconfig and the API server"),
        Ok(v) => {
            let pods = v["items"].as_array().cloned().unwrap_or_default();
            let ready = pods
                .iter()
                .filter(|p| {
                    p["status"]["phase"] == "Running"
                        && p["status"]["containerStatuses"].as_array().is_some_and(|c| c.iter().all(|c| c["ready"] == true))
                })
                .count();
            if pods.is_empty() {
                Check::warn("cluster-dns", "no pod labelled k8s-app=kube-dns in kube-system", "deploy kube-dns/CoreDNS (kops does)")
            } else if ready < pods.len() {
                Check::fail(
                    "cluster-dns",
                    format!("{ready} of {} DNS pod(s) running and ready", pods.len()),
                    "kube-dns does not start until pod networking works: `kubectl -n kube-system describe pod -l k8s-app=kube-dns` names the CNI error",
                )
            } else {
                Check::ok("cluster-dns", format!("{ready} DNS pod(s) running and ready"))
            }
        }
    });
    let node = opts.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default()
    });
    checks.push(match get(&["get", "node", &node]) {
        Err(e) => Check::fail("node-pod-cidr", format!("kubectl get node {node}: {e}"), "pass --node-name if the node is not named after the hostname"),
        Ok(v) => {
            let cidr = v["spec"]["podCIDR"].as_str().unwrap_or("").to_string();
            let bridges: Vec<String> = nets
                .iter()
                .filter(|n| matches!(n.kind, Kind::Kubenet(_)))
                .filter_map(|n| n.resolve().ok().map(|r| r.pool().subnet().to_string()))
                .collect();
            let ready = v["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready")
                .cloned()
                .unwrap_or(Value::Null);
            if cidr.is_empty() && !bridges.is_empty() {
                Check::fail("node-pod-cidr", format!("node {node} has no spec.podCIDR"), "run kube-controller-manager with --allocate-node-cidrs (kops does for kubenet)")
            } else if let Some(b) = bridges.iter().find(|b| **b != cidr) {
                Check::fail(
                    "node-pod-cidr",
                    format!("node {node} has podCIDR {cidr}, the kubenet-bridge config has {b}: pods get addresses the cluster routes elsewhere"),
                    "render the conflist from the node's podCIDR (containerd conf_template or install-cni.sh with POD_CIDR)",
                )
            } else if ready["status"] != "True" {
                Check::fail("node-pod-cidr", format!("node {node} is not Ready: {}", ready["message"].as_str().unwrap_or("?")), "NetworkPluginNotReady means the runtime found no usable conflist")
            } else {
                Check::ok("node-pod-cidr", format!("node {node} is Ready, podCIDR {cidr}"))
            }
        }
    });
    checks
}
