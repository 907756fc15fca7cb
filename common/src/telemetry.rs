//! Telemetry: what a device sends the hub over MQTT, and what the hub answers.
//!
//! - [`TelemetryRecord`]: one closed window — per active model a profile of every input and
//!   output, a latency sketch, request and error counts — plus the device's health and outbox
//!   counters. Signed by the device key, numbered by a per-device sequence number that never
//!   repeats, published QoS 1 on [`topic::telemetry`] until the hub acknowledges it.
//! - [`Heartbeat`]: health between windows on [`topic::health`]; the device's MQTT last will is
//!   a heartbeat with `online: false`, signed when the connection opens.
//! - [`TelemetryAck`]: the hub's statement that it has durably stored these sequence numbers of
//!   a device, on [`topic::ack`]. Signed by the hub's key (delegated by root for assignments),
//!   because anyone on the broker could otherwise empty a device's outbox.
//!
//! Every message is a [`Signed`] document: the body bytes as signed, the signer and the
//! signature. A device's messages carry no delegation; the hub checks them against the key the
//! device enrolled with ([`Signed::verify_by`]).

use serde::{Deserialize, Serialize};

use crate::device::ModelRef;
use crate::encoding::Document;
use crate::error::{Error, Result};
use crate::name;
use crate::quality::ModelQuality;
use crate::sketch::{LatencySketch, MAX_COUNT, Profile};
use crate::trust::Signed;

/// Default bound on one telemetry message on the wire (the hub's `max_telemetry_bytes`).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Models in one record.
pub const MAX_MODELS: usize = 64;
/// Longest window a record may cover: one day.
pub const MAX_WINDOW_SECS: u64 = 24 * 3600;
/// Sequence numbers in one ack.
pub const MAX_ACK_SEQS: usize = 4096;

/// MQTT topics, all under `edgefleet/v1/`. See docs/mqtt.md.
pub mod topic {
    pub const PREFIX: &str = "edgefleet/v1";

    /// Device → hub: signed [`TelemetryRecord`](super::TelemetryRecord)s, QoS 1.
    pub fn telemetry(device: &str) -> String {
        format!("{PREFIX}/devices/{device}/telemetry")
    }
    /// Device → hub: signed [`Heartbeat`](super::Heartbeat)s, QoS 1; also the last will.
    pub fn health(device: &str) -> String {
        format!("{PREFIX}/devices/{device}/health")
    }
    /// Device → hub: signed [`SampleBatch`](crate::sample::SampleBatch)es, QoS 1, acked on
    /// [`ack`] like telemetry (one sequence counter for both).
    pub fn samples(device: &str) -> String {
        format!("{PREFIX}/devices/{device}/samples")
    }
    /// Hub → device: signed [`TelemetryAck`](super::TelemetryAck)s, QoS 1.
    pub fn ack(device: &str) -> String {
        format!("{PREFIX}/devices/{device}/ack")
    }
    /// Hub → device: the signed assignment bundle, retained, QoS 1.
    pub fn assignment(device: &str) -> String {
        format!("{PREFIX}/devices/{device}/assignment")
    }
    /// Hub → anyone: JSON fleet summary of a model version, retained.
    pub fn fleet_summary(model: &str, version: u64) -> String {
        format!("{PREFIX}/fleet/models/{model}/{version}/summary")
    }
    /// The hub's subscriptions.
    pub const ALL_TELEMETRY: &str = "edgefleet/v1/devices/+/telemetry";
    pub const ALL_HEALTH: &str = "edgefleet/v1/devices/+/health";
    pub const ALL_SAMPLES: &str = "edgefleet/v1/devices/+/samples";

    /// The device id in `edgefleet/v1/devices/{id}/{leaf}`, if the topic has that shape.
    pub fn device_of<'a>(topic: &'a str, leaf: &str) -> Option<&'a str> {
        let rest = topic.strip_prefix(PREFIX)?.strip_prefix("/devices/")?;
        let (id, tail) = rest.split_once('/')?;
        (tail == leaf && !id.is_empty()).then_some(id)
    }
}

