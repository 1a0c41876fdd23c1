//! Network faults made real: every component the test names runs in a Linux network
//! namespace of its own, joined to this process's namespace by a veth link. What a
//! component reaches (PostgreSQL, Redis, the model) it reaches through a relay this
//! process runs on that link, so its traffic crosses the link and the harness decides
//! what happens to it:
//!
//! - **cut / heal**: nftables rules *inside the component's namespace* drop the link's
//!   packets to and from one relay, silently, as a partition does (the peer sees no
//!   reset; TCP retransmits until the link heals);
//! - **loss**: the same rules drop a share of every packet on the link, at random
//!   (`numgen random`);
//! - **delay and jitter**: the relay holds each chunk a client sends for a random
//!   time in a range, keeping order (one way, as `tc netem` on the client's link). This kernel is built without `sch_netem`
//!   (`CONFIG_NET_SCH_NETEM is not set`), so `tc netem` cannot add delay here;
//!   `scripts/netfault delay` uses it where the kernel has it.
//! - **retarget**: a relay can be pointed at another server (a promoted standby) and
//!   drop its connections, as a proxy in front of PostgreSQL does on failover.
//!
//! Providers accept plain http only on loopback, so the model is reached through a
//! relay whose listening socket is on the loopback of the component's namespace; the
//! bytes then cross the mock model's own link.
//!
//! Names carry this process's id (`pfnet-<pid>-<node>`); every namespace is deleted
//! when the [`FaultNet`] drops (also when the test fails), and namespaces left by a
//! process that no longer exists are deleted when the next one starts. Nothing outside
//! the namespaces it made is touched: the host's own nftables ruleset is never changed.
//! Needs root, `ip` and `nft` (scripts/provision.sh installs nftables).
#![allow(dead_code, clippy::unwrap_used, clippy::missing_panics_doc)]

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "pfnet-";

fn run(program: &str, args: &[&str]) {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} {args:?}: {e} (needs root; scripts/provision.sh installs nftables)")
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_with_input(program: &str, args: &[&str], input: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{input}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Delete the namespaces of harness processes that no longer exist.
fn sweep_stale() {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        // Only the namespaces of test processes (`pfnet-<pid>-...`), not the script's.
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .filter(|pid| pid.parse::<u32>().is_ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", name])
                .status();
        }
    }
}

/// A component's namespace and its link to this process's namespace.
#[derive(Debug, Clone)]
pub struct Node {
    pub ns: String,
    /// The link's address on this side: relays for the node listen here.
    pub host: Ipv4Addr,
    /// The node's address on the link.
    pub addr: Ipv4Addr,
    /// The link's interface inside the namespace.
    pub link: String,
}

/// What the link of one node does to its packets now.
#[derive(Debug, Default, Clone)]
struct Faults {
    /// Relays (address and port) whose packets are dropped (a cut).
    cut: Vec<SocketAddr>,
    /// Per mille of every packet on the link dropped at random.
    loss_permille: u32,
}

/// The namespaces, links and relays of one test.
pub struct FaultNet {
    pid: u32,
    octets: [u8; 2],
    nodes: Vec<Node>,
    faults: Mutex<std::collections::HashMap<String, Faults>>,
    relays: Vec<Relay>,
}

impl FaultNet {
    /// A new harness. Panics with what is missing when not root or without `nft`.
    pub fn new() -> Self {
        assert!(
            std::process::Command::new("id")
                .arg("-u")
                .output()
                .is_ok_and(|o| o.stdout.starts_with(b"0")),
            "network namespaces need root (CI runs as root)"
        );
        run("nft", &["--version"]);
        sweep_stale();
        let pid = std::process::id();
        // 10.<200..249>.<0..255>.0/24 from the pid: links of concurrent test processes
        // differ (pids 12 800 apart would share one).
        let octets = [
            200 + u8::try_from(pid % 50).unwrap(),
            u8::try_from((pid / 50) % 256).unwrap(),
        ];
        Self {
            pid,
            octets,
            nodes: Vec::new(),
            faults: Mutex::default(),
            relays: Vec::new(),
        }
    }

