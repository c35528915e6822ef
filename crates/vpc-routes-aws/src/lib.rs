//! vpc-routes on AWS: [`AwsEc2`], the aws-sdk-ec2 implementation of [`vpc_routes::Ec2`];
//! [`node_identity`], the node from IMDSv2; and [`connect`], which wires both into a
//! [`Registrar`] as the plugin binary needs it. The only crate that compiles the AWS SDK
//! (about 15 minutes), linked by the `vpc-route` binary alone.
//!
//! Its errors are [`vpc_routes::Error`]: the SDK's become [`vpc_routes::ApiError`] (in
//! [`AwsEc2`]) and IMDS failures [`vpc_routes::Error::Imds`], so the binary maps one error
//! type to CNI codes.
//!
//! ```no_run
//! # async fn add(plugin_config: serde_json::Value) -> Result<(), vpc_routes::Error> {
//! let config = vpc_routes::Config::from_value(plugin_config)?;
//! // Warm: no EC2 or IMDS call. A cached node EC2 does not know is resolved again, once.
//! let plan = vpc_routes_aws::ensure(config).await?;
//! println!("{plan}");
//! # Ok(()) }
//! ```

mod ec2;
mod imds;

pub use ec2::AwsEc2;
pub use imds::node_identity;

use vpc_routes::{Config, Deadline, Error, Plan, Registrar, StateStore};

/// What the node commands call: identity from the node state cache when it was written
/// during this boot for the same overrides, else from IMDSv2; an SDK client from the
/// standard credential chain. Makes no EC2 request. The IMDS lookup and the first operation
/// share one `deadlineSeconds`, so a cold ADD is bounded as a whole.
pub async fn connect(config: Config) -> Result<Registrar<AwsEc2>, Error> {
    config.validate()?;
    let deadline = Deadline::after(config.deadline());
    Ok(connect_within(&config, deadline, NodeSource::CacheFirst)
        .await?
        .0)
}

/// ADD: [`Registrar::ensure`] on the registrar [`connect`] builds, repairing a node state
/// that names ids EC2 does not know ([`repairing_stale_node`]).
pub async fn ensure(config: Config) -> Result<Plan, Error> {
    repairing_stale_node(config, |r| async move { r.ensure().await }).await
}

/// CHECK: [`Registrar::check`], repairing a stale node state as [`ensure`] does.
pub async fn check(config: Config) -> Result<(), Error> {
    repairing_stale_node(config, |r| async move { r.check().await }).await
}

/// Where [`connect_within`] takes the node's identity from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeSource {
    /// The node state of this boot when it agrees with the config's overrides, else IMDS.
    CacheFirst,
    /// IMDS (the cached identity was found wrong).
    Imds,
}

/// Runs `operation` on a registrar whose node may come from the node state cache. When it
/// did and EC2 answers that one of its ids does not exist (a state file copied from another
/// instance, a replaced ENI), the cache is dropped, the node is resolved from IMDS and the
/// operation runs once more, all within the same `deadlineSeconds`. A warm ADD still makes
/// no EC2 or IMDS call: only an EC2 answer starts the repair.
async fn repairing_stale_node<T, F, Fut>(config: Config, operation: F) -> Result<T, Error>
where
    F: Fn(Registrar<AwsEc2>) -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    config.validate()?;
    let deadline = Deadline::after(config.deadline());
    let (registrar, source) = connect_within(&config, deadline, NodeSource::CacheFirst).await?;
    let cached = registrar.node().clone();
    match operation(registrar).await {
        Err(e) if source == NodeSource::CacheFirst && e.is_unknown_node_id() => {
            log::warn!(
                "the node state names {} / {} in {}, which EC2 does not know ({e}): \
                 resolving the node again",
                cached.instance_id,
                cached.eni_id,
                cached.vpc_id
            );
            StateStore::new(&config.data_dir).remove()?;
            let (registrar, _) = connect_within(&config, deadline, NodeSource::Imds).await?;
            operation(registrar).await
        }
        other => other,
    }
}

/// The registrar for `config` with its node from `source` (falling back to IMDS when the
/// cache has none), inheriting `deadline`; says where the node came from.
async fn connect_within(
    config: &Config,
    deadline: Deadline,
    source: NodeSource,
) -> Result<(Registrar<AwsEc2>, NodeSource), Error> {
    let cached = match source {
        NodeSource::CacheFirst => StateStore::new(&config.data_dir)
            .load()?
            .filter(|s| s.is_same_boot() && s.node.matches(config))
            .map(|s| s.node),
        NodeSource::Imds => None,
    };
    let (node, source) = match cached {
        Some(node) => (node, NodeSource::CacheFirst),
        None => (
            tokio::time::timeout(deadline.remaining(), node_identity(config))
                .await
                .map_err(|_| Error::Imds {
                    path: "/latest/meta-data".to_string(),
                    endpoint: config
                        .imds_endpoint
                        .clone()
                        .unwrap_or_else(|| "default".to_string()),
                    message: format!("no answer within {} s", config.deadline_seconds),
                })??,
            NodeSource::Imds,
        ),
    };
    let ec2 = AwsEc2::connect(&node.region, config.ec2_endpoint.as_deref()).await;
    Ok((
        Registrar::new(config.clone(), node, ec2).inheriting(deadline),
        source,
    ))
}
