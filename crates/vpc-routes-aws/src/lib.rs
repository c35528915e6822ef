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
//! let registrar = vpc_routes_aws::connect(config).await?; // no EC2 call
//! let plan = registrar.ensure().await?; // warm: no EC2 call either
//! println!("{plan}");
//! # Ok(()) }
//! ```

mod ec2;
mod imds;

pub use ec2::AwsEc2;
pub use imds::node_identity;

use vpc_routes::{Config, Deadline, Error, Registrar, StateStore};

/// What the plugin binary calls: identity from the node state cache when it was written
/// during this boot for the same overrides, else from IMDSv2; an SDK client from the
/// standard credential chain. Makes no EC2 request. The IMDS lookup and the first operation
/// share one `deadlineSeconds`, so a cold ADD is bounded as a whole.
pub async fn connect(config: Config) -> Result<Registrar<AwsEc2>, Error> {
    config.validate()?;
    let deadline = Deadline::after(config.deadline());
    let store = StateStore::new(&config.data_dir);
    let cached = store
        .load()?
        .filter(|s| s.is_same_boot() && s.node.matches(&config))
        .map(|s| s.node);
    let node = match cached {
        Some(node) => node,
        None => tokio::time::timeout(deadline.remaining(), node_identity(&config))
            .await
            .map_err(|_| Error::Imds {
                path: "/latest/meta-data".to_string(),
                endpoint: config
                    .imds_endpoint
                    .clone()
                    .unwrap_or_else(|| "default".to_string()),
                message: format!("no answer within {} s", config.deadline_seconds),
            })??,
    };
    let ec2 = AwsEc2::connect(&node.region, config.ec2_endpoint.as_deref()).await;
    Ok(Registrar::new(config, node, ec2).inheriting(deadline))
}