    /// A namespace named after `name` with a veth link to this namespace (a /30).
    pub fn node(&mut self, name: &str) -> Node {
        // Counted across the process: tests run as threads of one process (plain
        // `cargo test`) still get names and links of their own.
        static NODES: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
        let i = NODES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        assert!(i < 63, "at most 63 nodes per process");
        let ns = format!("{PREFIX}{}-{i}-{name}", self.pid);
        let host_if = format!("pf{}h{i}", self.pid);
        let link = format!("pf{}n{i}", self.pid);
        let [a, b] = self.octets;
        let host = Ipv4Addr::new(10, a, b, i * 4 + 1);
        let addr = Ipv4Addr::new(10, a, b, i * 4 + 2);
        run("ip", &["netns", "add", &ns]);
        let node = Node {
            ns: ns.clone(),
            host,
            addr,
            link: link.clone(),
        };
        // Registered before the link exists: a failure below still deletes the namespace.
        self.nodes.push(node.clone());
        run(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &link, "netns", &ns,
            ],
        );
        run(
            "ip",
            &["addr", "add", &format!("{host}/30"), "dev", &host_if],
        );
        run("ip", &["link", "set", &host_if, "up"]);
        run(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/30"),
                "dev",
                &link,
            ],
        );
        run("ip", &["-n", &ns, "link", "set", &link, "up"]);
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        self.apply(&node);
        node
    }

    /// Relay `node`'s connections to `target`: the node connects to the returned
    /// relay's address, on its link.
    pub async fn expose(&mut self, node: &Node, target: SocketAddr) -> Relay {
        let listener = TcpListener::bind((node.host, 0)).await.unwrap();
        let relay = Relay::start(listener, target);
        self.relays.push(relay.clone());
        relay
    }

    /// Relay from a loopback port inside `node`'s namespace to `target` (over
    /// `target`'s own link). Cut with [`FaultNet::cut`] like any relay.
    pub fn expose_on_loopback(&mut self, node: &Node, target: SocketAddr) -> Relay {
        let listener = bind_in(&node.ns, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let relay = Relay::start(TcpListener::from_std(listener).unwrap(), target);
        self.relays.push(relay.clone());
        relay
    }

    /// A relay on this namespace's loopback to `target`: a stable address in front of
    /// a server that can be [`Relay::retarget`]ed (the proxy a fleet reaches
    /// PostgreSQL through on failover).
    pub async fn proxy(&mut self, target: SocketAddr) -> Relay {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let relay = Relay::start(listener, target);
        self.relays.push(relay.clone());
        relay
    }

    /// A listener inside `node`'s namespace, on all its addresses.
    pub fn listen_in(&self, node: &Node) -> TcpListener {
        let l = bind_in(&node.ns, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        TcpListener::from_std(l).unwrap()
    }

    /// Drop every packet between `node` and `relay`, both ways, until [`FaultNet::heal`].
    pub fn cut(&self, node: &Node, relay: &Relay) {
        self.edit(node, |f| {
            if !f.cut.contains(&relay.addr) {
                f.cut.push(relay.addr);
            }
        });
    }

    pub fn heal(&self, node: &Node, relay: &Relay) {
        self.edit(node, |f| f.cut.retain(|a| *a != relay.addr));
    }

    /// Drop `permille` of every packet on `node`'s link, each way, at random.
    pub fn set_loss(&self, node: &Node, permille: u32) {
        self.edit(node, |f| f.loss_permille = permille);
    }

    fn edit(&self, node: &Node, change: impl FnOnce(&mut Faults)) {
        {
            let mut all = self.faults.lock().unwrap();
            change(all.entry(node.ns.clone()).or_default());
        }
        self.apply(node);
    }

    /// Write the node's whole fault table in one `nft` transaction.
    fn apply(&self, node: &Node) {
        let f = self
            .faults
            .lock()
            .unwrap()
            .get(&node.ns)
            .cloned()
            .unwrap_or_default();
        let mut input = String::new();
        let mut output = String::new();
        // Relays on the link (host side) and on the node's loopback alike.
        for relay in &f.cut {
            let (ip, port) = (relay.ip(), relay.port());
            input.push_str(&format!("    ip saddr {ip} tcp sport {port} drop\n"));
            output.push_str(&format!("    ip daddr {ip} tcp dport {port} drop\n"));
        }
        if f.loss_permille > 0 {
            let n = f.loss_permille;
            let link = &node.link;
            input.push_str(&format!(
                "    iifname \"{link}\" numgen random mod 1000 < {n} drop\n"
            ));
            output.push_str(&format!(
                "    oifname \"{link}\" numgen random mod 1000 < {n} drop\n"
            ));
        }
        let table = format!(
            "table inet phasefleet_faults\ndelete table inet phasefleet_faults\n\
             table inet phasefleet_faults {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n{input}  }}\n  \
             chain output {{\n    type filter hook output priority 0; policy accept;\n{output}  }}\n}}\n"
        );
        run_with_input("ip", &["netns", "exec", &node.ns, "nft", "-f", "-"], &table);
    }

    /// A command that runs `program` inside `node`'s namespace.
    pub fn command(&self, node: &Node, program: &std::path::Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &node.ns]).arg(program);
        cmd.kill_on_drop(true).stdin(Stdio::null());
        cmd
    }
}

