//! A throw-away lab: a client, the forwarder, and nodes running a NodePort
//! server, each in its own network namespace.
//!
//! ```text
//!  client 10.0.1.2 ── f-client 10.0.1.1 [forwarder] f-lan 10.0.2.1 ── bridge ── node1 10.0.2.11
//!  (route to the VIP via the forwarder)                                     └── node2 10.0.2.12 ...
//! ```
//!
//! The nodes' default gateway is the forwarder, so in preserve mode their
//! replies to the client come back through it. Every node runs nginx with
//! an HTTP NodePort (30080) and a UDP one (30053) answering
//! `node=NAME client=IP:PORT`: which node answered and whom it saw.
//!
//! The lab comes in the flavours of [`Flavour`], chosen by the environment
//! variable `FORWARDER_LAB`: by default the veths keep the kernel's
//! defaults (TX checksum offload on, so senders hand over partial
//! checksums and TSO-sized packets; GRO as created) and the daemon runs as
//! a new user would start it, `ip netns exec NS forwarder run` with
//! `--attach auto` and no `--pin-dir` or `--run-dir`. The `tuned-xdp`
//! flavour stands in for real hardware under XDP: the sending ends compute
//! checksums in software (`tx off`), as a NIC delivers complete checksums,
//! and the receiving ends of XDP redirects have GRO on, which veth
//! requires to accept XDP frames.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::Context as _;

use crate::netns::{Netns, Process, unique_name};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
/// The forwarder's address on the client side.
pub const FORWARDER_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
/// The forwarder's address on the nodes' LAN: the SNAT address by default.
pub const FORWARDER_LAN_SIDE: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 100, 10);
pub const HTTP_NODEPORT: u16 = 30080;
pub const UDP_NODEPORT: u16 = 30053;
/// The forwarder's interfaces.
pub const CLIENT_IFACE: &str = "f-client";
pub const LAN_IFACE: &str = "f-lan";

/// A service file: `web` (TCP 80 -> NodePort 30080) and `dns` (UDP 53 ->
/// NodePort 30053) on the VIP, both in `mode`, backed by nodes `nodes`
/// (0-based); `web_extra` is added to web's table (e.g. a health check).
#[must_use]
pub fn service_file(mode: &str, nodes: &[usize], web_extra: &str) -> String {
    let list = |port: u16| {
        nodes.iter().map(|&i| format!("\"{}:{port}\"", node_addr(i))).collect::<Vec<_>>().join(", ")
    };
    format!(
        "[[service]]\nname = \"web\"\nvip = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\nmode = \"{mode}\"\n\
         backends = [{}]\n{web_extra}\n\n[[service]]\nname = \"dns\"\nvip = \"{VIP}\"\nport = 53\nprotocol = \"udp\"\n\
         mode = \"{mode}\"\nbackends = [{}]\n",
        list(HTTP_NODEPORT),
        list(UDP_NODEPORT)
    )
}

/// Address of node `i` (0-based).
#[must_use]
pub fn node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 2, 11 + i as u8)
}

pub struct Node {
    pub name: String,
    pub addr: Ipv4Addr,
    pub ns: Netns,
    server: Option<Process>,
}

impl Node {
    #[must_use]
    pub fn http(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.addr, HTTP_NODEPORT)
    }

    #[must_use]
    pub fn udp(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.addr, UDP_NODEPORT)
    }
}

/// How the lab's links are set up and how its daemon is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// Kernel-default veths, `--attach auto`, default pin and run
    /// directories (`FORWARDER_LAB` unset or `defaults`).
    Defaults,
    /// Kernel-default veths, `--attach tc`, default directories
    /// (`defaults-tc`).
    DefaultsTc,
    /// Veths tuned for XDP, `--attach xdp`, the lab's own bpffs and run
    /// directory (`tuned-xdp`).
    TunedXdp,
}

impl Flavour {
    /// The flavour `FORWARDER_LAB` asks for.
    ///
    /// # Panics
    /// On a value that names no flavour.
    #[must_use]
    pub fn from_env() -> Self {
        match std::env::var("FORWARDER_LAB").as_deref() {
            Err(_) | Ok("" | "defaults") => Self::Defaults,
            Ok("defaults-tc") => Self::DefaultsTc,
            Ok("tuned-xdp") => Self::TunedXdp,
            Ok(other) => panic!("FORWARDER_LAB={other}: expected defaults, defaults-tc or tuned-xdp"),
        }
    }

