//! Counters an operator can read: per queue pair, lock-free, served in the
//! Prometheus/OpenMetrics text format by `--metrics ADDR:PORT`.
//!
//! Counters belong to the daemon, not to a connection, so they keep
//! counting across frontend reconnects.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread;

use log::{error, info, warn};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use thiserror::Error;
use zcnet_tap::vxlan::{VxlanMetrics, VxlanSnapshot};

use crate::sandbox::{self, Kind};

type Labels = Vec<(String, String)>;

/// One queue pair's counters. Cloning shares the same atomics.
#[derive(Clone, Debug, Default)]
pub struct QueueMetrics {
    pub tx_frames: Counter,
    pub tx_bytes: Counter,
    pub tx_dropped: Counter,
    pub rx_frames: Counter,
    pub rx_bytes: Counter,
    pub rx_dropped: Counter,
    pub malformed_chains: Counter,
    pub broken_queues: Counter,
    pub zc_sends: Counter,
    pub zc_completed: Counter,
    pub zc_copied: Counter,
    pub zc_copy_fallbacks: Counter,
    pub lent_chains: Gauge,
    pub lent_chains_max: Gauge,
    pub restart_recovered: Counter,
    pub restart_lost: Counter,
}

/// The daemon's metrics registry.
pub struct Metrics {
    registry: Registry,
    queues: Vec<QueueMetrics>,
    pub connections: Counter,
}

impl Metrics {
    pub fn new(queue_pairs: usize) -> Self {
        let mut registry = Registry::default();
        let mut family = |name: &str, help: &str| {
            let f = Family::<Labels, Counter>::default();
            registry.register(name, help, f.clone());
            f
        };
        let tx_frames = family(
            "zcnet_tx_frames",
            "Frames the guest sent that reached the host",
        );
        let tx_bytes = family(
            "zcnet_tx_bytes",
            "Bytes of guest frames sent to the host, without virtio-net header",
        );
        let tx_dropped = family(
            "zcnet_tx_dropped",
            "Guest frames the host refused (for example the tap is down)",
        );
        let rx_frames = family("zcnet_rx_frames", "Frames delivered into guest buffers");
        let rx_bytes = family(
            "zcnet_rx_bytes",
            "Bytes of frames delivered to the guest, without virtio-net header",
        );
        let rx_dropped = family(
            "zcnet_rx_dropped",
            "Host frames that could not be delivered to the guest",
        );
        let malformed = family(
            "zcnet_malformed_chains",
            "Descriptor chains from the guest that were malformed and returned with length 0",
        );
        let broken = family(
            "zcnet_broken_queues",
            "Queues stopped because the guest published an impossible avail index \
             (processed again after the frontend resets them)",
        );
        let zc_sends = family(
            "zcnet_tx_zerocopy_sends",
            "Frames sent with MSG_ZEROCOPY: the guest's pages lent to the kernel",
        );
        let zc_completed = family(
            "zcnet_tx_zerocopy_completed",
            "Zero-copy sends the kernel reported released",
        );
        let zc_copied = family(
            "zcnet_tx_zerocopy_copied",
            "Zero-copy sends the kernel reported it copied after all (SO_EE_CODE_ZEROCOPY_COPIED)",
        );
        let zc_fallbacks = family(
            "zcnet_tx_copy_fallbacks",
            "Frames copied that could have been lent (cap reached, auto back-off, ENOBUFS)",
        );
        let recovered = family(
            "zcnet_restart_recovered_chains",
            "Chains in flight when zcnet last stopped without the frontend stopping its rings \
             (a crash): TX chains returned without being sent again, RX buffers used again",
        );
        let lost = family(
            "zcnet_restart_lost_chains",
            "Chains in flight when zcnet last stopped that it could not return to the guest \
             (the ring changed while zcnet was down)",
        );
        let mut gauge = |name: &str, help: &str| {
            let f = Family::<Labels, Gauge>::default();
            registry.register(name, help, f.clone());
            f
        };
        let lent = gauge(
            "zcnet_tx_lent_chains",
            "TX chains whose pages the kernel holds now",
        );
        let lent_max = gauge(
            "zcnet_tx_lent_chains_max",
            "The most TX chains lent at once",
        );
        let queues = (0..queue_pairs)
            .map(|q| {
                let l: Labels = vec![("queue_pair".to_owned(), q.to_string())];
                QueueMetrics {
                    tx_frames: tx_frames.get_or_create(&l).clone(),
                    tx_bytes: tx_bytes.get_or_create(&l).clone(),
                    tx_dropped: tx_dropped.get_or_create(&l).clone(),
                    rx_frames: rx_frames.get_or_create(&l).clone(),
                    rx_bytes: rx_bytes.get_or_create(&l).clone(),
                    rx_dropped: rx_dropped.get_or_create(&l).clone(),
                    malformed_chains: malformed.get_or_create(&l).clone(),
                    broken_queues: broken.get_or_create(&l).clone(),
                    zc_sends: zc_sends.get_or_create(&l).clone(),
                    zc_completed: zc_completed.get_or_create(&l).clone(),
                    zc_copied: zc_copied.get_or_create(&l).clone(),
                    zc_copy_fallbacks: zc_fallbacks.get_or_create(&l).clone(),
                    lent_chains: lent.get_or_create(&l).clone(),
                    lent_chains_max: lent_max.get_or_create(&l).clone(),
                    restart_recovered: recovered.get_or_create(&l).clone(),
                    restart_lost: lost.get_or_create(&l).clone(),
                }
            })
            .collect();
        let connections = Counter::default();
        registry.register(
            "zcnet_frontend_connections",
            "vhost-user frontend connections accepted",
            connections.clone(),
        );
        Metrics {
            registry,
            queues,
            connections,
        }
    }

