//! [`Ec2`] on aws-sdk-ec2: each trait method is one SDK request (paginated reads follow their
//! pages), and SDK types and errors become the core's small types here and nowhere else.

use std::time::Duration;

use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{AttributeBooleanValue, Filter, NetworkInterfaceAttribute};
use ipnet::IpNet;
use vpc_routes::{
    ApiError, Ec2, Instance, Operation, Route, RouteOrigin, RouteState, RouteTable, RouteTarget,
    TableQuery,
};

/// [`Ec2`] on aws-sdk-ec2. The SDK's own retries are off: [`vpc_routes::Registrar`] retries
/// throttling itself, inside its deadline, so two retry loops never multiply.
#[derive(Debug, Clone)]
pub struct AwsEc2 {
    client: aws_sdk_ec2::Client,
}

/// DescribeInstances accepts at most 200 values per filter.
const INSTANCE_FILTER_BATCH: usize = 200;

impl AwsEc2 {
    /// Load the standard AWS configuration (credential chain, environment, profiles) for
    /// `region`, with an optional endpoint override.
    pub async fn connect(region: &str, endpoint: Option<&str>) -> Self {
        let sdk_config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_string()))
            .load()
            .await;
        Self::from_sdk_config(&sdk_config, endpoint)
    }

    /// Build from an already loaded SDK configuration (tests pass static credentials).
    pub fn from_sdk_config(sdk_config: &aws_config::SdkConfig, endpoint: Option<&str>) -> Self {
        let mut builder = aws_sdk_ec2::config::Builder::from(sdk_config)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .build(),
            );
        if let Some(url) = endpoint {
            builder = builder.endpoint_url(url);
        }
        AwsEc2 {
            client: aws_sdk_ec2::Client::from_conf(builder.build()),
        }
    }

    /// The underlying SDK client.
    pub fn client(&self) -> &aws_sdk_ec2::Client {
        &self.client
    }
}

fn api_error<E>(operation: Operation, err: SdkError<E>) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &err {
        SdkError::ServiceError(_) => ApiError::service(
            operation,
            err.code().unwrap_or("Unknown"),
            err.message()
                .map(str::to_string)
                .unwrap_or_else(|| DisplayErrorContext(&err).to_string()),
        ),
        _ => ApiError::transport(operation, DisplayErrorContext(&err).to_string()),
    }
}

fn convert_route(r: &aws_sdk_ec2::types::Route) -> Route {
    let destination = r
        .destination_cidr_block()
        .or(r.destination_ipv6_cidr_block())
        .and_then(|d| d.parse().ok());
    let node = r.instance_id().is_some() || r.network_interface_id().is_some();
    let other = r
        .gateway_id()
        .or(r.nat_gateway_id())
        .or(r.transit_gateway_id())
        .or(r.vpc_peering_connection_id())
        .or(r.egress_only_internet_gateway_id())
        .or(r.local_gateway_id())
        .or(r.carrier_gateway_id())
        .or(r.core_network_arn());
    let target = match (node, other) {
        (true, _) => RouteTarget::Node {
            instance_id: r.instance_id().map(str::to_string),
            eni_id: r.network_interface_id().map(str::to_string),
        },
        (false, Some(o)) => RouteTarget::Other(o.to_string()),
        (false, None) => RouteTarget::Unknown,
    };
    use aws_sdk_ec2::types::RouteOrigin as O;
    let origin = match r.origin() {
        Some(O::CreateRoute) => RouteOrigin::CreateRoute,
        Some(O::CreateRouteTable) => RouteOrigin::CreateRouteTable,
        Some(O::EnableVgwRoutePropagation) | Some(O::Advertisement) => RouteOrigin::Propagated,
        Some(o) => RouteOrigin::Other(o.as_str().to_string()),
        None => RouteOrigin::Other("unknown".to_string()),
    };
    use aws_sdk_ec2::types::RouteState as S;
    let state = match r.state() {
        Some(S::Active) => RouteState::Active,
        Some(S::Blackhole) => RouteState::Blackhole,
        Some(s) => RouteState::Other(s.as_str().to_string()),
        None => RouteState::Other("unknown".to_string()),
    };
    Route {
        destination,
        target,
        origin,
        state,
    }
}

/// `DestinationCidrBlock` of an IPv4 destination. ipnet prints the canonical text (an IPv6
/// range compressed and lower case), the spelling EC2 answers with; moto keys routes by the
/// literal text, so another spelling would be another route there.
fn ipv4(destination: IpNet) -> Option<String> {
    matches!(destination, IpNet::V4(_)).then(|| destination.to_string())
}

