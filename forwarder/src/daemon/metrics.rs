//! The Prometheus endpoint: `GET /metrics`, rendered at each scrape from
//! the same statistics `forwarder stats` shows.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{Request as HttpRequest, Response as HttpResponse, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::mpsc};
use tracing::{debug, info};

use super::{
    limits,
    server::{Call, ask},
};
use crate::{
    control::{Request, Response},
    report::{Health, Stats, Traffic},
};

type Labels = Vec<(String, String)>;

/// A scrape within this long of the last one is answered from its text,
/// so a flood of scrapes cannot queue stats builds ahead of CLI calls.
const CACHE_FOR: Duration = Duration::from_secs(1);

/// The last rendered text and when it was rendered. Held across a
/// refresh, so concurrent scrapes of a stale cache wait for one stats
/// build instead of each asking for their own.
type Cache = Arc<tokio::sync::Mutex<Option<(Instant, String)>>>;

/// Serves metrics on `addr` until the process ends.
pub async fn spawn(addr: SocketAddr, calls: mpsc::Sender<Call>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    info!(%addr, "metrics on http://{addr}/metrics");
    let cache: Cache = Arc::default();
    tokio::spawn(limits::serve_forever("metrics", listener, move |stream, permit| {
        let (calls, cache) = (calls.clone(), Arc::clone(&cache));
        async move {
            let _permit = permit;
            let service = service_fn(move |request| handle(request, calls.clone(), Arc::clone(&cache)));
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(limits::HEADER_TIMEOUT);
            let served = builder.serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(limits::HEADER_TIMEOUT * 2, served).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => debug!("metrics connection: {err}"),
                Err(_) => debug!("metrics connection timed out"),
            }
        }
    }));
    Ok(())
}