    /// Serves the VXLAN attachment's counters too (per queue pair, per
    /// VTEP, per drop reason; see [`VxlanCollector`]).
    pub fn register_vxlan(&mut self, vxlan: VxlanMetrics) {
        self.registry
            .register_collector(Box::new(VxlanCollector(vxlan)));
    }

    /// The counters of queue pair `pair`.
    pub fn queue(&self, pair: usize) -> QueueMetrics {
        self.queues[pair].clone()
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The VXLAN attachment's counters, read from its lock-free atomics (and
/// the FDB, under its read lock) at each scrape. Labels: `queue_pair`,
/// `vtep` (a VTEP's address; "unknown" for datagrams from no known VTEP,
/// "none" for frames dropped before a VTEP was chosen) and `reason`.
#[derive(Debug)]
pub struct VxlanCollector(VxlanMetrics);

/// One labelled family of the VXLAN collector.
type Rows<'a> = Vec<(Vec<(&'static str, String)>, u64)>;

impl VxlanCollector {
    fn families(s: &VxlanSnapshot) -> Vec<(&'static str, &'static str, MetricType, Rows<'_>)> {
        let st = &s.stats;
        let per_vtep = |f: &dyn Fn(&zcnet_tap::vxlan::stats::VtepSnapshot) -> u64| -> Rows<'_> {
            st.pairs
                .iter()
                .enumerate()
                .flat_map(|(q, p)| {
                    p.vteps.iter().enumerate().map(move |(v, c)| {
                        (
                            vec![("queue_pair", q.to_string()), ("vtep", st.vteps[v].clone())],
                            f(c),
                        )
                    })
                })
                .collect()
        };
        let drops = |rx: bool| -> Rows<'_> {
            st.pairs
                .iter()
                .enumerate()
                .flat_map(|(q, p)| {
                    let v = if rx { &p.rx_dropped } else { &p.tx_dropped };
                    v.iter().map(move |d| {
                        (
                            vec![
                                ("queue_pair", q.to_string()),
                                ("vtep", d.vtep.clone()),
                                ("reason", d.reason.to_owned()),
                            ],
                            d.count,
                        )
                    })
                })
                .collect()
        };
        let lent_now: Rows<'_> = st
            .pairs
            .iter()
            .enumerate()
            .map(|(q, p)| (vec![("queue_pair", q.to_string())], p.lent_pages_now))
            .collect();
        let one = |v: u64| -> Rows<'_> { vec![(Vec::new(), v)] };
        let refused: Rows<'_> = s
            .fdb
            .refused
            .iter()
            .map(|(r, n)| (vec![("reason", (*r).to_owned())], *n))
            .collect();
        use MetricType::{Counter as C, Gauge as G};
        vec![
            (
                "zcnet_vxlan_tx_frames",
                "Inner frames sent to a VTEP (each TSO segment counts)",
                C,
                per_vtep(&|c| c.tx_frames),
            ),
            (
                "zcnet_vxlan_tx_bytes",
                "Bytes of inner frames sent to a VTEP",
                C,
                per_vtep(&|c| c.tx_bytes),
            ),
            (
                "zcnet_vxlan_rx_frames",
                "Inner frames from a VTEP delivered to the guest",
                C,
                per_vtep(&|c| c.rx_frames),
            ),
            (
                "zcnet_vxlan_rx_bytes",
                "Bytes of inner frames from a VTEP delivered to the guest",
                C,
                per_vtep(&|c| c.rx_bytes),
            ),
            (
                "zcnet_vxlan_tx_lent_pages",
                "Guest pages lent to the kernel (MSG_ZEROCOPY) for sends to a VTEP",
                C,
                per_vtep(&|c| c.lent_pages),
            ),
            (
                "zcnet_vxlan_tx_lent_pages_held",
                "Guest pages the kernel holds now",
                G,
                lent_now,
            ),
            (
                "zcnet_vxlan_rx_dropped",
                "Datagrams from the underlay dropped, by reason",
                C,
                drops(true),
            ),
            (
                "zcnet_vxlan_tx_dropped",
                "Guest frames (or their remainder) not sent to a VTEP, by reason",
                C,
                drops(false),
            ),
            (
                "zcnet_vxlan_fdb_learned_entries",
                "Learned FDB entries held now",
                G,
                one(s.fdb.learned as u64),
            ),
            (
                "zcnet_vxlan_fdb_added",
                "FDB entries learned",
                C,
                one(s.fdb.added),
            ),
            (
                "zcnet_vxlan_fdb_moved",
                "Learned MACs that moved to another VTEP",
                C,
                one(s.fdb.moved),
            ),
            (
                "zcnet_vxlan_fdb_aged_out",
                "Learned FDB entries that expired",
                C,
                one(s.fdb.aged_out),
            ),
            (
                "zcnet_vxlan_fdb_refused",
                "Inner source MACs not learned, by reason",
                C,
                refused,
            ),
        ]
    }
}

