//! Test harness: a moto EC2 server and an IMDSv2 fake per test, and a cluster VPC fixture.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::{Credentials, Region};
use aws_sdk_ec2::types::{Filter, NetworkInterfaceAttribute, Tag};
use ipnet::IpNet;

/// The built `vpc-route` binary, in the profile directory above this test binary.
pub fn vpc_route_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("profile dir");
    let bin = dir.join("vpc-route");
    assert!(
        bin.exists(),
        "{} missing: cargo build --release -p vpc-route",
        bin.display()
    );
    bin
}

/// Runs `program` (a vpc-route binary) as a runtime does with `verb` as `CNI_COMMAND` (pod
/// `pod-1`, `eth0`), or as a node command with `args` when `verb` is `None`; test credentials
/// in the environment, `stdin` as the config.
pub fn run_vpc_route(
    program: &Path,
    args: &[&str],
    verb: Option<&str>,
    stdin: &serde_json::Value,
    env: &[(&str, String)],
) -> std::process::Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // A pod namespace of its own: the plugin refuses its own namespace as CNI_NETNS.
    let pod = verb.map(|_| cni_testkit::netns::Netns::new("vpcrt-pod-"));
    if let (Some(verb), Some(pod)) = (verb, &pod) {
        cmd.env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", "pod-1")
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn vpc-route");
    let mut pipe = child.stdin.take().expect("stdin");
    // The node commands do not read stdin and may exit before it is written.
    let written = pipe.write_all(stdin.to_string().as_bytes());
    if verb.is_some() {
        written.expect("write stdin");
    }
    drop(pipe);
    child.wait_with_output().expect("wait vpc-route")
}

/// Install moto's venv once per test binary (the script is idempotent and locked).
fn moto_venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let venv = std::env::var_os("VPC_ROUTES_MOTO_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/vpc-routes-moto"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/setup-moto.sh");
        let status = Command::new("sh")
            .arg(&script)
            .env("VPC_ROUTES_MOTO_VENV", &venv)
            .status()
            .expect("run tests/setup-moto.sh");
        assert!(status.success(), "{} failed: {status}", script.display());
        venv
    })
}