async fn handle(
    request: HttpRequest<hyper::body::Incoming>,
    calls: mpsc::Sender<Call>,
    cache: Cache,
) -> Result<HttpResponse<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: String| {
        let mut response = HttpResponse::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return Ok(reply(StatusCode::NOT_FOUND, "see /metrics\n".to_owned()));
    }
    let mut cached = cache.lock().await;
    let text = match &*cached {
        Some((at, text)) if at.elapsed() < CACHE_FOR => text.clone(),
        _ => match ask(&calls, Request::Stats).await {
            Response::Stats(stats) => {
                let text = render(&stats);
                *cached = Some((Instant::now(), text.clone()));
                text
            }
            Response::Refused(reason) => return Ok(reply(StatusCode::SERVICE_UNAVAILABLE, reason)),
            other => {
                return Ok(reply(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected answer {other:?}")));
            }
        },
    };
    let mut response = reply(StatusCode::OK, text);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The metric families of one [`Traffic`] per service or backend.
struct TrafficFamilies {
    packets: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    new_connections: Family<Labels, Counter>,
    connections: Family<Labels, Gauge>,
}

impl TrafficFamilies {
    fn register(registry: &mut Registry, prefix: &str, what: &str) -> Self {
        let traffic = Self {
            packets: Family::default(),
            bytes: Family::default(),
            new_connections: Family::default(),
            connections: Family::default(),
        };
        registry.register(
            format!("{prefix}_packets"),
            format!("Packets forwarded per {what}, by direction"),
            traffic.packets.clone(),
        );
        registry.register(
            format!("{prefix}_bytes"),
            format!("IP bytes forwarded per {what}, by direction"),
            traffic.bytes.clone(),
        );
        registry.register(
            format!("{prefix}_new_connections"),
            format!("Connections started per {what}"),
            traffic.new_connections.clone(),
        );
        registry.register(
            format!("{prefix}_connections"),
            format!("Tracked connections per {what} (as of the last sweep)"),
            traffic.connections.clone(),
        );
        traffic
    }

    fn set(&self, base: &[(&str, &str)], totals: &Traffic, active: u64) {
        let Traffic { packets_in, bytes_in, packets_out, bytes_out, new_flows } = *totals;
        for (direction, packets, bytes) in [("in", packets_in, bytes_in), ("out", packets_out, bytes_out)] {
            let mut with = base.to_vec();
            with.push(("direction", direction));
            self.packets.get_or_create(&labels(&with)).inc_by(packets);
            self.bytes.get_or_create(&labels(&with)).inc_by(bytes);
        }
        self.new_connections.get_or_create(&labels(base)).inc_by(new_flows);
        self.connections.get_or_create(&labels(base)).set(active as i64);
    }
}

/// The statistics in Prometheus text format.
#[must_use]
pub fn render(stats: &Stats) -> String {
    let mut registry = Registry::with_prefix("forwarder");
    let services = TrafficFamilies::register(&mut registry, "service", "service");
    let backends = TrafficFamilies::register(&mut registry, "backend", "backend");
    let up: Family<Labels, Gauge> = Family::default();
    let in_rotation: Family<Labels, Gauge> = Family::default();
    let weight: Family<Labels, Gauge> = Family::default();
    let reasons: Family<Labels, Counter> = Family::default();
    let connections: Gauge = Gauge::default();
    let half_open: Gauge = Gauge::default();
    let snat_connections: Family<Labels, Gauge> = Family::default();
    let snat_busiest: Family<Labels, Gauge> = Family::default();
    registry.register("backend_up", "Health check result: 1 up, 0 down (absent when unchecked)", up.clone());
    registry.register(
        "backend_in_rotation",
        "1 when the backend receives new connections",
        in_rotation.clone(),
    );
    registry.register("backend_weight", "Configured weight (0 drains)", weight.clone());
    registry.register("datapath_packets", "Packets by what the datapath did with them", reasons.clone());
    registry.register("connections", "Tracked connections (as of the last sweep)", connections.clone());
    registry.register(
        "half_open_connections",
        "Tracked connections not answered yet, in the half-open table (as of the last sweep)",
        half_open.clone(),
    );
    registry.register(
        "snat_connections",
        "SNAT connections per source address and protocol (as of the last sweep)",
        snat_connections.clone(),
    );
    registry.register(
        "snat_busiest_node_ports",
        "Ports of a SNAT address taken towards the node:port using most of them (of 31744; as of the last sweep)",
        snat_busiest.clone(),
    );

    for service in &stats.services {
        services.set(&[("service", &service.name)], &service.totals, service.active_flows);
        for backend in &service.backends {
            let addr = backend.addr.to_string();
            let base = [("service", service.name.as_str()), ("backend", addr.as_str())];
            backends.set(&base, &backend.totals, backend.active_flows);
            match backend.health {
                Health::Up => _ = up.get_or_create(&labels(&base)).set(1),
                Health::Down => _ = up.get_or_create(&labels(&base)).set(0),
                Health::Unchecked => {}
            }
            in_rotation.get_or_create(&labels(&base)).set(i64::from(backend.in_rotation));
            weight.get_or_create(&labels(&base)).set(i64::from(backend.weight));
        }
    }
    for reason in &stats.reasons {
        reasons.get_or_create(&labels(&[("reason", &reason.reason)])).inc_by(reason.packets);
    }
    for space in &stats.snat {
        let (address, protocol) = (space.address.to_string(), space.protocol.to_string());
        let base = [("address", address.as_str()), ("protocol", protocol.as_str())];
        snat_connections.get_or_create(&labels(&base)).set(space.connections as i64);
        snat_busiest.get_or_create(&labels(&base)).set(space.busiest_node_ports as i64);
    }
    connections.set(stats.connections as i64);
    half_open.set(stats.half_open as i64);
    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::{Mode, Protocol},
        report::{BackendStats, Rates, ReasonCount, ServiceStats, SnatUse},
    };

    #[test]
    fn renders_every_family() {
        let totals =
            Traffic { packets_in: 10, bytes_in: 1000, packets_out: 8, bytes_out: 4000, new_flows: 2 };
        let stats = Stats {
            rate_interval_secs: 5.0,
            flows_age_secs: 1.0,
            connections: 2,
            half_open: 1,
            services: vec![ServiceStats {
                name: "web".to_owned(),
                vip: [10, 0, 0, 1].into(),
                port: 80,
                protocol: Protocol::Tcp,
                mode: Mode::Snat,
                totals,
                rates: Rates::default(),
                active_flows: 2,
                backends: vec![BackendStats {
                    addr: "10.0.1.1:30080".parse().unwrap(),
                    weight: 1,
                    health: Health::Down,
                    in_rotation: false,
                    totals,
                    rates: Rates::default(),
                    active_flows: 2,
                }],
            }],
            reasons: vec![ReasonCount { reason: "redirect".to_owned(), packets: 18 }],
            snat: vec![SnatUse {
                address: [10, 0, 0, 9].into(),
                protocol: Protocol::Tcp,
                connections: 3,
                busiest_node_ports: 2,
                ports_per_node: 31_744,
            }],
        };
        let text = render(&stats);
        for line in [
            "forwarder_service_packets_total{service=\"web\",direction=\"in\"} 10",
            "forwarder_service_bytes_total{service=\"web\",direction=\"out\"} 4000",
            "forwarder_service_new_connections_total{service=\"web\"} 2",
            "forwarder_backend_connections{service=\"web\",backend=\"10.0.1.1:30080\"} 2",
            "forwarder_backend_up{service=\"web\",backend=\"10.0.1.1:30080\"} 0",
            "forwarder_backend_in_rotation{service=\"web\",backend=\"10.0.1.1:30080\"} 0",
            "forwarder_datapath_packets_total{reason=\"redirect\"} 18",
            "forwarder_connections 2",
            "forwarder_half_open_connections 1",
            "forwarder_snat_connections{address=\"10.0.0.9\",protocol=\"tcp\"} 3",
            "forwarder_snat_busiest_node_ports{address=\"10.0.0.9\",protocol=\"tcp\"} 2",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }
}