/// Where an MQTT broker is: `mqtt://host[:1883]` or `tcp://…` (plain), `mqtts://host[:8883]`
/// or `ssl://…` (TLS). IPv6 hosts in brackets: `mqtt://[::1]:7883`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> std::result::Result<Self, String> {
        let example = "e.g. mqtt://127.0.0.1:7883";
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{url:?} is not a broker URL ({example})"))?;
        let tls = match scheme {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => {
                return Err(format!(
                    "scheme {other:?} is not mqtt:// or mqtts:// ({example})"
                ));
            }
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "{url:?}: a broker URL is scheme://host:port, nothing more"
            ));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unclosed [ in the host"))?;
            (h, after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(format!("{url:?} has no host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| format!("{url:?}: port {p:?} is not 1..=65535"))?,
            None if tls => 8883,
            None => 1883,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

/// Machine health from sysinfo. Temperature is optional: many VMs expose no sensor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Whole-machine CPU use, 0–100 %.
    pub cpu_percent: f32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    /// The filesystem holding the agent's data dir.
    pub disk_used_bytes: u64,
    pub disk_total_bytes: u64,
    pub uptime_secs: u64,
    /// The hottest sensor, °C.
    pub temperature_celsius: Option<f32>,
}

/// The outbox as the device saw it when it signed the message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxStats {
    /// Records waiting for the hub's ack.
    pub queued: u64,
    pub queued_bytes: u64,
    /// Records dropped (oldest first) because the outbox was full, since the device started
    /// keeping telemetry.
    pub dropped: u64,
}

/// One model's window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelWindow {
    pub model: String,
    pub version: u64,
    /// [`Profile::to_bytes`]: inputs then outputs, named as [`crate::sketch::model_columns`].
    #[serde(with = "serde_bytes")]
    pub profile: Vec<u8>,
    /// [`LatencySketch`] bytes: microseconds per successful request.
    #[serde(with = "serde_bytes")]
    pub latency: Vec<u8>,
    pub requests: u64,
    pub errors: u64,
}

/// A closed window of one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryRecord {
    pub device_id: String,
    /// Per device, starting at 1, never reused: the hub removes duplicates by it.
    pub seq: u64,
    pub window_start: u64,
    pub window_end: u64,
    pub models: Vec<ModelWindow>,
    pub health: Health,
    pub outbox: OutboxStats,
    pub agent_version: String,
    /// Layout 2: prediction quality from ground truth, per model version that received
    /// feedback in the window (a version may appear here without a window in `models`: its
    /// feedback came after it stopped serving). Agents before layout 2 send no such field;
    /// [`TelemetryRecord::decode`](Document::decode) reads them with this empty.
    pub quality: Vec<ModelQuality>,
}

/// Layout 1 of the record, as agents before ground truth sign it: layout 2 without `quality`.
#[derive(Deserialize)]
struct TelemetryRecordV1 {
    device_id: String,
    seq: u64,
    window_start: u64,
    window_end: u64,
    models: Vec<ModelWindow>,
    health: Health,
    outbox: OutboxStats,
    agent_version: String,
}

impl Document for TelemetryRecord {
    const KIND: &'static str = "telemetry";
    const WHAT: &'static str = "telemetry record";

    /// Layout 2, else layout 1. Unambiguous: layout 2 is layout 1 plus one field at the end,
    /// and both decoders refuse missing or trailing bytes. The signing domain is the same, so
    /// a layout-1 record's signature still verifies.
    fn decode(body: &[u8]) -> Result<Self> {
        match crate::encoding::from_bytes::<Self>(Self::WHAT, body) {
            Ok(r) => Ok(r),
            Err(v2) => match crate::encoding::from_bytes::<TelemetryRecordV1>(Self::WHAT, body) {
                Ok(v1) => Ok(Self {
                    device_id: v1.device_id,
                    seq: v1.seq,
                    window_start: v1.window_start,
                    window_end: v1.window_end,
                    models: v1.models,
                    health: v1.health,
                    outbox: v1.outbox,
                    agent_version: v1.agent_version,
                    quality: Vec::new(),
                }),
                Err(_) => Err(v2),
            },
        }
    }
}