/// For a test binary whose single test goes through the standard credential chain
/// (`vpc_routes_aws::connect`, `ensure`): sets the chain's environment, which must happen
/// before any other thread exists, and returns the runtime the test runs on.
pub fn credential_env_and_runtime() -> tokio::runtime::Runtime {
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ] {
        std::env::set_var(k, v);
    }
    for k in ["AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"] {
        std::env::remove_var(k);
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A moto server on 127.0.0.1, on a port the kernel picked. Killed on drop, panics included.
pub struct Moto {
    child: Child,
    pub endpoint: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Moto {
    pub fn start() -> Self {
        let venv = moto_venv();
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("moto.log");
        let log_file = std::fs::File::create(&log).expect("moto log");
        // Port 0: werkzeug binds a free port and prints it, so there is no race with other
        // tests picking the same port.
        let child = Command::new(venv.join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file)
            .spawn()
            .expect("start moto_server");
        let mut moto = Moto {
            child,
            endpoint: String::new(),
            log,
            _dir: dir,
        };
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&moto.log).unwrap_or_default();
            if let Some(rest) = text.split("Running on http://127.0.0.1:").nth(1) {
                let port: u16 = rest
                    .chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect::<String>()
                    .parse()
                    .expect("moto port");
                moto.endpoint = format!("http://127.0.0.1:{port}");
                break;
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited with {status}:\n{text}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "moto_server did not start:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }

    async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(credentials())
            .load()
            .await
    }

    /// An SDK client on moto, for fixtures and for reading back what the crate did.
    pub async fn client(&self) -> aws_sdk_ec2::Client {
        let sdk = self.sdk_config().await;
        aws_sdk_ec2::Client::from_conf(
            aws_sdk_ec2::config::Builder::from(&sdk)
                .endpoint_url(&self.endpoint)
                .build(),
        )
    }

    /// The crate's real EC2 implementation pointed at moto.
    pub async fn aws_ec2(&self) -> vpc_routes_aws::AwsEc2 {
        vpc_routes_aws::AwsEc2::from_sdk_config(&self.sdk_config().await, Some(&self.endpoint))
    }
}

impl Moto {
    /// EC2 requests moto has served so far (its request log has one line per request;
    /// werkzeug colours the request of an error answer, `"\x1b[31m\x1b[1mPOST / HTTP/1.1…" 400`,
    /// so the quote is not matched).
    pub fn requests(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("POST / HTTP/"))
            .count()
    }
}

pub fn credentials() -> Credentials {
    Credentials::new("testing", "testing", None, None, "vpc-routes-tests")
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("--- moto log (last lines, newest first):");
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

/// A fake IMDSv2 (moto's metadata stub omits the token TTL header that aws-config needs):
/// PUT /latest/api/token with the TTL header, then GETs with the token. Counts requests.
pub struct ImdsFake {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const IMDS_TOKEN: &str = "fake-imds-token";

impl ImdsFake {
    pub fn start(values: HashMap<String, String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind imds fake");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let values = Arc::new(values);
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (requests, values) = (requests.clone(), values.clone());
                    std::thread::spawn(move || serve_imds(stream, &values, &requests));
                }
            })
        };
        ImdsFake {
            addr,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for ImdsFake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One keep-alive connection: parse request line and headers, answer, repeat.
fn serve_imds(stream: TcpStream, values: &HashMap<String, String>, requests: &AtomicUsize) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or_default().to_string(),
            parts.next().unwrap_or_default().to_string(),
        );
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let body_len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; body_len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        requests.fetch_add(1, Ordering::SeqCst);
        let (status, extra, text) = match (method.as_str(), path.as_str()) {
            ("PUT", "/latest/api/token") => {
                match headers.get("x-aws-ec2-metadata-token-ttl-seconds") {
                    Some(ttl) => (
                        "200 OK",
                        format!("x-aws-ec2-metadata-token-ttl-seconds: {ttl}\r\n"),
                        IMDS_TOKEN.to_string(),
                    ),
                    None => ("400 Bad Request", String::new(), String::new()),
                }
            }
            ("GET", p) => {
                if headers.get("x-aws-ec2-metadata-token").map(String::as_str) != Some(IMDS_TOKEN) {
                    ("401 Unauthorized", String::new(), String::new())
                } else {
                    match values.get(p) {
                        Some(v) => ("200 OK", String::new(), v.clone()),
                        None => ("404 Not Found", String::new(), String::new()),
                    }
                }
            }
            _ => ("405 Method Not Allowed", String::new(), String::new()),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{extra}\r\n{text}",
            text.len()
        );
        if out.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// A node: an instance and its primary ENI.
#[derive(Debug, Clone)]
pub struct Node {
    pub instance_id: String,
    pub eni_id: String,
    pub mac: String,
}

/// A VPC with two cluster-tagged route tables (new and legacy tag) and one foreign table.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub vpc_id: String,
    pub subnet_id: String,
    pub image_id: String,
    /// Tagged `kubernetes.io/cluster/<name>=owned`.
    pub owned_table: String,
    /// Tagged `KubernetesCluster=<name>`.
    pub legacy_table: String,
    /// Untagged, same VPC.
    pub foreign_table: String,
}

pub async fn cluster(ec2: &aws_sdk_ec2::Client, name: &str) -> Cluster {
    let vpc_id = ec2
        .create_vpc()
        .cidr_block("10.98.0.0/16")
        .send()
        .await
        .expect("create vpc")
        .vpc()
        .and_then(|v| v.vpc_id())
        .expect("vpc id")
        .to_string();
    let subnet_id = ec2
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block("10.98.1.0/24")
        .send()
        .await
        .expect("create subnet")
        .subnet()
        .and_then(|s| s.subnet_id())
        .expect("subnet id")
        .to_string();
    let image_id = ec2
        .describe_images()
        .owners("amazon")
        .send()
        .await
        .expect("describe images")
        .images()
        .first()
        .and_then(|i| i.image_id())
        .expect("an AMI in moto")
        .to_string();
    let mut tables = Vec::new();
    for tag in [
        Some((format!("kubernetes.io/cluster/{name}"), "owned".to_string())),
        Some(("KubernetesCluster".to_string(), name.to_string())),
        None,
    ] {
        let id = ec2
            .create_route_table()
            .vpc_id(&vpc_id)
            .send()
            .await
            .expect("create route table")
            .route_table()
            .and_then(|t| t.route_table_id())
            .expect("table id")
            .to_string();
        if let Some((k, v)) = tag {
            ec2.create_tags()
                .resources(&id)
                .tags(Tag::builder().key(k).value(v).build())
                .send()
                .await
                .expect("tag table");
        }
        tables.push(id);
    }
    Cluster {
        name: name.to_string(),
        vpc_id,
        subnet_id,
        image_id,
        owned_table: tables[0].clone(),
        legacy_table: tables[1].clone(),
        foreign_table: tables[2].clone(),
    }
}

