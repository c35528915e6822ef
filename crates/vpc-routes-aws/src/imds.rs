//! Who this node is in EC2 (instance, region, primary ENI, VPC, subnet): the config's
//! overrides, then IMDSv2 for the rest.

use std::time::Duration;

use aws_config::imds::client::Client as ImdsClient;
use vpc_routes::{Config, Error, NodeIdentity};

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

/// The node's identity from the config's overrides, then the environment (region), then
/// IMDSv2 for whatever is left. With every value overridden no request is made.
pub async fn node_identity(config: &Config) -> Result<NodeIdentity, Error> {
    let mut imds = Imds {
        endpoint: config.imds_endpoint.as_deref(),
        client: None,
    };
    let instance_id = match &config.instance_id {
        Some(i) => i.clone(),
        None => imds.get("/latest/meta-data/instance-id").await?,
    };
    let region = match config.region_override() {
        Some(r) => r,
        None => imds.get("/latest/meta-data/placement/region").await?,
    };
    let (eni_id, vpc_id, subnet_id) = match (&config.eni_id, &config.vpc_id, &config.subnet_id) {
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