/// A model window with its sketches decoded and checked.
#[derive(Debug, Clone)]
pub struct DecodedWindow {
    pub model: String,
    pub version: u64,
    pub profile: Profile,
    pub latency: LatencySketch,
    pub requests: u64,
    pub errors: u64,
}

fn invalid(detail: impl Into<String>) -> Error {
    Error::Malformed {
        what: "telemetry record",
        detail: detail.into(),
    }
}

impl TelemetryRecord {
    /// Checks every field of a record received from outside and decodes its sketches.
    pub fn validate(&self) -> Result<Vec<DecodedWindow>> {
        name::validate(&self.device_id)?;
        if self.seq == 0 {
            return Err(invalid("sequence numbers start at 1"));
        }
        if self.window_end < self.window_start
            || self.window_end - self.window_start > MAX_WINDOW_SECS
        {
            return Err(invalid(format!(
                "window {}..{} is not a window of at most one day",
                self.window_start, self.window_end
            )));
        }
        if self.models.len() > MAX_MODELS {
            return Err(invalid(format!(
                "{} models, over the limit of {MAX_MODELS}",
                self.models.len()
            )));
        }
        self.health.validate()?;
        let mut out = Vec::with_capacity(self.models.len());
        for w in &self.models {
            name::validate(&w.model)?;
            // The same model twice is normal (an update mid-window: the old version's
            // requests, then the new one's); the same version twice is not.
            if out
                .iter()
                .any(|d: &DecodedWindow| d.model == w.model && d.version == w.version)
            {
                return Err(invalid(format!(
                    "model {} v{} appears twice",
                    w.model, w.version
                )));
            }
            let profile = Profile::from_bytes(&w.profile)
                .map_err(|e| invalid(format!("model {}: profile: {e}", w.model)))?;
            let latency = LatencySketch::try_from(w.latency.clone())
                .map_err(|e| invalid(format!("model {}: latency: {e}", w.model)))?;
            if w.requests > MAX_COUNT || w.errors > MAX_COUNT {
                return Err(invalid(format!("model {}: counts past 2^53", w.model)));
            }
            out.push(DecodedWindow {
                model: w.model.clone(),
                version: w.version,
                profile,
                latency,
                requests: w.requests,
                errors: w.errors,
            });
        }
        if self.quality.len() > MAX_MODELS {
            return Err(invalid(format!(
                "{} quality entries, over the limit of {MAX_MODELS}",
                self.quality.len()
            )));
        }
        for (i, q) in self.quality.iter().enumerate() {
            q.validate()?;
            if self.quality[..i]
                .iter()
                .any(|o| o.model == q.model && o.version == q.version)
            {
                return Err(invalid(format!(
                    "quality of model {} v{} appears twice",
                    q.model, q.version
                )));
            }
        }
        Ok(out)
    }
}

impl Health {
    pub fn validate(&self) -> Result<()> {
        let cpu_ok = self.cpu_percent.is_finite() && (0.0..=100.0).contains(&self.cpu_percent);
        let temp_ok = self
            .temperature_celsius
            .is_none_or(|t| t.is_finite() && (-100.0..=300.0).contains(&t));
        if !cpu_ok || !temp_ok {
            return Err(Error::Malformed {
                what: "health",
                detail: format!(
                    "cpu {}% or temperature {:?} °C out of range",
                    self.cpu_percent, self.temperature_celsius
                ),
            });
        }
        Ok(())
    }
}

/// Between windows, and as the last will (`online: false`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub device_id: String,
    pub at: u64,
    /// When this run of the agent started: its last will carries it too, so the hub can tell
    /// the will of the current run (device gone) from a late one of an earlier run.
    pub started_at: u64,
    pub online: bool,
    /// None in the last will, which is signed when the connection opens.
    pub health: Option<Health>,
    pub active: Vec<ModelRef>,
    pub outbox: OutboxStats,
    pub agent_version: String,
}

