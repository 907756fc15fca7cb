//! Desired state: which model version each device should serve, and the signed assignments
//! that tell it so.
//!
//! Rules:
//! - an admin sets a version for a device or a tag; the hub refuses up front a model its
//!   delegation does not let it assign (rather than failing on every device poll);
//! - a device's desired set is resolved by [`resolve_desired`]: a device target wins over a
//!   tag target; among tags the most recently set wins;
//! - issuing: an assignment already issued is reused while it names the same version and
//!   manifest and is fresh (more than half its lifetime left), so a bundle's bytes — and its
//!   ETag — change only when something changed; otherwise a new one is signed with the next
//!   serial, which is durable before it is used, so a serial is never reused.
//!
//! The generation ([`Desired::watch_generation`]) is bumped whenever what devices should serve may
//! have changed (an assignment, a new model version, an approval, a reload, shutdown): the
//! long-polls and the MQTT push wait on it.

use std::collections::BTreeMap;
use std::sync::Arc;

use edgefleet_common::device::{
    AssignedSet, AssignmentBundle, BUNDLE_FORMAT, ModelRef, WindowInstruction,
};
use edgefleet_common::sample::{CaptureInstruction, check_policy};
use edgefleet_common::{Assignment, Permission, Signed, Target, name};
use serde::Deserialize;

use crate::config::SharedConfig;
use crate::error::{HubError, HubResult};
use crate::registry::Registry;
use crate::store::{CapturePolicy, DesiredRecord, DeviceRecord, Store};

/// A model's sample capture as an admin asks for it (`PUT /api/v1/models/{name}/capture`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// The share of matched feedback rows offered to each window's reservoir, in (0, 1].
    pub rate: f64,
    /// Rows kept per window and device, 1..=10,000.
    pub max_rows: u32,
}

#[derive(Clone)]
pub struct Desired {
    store: Store,
    config: SharedConfig,
    registry: Registry,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
    /// Held while assignments are issued: the MQTT push and a device's HTTP long-poll build
    /// the same device's bundle at the same moment, and without it both would allocate a
    /// serial for the same version (the device then sees the lower one as a replay).
    issuing: Arc<std::sync::Mutex<()>>,
    /// Desired state indexed by target, rebuilt after a write: every bundle issued (each
    /// device's poll, the MQTT push, each rollout step) reads it, and with a record per
    /// moved device, reading the tree each time was the hub's hot path at 10k devices.
    cache: Arc<std::sync::Mutex<Cached>>,
    /// Bumped by every write to desired state: a cache built from an older read is stale.
    writes: Arc<std::sync::atomic::AtomicU64>,
}

/// The index and the write count it was built at.
#[derive(Default)]
struct Cached {
    at: u64,
    index: Option<Arc<DesiredIndex>>,
}

/// What an admin asks for.
#[derive(Debug, Deserialize)]
pub struct AssignRequest {
    pub target: Target,
    pub model: String,
    pub version: u64,
}

/// Which assignment to remove.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnassignRequest {
    pub target: Target,
    pub model: String,
}

impl Desired {
    pub fn new(store: Store, config: SharedConfig, registry: Registry) -> Self {
        Self {
            store,
            config,
            registry,
            generation: Arc::new(tokio::sync::watch::channel(0).0),
            issuing: Default::default(),
            cache: Default::default(),
            writes: Default::default(),
        }
    }

    /// Desired state as an index, from the cache unless a write happened since it was built.
    pub fn index(&self) -> HubResult<Arc<DesiredIndex>> {
        use std::sync::atomic::Ordering;
        let at = self.writes.load(Ordering::Acquire);
        if let Ok(c) = self.cache.lock()
            && c.at == at
            && let Some(index) = &c.index
        {
            return Ok(index.clone());
        }
        let index = Arc::new(DesiredIndex::new(self.store.desired()?));
        if let Ok(mut c) = self.cache.lock()
            // Only if no write came in while it was read: a stale index is never kept.
            && self.writes.load(Ordering::Acquire) == at
        {
            *c = Cached {
                at,
                index: Some(index.clone()),
            };
        }
        Ok(index)
    }

