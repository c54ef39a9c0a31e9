//! The guest's result lines on the serial console, written by the image's
//! `/init`: `ZCNET-FEATURES bits`, `ZCNET-QUEUES n`, and for each iperf3
//! run `ZCNET-JSON-BEGIN name`, iperf3's JSON, `ZCNET-JSON-END name`,
//! `ZCNET-RESULT name rc=N`. Markers may follow BIOS escape codes on the
//! same line, so they are matched anywhere in a line.

use serde_json::Value;

/// What one iperf3 client in the guest reported.
#[derive(Debug, Clone, Copy)]
pub struct Iperf {
    /// Bytes the receiving end got (the server for guest->host, the guest
    /// for host->guest).
    pub bytes: u64,
    pub bits_per_second: f64,
    pub retransmits: u64,
}

impl Iperf {
    pub fn gbit(&self) -> f64 {
        self.bits_per_second / 1e9
    }
}

/// The value after `marker` on the first line that has it.
pub fn marker_value(console: &str, marker: &str) -> Option<String> {
    console.lines().find_map(|l| {
        let at = l.find(marker)?;
        Some(l[at + marker.len()..].trim().to_owned())
    })
}

/// The virtio feature bits the guest driver sees (sysfs order: bit 0
/// first).
pub fn guest_features(console: &str) -> Vec<bool> {
    let bits = marker_value(console, "ZCNET-FEATURES")
        .unwrap_or_else(|| panic!("the guest printed no ZCNET-FEATURES line"));
    bits.chars().map(|c| c == '1').collect()
}

/// The iperf3 run called `name`, which must have exited 0.
pub fn iperf(console: &str, name: &str) -> Iperf {
    let rc = marker_value(console, &format!("ZCNET-RESULT {name} rc="))
        .unwrap_or_else(|| panic!("the guest printed no result for iperf3 run {name:?}"));
    let begin = format!("ZCNET-JSON-BEGIN {name}");
    let end = format!("ZCNET-JSON-END {name}");
    let json: String = console
        .lines()
        .skip_while(|l| !l.contains(&begin))
        .skip(1)
        .take_while(|l| !l.contains(&end))
        .collect::<Vec<_>>()
        .join("\n");
    let v: Value = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("iperf3 run {name}: bad JSON ({e}):\n{json}"));
    assert_eq!(
        rc, "0",
        "iperf3 run {name} failed in the guest: {}",
        v["error"]
    );
    let sum = &v["end"]["sum_received"];
    Iperf {
        bytes: sum["bytes"].as_u64().expect("end.sum_received.bytes"),
        bits_per_second: sum["bits_per_second"]
            .as_f64()
            .expect("end.sum_received.bits_per_second"),
        retransmits: v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    }
}