    /// The `--attach` argument its daemon runs with.
    #[must_use]
    pub fn attach(self) -> &'static str {
        match self {
            Self::Defaults => "auto",
            Self::DefaultsTc => "tc",
            Self::TunedXdp => "xdp",
        }
    }

    /// The hook the daemon ends up on, on the lab's veths.
    #[must_use]
    pub fn hook(self) -> &'static str {
        match self {
            Self::Defaults | Self::DefaultsTc => "tc",
            Self::TunedXdp => "xdp",
        }
    }
}

/// Where the lab's daemon keeps its state.
enum State {
    /// The lab's own bpffs (unmounting it releases whatever a daemon left
    /// pinned, links included) and run directory under the lab directory.
    Own(BpfFs),
    /// The daemon's defaults for the forwarder's namespace, removed when
    /// the lab goes.
    Default { pin_dir: PathBuf, run_dir: PathBuf },
}

impl Drop for State {
    fn drop(&mut self) {
        if let Self::Default { pin_dir, run_dir } = self {
            let _ = fs::remove_dir_all(pin_dir);
            let _ = fs::remove_dir_all(run_dir);
        }
    }
}

pub struct Lab {
    pub flavour: Flavour,
    // Dropped first, so that nothing the daemon pinned stays attached.
    state: State,
    // Processes live in the nodes and stop before the namespaces go.
    pub nodes: Vec<Node>,
    pub client: Netns,
    pub forwarder: Netns,
    pub lan: Netns,
    pub dir: tempfile::TempDir,
}

impl Lab {
    /// Builds the topology with `nodes` nodes (not yet serving), in the
    /// flavour `FORWARDER_LAB` names.
    pub fn new(prefix: &str, nodes: usize) -> anyhow::Result<Self> {
        Self::with_flavour(prefix, nodes, Flavour::from_env())
    }