impl Collector for VxlanCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self.0.snapshot();
        for (name, help, kind, rows) in Self::families(&snap) {
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            let gauge = matches!(kind, MetricType::Gauge);
            let encode = |sample: MetricEncoder<'_>, value: u64| {
                if gauge {
                    ConstGauge::new(value as i64).encode(sample)
                } else {
                    ConstCounter::new(value).encode(sample)
                }
            };
            match rows.as_slice() {
                // An unlabelled metric: one sample, no braces.
                [(labels, value)] if labels.is_empty() => encode(family, *value)?,
                _ => {
                    for (labels, value) in &rows {
                        encode(family.encode_family(labels)?, *value)?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Error)]
#[error("cannot serve metrics on {addr}")]
pub struct ServeError {
    addr: SocketAddr,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// Listens on `addr` for scrapes (served once [`serve`] starts).
pub fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).map_err(|e| ServeError {
        addr,
        source: Box::new(e),
    })
}

/// Serves `GET /metrics` on `listener` (from [`bind`]) from a thread of
/// its own. The thread builds the HTTP server after installing its
/// seccomp filter, so the server's own threads inherit it.
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>) -> Result<SocketAddr, ServeError> {
    let bound = listener.local_addr().map_err(|e| ServeError {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source: Box::new(e),
    })?;
    info!("serving metrics on http://{bound}/metrics");
    thread::Builder::new()
        .name("zcnet-metrics".to_owned())
        .spawn(move || {
            sandbox::enter(Kind::Metrics);
            let server = match tiny_http::Server::from_listener(listener, None) {
                Ok(s) => s,
                Err(e) => {
                    error!("metrics: cannot serve on {bound}: {e}");
                    return;
                }
            };
            for request in server.incoming_requests() {
                let response = if request.url() == "/metrics" || request.url() == "/" {
                    let header = tiny_http::Header::from_bytes(
                        &b"Content-Type"[..],
                        &b"application/openmetrics-text; version=1.0.0; charset=utf-8"[..],
                    )
                    .expect("static header is valid");
                    tiny_http::Response::from_string(metrics.render()).with_header(header)
                } else {
                    tiny_http::Response::from_string("not found; try /metrics\n")
                        .with_status_code(404)
                };
                if let Err(e) = request.respond(response) {
                    warn!("metrics: cannot answer a scrape: {e}");
                }
            }
            error!("metrics server stopped");
        })
        .map_err(|e| ServeError {
            addr: bound,
            source: Box::new(e),
        })?;
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_per_queue() {
        let m = Metrics::new(2);
        m.queue(1).tx_frames.inc_by(7);
        m.queue(0).malformed_chains.inc();
        let text = m.render();
        assert!(
            text.contains("zcnet_tx_frames_total{queue_pair=\"1\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains("zcnet_tx_frames_total{queue_pair=\"0\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("zcnet_malformed_chains_total{queue_pair=\"0\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn vxlan_counters_render_with_their_labels() {
        let vx = zcnet_tap::vxlan::open(&zcnet_tap::vxlan::VxlanConfig {
            vni: zcnet_tap::vxlan::Vni::new(7).unwrap(),
            local: "127.0.0.1:0".parse().unwrap(),
            remotes: vec!["127.0.0.2:4789".parse().unwrap()],
            statics: Vec::new(),
            ageing: std::time::Duration::from_secs(300),
            queue_pairs: 2,
            zerocopy: false,
            lend_tso: true,
        })
        .expect("a VXLAN attachment on loopback");
        let mut m = Metrics::new(2);
        m.register_vxlan(vx.metrics.clone());
        let text = m.render();
        for line in [
            "zcnet_vxlan_tx_frames_total{queue_pair=\"1\",vtep=\"127.0.0.2:4789\"} 0\n",
            "zcnet_vxlan_rx_dropped_total{queue_pair=\"0\",vtep=\"unknown\",reason=\"wrong_vni\"} 0\n",
            "zcnet_vxlan_tx_dropped_total{queue_pair=\"0\",vtep=\"none\",reason=\"too_big\"} 0\n",
            "zcnet_vxlan_tx_lent_pages_held{queue_pair=\"1\"} 0\n",
            "zcnet_vxlan_fdb_learned_entries 0\n",
            "zcnet_vxlan_fdb_refused_total{reason=\"unknown_vtep\"} 0\n",
        ] {
            assert!(text.contains(line), "no {line:?} in:\n{text}");
        }
    }
}