impl Document for Heartbeat {
    const KIND: &'static str = "heartbeat";
    const WHAT: &'static str = "heartbeat";
}

impl Heartbeat {
    pub fn validate(&self) -> Result<()> {
        name::validate(&self.device_id)?;
        if let Some(h) = &self.health {
            h.validate()?;
        }
        if self.active.len() > MAX_MODELS {
            return Err(Error::Malformed {
                what: "heartbeat",
                detail: format!("more than {MAX_MODELS} active models"),
            });
        }
        for m in &self.active {
            name::validate(&m.name)?;
        }
        Ok(())
    }
}

/// The hub has durably stored (or already had) these records of `device_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetryAck {
    pub device_id: String,
    pub seqs: Vec<u64>,
    pub at: u64,
}

impl Document for TelemetryAck {
    const KIND: &'static str = "telemetry-ack";
    const WHAT: &'static str = "telemetry ack";
}

/// First byte of a telemetry payload: the signed record's postcard bytes follow as they are.
pub const PAYLOAD_PLAIN: u8 = 0x01;
/// First byte of a telemetry payload: raw DEFLATE (RFC 1951) of the signed record's bytes.
pub const PAYLOAD_DEFLATE: u8 = 0x02;

/// The MQTT payload of a signed record: DEFLATE (sketch bytes shrink by about a fifth) unless
/// that does not make it smaller. The signature covers the record, not the compression, so
/// the hub checks it after inflating.
pub fn pack_record(signed: &[u8]) -> Vec<u8> {
    let deflated = miniz_oxide::deflate::compress_to_vec(signed, 6);
    let (tag, body) = if deflated.len() < signed.len() {
        (PAYLOAD_DEFLATE, deflated.as_slice())
    } else {
        (PAYLOAD_PLAIN, signed)
    };
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(tag);
    out.extend_from_slice(body);
    out
}

/// The signed record's bytes from a payload, refusing more than `max_bytes` either way (a
/// small DEFLATE stream can inflate a thousandfold).
pub fn unpack_record(payload: &[u8], max_bytes: usize) -> Result<Vec<u8>> {
    let too_large = |size| Error::TooLarge {
        what: "telemetry record",
        size,
        limit: max_bytes,
    };
    if payload.len() > max_bytes + 1 {
        return Err(too_large(payload.len()));
    }
    match payload.split_first() {
        Some((&PAYLOAD_PLAIN, rest)) => Ok(rest.to_vec()),
        Some((&PAYLOAD_DEFLATE, rest)) => {
            miniz_oxide::inflate::decompress_to_vec_with_limit(rest, max_bytes).map_err(|e| {
                if e.status == miniz_oxide::inflate::TINFLStatus::HasMoreOutput {
                    too_large(max_bytes + 1)
                } else {
                    invalid(format!("DEFLATE: {e}"))
                }
            })
        }
        Some((other, _)) => Err(invalid(format!(
            "payload encoding 0x{other:02x} is neither 0x01 (plain) nor 0x02 (DEFLATE)"
        ))),
        None => Err(invalid("empty payload")),
    }
}