    /// The same, in `flavour`.
    pub fn with_flavour(prefix: &str, nodes: usize, flavour: Flavour) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("forwarder-lab").tempdir()?;
        let client = Netns::create(unique_name(prefix, "c"))?;
        let forwarder = Netns::create(unique_name(prefix, "f"))?;
        let lan = Netns::create(unique_name(prefix, "l"))?;
        let state = if flavour == Flavour::TunedXdp {
            fs::create_dir_all(dir.path().join("run"))?;
            State::Own(BpfFs::mount(&dir.path().join("bpf"))?)
        } else {
            // What the daemon picks in a namespace `ip netns` names (its
            // default bpffs is the one of the mount namespace it was
            // started from: this process's).
            let name = format!("forwarder-netns-{}", forwarder.name());
            State::Default {
                pin_dir: Path::new("/sys/fs/bpf").join(&name),
                run_dir: Path::new("/run").join(&name),
            }
        };
        let mut lab = Self { flavour, state, nodes: Vec::new(), client, forwarder, lan, dir };
        lab.wire(nodes).context("building the lab")?;
        Ok(lab)
    }

    fn wire(&mut self, nodes: usize) -> anyhow::Result<()> {
        let (c, f, l) =
            (self.client.name().to_owned(), self.forwarder.name().to_owned(), self.lan.name().to_owned());
        link_pair(&c, "eth0", &f, CLIENT_IFACE)?;
        link_pair(&f, LAN_IFACE, &l, "to-fwd")?;
        self.client.ip(&format!("addr add {CLIENT}/24 dev eth0"))?;
        self.client.ip("link set eth0 up")?;
        self.client.ip(&format!("route add default via {FORWARDER_CLIENT_SIDE}"))?;
        self.forwarder.ip(&format!("addr add {FORWARDER_CLIENT_SIDE}/24 dev {CLIENT_IFACE}"))?;
        self.forwarder.ip(&format!("addr add {FORWARDER_LAN_SIDE}/24 dev {LAN_IFACE}"))?;
        self.forwarder.ip(&format!("link set {CLIENT_IFACE} up"))?;
        self.forwarder.ip(&format!("link set {LAN_IFACE} up"))?;
        self.lan.ip("link add br0 type bridge")?;
        self.lan.ip("link set br0 up")?;
        self.lan.ip("link set to-fwd master br0")?;
        self.lan.ip("link set to-fwd up")?;
        if self.flavour == Flavour::TunedXdp {
            // Receivers of XDP redirects: the client (replies) and the bridge port (requests).
            self.client.exec("ethtool", "-K eth0 gro on tx off")?;
            self.lan.exec("ethtool", "-K to-fwd gro on")?;
        }
        for i in 0..nodes {
            self.add_node(i)?;
        }
        Ok(())
    }

    fn add_node(&mut self, i: usize) -> anyhow::Result<()> {
        let name = format!("node{}", i + 1);
        let ns = Netns::create(unique_name("fwn", &i.to_string()))?;
        let port = format!("to-{name}");
        link_pair(ns.name(), "eth0", self.lan.name(), &port)?;
        self.lan.ip(&format!("link set {port} master br0"))?;
        self.lan.ip(&format!("link set {port} up"))?;
        let addr = node_addr(i);
        ns.ip(&format!("addr add {addr}/24 dev eth0"))?;
        ns.ip("link set eth0 up")?;
        ns.ip(&format!("route add default via {FORWARDER_LAN_SIDE}"))?;
        if self.flavour == Flavour::TunedXdp {
            ns.exec("ethtool", "-K eth0 tx off")?;
        }
        self.nodes.push(Node { name, addr, ns, server: None });
        Ok(())
    }

    /// Starts nginx on every node and waits until each answers.
    pub fn start_servers(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            let dir = self.dir.path().join(&node.name);
            fs::create_dir_all(&dir)?;
            let conf = dir.join("nginx.conf");
            fs::write(&conf, nginx_conf(&node.name, &dir))?;
            let mut cmd = node.ns.command("nginx");
            cmd.arg("-c").arg(&conf).arg("-p").arg(&dir);
            node.server = Some(Process::spawn(&format!("nginx on {}", node.name), cmd)?);
        }
        for node in &self.nodes {
            let local = SocketAddrV4::new(node.addr, HTTP_NODEPORT);
            let ready = node.ns.enter(|| crate::client::wait_until_listening(local, Duration::from_secs(10)));
            ready.with_context(|| format!("nginx on {}", node.name))?;
        }
        Ok(())
    }

    /// Stops the server on node `i` (to take it out of the picture).
    pub fn stop_server(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(server) = self.nodes[i].server.take() {
            server.stop()?;
        }
        Ok(())
    }

    /// Writes a service file into the lab directory.
    pub fn write_services(&self, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join("services.toml");
        fs::write(&path, text)?;
        Ok(path)
    }

    /// Starts a `forwarder run` daemon on both forwarder interfaces with
    /// `services` (state pinned in the lab's bpffs, control socket in the
    /// lab's run directory) and waits until it forwards.
    pub fn start_forwarder(&self, services: &Path, extra: &[&str]) -> anyhow::Result<Process> {
        let mut process = Process::spawn("forwarder", self.forwarder_command(services, extra))?;
        process.wait_for("forwarding;", 1, Duration::from_secs(30))?;
        Ok(process)
    }

    /// The `forwarder run` command [`Lab::start_forwarder`] starts.
    #[must_use]
    pub fn forwarder_command(&self, services: &Path, extra: &[&str]) -> Command {
        let mut cmd = self.forwarder.command(crate::forwarder_bin());
        cmd.args(["run", "--iface", CLIENT_IFACE, "--iface", LAN_IFACE, "--services"]).arg(services);
        if let State::Own(_) = self.state {
            cmd.arg("--pin-dir").arg(self.pin_dir()).arg("--run-dir").arg(self.run_dir());
        }
        cmd.args(["--attach", self.flavour.attach()]).args(extra);
        cmd.env("RUST_LOG", "debug");
        cmd
    }

    /// Where the lab's daemon pins its state.
    #[must_use]
    pub fn pin_dir(&self) -> PathBuf {
        match &self.state {
            State::Own(bpffs) => bpffs.path.join("forwarder"),
            State::Default { pin_dir, .. } => pin_dir.clone(),
        }
    }

    /// The lab daemon's run directory (control socket, state record).
    #[must_use]
    pub fn run_dir(&self) -> PathBuf {
        match &self.state {
            State::Own(_) => self.dir.path().join("run"),
            State::Default { run_dir, .. } => run_dir.clone(),
        }
    }

    /// The program the daemon's pinned link on `iface` runs, if there is
    /// one: `(hook, program id)`, hook being `xdp` or `tc`.
    #[must_use]
    pub fn attached(&self, iface: &str) -> Option<(&'static str, u32)> {
        let links = self.pin_dir().join(format!("v{}", forwarder_common::maps::LAYOUT_VERSION)).join("links");
        ["xdp", "tc"].into_iter().find_map(|hook| {
            let link =
                aya::programs::links::PinnedLink::from_pin(links.join(format!("{hook}-{iface}"))).ok()?;
            let link = aya::programs::links::FdLink::from(link);
            Some((hook, link.info().ok()?.program_id()))
        })
    }

    /// Whether the datapath runs on `iface` at all: a pinned link, or
    /// (for XDP, which shows on the link) any XDP program.
    #[must_use]
    pub fn forwards_on(&self, iface: &str) -> bool {
        self.attached(iface).is_some()
            || self.forwarder.ip(&format!("-d link show {iface}")).is_ok_and(|text| text.contains("prog/xdp"))
    }

    /// Runs a `forwarder` CLI verb on the forwarder host (its namespace)
    /// against the lab's daemon: exit code, stdout, stderr.
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = self
            .forwarder
            .command(crate::forwarder_bin())
            .args(match self.state {
                State::Own(_) => vec!["--run-dir".into(), self.run_dir().into_os_string()],
                State::Default { .. } => vec![],
            })
            .args(args)
            .output()
            .expect("run the forwarder CLI");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs a CLI verb that must succeed; its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let (code, stdout, stderr) = self.cli(args);
        assert_eq!(code, 0, "forwarder {args:?} failed: {stderr}");
        stdout
    }

    /// Starts a node's server again, after [`Lab::stop_server`].
    pub fn restart_server(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        let dir = self.dir.path().join(&node.name);
        let mut cmd = node.ns.command("nginx");
        cmd.arg("-c").arg(dir.join("nginx.conf")).arg("-p").arg(&dir);
        node.server = Some(Process::spawn(&format!("nginx on {}", node.name), cmd)?);
        let local = SocketAddrV4::new(node.addr, HTTP_NODEPORT);
        node.ns.enter(|| crate::client::wait_until_listening(local, Duration::from_secs(10)))
    }
}