    /// Every write to desired state calls this after it is in the store.
    fn wrote(&self) {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Bumps the generation: what devices should serve may have changed.
    pub fn bump_generation(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Wakes on every [`bump_generation`](Self::bump_generation).
    pub fn watch_generation(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Sets the desired version for a device or a tag; durable on return.
    pub async fn assign(&self, req: AssignRequest) -> HubResult<DesiredRecord> {
        name::validate(&req.model)?;
        match &req.target {
            Target::Device(d) | Target::Tag(d) => name::validate(d)?,
        }
        if self.registry.record(&req.model, req.version)?.is_none() {
            return Err(HubError::NotFound(format!(
                "model {} has no version {}; push it first",
                req.model, req.version
            )));
        }
        let delegation = self.config.load().delegation.decode_unverified()?;
        if !delegation.covers(Permission::Assignments, &req.model) {
            return Err(HubError::Forbidden(format!(
                "the hub's delegation ({:?}) does not allow assigning {}; delegate it with `edgefleet delegate --permission assignments`",
                delegation.patterns, req.model
            )));
        }
        let record = DesiredRecord {
            target: req.target,
            model: req.model,
            version: req.version,
            set_at: crate::now(),
        };
        self.store.set_desired(&record)?;
        self.wrote();
        self.store.flush().await?;
        self.bump_generation();
        tracing::info!(target = %record.target, model = %record.model, version = record.version, "desired state set");
        Ok(record)
    }

    /// Removes `target`'s assignment of `model`. A device that then resolves to no version
    /// of the model stops serving it after its grace period (`removal_grace_secs`) and
    /// deletes it; one that resolves to another (a tag's) moves to that.
    pub async fn unassign(&self, req: UnassignRequest) -> HubResult<DesiredRecord> {
        name::validate(&req.model)?;
        match &req.target {
            Target::Device(d) | Target::Tag(d) => name::validate(d)?,
        }
        let Some(old) = self
            .store
            .desired()?
            .into_iter()
            .find(|d| d.target == req.target && d.model == req.model)
        else {
            return Err(HubError::NotFound(format!(
                "{} has no assignment of {}",
                req.target, req.model
            )));
        };
        self.store.remove_desired(&req.target, &req.model)?;
        self.wrote();
        self.store.flush().await?;
        self.bump_generation();
        tracing::info!(target = %old.target, model = %old.model, version = old.version, "assignment removed");
        Ok(old)
    }

    pub fn list(&self) -> HubResult<Vec<DesiredRecord>> {
        self.store.desired()
    }

    /// Switches a model's sample capture on (`Some`: devices serving it keep a reservoir of
    /// (inputs, prediction, truth) rows per window and upload it) or off (`None`). Devices
    /// learn it with their next bundle, as a signed instruction each.
    pub async fn set_capture(
        &self,
        model: &str,
        req: Option<CaptureRequest>,
    ) -> HubResult<Option<CapturePolicy>> {
        self.registry.get(model)?;
        let policy = match req {
            Some(r) => {
                let rate_ppm = if r.rate.is_finite() && r.rate > 0.0 && r.rate <= 1.0 {
                    ((r.rate * 1e6).round() as u32).max(1)
                } else {
                    0
                };
                check_policy(rate_ppm, r.max_rows).map_err(|e| {
                    HubError::Invalid(format!(
                        "{e}; e.g. {{\"rate\": 0.1, \"max_rows\": 100}} (rate is a share of the matched feedback rows)"
                    ))
                })?;
                Some(CapturePolicy {
                    rate_ppm,
                    max_rows: r.max_rows,
                    set_at: crate::now(),
                })
            }
            None => None,
        };
        self.store.put_capture_policy(model, policy.as_ref())?;
        self.wrote();
        self.store.flush().await?;
        self.bump_generation();
        match &policy {
            Some(p) => tracing::info!(
                model,
                rate_ppm = p.rate_ppm,
                max_rows = p.max_rows,
                "sample capture on"
            ),
            None => tracing::info!(model, "sample capture off"),
        }
        Ok(policy)
    }

    pub fn capture_policy(&self, model: &str) -> HubResult<Option<CapturePolicy>> {
        name::validate(model)?;
        self.store.capture_policy(model)
    }

    /// Sets (`Some`) or removes (`None`) a tag's target for `model`, without the admin checks
    /// of [`assign`](Self::assign): for drivers acting on a rollout an admin created. Not
    /// flushed and no generation bump: the caller commits.
    pub fn set_for_tag(&self, tag: &str, model: &str, version: Option<u64>) -> HubResult<()> {
        self.set(Target::Tag(tag.to_owned()), model, version)
    }

    /// Sets (`Some`) or removes (`None`) one device's own target for `model`, like
    /// [`set_for_tag`](Self::set_for_tag).
    pub fn set_for_device(&self, device: &str, model: &str, version: Option<u64>) -> HubResult<()> {
        self.set(Target::Device(device.to_owned()), model, version)
    }

    fn set(&self, target: Target, model: &str, version: Option<u64>) -> HubResult<()> {
        match version {
            Some(version) => self.store.set_desired(&DesiredRecord {
                target,
                model: model.to_owned(),
                version,
                set_at: crate::now(),
            }),
            None => self.store.remove_desired(&target, model),
        }?;
        self.wrote();
        Ok(())
    }

    /// Makes what was set durable and tells devices.
    pub async fn commit(&self) -> HubResult<()> {
        self.store.flush().await?;
        self.bump_generation();
        Ok(())
    }

    /// The device's signed assignments (and the root rotations it must know), reusing issued
    /// ones while they still match and are fresh.
    pub fn issue(&self, device: &DeviceRecord) -> HubResult<AssignmentBundle> {
        // A poisoned lock only means another issuer panicked; the store is transactional.
        let _issuing = self.issuing.lock().unwrap_or_else(|p| p.into_inner());
        // Desired state read under the lock (the cached index: an `Arc` clone unless a write
        // came in). Read before it, a slow round of the push could sign an older version
        // with a newer serial than the long-poll just issued for the current one.
        let desired = self.index()?.for_device(device);
        let now = crate::now();
        // One snapshot: every assignment of the bundle is signed under the same keys and settings.
        let config = self.config.load();
        let ttl = config.config.assignment_ttl_secs;
        let mut out = Vec::new();
        let wanted = resolve_desired(&desired, device);
        for want in &wanted {
            let Some(model) = self.registry.record(&want.name, want.version)? else {
                continue;
            };
            let digest = model.manifest.digest();
            if let Some(prev) = self.store.issued(&device.id, &want.name)? {
                let a = prev.decode_unverified()?;
                if a.version == want.version
                    && a.manifest_digest == digest
                    && a.expires_at > now + ttl / 2
                {
                    out.push(prev);
                    continue;
                }
            }
            let a = Assignment {
                target: Target::Device(device.id.clone()),
                model: want.name.clone(),
                version: want.version,
                manifest_digest: digest,
                serial: self.store.next_serial()?,
                issued_at: now,
                expires_at: now + ttl,
            };
            let signed = Signed::sign(&a, &config.signing_key, Some(config.delegation.clone()))?;
            self.store.put_issued(&device.id, &signed)?;
            out.push(signed);
        }
        // A model no longer assigned: its issued assignment is forgotten, so assigning the
        // same version again signs a new one (the device refuses a serial it already used).
        for model in self.store.issued_models(&device.id)? {
            if !wanted.iter().any(|w| w.name == model) {
                self.store.remove_issued(&device.id, &model)?;
            }
        }
        let window = self.issue_window(device, &config, now)?;
        let names: Vec<String> = out
            .iter()
            .filter_map(|a| a.decode_unverified().ok().map(|a| a.model))
            .collect();
        let capture = self.issue_capture(device, &names, &config, now)?;
        let assigned = self.issue_set(device, names, &config, now)?;
        Ok(AssignmentBundle {
            assignments: out,
            rotations: config.rotations.clone(),
            window,
            assigned: Some(assigned),
            capture,
            format: 0,
        })
    }

    /// The device's bundle as bytes in `format` (capped at the newest the hub writes).
    pub fn issue_bytes(&self, device: &DeviceRecord, format: u32) -> HubResult<Vec<u8>> {
        Ok(self.issue(device)?.to_wire(format.min(BUNDLE_FORMAT))?)
    }

    /// The bundle format to push to a device: the one its last status report declared (an
    /// agent older than the field reads format 1).
    pub fn pushed_format(device: &DeviceRecord) -> u32 {
        device.status.as_ref().map_or(1, |s| s.bundle_format.max(1))
    }

    /// The signed set of models assigned to the device, reused while unchanged and fresh.
    fn issue_set(
        &self,
        device: &DeviceRecord,
        models: Vec<String>,
        config: &crate::config::RuntimeConfig,
        now: u64,
    ) -> HubResult<Signed<AssignedSet>> {
        let ttl = config.config.assignment_ttl_secs;
        if let Some(prev) = self.store.issued_set(&device.id)? {
            let s = prev.decode_unverified()?;
            if s.models == models && s.expires_at > now + ttl / 2 {
                return Ok(prev);
            }
        }
        let set = AssignedSet {
            device: device.id.clone(),
            models,
            serial: self.store.next_serial()?,
            issued_at: now,
            expires_at: now + ttl,
        };
        let signed = Signed::sign(&set, &config.signing_key, Some(config.delegation.clone()))?;
        self.store.put_issued_set(&device.id, &signed)?;
        Ok(signed)
    }

    /// A signed capture instruction per assigned model whose capture is on, reused while it
    /// matches the policy and is fresh; a model without one has its instruction forgotten.
    fn issue_capture(
        &self,
        device: &DeviceRecord,
        models: &[String],
        config: &crate::config::RuntimeConfig,
        now: u64,
    ) -> HubResult<Vec<Signed<CaptureInstruction>>> {
        let ttl = config.config.assignment_ttl_secs;
        let mut out = Vec::new();
        for model in models {
            let Some(policy) = self.store.capture_policy(model)? else {
                // Most models never capture: read before writing, so a bundle round writes
                // nothing for them.
                if self.store.issued_capture(&device.id, model)?.is_some() {
                    self.store.remove_issued_capture(&device.id, model)?;
                }
                continue;
            };
            if let Some(prev) = self.store.issued_capture(&device.id, model)? {
                let c = prev.decode_unverified()?;
                if c.rate_ppm == policy.rate_ppm
                    && c.max_rows == policy.max_rows
                    && c.expires_at > now + ttl / 2
                {
                    out.push(prev);
                    continue;
                }
            }
            let c = CaptureInstruction {
                device: device.id.clone(),
                model: model.clone(),
                rate_ppm: policy.rate_ppm,
                max_rows: policy.max_rows,
                serial: self.store.next_serial()?,
                issued_at: now,
                expires_at: now + ttl,
            };
            let signed = Signed::sign(&c, &config.signing_key, Some(config.delegation.clone()))?;
            self.store.put_issued_capture(&device.id, model, &signed)?;
            out.push(signed);
        }
        Ok(out)
    }

    /// The signed window instruction a rollout asks of the device, reused while it matches
    /// and is fresh (the caller holds `issuing`).
    fn issue_window(
        &self,
        device: &DeviceRecord,
        config: &crate::config::RuntimeConfig,
        now: u64,
    ) -> HubResult<Option<Signed<WindowInstruction>>> {
        let Some(order) = self.store.window_order(&device.id)? else {
            return Ok(None);
        };
        let ttl = config.config.assignment_ttl_secs;
        if let Some(prev) = self.store.issued_window(&device.id)? {
            let w = prev.decode_unverified()?;
            if w.window_secs == order.window_secs
                && w.reason == order.reason
                && w.expires_at > now + ttl / 2
            {
                return Ok(Some(prev));
            }
        }
        let w = WindowInstruction {
            device: device.id.clone(),
            window_secs: order.window_secs,
            reason: order.reason,
            serial: self.store.next_serial()?,
            issued_at: now,
            expires_at: now + ttl,
        };
        let signed = Signed::sign(&w, &config.signing_key, Some(config.delegation.clone()))?;
        self.store.put_issued_window(&device.id, &signed)?;
        Ok(Some(signed))
    }
}

/// Desired state grouped by target, so one device's records are found without a scan (the
/// push issues every device's bundle in a round; a rollout gives each moved device a record).
#[derive(Default)]
pub struct DesiredIndex {
    by_target: std::collections::HashMap<Target, Vec<DesiredRecord>>,
}

impl DesiredIndex {
    pub fn new(all: Vec<DesiredRecord>) -> Self {
        let mut by_target: std::collections::HashMap<Target, Vec<DesiredRecord>> =
            Default::default();
        for d in all {
            by_target.entry(d.target.clone()).or_default().push(d);
        }
        Self { by_target }
    }

    /// Every record (in no particular order).
    pub fn records(&self) -> impl Iterator<Item = &DesiredRecord> {
        self.by_target.values().flatten()
    }

    /// The records that can apply to `device`: its own and its tags', in the stored order
    /// within each target (what [`resolve_desired`] needs).
    pub fn for_device(&self, device: &DeviceRecord) -> Vec<DesiredRecord> {
        let mut out: Vec<DesiredRecord> = device
            .tags
            .iter()
            .filter_map(|t| self.by_target.get(&Target::Tag(t.clone())))
            .flatten()
            .cloned()
            .collect();
        if let Some(own) = self.by_target.get(&Target::Device(device.id.clone())) {
            out.extend(own.iter().cloned());
        }
        // The store's order (by target, then model): ties resolve as on the full list.
        out.sort_by(|a, b| (a.target.to_string(), &a.model).cmp(&(b.target.to_string(), &b.model)));
        out.dedup();
        out
    }
}

/// Which model versions a device should serve: device targets win over tag targets; among tags
/// the most recently set wins (on a tie, the later record in `all`).
pub fn resolve_desired(all: &[DesiredRecord], device: &DeviceRecord) -> Vec<ModelRef> {
    let mut chosen: BTreeMap<&str, (&DesiredRecord, bool)> = BTreeMap::new();
    for d in all {
        if !d.target.matches(&device.id, &device.tags) {
            continue;
        }
        let is_device = matches!(d.target, Target::Device(_));
        let better = match chosen.get(d.model.as_str()) {
            None => true,
            Some((old, old_is_device)) => {
                (is_device && !old_is_device)
                    || (is_device == *old_is_device && d.set_at >= old.set_at)
            }
        };
        if better {
            chosen.insert(&d.model, (d, is_device));
        }
    }
    chosen
        .values()
        .map(|(d, _)| ModelRef {
            name: d.model.clone(),
            version: d.version,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index finds exactly what a scan of every record resolves to.
    #[test]
    fn the_index_resolves_like_the_full_list() {
        let rec = |target: Target, model: &str, version: u64, set_at: u64| DesiredRecord {
            target,
            model: model.into(),
            version,
            set_at,
        };
        let mut all = vec![
            rec(Target::Tag("eu".into()), "demand", 1, 5),
            rec(Target::Tag("shops".into()), "demand", 2, 5),
            rec(Target::Tag("shops".into()), "fuel", 3, 1),
            rec(Target::Device("shop-1".into()), "demand", 4, 1),
            rec(Target::Device("shop-2".into()), "fuel", 5, 9),
            rec(Target::Tag("zz".into()), "fuel", 6, 9),
        ];
        all.sort_by(|a, b| (a.target.to_string(), &a.model).cmp(&(b.target.to_string(), &b.model)));
        let index = DesiredIndex::new(all.clone());
        for (id, tags) in [
            ("shop-1", vec!["eu", "shops"]),
            ("shop-2", vec!["shops", "eu", "zz"]),
            ("shop-3", vec!["zz"]),
            ("shop-4", vec![]),
        ] {
            let d = DeviceRecord {
                id: id.into(),
                public_key: edgefleet_common::SecretKey::from_seed([1; 32]).public(),
                tags: tags.into_iter().map(String::from).collect(),
                hostname: String::new(),
                agent_version: String::new(),
                approved: true,
                enrolled_at: 0,
                last_seen: None,
                status: None,
            };
            assert_eq!(
                resolve_desired(&index.for_device(&d), &d),
                resolve_desired(&all, &d),
                "{id}"
            );
        }
    }
    use edgefleet_common::SecretKey;

    fn device(id: &str, tags: &[&str]) -> DeviceRecord {
        DeviceRecord {
            id: id.into(),
            public_key: SecretKey::generate().expect("key").public(),
            tags: tags.iter().map(|t| (*t).into()).collect(),
            hostname: "h".into(),
            agent_version: "test".into(),
            approved: true,
            enrolled_at: 0,
            last_seen: None,
            status: None,
        }
    }

    fn want(target: Target, model: &str, version: u64, set_at: u64) -> DesiredRecord {
        DesiredRecord {
            target,
            model: model.into(),
            version,
            set_at,
        }
    }

    fn versions(all: &[DesiredRecord], d: &DeviceRecord) -> Vec<(String, u64)> {
        resolve_desired(all, d)
            .into_iter()
            .map(|m| (m.name, m.version))
            .collect()
    }

    #[test]
    fn a_device_target_wins_over_a_tag_even_a_newer_one() {
        let d = device("shop-1", &["eu"]);
        let all = [
            want(Target::Device("shop-1".into()), "demand", 2, 100),
            want(Target::Tag("eu".into()), "demand", 3, 200),
        ];
        assert_eq!(versions(&all, &d), vec![("demand".into(), 2)]);
        // In either order.
        let all = [all[1].clone(), all[0].clone()];
        assert_eq!(versions(&all, &d), vec![("demand".into(), 2)]);
    }

    #[test]
    fn among_tags_the_latest_set_wins() {
        let d = device("shop-1", &["eu", "fuel"]);
        let all = [
            want(Target::Tag("fuel".into()), "demand", 5, 300),
            want(Target::Tag("eu".into()), "demand", 4, 200),
        ];
        assert_eq!(versions(&all, &d), vec![("demand".into(), 5)]);
        let all = [
            want(Target::Tag("fuel".into()), "demand", 5, 100),
            want(Target::Tag("eu".into()), "demand", 4, 200),
        ];
        assert_eq!(versions(&all, &d), vec![("demand".into(), 4)]);
    }

    #[test]
    fn targets_of_other_devices_and_tags_do_not_apply_and_models_resolve_apart() {
        let d = device("shop-1", &["eu"]);
        let all = [
            want(Target::Device("shop-2".into()), "demand", 9, 900),
            want(Target::Tag("us".into()), "demand", 8, 800),
            want(Target::Tag("eu".into()), "demand", 1, 100),
            want(Target::Device("shop-1".into()), "stock", 7, 50),
        ];
        assert_eq!(
            versions(&all, &d),
            vec![("demand".into(), 1), ("stock".into(), 7)]
        );
        assert!(versions(&all, &device("shop-3", &[])).is_empty());
    }

    /// The MQTT push and a device's HTTP long-poll issue the same device's bundle at the same
    /// moment. Under the `issuing` lock both carry the same serial for the version (a second
    /// serial would make the device refuse the lower one as a replay), and serials never go
    /// backwards from one assignment to the next. Without the lock this fails within a few
    /// rounds.
    #[tokio::test]
    async fn two_concurrent_issuers_share_one_serial_per_version_and_serials_only_grow() {
        let kit = crate::testkit::Kit::new();
        kit.publish("demand", 1).await;
        kit.publish("demand", 2).await;
        kit.enroll("shop-1", &[], true).await;
        let record = kit
            .hub
            .devices
            .get("shop-1")
            .expect("read")
            .expect("device");
        let mut last = 0;
        for round in 0..50u64 {
            // A new version each round: each round must sign exactly one new serial.
            let version = 1 + round % 2;
            kit.hub
                .desired
                .assign(AssignRequest {
                    target: Target::Device("shop-1".into()),
                    model: "demand".into(),
                    version,
                })
                .await
                .expect("assign");
            // Two blocking tasks released together: each on a thread of its own, so the two
            // issues really overlap (two async tasks woken by a barrier tend to run one after
            // the other on one worker, which would test nothing).
            let start = Arc::new(std::sync::Barrier::new(2));
            let issuer = || {
                let (desired, record, start) =
                    (kit.hub.desired.clone(), record.clone(), start.clone());
                tokio::task::spawn_blocking(move || {
                    start.wait();
                    desired.issue(&record).expect("issue")
                })
            };
            let (push, poll) = (issuer(), issuer());
            let serial = |bundle: AssignmentBundle| {
                assert_eq!(bundle.assignments.len(), 1);
                let a = bundle.assignments[0].decode_unverified().expect("decode");
                assert_eq!((a.model.as_str(), a.version), ("demand", version));
                a.serial
            };
            let (a, b) = (
                serial(push.await.expect("push task")),
                serial(poll.await.expect("poll task")),
            );
            assert_eq!(a, b, "round {round}: one serial for demand v{version}");
            assert!(a > last, "round {round}: serial {a} after {last}");
            last = a;
        }
    }
}