impl Drop for FaultNet {
    fn drop(&mut self) {
        for relay in &self.relays {
            relay.stop.cancel();
        }
        for node in &self.nodes {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &node.ns])
                .status();
        }
    }
}

/// Bind a listening socket inside namespace `ns` (the socket stays there; only a
/// short-lived thread enters the namespace).
fn bind_in(ns: &str, addr: SocketAddr) -> std::net::TcpListener {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // Only this thread enters the namespace; it ends right after binding.
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        let listener = std::net::TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        listener
    })
    .join()
    .unwrap()
}

/// A TCP relay: what a proxy in front of a server does, plus optional delay.
#[derive(Clone)]
pub struct Relay {
    pub addr: SocketAddr,
    shared: Arc<RelayShared>,
    stop: CancellationToken,
}

struct RelayShared {
    target: Mutex<SocketAddr>,
    /// Each chunk a client sends is held for `base` plus up to `+-jitter`.
    delay: Mutex<Option<(Duration, Duration)>>,
    /// Each chunk the server sends is held this long.
    delay_down: Mutex<Duration>,
    /// Cancelled to drop every connection open now.
    generation: Mutex<CancellationToken>,
    /// What the clients sent since [`Relay::capture`] (at most 16 MiB).
    captured: Mutex<Option<Vec<u8>>>,
}

impl Relay {
    fn start(listener: TcpListener, target: SocketAddr) -> Self {
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(RelayShared {
            target: Mutex::new(target),
            delay: Mutex::new(None),
            delay_down: Mutex::new(Duration::ZERO),
            generation: Mutex::new(CancellationToken::new()),
            captured: Mutex::new(None),
        });
        let stop = CancellationToken::new();
        let relay = Self {
            addr,
            shared: shared.clone(),
            stop: stop.clone(),
        };
        tokio::spawn(async move {
            loop {
                let (inbound, _) = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                };
                let shared = shared.clone();
                let generation = shared.generation.lock().unwrap().clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = generation.cancelled() => {}
                        () = relay_connection(inbound, &shared) => {}
                    }
                });
            }
        });
        relay
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Hold each chunk the server sends for `delay` (a replication stream lagging).
    pub fn set_delay_down(&self, delay: Duration) {
        *self.shared.delay_down.lock().unwrap() = delay;
    }

    /// Keep what the clients send from now on (see [`Relay::captured`]).
    pub fn capture(&self) {
        *self.shared.captured.lock().unwrap() = Some(Vec::new());
    }

    /// What the clients sent since [`Relay::capture`], as text.
    pub fn captured(&self) -> String {
        let bytes = self
            .shared
            .captured
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Send new connections to `target` and drop the open ones.
    pub fn retarget(&self, target: SocketAddr) {
        *self.shared.target.lock().unwrap() = target;
        let mut generation = self.shared.generation.lock().unwrap();
        generation.cancel();
        *generation = CancellationToken::new();
    }

    /// Hold each chunk the clients send for `base` +- `jitter` (order kept), as
    /// `tc netem delay` on the client's interface does; `None` for none.
    pub fn set_delay(&self, delay: Option<(Duration, Duration)>) {
        *self.shared.delay.lock().unwrap() = delay;
    }
}

async fn relay_connection(inbound: TcpStream, shared: &Arc<RelayShared>) {
    let target = *shared.target.lock().unwrap();
    let Ok(Ok(outbound)) =
        tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(target)).await
    else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    tokio::join!(
        pipe(in_read, out_write, shared.clone(), true),
        pipe(out_read, in_write, shared.clone(), false)
    );
}

/// Copy one direction, holding each chunk for the relay's delay (in order).
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shared: Arc<RelayShared>,
    up: bool,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut last = tokio::time::Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if up
                && let Some(kept) = shared.captured.lock().unwrap().as_mut()
                && kept.len() < 16 << 20
            {
                kept.extend_from_slice(&buf[..n]);
            }
            // Like `tc netem` on the client's interface: one way, client to server.
            let hold = match *shared.delay.lock().unwrap() {
                Some((base, jitter)) if up => {
                    let j = jitter.as_secs_f64() * (fastrand::f64() * 2.0 - 1.0);
                    Duration::from_secs_f64((base.as_secs_f64() + j).max(0.0))
                }
                _ if !up => *shared.delay_down.lock().unwrap(),
                _ => Duration::ZERO,
            };
            last = last.max(tokio::time::Instant::now() + hold);
            if tx.send((last, buf[..n].to_vec())).is_err() {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