/// A bpffs mounted for one lab, in the root mount namespace so it
/// outlives any one `ip netns exec`; unmounted on drop.
struct BpfFs {
    path: PathBuf,
}

impl BpfFs {
    fn mount(path: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(path)?;
        crate::netns::run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(path))?;
        Ok(Self { path: path.to_owned() })
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = crate::netns::run(Command::new("umount").arg(&self.path));
    }
}

/// A veth pair with one end in each namespace.
fn link_pair(ns_a: &str, name_a: &str, ns_b: &str, name_b: &str) -> anyhow::Result<()> {
    crate::netns::run(Command::new("ip").args([
        "link", "add", name_a, "netns", ns_a, "type", "veth", "peer", "name", name_b, "netns", ns_b,
    ]))?;
    Ok(())
}

fn nginx_conf(node: &str, dir: &Path) -> String {
    let dir = dir.display();
    format!(
        r#"load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
# Room for the flood test's thousand connections (512 by default, beyond
# which nginx closes idle keep-alive connections).
worker_rlimit_nofile 8192;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir};
    uwsgi_temp_path {dir}; scgi_temp_path {dir};
    keepalive_timeout 300s;
    keepalive_requests 100000;
    server {{
        listen {HTTP_NODEPORT};
        location / {{ return 200 "node={node} client=$remote_addr:$remote_port\n"; }}
    }}
}}
stream {{
    server {{
        listen {UDP_NODEPORT} udp;
        return "node={node} client=$remote_addr:$remote_port\n";
    }}
}}
"#
    )
}
