//! The IAM policies we publish (README's minimal policy, the kops example's
//! additionalPolicies) grant exactly the EC2 calls the crate makes: a missing action is an
//! AccessDenied on a real node that moto never shows.

use std::collections::BTreeSet;
use std::path::Path;

use vpc_routes::Operation;

fn repo_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `"ec2:<Action>"` string in `text`.
fn actions(text: &str) -> BTreeSet<String> {
    text.split("\"ec2:")
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(a, _)| a.to_string()))
        .collect()
}

fn needed() -> BTreeSet<String> {
    Operation::ALL.iter().map(|o| o.to_string()).collect()
}

#[test]
fn readme_minimal_policy_grants_every_call_and_no_more() {
    let readme = repo_file("README.md");
    let start = readme
        .find("Minimal IAM policy")
        .expect("README has the minimal IAM policy");
    let block = &readme[start..];
    let open = block.find("```json").expect("policy in a json block");
    let close = block[open + 7..].find("```").expect("closed block") + open + 7;
    let policy = &block[open + 7..close];
    serde_json::from_str::<serde_json::Value>(policy).expect("the policy is valid JSON");
    assert_eq!(actions(policy), needed(), "README policy:\n{policy}");
}

#[test]
fn kops_example_policy_matches() {
    let kops = repo_file("packaging/examples/kops-cluster.yaml");
    let start = kops
        .find("additionalPolicies:")
        .expect("additionalPolicies");
    assert_eq!(actions(&kops[start..]), needed(), "kops example:\n{kops}");
}
