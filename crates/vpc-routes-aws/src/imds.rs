//! Who this node is in EC2: instance, region, primary ENI, VPC, subnet, from IMDSv2 or config.

use std::time::Duration;

use aws_config::imds::client::Client as ImdsClient;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::Error;

/// The node as EC2 knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeIdentity {
    /// `i-...`
    pub instance_id: String,
    /// AWS region, such as `eu-west-1`.
    pub region: String,
    /// The primary ENI (device 0), the target of the node's route.
    pub eni_id: String,
    /// The node's VPC: where tagged tables are looked up.
    pub vpc_id: String,
    /// The primary ENI's subnet, when known (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
}

/// IMDS is link-local: one second is plenty, and ADD must not wait long for a dead endpoint.
const IMDS_TIMEOUT: Duration = Duration::from_secs(1);

/// Lazily built IMDSv2 session: only created when a value is not overridden.
struct Imds<'a> {
    endpoint: Option<&'a str>,
    client: Option<ImdsClient>,
}

impl Imds<'_> {
    fn endpoint_name(&self) -> String {
        self.endpoint.unwrap_or("default").to_string()
    }

    fn client(&mut self) -> Result<&ImdsClient, Error> {
        let client = match self.client.take() {
            Some(c) => c,
            None => {
                let mut builder = ImdsClient::builder()
                    .connect_timeout(IMDS_TIMEOUT)
                    .read_timeout(IMDS_TIMEOUT)
                    .max_attempts(2);
                if let Some(url) = self.endpoint {
                    builder = builder.endpoint(url).map_err(|e| Error::Config {
                        field: "imdsEndpoint",
                        reason: e.to_string(),
                    })?;
                }
                builder.build()
            }
        };
        Ok(self.client.insert(client))
    }

    /// GET one metadata path; the client fetches and refreshes the session token (PUT with the
    /// TTL header) itself.
    async fn get(&mut self, path: &str) -> Result<String, Error> {
        let endpoint = self.endpoint_name();
        let client = self.client()?;
        let value = client.get(path).await.map_err(|e| Error::Imds {
            path: path.to_string(),
            endpoint,
            message: aws_sdk_ec2::error::DisplayErrorContext(&e).to_string(),
        })?;
        Ok(String::from(value).trim().to_string())
    }
}

impl NodeIdentity {
    /// Resolve from the config's overrides, then the environment (region), then IMDSv2 for
    /// whatever is left. With every value overridden no request is made.
    pub async fn resolve(config: &Config) -> Result<Self, Error> {
        let mut imds = Imds {
            endpoint: config.imds_endpoint.as_deref(),
            client: None,
        };
        let instance_id = match &config.instance_id {
            Some(i) => i.clone(),
            None => imds.get("/latest/meta-data/instance-id").await?,
        };
        let region = match region_override(config) {
            Some(r) => r,
            None => imds.get("/latest/meta-data/placement/region").await?,
        };
        let (eni_id, vpc_id, subnet_id) = match (&config.eni_id, &config.vpc_id, &config.subnet_id)
        {
            (Some(e), Some(v), s) => (e.clone(), v.clone(), s.clone()),
            (e, v, s) => {
                // The primary ENI is the one whose MAC is the instance's `mac`.
                let mac = imds.get("/latest/meta-data/mac").await?;
                let base = format!("/latest/meta-data/network/interfaces/macs/{mac}");
                let eni = match e {
                    Some(e) => e.clone(),
                    None => imds.get(&format!("{base}/interface-id")).await?,
                };
                let vpc = match v {
                    Some(v) => v.clone(),
                    None => imds.get(&format!("{base}/vpc-id")).await?,
                };
                let subnet = match s {
                    Some(s) => Some(s.clone()),
                    None => Some(imds.get(&format!("{base}/subnet-id")).await?),
                };
                (eni, vpc, subnet)
            }
        };
        Ok(NodeIdentity {
            instance_id,
            region,
            eni_id,
            vpc_id,
            subnet_id,
        })
    }

    /// Whether this identity agrees with every override in `config` (a cached identity is
    /// only reused when it does).
    pub fn matches(&self, config: &Config) -> bool {
        fn agrees(over: &Option<String>, value: &str) -> bool {
            over.as_deref().is_none_or(|o| o == value)
        }
        agrees(&config.instance_id, &self.instance_id)
            && agrees(&region_override(config), &self.region)
            && agrees(&config.eni_id, &self.eni_id)
            && agrees(&config.vpc_id, &self.vpc_id)
            && config
                .subnet_id
                .as_deref()
                .is_none_or(|s| self.subnet_id.as_deref() == Some(s))
    }
}

/// `region` from the config, else the standard environment variables.
fn region_override(config: &Config) -> Option<String> {
    config.region.clone().or_else(|| {
        ["AWS_REGION", "AWS_DEFAULT_REGION"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    })
}