impl Cluster {
    pub fn tagged_tables(&self) -> [&str; 2] {
        [&self.owned_table, &self.legacy_table]
    }

    pub async fn run_instance(&self, ec2: &aws_sdk_ec2::Client) -> Node {
        let out = ec2
            .run_instances()
            .image_id(&self.image_id)
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
            .subnet_id(&self.subnet_id)
            .min_count(1)
            .max_count(1)
            .send()
            .await
            .expect("run instance");
        let i = out.instances().first().expect("instance");
        let eni = i.network_interfaces().first().expect("primary eni");
        Node {
            instance_id: i.instance_id().expect("id").to_string(),
            eni_id: eni.network_interface_id().expect("eni id").to_string(),
            mac: eni.mac_address().unwrap_or("0e:00:00:00:00:01").to_string(),
        }
    }

    /// IMDS values for `node`, as EC2's metadata service serves them.
    pub fn imds_values(&self, node: &Node) -> HashMap<String, String> {
        let m = "/latest/meta-data";
        let mac = &node.mac;
        [
            (format!("{m}/instance-id"), node.instance_id.clone()),
            (format!("{m}/placement/region"), "us-east-1".to_string()),
            (format!("{m}/mac"), mac.clone()),
            (
                format!("{m}/network/interfaces/macs/{mac}/interface-id"),
                node.eni_id.clone(),
            ),
            (
                format!("{m}/network/interfaces/macs/{mac}/vpc-id"),
                self.vpc_id.clone(),
            ),
            (
                format!("{m}/network/interfaces/macs/{mac}/subnet-id"),
                self.subnet_id.clone(),
            ),
        ]
        .into_iter()
        .collect()
    }
}

/// Routes of one table as (destination, instance id, ENI id), read back through the SDK.
pub async fn routes(
    ec2: &aws_sdk_ec2::Client,
    table_id: &str,
) -> Vec<(IpNet, Option<String>, Option<String>)> {
    let out = ec2
        .describe_route_tables()
        .route_table_ids(table_id)
        .send()
        .await
        .expect("describe route tables");
    let table = out.route_tables().first().expect("table");
    table
        .routes()
        .iter()
        .filter_map(|r| {
            Some((
                r.destination_cidr_block()
                    .or(r.destination_ipv6_cidr_block())?
                    .parse()
                    .ok()?,
                r.instance_id().map(str::to_string),
                r.network_interface_id().map(str::to_string),
            ))
        })
        .collect()
}

/// Where `destination` points in `table_id`: `Some((instance, eni))`, or `None` if absent.
pub async fn route_to(
    ec2: &aws_sdk_ec2::Client,
    table_id: &str,
    destination: &str,
) -> Option<(Option<String>, Option<String>)> {
    let d: IpNet = destination.parse().expect("cidr");
    routes(ec2, table_id)
        .await
        .into_iter()
        .find(|(dest, _, _)| *dest == d)
        .map(|(_, i, e)| (i, e))
}

pub async fn create_instance_route(
    ec2: &aws_sdk_ec2::Client,
    table_id: &str,
    destination: &str,
    instance_id: &str,
) {
    let d: IpNet = destination.parse().expect("cidr");
    let v6 = matches!(d, IpNet::V6(_));
    ec2.create_route()
        .route_table_id(table_id)
        .set_destination_cidr_block((!v6).then(|| destination.to_string()))
        .set_destination_ipv6_cidr_block(v6.then(|| destination.to_string()))
        .instance_id(instance_id)
        .send()
        .await
        .expect("create route to instance");
}

pub async fn terminate(ec2: &aws_sdk_ec2::Client, instance_id: &str) {
    ec2.terminate_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .expect("terminate");
}

pub async fn source_dest_check(ec2: &aws_sdk_ec2::Client, eni_id: &str) -> Option<bool> {
    ec2.describe_network_interface_attribute()
        .network_interface_id(eni_id)
        .attribute(NetworkInterfaceAttribute::SourceDestCheck)
        .send()
        .await
        .expect("describe eni attribute")
        .source_dest_check()
        .and_then(|v| v.value())
}

pub async fn instance_state(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> String {
    ec2.describe_instances()
        .filters(
            Filter::builder()
                .name("instance-id")
                .values(instance_id)
                .build(),
        )
        .send()
        .await
        .expect("describe instances")
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.state()?.name())
        .map(|n| n.as_str().to_string())
        .next()
        .unwrap_or_default()
}
