//! `cargo xtask demo`: the forwarder in a throw-away lab, in both modes,
//! then the operator's view of the running daemon. With `--keep`, the lab
//! and the daemon stay up for you to try the CLI until Ctrl-C.

use std::{
    net::SocketAddrV4,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::bail;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use forwarder_tests::{
    client::{HttpConnection, http_get},
    lab::{CLIENT, FORWARDER_LAN_SIDE, HTTP_NODEPORT, Lab, VIP},
};

const REQUESTS: usize = 8;

fn main() -> anyhow::Result<()> {
    forwarder_tests::require_root();
    let keep = std::env::args().any(|a| a == "--keep");
    let interrupted = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&interrupted))?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&interrupted))?;

    println!("Building the lab (network namespaces, removed at the end):");
    let mut lab = Lab::new("fwd", 2)?;
    lab.start_servers()?;
    println!(
        "  client {CLIENT}  ->  forwarder 10.0.1.1 | {FORWARDER_LAN_SIDE}  ->  node1 10.0.2.11, node2 10.0.2.12"
    );
    println!(
        "  each node runs nginx on NodePort {HTTP_NODEPORT}, answering with its name and the client address it saw"
    );
    println!("  service: VIP {VIP}:80/tcp -> node1:{HTTP_NODEPORT}, node2:{HTTP_NODEPORT}\n");

    let mut last = None;
    for (mode, meaning) in [
        ("snat", "nodes see the forwarder; no node configuration needed"),
        ("preserve", "nodes see the real client; their replies route back through the forwarder"),
    ] {
        if let Some(forwarder) = last.take() {
            forwarder_tests::netns::Process::stop(forwarder)?;
        }
        let services = lab.write_services(&format!(
            "[[service]]\nname = \"web\"\nvip = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\nmode = \"{mode}\"\n\
             backends = [\"10.0.2.11:{HTTP_NODEPORT}\", \"10.0.2.12:{HTTP_NODEPORT}\"]\n"
        ))?;
        last = Some(lab.start_forwarder(&services, &[])?);
        println!("mode = \"{mode}\": {meaning}");
        let mut table = Table::new();
        table.load_preset(UTF8_BORDERS_ONLY).set_header([
            "request",
            "GET http://10.0.100.10/",
            "answered by",
            "client address the node saw",
        ]);
        for i in 1..=REQUESTS {
            if interrupted.load(Ordering::Relaxed) {
                bail!("interrupted; lab removed");
            }
            let answer = lab.client.enter(|| http_get(SocketAddrV4::new(VIP, 80)))?;
            let who = if *answer.client.ip() == CLIENT { "(the client)" } else { "(the forwarder)" };
            table.add_row([
                i.to_string(),
                "200 OK".to_owned(),
                answer.node,
                format!("{} {who}", answer.client),
            ]);
        }
        println!("{table}\n");
    }

    // The operator's view of the running daemon, with two connections open.
    let mut open: Vec<HttpConnection> = lab.client.enter(|| {
        (0..2).map(|_| HttpConnection::open(SocketAddrV4::new(VIP, 80))).collect::<Result<_, _>>()
    })?;
    for connection in &mut open {
        connection.get()?;
    }
    std::thread::sleep(Duration::from_secs(6)); // one sweep and one rate sample
    for verb in [&["service", "list"][..], &["stats"], &["flows"]] {
        println!("$ forwarder {}\n{}", verb.join(" "), lab.cli_ok(verb));
    }

    if keep {
        let run_dir = lab.run_dir();
        println!("The lab stays up. In another terminal, as root:");
        println!(
            "  ip netns exec {} {} --run-dir {} stats",
            lab.forwarder.name(),
            forwarder_tests::forwarder_bin().display(),
            run_dir.display()
        );
        println!(
            "  (and service list, backend add web 10.0.2.12:30080 --weight 3, backend drain ..., flows, apply FILE)"
        );
        println!("  ip netns exec {} curl http://10.0.100.10/", lab.client.name());
        println!("Ctrl-C removes the lab.");
        while !interrupted.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    drop(open);
    if let Some(forwarder) = last {
        forwarder.stop()?;
    }
    drop(lab);
    println!(
        "Lab removed. Run the tests with `cargo xtask test`; run the daemon with `cargo xtask run -- --iface IFACE`."
    );
    Ok(())
}