/// Decodes a device message: size bound, envelope, then the device's own key (no delegation:
/// a device signs only for itself), then the body, whose device id must be the topic's.
pub fn open_device_message<T: Document>(
    payload: &[u8],
    max_bytes: usize,
    enrolled: &crate::PublicKey,
) -> Result<T> {
    if payload.len() > max_bytes {
        return Err(Error::TooLarge {
            what: T::WHAT,
            size: payload.len(),
            limit: max_bytes,
        });
    }
    let signed = Signed::<T>::from_bytes(payload)?;
    signed.verify_by(enrolled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::{Delegation, Permission, TrustRoot};
    use crate::{SecretKey, encoding};

    fn record() -> TelemetryRecord {
        TelemetryRecord {
            device_id: "shop-1".into(),
            seq: 1,
            window_start: 100,
            window_end: 1000,
            models: vec![],
            health: Health::default(),
            outbox: OutboxStats::default(),
            agent_version: "t".into(),
            quality: vec![],
        }
    }

    #[test]
    fn broker_urls() {
        assert_eq!(
            BrokerUrl::parse("mqtt://127.0.0.1:7883"),
            Ok(BrokerUrl {
                host: "127.0.0.1".into(),
                port: 7883,
                tls: false
            })
        );
        assert_eq!(
            BrokerUrl::parse("mqtts://hub.example/").map(|b| (b.port, b.tls)),
            Ok((8883, true))
        );
        assert_eq!(
            BrokerUrl::parse("tcp://[::1]:1883").map(|b| (b.host, b.port)),
            Ok(("::1".into(), 1883))
        );
        for bad in [
            "http://x",
            "mqtt://",
            "mqtt://x/path",
            "nonsense",
            "mqtt://x:0",
            "mqtt://x:99999",
            "mqtt://u:p@x",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn topics_parse_back() {
        assert_eq!(
            topic::device_of(&topic::telemetry("shop-1"), "telemetry"),
            Some("shop-1")
        );
        assert_eq!(
            topic::device_of("edgefleet/v1/devices//telemetry", "telemetry"),
            None
        );
        assert_eq!(
            topic::device_of("edgefleet/v1/devices/a/b/telemetry", "telemetry"),
            None
        );
        assert_eq!(
            topic::device_of("other/devices/a/telemetry", "telemetry"),
            None
        );
    }

    #[test]
    fn payloads_round_trip_and_bombs_are_refused() {
        let signed = Signed::sign(&record(), &SecretKey::from_seed([1; 32]), None)
            .and_then(|s| s.to_bytes())
            .expect("sign");
        let packed = pack_record(&signed);
        assert_eq!(unpack_record(&packed, 1 << 20).expect("unpack"), signed);
        // Incompressible bytes travel plain.
        let noise: Vec<u8> = (0..128u32)
            .flat_map(|i| crate::Digest::of(&i.to_le_bytes()).0)
            .collect();
        let packed = pack_record(&noise);
        assert_eq!(packed[0], PAYLOAD_PLAIN);
        assert_eq!(unpack_record(&packed, 1 << 20).expect("unpack"), noise);
        // 64 MiB of zeros deflate to about 64 KiB: refused at the limit, never inflated whole.
        let bomb = pack_record(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 128 << 10, "{}", bomb.len());
        assert!(matches!(
            unpack_record(&bomb, 1 << 20),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            unpack_record(&[2, 0xff, 0xff], 1 << 20),
            Err(Error::Malformed { .. })
        ));
        assert!(unpack_record(b"garbage", 1 << 20).is_err());
        assert!(unpack_record(&[], 1 << 20).is_err());
        assert!(matches!(
            unpack_record(&[1; 100], 10),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn bad_records_are_refused_with_a_reason() {
        record().validate().expect("valid");
        let cases: Vec<(TelemetryRecord, &str)> = vec![
            (TelemetryRecord { seq: 0, ..record() }, "start at 1"),
            (
                TelemetryRecord {
                    window_end: 50,
                    ..record()
                },
                "window",
            ),
            (
                TelemetryRecord {
                    window_end: 100 + MAX_WINDOW_SECS + 1,
                    ..record()
                },
                "window",
            ),
            (
                TelemetryRecord {
                    health: Health {
                        cpu_percent: f32::NAN,
                        ..Health::default()
                    },
                    ..record()
                },
                "cpu",
            ),
            (
                TelemetryRecord {
                    models: vec![ModelWindow {
                        model: "m".into(),
                        version: 1,
                        profile: vec![9, 9],
                        latency: vec![],
                        requests: 0,
                        errors: 0,
                    }],
                    ..record()
                },
                "profile",
            ),
        ];
        for (r, want) in cases {
            let err = r.validate().expect_err("refused").to_string();
            assert!(err.contains(want), "{err} lacks {want}");
        }
        // An update mid-window: the same model at two versions is one valid record; the same
        // version twice is not.
        let window = |version| ModelWindow {
            model: "demand".into(),
            version,
            profile: Profile::new(&[], 200).expect("empty").to_bytes(),
            latency: LatencySketch::default().into(),
            requests: 1,
            errors: 0,
        };
        let upgrade = TelemetryRecord {
            models: vec![window(1), window(2)],
            ..record()
        };
        assert_eq!(upgrade.validate().expect("valid").len(), 2);
        let twice = TelemetryRecord {
            models: vec![window(2), window(2)],
            ..record()
        };
        assert!(
            twice
                .validate()
                .expect_err("refused")
                .to_string()
                .contains("twice")
        );
    }

    #[test]
    fn device_messages_verify_only_by_the_enrolled_key() {
        let device = SecretKey::from_seed([1; 32]);
        let other = SecretKey::from_seed([2; 32]);
        let bytes = Signed::sign(&record(), &device, None)
            .and_then(|s| s.to_bytes())
            .expect("sign");
        open_device_message::<TelemetryRecord>(&bytes, 1 << 20, &device.public()).expect("ok");
        let err = open_device_message::<TelemetryRecord>(&bytes, 1 << 20, &other.public())
            .expect_err("spoofed");
        assert!(matches!(err, Error::UntrustedSigner { .. }), "{err}");
        let err = open_device_message::<TelemetryRecord>(&bytes, 10, &device.public())
            .expect_err("oversize");
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
        // Signed by another key but claiming to be from the device: the signer field differs.
        let forged = Signed::sign(&record(), &other, None)
            .and_then(|s| s.to_bytes())
            .expect("sign");
        assert!(
            open_device_message::<TelemetryRecord>(&forged, 1 << 20, &device.public()).is_err()
        );
        // A heartbeat's signature never verifies as a record (domain separation).
        let hb = Heartbeat {
            device_id: "shop-1".into(),
            at: 1,
            started_at: 1,
            online: false,
            health: None,
            active: vec![],
            outbox: OutboxStats::default(),
            agent_version: "t".into(),
        };
        let signed = Signed::sign(&hb, &device, None).expect("sign");
        let as_record: Signed<TelemetryRecord> =
            encoding::from_bytes("x", &signed.to_bytes().expect("bytes")).expect("same shape");
        assert!(as_record.verify_by(&device.public()).is_err());
    }

    #[test]
    fn acks_need_root_or_a_delegated_hub_key() {
        let root = SecretKey::from_seed([3; 32]);
        let hub = SecretKey::from_seed([4; 32]);
        let trust = TrustRoot::new(root.public());
        let ack = TelemetryAck {
            device_id: "shop-1".into(),
            seqs: vec![1],
            at: 10,
        };
        let delegation = |perms: Vec<Permission>| {
            Signed::sign(
                &Delegation {
                    key: hub.public(),
                    label: "hub".into(),
                    patterns: vec!["demand".into()],
                    permissions: perms,
                    issued_at: 0,
                    expires_at: 100,
                },
                &root,
                None,
            )
            .expect("delegate")
        };
        let good = Signed::sign(&ack, &hub, Some(delegation(vec![Permission::Assignments])))
            .expect("sign");
        assert_eq!(
            good.verify_hub(&trust, 10, Permission::Assignments)
                .expect("valid"),
            ack
        );
        assert!(
            good.verify_hub(&trust, 200, Permission::Assignments)
                .is_err()
        );
        let manifests_only =
            Signed::sign(&ack, &hub, Some(delegation(vec![Permission::Manifests]))).expect("sign");
        assert!(
            manifests_only
                .verify_hub(&trust, 10, Permission::Assignments)
                .is_err()
        );
        let undelegated = Signed::sign(&ack, &hub, None).expect("sign");
        assert!(
            undelegated
                .verify_hub(&trust, 10, Permission::Assignments)
                .is_err()
        );
    }
}