/// `DestinationIpv6CidrBlock` of an IPv6 destination.
fn ipv6(destination: IpNet) -> Option<String> {
    matches!(destination, IpNet::V6(_)).then(|| destination.to_string())
}

fn convert_table(t: &aws_sdk_ec2::types::RouteTable) -> RouteTable {
    RouteTable {
        id: t.route_table_id().unwrap_or_default().to_string(),
        vpc_id: t.vpc_id().unwrap_or_default().to_string(),
        tags: t
            .tags()
            .iter()
            .filter_map(|tag| Some((tag.key()?.to_string(), tag.value()?.to_string())))
            .collect(),
        routes: t.routes().iter().map(convert_route).collect(),
    }
}

impl Ec2 for AwsEc2 {
    async fn describe_route_tables(&self, query: &TableQuery) -> Result<Vec<RouteTable>, ApiError> {
        let op = Operation::DescribeRouteTables;
        let mut tables = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = self.client.describe_route_tables();
            req = match query {
                TableQuery::Ids(ids) => req.set_route_table_ids(Some(ids.clone())),
                TableQuery::Vpc(vpc) => {
                    req.filters(Filter::builder().name("vpc-id").values(vpc).build())
                }
            };
            let out = req
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| api_error(op, e))?;
            tables.extend(out.route_tables().iter().map(convert_table));
            match out.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(tables),
            }
        }
    }

    async fn create_route(
        &self,
        table_id: &str,
        destination: IpNet,
        eni_id: &str,
    ) -> Result<(), ApiError> {
        self.client
            .create_route()
            .route_table_id(table_id)
            .set_destination_cidr_block(ipv4(destination))
            .set_destination_ipv6_cidr_block(ipv6(destination))
            .network_interface_id(eni_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| api_error(Operation::CreateRoute, e))
    }

    async fn replace_route(
        &self,
        table_id: &str,
        destination: IpNet,
        eni_id: &str,
    ) -> Result<(), ApiError> {
        self.client
            .replace_route()
            .route_table_id(table_id)
            .set_destination_cidr_block(ipv4(destination))
            .set_destination_ipv6_cidr_block(ipv6(destination))
            .network_interface_id(eni_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| api_error(Operation::ReplaceRoute, e))
    }

    async fn delete_route(&self, table_id: &str, destination: IpNet) -> Result<(), ApiError> {
        self.client
            .delete_route()
            .route_table_id(table_id)
            .set_destination_cidr_block(ipv4(destination))
            .set_destination_ipv6_cidr_block(ipv6(destination))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| api_error(Operation::DeleteRoute, e))
    }

    async fn describe_instances(&self, instance_ids: &[String]) -> Result<Vec<Instance>, ApiError> {
        let op = Operation::DescribeInstances;
        let mut instances = Vec::new();
        for batch in instance_ids.chunks(INSTANCE_FILTER_BATCH) {
            let mut token: Option<String> = None;
            loop {
                let out = self
                    .client
                    .describe_instances()
                    .filters(
                        Filter::builder()
                            .name("instance-id")
                            .set_values(Some(batch.to_vec()))
                            .build(),
                    )
                    .set_next_token(token.take())
                    .send()
                    .await
                    .map_err(|e| api_error(op, e))?;
                for reservation in out.reservations() {
                    for i in reservation.instances() {
                        instances.push(Instance {
                            id: i.instance_id().unwrap_or_default().to_string(),
                            state: i
                                .state()
                                .and_then(|s| s.name())
                                .map(|n| n.as_str().to_string())
                                .unwrap_or_default(),
                        });
                    }
                }
                match out.next_token() {
                    Some(t) if !t.is_empty() => token = Some(t.to_string()),
                    _ => break,
                }
            }
        }
        Ok(instances)
    }

    async fn source_dest_check(&self, eni_id: &str) -> Result<bool, ApiError> {
        let out = self
            .client
            .describe_network_interface_attribute()
            .network_interface_id(eni_id)
            .attribute(NetworkInterfaceAttribute::SourceDestCheck)
            .send()
            .await
            .map_err(|e| api_error(Operation::DescribeNetworkInterfaceAttribute, e))?;
        // EC2 enables the check on every new ENI; absent means its default.
        Ok(out
            .source_dest_check()
            .and_then(|v| v.value())
            .unwrap_or(true))
    }

    async fn disable_source_dest_check(&self, eni_id: &str) -> Result<(), ApiError> {
        self.client
            .modify_network_interface_attribute()
            .network_interface_id(eni_id)
            .source_dest_check(AttributeBooleanValue::builder().value(false).build())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| api_error(Operation::ModifyNetworkInterfaceAttribute, e))
    }
}
