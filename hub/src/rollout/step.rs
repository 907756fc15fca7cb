//! The state machine: one step looks at every active rollout and does what its state and the
//! clock call for. Each step is idempotent (a hub killed between two writes redoes the rest
//! on its next step, and nothing happens twice):
//!
//! ```text
//! pending ─► running(wave k) ─install gate passes─► baking(wave k) ─gates pass─► running(k+1) … ─► succeeded
//!               │ install fails / times out              │ a gate fails, or inconclusive past max bake
//!               └────────────────┬───────────────────────┘
//!                       policy: rolling back ─► rolled back      (or: failed, paused for an operator)
//! ```

use super::gates::{self, GateVerdict, InstallCounts, Outcome, Side};
use super::model::{Moved, Policy, Rollout, Selector, State, WaveRecord, ordered};
use super::{DeviceProgress, Rollouts, device_progress};
use crate::error::HubResult;
use crate::store::{DeviceRecord, WindowOrder};

/// One side of a gate from its merged aggregate (none: no data).
fn side(m: Option<&crate::telemetry::Merged>, devices: u64) -> Side<'_> {
    match m {
        Some(m) => Side {
            devices,
            requests: m.requests,
            errors: m.errors,
            latency: Some(&m.latency),
            profile: Some(&m.profile),
        },
        None => Side::empty(),
    }
}

/// Longest a rollback waits for its devices to leave the version before it calls it done.
const ROLLBACK_WAIT_SECS: u64 = 600;

impl Rollouts {
    /// Advances every active rollout; returns how many changed state.
    pub async fn step(&self, now: u64) -> HubResult<usize> {
        let _guard = self.lock.lock().await;
        let mut changed = 0;
        for r in self.list()? {
            if !r.state.is_active() || r.state == State::Paused {
                continue;
            }
            let before = r.state;
            let mut r = r;
            if let Err(error) = self.advance(&mut r, now).await {
                tracing::warn!(%error, rollout = r.id, "rollout step failed; retried on the next");
                continue;
            }
            if r.state != before {
                changed += 1;
            }
        }
        if self.sync_windows()? {
            // Devices learn of a new or ended window instruction through their bundle.
            self.desired.bump_generation();
        }
        if changed > 0 {
            self.store.flush().await?;
        }
        Ok(changed)
    }

    /// Writes the telemetry windows the active rollouts ask of devices (and clears those of
    /// rollouts that ended or paused); true when any device's instruction changed.
    fn sync_windows(&self) -> HubResult<bool> {
        let mut orders = std::collections::BTreeMap::new();
        for r in self.list()?.iter().filter(|r| r.state.is_active()) {
            for (device, order) in self.window_orders(r)? {
                // Overlapping rollouts are refused; should two still name a device, the first
                // (the older) keeps it.
                orders.entry(device).or_insert(order);
            }
        }
        self.store.replace_windows(&orders)
    }

    /// While wave k installs or bakes: its devices, and as many not-yet-moved devices of the
    /// selector (the last in the rollout's order: the baseline the gates compare with), close
    /// windows every `bake_window_secs`.
    fn window_orders(&self, r: &Rollout) -> HubResult<Vec<(String, WindowOrder)>> {
        let secs = r.spec.bake_window_secs;
        // A wave that passed and waits for a maintenance window is not judged any more.
        let passed = r.current().and_then(|w| w.outcome) == Some(Outcome::Pass);
        if secs == 0
            || r.spec.bake_secs == 0
            || passed
            || !matches!(r.state, State::Running | State::Baking)
        {
            return Ok(vec![]);
        }
        let order = |role: &str| WindowOrder {
            rollout: r.id,
            window_secs: secs,
            reason: format!("rollout {} wave {} {role}", r.id, r.wave + 1),
        };
        let canaries: Vec<String> = r
            .moved
            .iter()
            .filter(|(_, m)| m.wave == r.wave)
            .map(|(id, _)| id.clone())
            .collect();
        let selected = self.candidates(r)?;
        let baseline: Vec<String> = ordered(r.id, &selected)
            .into_iter()
            .rev()
            .filter(|id| !r.moved.contains_key(id))
            .take(canaries.len())
            .collect();
        Ok(canaries
            .into_iter()
            .map(|id| (id, order("canary")))
            .chain(baseline.into_iter().map(|id| (id, order("baseline"))))
            .collect())
    }

    async fn advance(&self, r: &mut Rollout, now: u64) -> HubResult<()> {
        match r.state {
            State::Pending if !r.spec.may_start_wave(now) => Ok(()),
            State::Pending => self.start_wave(r, 0, now).await,
            State::Running => {
                let waiting = self.move_members(r, now).await?;
                self.check_install(r, now, waiting).await
            }
            State::Baking => {
                // Late joiners waiting for their window do not hold the bake.
                self.move_members(r, now).await?;
                self.check_bake(r, now).await
            }
            State::RollingBack => self.check_rolled_back(r, now).await,
            _ => Ok(()),
        }
    }

    /// The rollout's devices: the selected ones, less those another active rollout of the
    /// model moved (a device that joined both selectors after they were created stays with
    /// that one: two rollouts never fight over a device, its cohort or its window).
    pub(super) fn candidates(&self, r: &Rollout) -> HubResult<Vec<DeviceRecord>> {
        let held: std::collections::HashSet<String> = self
            .list()?
            .into_iter()
            .filter(|o| o.id != r.id && o.spec.model == r.spec.model && o.state.is_active())
            .flat_map(|o| o.moved.into_keys())
            .collect();
        let mut selected = self.selected(&r.spec.selector)?;
        selected.retain(|d| !held.contains(&d.id) || r.moved.contains_key(&d.id));
        Ok(selected)
    }

    /// Starts wave `k`: records it, then moves its devices.
    async fn start_wave(&self, r: &mut Rollout, k: usize, now: u64) -> HubResult<()> {
        r.wave = k;
        r.waves.truncate(k);
        r.waves.push(WaveRecord {
            index: k,
            started_at: now,
            baking_since: None,
            verdicts: vec![],
            outcome: None,
            extended: false,
        });
        self.transition(
            r,
            State::Running,
            "timer",
            format!("wave {} of {} started", k + 1, r.spec.waves.len()),
            vec![],
        )?;
        self.move_members(r, now).await.map(|_waiting| ())
    }

    /// Moves the devices the current wave reaches that are not moved yet (late joiners too)
    /// and whose maintenance window is open, puts the selected devices in the wave's telemetry
    /// cohort, and re-applies the moves a crash may have left half done. Returns how many of
    /// the wave's devices wait for their maintenance window.
    async fn move_members(&self, r: &mut Rollout, now: u64) -> HubResult<usize> {
        let selected = self.candidates(r)?;
        let targets = self.own_targets(&r.spec.model)?;
        let own = |id: &str| targets.get(id).copied();
        let zones: std::collections::HashMap<&str, Option<&str>> = selected
            .iter()
            .map(|d| (d.id.as_str(), d.time_zone()))
            .collect();
        let (newly, waiting): (Vec<String>, Vec<String>) =
            unmoved(r, &selected).into_iter().partition(|id| {
                r.spec
                    .may_move(now, zones.get(id.as_str()).copied().flatten())
            });
        if !newly.is_empty() {
            for id in &newly {
                // Recorded before the device is moved: a rollback restores exactly this.
                let previous = own(id);
                r.moved.insert(
                    id.clone(),
                    Moved {
                        wave: r.wave,
                        at: now,
                        previous,
                    },
                );
            }
            r.updated_at = now;
            self.save(r)?;
        }
        let mut wrote = false;
        for id in r.moved.keys() {
            if own(id) != Some(r.spec.version) {
                self.desired
                    .set_for_device(id, &r.spec.model, Some(r.spec.version))?;
                wrote = true;
            }
        }
        let cohort = r.cohort();
        let store = self.telemetry.store();
        for d in &selected {
            if store.cohort(&d.id, &r.spec.model)?.as_deref() != Some(cohort.as_str()) {
                store.set_cohort(&d.id, &r.spec.model, Some(&cohort))?;
            }
        }
        if wrote {
            self.desired.commit().await?;
        }
        Ok(waiting.len())
    }

    /// The devices the current wave moved, counted.
    fn install_counts(&self, r: &Rollout) -> HubResult<(InstallCounts, Vec<String>)> {
        let mut c = InstallCounts::default();
        let mut failures = Vec::new();
        for (id, _) in r.moved.iter().filter(|(_, m)| m.wave == r.wave) {
            c.targeted += 1;
            let Some(d) = self.devices.get(id)? else {
                continue;
            };
            let live = self.telemetry.store().liveness(id)?;
            match device_progress(&d, live.as_ref(), &r.spec.model, r.spec.version) {
                DeviceProgress::Active => c.installed += 1,
                DeviceProgress::Failed(e) => {
                    c.failed += 1;
                    failures.push(format!("{id}: {e}"));
                }
                DeviceProgress::Pending
                | DeviceProgress::Downloading
                | DeviceProgress::Installed => {}
            }
        }
        Ok((c, failures))
    }

    /// The install gate, once none of the wave's devices waits for its maintenance window;
    /// the install timeout counts from the wave's last move.
    async fn check_install(&self, r: &mut Rollout, now: u64, waiting: usize) -> HubResult<()> {
        if waiting > 0 {
            return Ok(());
        }
        let (counts, failures) = self.install_counts(r)?;
        let verdict = gates::install(counts, &r.spec.gates);
        let started = r
            .moved
            .values()
            .filter(|m| m.wave == r.wave)
            .map(|m| m.at)
            .chain(r.current().map(|w| w.started_at))
            .max()
            .unwrap_or(now);
        match verdict.outcome {
            Outcome::Pass => {
                if let Some(w) = r.waves.get_mut(r.wave) {
                    w.baking_since = Some(now);
                    w.verdicts = vec![verdict.clone()];
                }
                let detail = format!("wave {} installed: {}", r.wave + 1, verdict.detail);
                self.transition(r, State::Baking, "gate", detail, vec![verdict])
            }
            Outcome::Fail => {
                let detail = format!(
                    "wave {} failed to install: {}; {}",
                    r.wave + 1,
                    verdict.detail,
                    failures.join("; ")
                );
                self.fail(r, detail, vec![verdict]).await
            }
            _ if now >= started.saturating_add(r.spec.install_timeout_secs) => {
                let detail = format!(
                    "wave {} did not install within {} s: {}",
                    r.wave + 1,
                    r.spec.install_timeout_secs,
                    verdict.detail
                );
                self.fail(r, detail, vec![verdict]).await
            }
            _ => Ok(()),
        }
    }

    /// At the end of the bake: every gate, canary against baseline.
    async fn check_bake(&self, r: &mut Rollout, now: u64) -> HubResult<()> {
        // Passed, and waiting for a maintenance window to start the next wave.
        if r.current().and_then(|w| w.outcome) == Some(Outcome::Pass)
            && r.wave + 1 < r.spec.waves.len()
        {
            if r.spec.may_start_wave(now) {
                return self.start_wave(r, r.wave + 1, now).await;
            }
            return Ok(());
        }
        let since = r.current().and_then(|w| w.baking_since).unwrap_or(now);
        if now < since.saturating_add(r.spec.bake_secs) {
            return Ok(());
        }
        let verdicts = self.judge(r, since)?;
        let outcome = gates::combine(&verdicts);
        if let Some(w) = r.waves.get_mut(r.wave) {
            w.verdicts = verdicts.clone();
        }
        match outcome {
            Outcome::Pass | Outcome::NotConfigured => self.passed(r, now, verdicts).await,
            Outcome::Fail => {
                if let Some(w) = r.waves.get_mut(r.wave) {
                    w.outcome = Some(Outcome::Fail);
                }
                let detail = format!("a gate failed: {}", summary(r, &verdicts));
                self.fail(r, detail, verdicts).await
            }
            Outcome::Inconclusive => self.inconclusive(r, now, since, verdicts).await,
        }
    }

    /// The wave passed: the next starts (inside a maintenance window), or the rollout
    /// succeeded.
    async fn passed(&self, r: &mut Rollout, now: u64, verdicts: Vec<GateVerdict>) -> HubResult<()> {
        if let Some(w) = r.waves.get_mut(r.wave) {
            w.outcome = Some(Outcome::Pass);
        }
        if r.wave + 1 >= r.spec.waves.len() {
            let detail = format!("every wave passed: {}", summary(r, &verdicts));
            return self.succeed(r, detail, verdicts).await;
        }
        self.save(r)?;
        let detail = format!("passed: {}", summary(r, &verdicts));
        self.note(r, now, "gate", detail, verdicts)?;
        if !r.spec.may_start_wave(now) {
            // Held until a maintenance window opens (checked every step in `check_bake`).
            return Ok(());
        }
        self.start_wave(r, r.wave + 1, now).await
    }

    /// Too few devices or requests to judge: the bake is extended (said once in the audit
    /// log) up to the longest bake, then the failure policy applies.
    async fn inconclusive(
        &self,
        r: &mut Rollout,
        now: u64,
        since: u64,
        verdicts: Vec<GateVerdict>,
    ) -> HubResult<()> {
        if now < since.saturating_add(r.spec.max_bake()) {
            let first = r.current().is_some_and(|w| !w.extended);
            if let Some(w) = r.waves.get_mut(r.wave) {
                w.extended = true;
            }
            self.save(r)?;
            if first {
                let detail = format!(
                    "inconclusive; the bake is extended up to {} s: {}",
                    r.spec.max_bake(),
                    summary(r, &verdicts)
                );
                self.note(r, now, "gate", detail, verdicts)?;
            }
            return Ok(());
        }
        if let Some(w) = r.waves.get_mut(r.wave) {
            w.outcome = Some(Outcome::Inconclusive);
        }
        let detail = format!(
            "still inconclusive after the longest bake ({} s): {}",
            r.spec.max_bake(),
            summary(r, &verdicts)
        );
        self.fail(r, detail, verdicts).await
    }

    /// An audit line that is not a transition (a wave passed, a bake extended).
    fn note(
        &self,
        r: &Rollout,
        now: u64,
        cause: &str,
        detail: String,
        verdicts: Vec<GateVerdict>,
    ) -> HubResult<()> {
        self.audit_entry(
            r.id,
            &super::AuditEntry {
                at: now,
                from: r.state,
                to: r.state,
                wave: r.wave,
                cause: cause.into(),
                detail,
                verdicts,
            },
        )
    }

    /// The gates' verdicts on the current wave: install again, then canary against baseline
    /// from the wave's telemetry cohort. With no bake, the install gate alone.
    fn judge(&self, r: &Rollout, since: u64) -> HubResult<Vec<GateVerdict>> {
        let (counts, _) = self.install_counts(r)?;
        let mut verdicts = vec![gates::install(counts, &r.spec.gates)];
        if r.spec.bake_secs == 0 {
            return Ok(verdicts);
        }
        let cohort = r.cohort();
        let store = self.telemetry.store();
        let canary = store.aggregate(&r.spec.model, r.spec.version, &cohort, 0, u64::MAX)?;
        // The baseline: the old version with the most calls in the cohort.
        let mut baseline: Option<(u64, crate::telemetry::Merged)> = None;
        for v in store.versions_in_scope(&r.spec.model, &cohort)? {
            if v == r.spec.version {
                continue;
            }
            if let Some(m) = store.aggregate(&r.spec.model, v, &cohort, 0, u64::MAX)?
                && baseline
                    .as_ref()
                    .is_none_or(|(_, b)| b.requests + b.errors < m.requests + m.errors)
            {
                baseline = Some((v, m));
            }
        }
        let selected = self.candidates(r)?;
        let reporting =
            |version: u64| self.reporting_devices(&selected, &r.spec.model, version, since);
        let c = side(canary.as_ref(), reporting(r.spec.version)?);
        let b = match &baseline {
            Some((v, m)) => side(Some(m), reporting(*v)?),
            None => Side::empty(),
        };
        let outputs = self
            .registry
            .record(&r.spec.model, r.spec.version)?
            .map(|rec| rec.manifest.decode_unverified())
            .transpose()?
            .map(|m| {
                edgefleet_common::sketch::model_columns(&m)
                    .into_iter()
                    .filter(|c| c.tensor >= m.inputs.len())
                    .map(|c| c.name)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let rules = store.drift_config(&r.spec.model)?;
        let cfg = &r.spec.gates;
        // Only after an earlier wave was judged against a baseline: a rollout whose first wave
        // already takes every device (one wave of 100 %, a tiny fleet) follows `no_baseline`.
        let left_on_old = selected.iter().any(|d| !r.moved.contains_key(&d.id));
        if !left_on_old && r.wave > 0 {
            for gate in ["error_rate", "latency_p95", "output_drift", "quality"] {
                verdicts.push(gates::no_baseline_left(gate));
            }
            return Ok(verdicts);
        }
        verdicts.push(gates::error_rate(&c, &b, cfg));
        verdicts.push(gates::latency(&c, &b, cfg));
        verdicts.push(gates::output_drift(&c, &b, &outputs, &rules, cfg));
        let canary_quality = store.quality(&r.spec.model, r.spec.version, &cohort, 0, u64::MAX)?;
        // The quality baseline: the old version with the most matched feedback in the cohort
        // (ground truth may arrive for a version after its last request).
        let mut baseline_quality: Option<edgefleet_common::quality::ModelQuality> = None;
        for v in store.versions_in_scope(&r.spec.model, &cohort)? {
            if v == r.spec.version {
                continue;
            }
            if let Some(q) = store.quality(&r.spec.model, v, &cohort, 0, u64::MAX)?
                && baseline_quality
                    .as_ref()
                    .is_none_or(|b| b.matched < q.matched)
            {
                baseline_quality = Some(q);
            }
        }
        verdicts.push(gates::quality(
            canary_quality.as_ref(),
            baseline_quality.as_ref(),
            cfg,
        ));
        Ok(verdicts)
    }

    /// Selected devices whose latest window, ended after `since`, served `version`.
    fn reporting_devices(
        &self,
        selected: &[DeviceRecord],
        model: &str,
        version: u64,
        since: u64,
    ) -> HubResult<u64> {
        let mut n = 0;
        for d in selected {
            if let Some(t) = self.telemetry.store().latest(&d.id)?
                && t.window_end >= since
                && t.models
                    .iter()
                    .any(|m| m.model == model && m.version == version && m.requests + m.errors > 0)
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The failure policy: roll back (default), pause, or halt.
    async fn fail(
        &self,
        r: &mut Rollout,
        detail: String,
        verdicts: Vec<GateVerdict>,
    ) -> HubResult<()> {
        match r.spec.on_failure {
            Policy::Rollback => self.roll_back(r, "gate", detail, verdicts).await,
            Policy::Pause => self.transition(r, State::Paused, "gate", detail, verdicts),
            Policy::Halt => {
                self.transition(r, State::Failed, "gate", detail, verdicts)?;
                self.leave_cohort(r)
            }
        }
    }

    async fn succeed(
        &self,
        r: &mut Rollout,
        detail: String,
        verdicts: Vec<GateVerdict>,
    ) -> HubResult<()> {
        // Before the transition: a succeeded rollout is never stepped again, so a crash or
        // an error here must leave it to be redone (both are idempotent).
        self.hand_over_to_tags(r).await?;
        self.leave_cohort(r)?;
        self.transition(r, State::Succeeded, "gate", detail, verdicts)
    }

    /// After a tag-selected rollout succeeds, its tags carry the version: a device that
    /// joins a tag later gets it too (not the version the tag had before), and the devices the
    /// rollout moved drop the device targets it gave them where they had none of their own.
    /// What each tag had is recorded first, for a rollback after success.
    async fn hand_over_to_tags(&self, r: &mut Rollout) -> HubResult<()> {
        let Selector::Tags(tags) = &r.spec.selector else {
            return Ok(());
        };
        if r.tags_before.is_empty() {
            let before = self.targets(&r.spec.model, |t| match t {
                edgefleet_common::Target::Tag(tag) => Some(tag.clone()),
                edgefleet_common::Target::Device(_) => None,
            })?;
            r.tags_before = tags
                .iter()
                .map(|t| (t.clone(), before.get(t).copied()))
                .collect();
            self.save(r)?;
        }
        for tag in tags {
            self.desired
                .set_for_tag(tag, &r.spec.model, Some(r.spec.version))?;
        }
        for (id, m) in &r.moved {
            if m.previous.is_none() {
                self.desired.set_for_device(id, &r.spec.model, None)?;
            }
        }
        self.desired.commit().await
    }

    /// Rolled back once no moved device still serves the version (or after a while: a
    /// device that is offline learns of it when it returns).
    async fn check_rolled_back(&self, r: &mut Rollout, now: u64) -> HubResult<()> {
        self.restore_previous(r).await?;
        let mut still = 0;
        for id in r.moved.keys() {
            let Some(d) = self.devices.get(id)? else {
                continue;
            };
            let live = self.telemetry.store().liveness(id)?;
            if device_progress(&d, live.as_ref(), &r.spec.model, r.spec.version)
                == DeviceProgress::Active
            {
                still += 1;
            }
        }
        let since = r.updated_at;
        if still == 0 || now >= since.saturating_add(ROLLBACK_WAIT_SECS) {
            let detail = if still == 0 {
                "every moved device left the version".to_owned()
            } else {
                format!(
                    "{still} devices had not reported the previous version after {ROLLBACK_WAIT_SECS} s; they get it when they return"
                )
            };
            self.transition(r, State::RolledBack, "timer", detail, vec![])?;
        }
        Ok(())
    }
}

/// The devices the current wave reaches that it has not moved yet (waiting for their
/// maintenance window, or new), in the rollout's order.
pub(super) fn unmoved(r: &Rollout, selected: &[DeviceRecord]) -> Vec<String> {
    let order = ordered(r.id, selected);
    let reach = r.spec.waves[r.wave].reach(order.len());
    order
        .into_iter()
        .take(reach)
        .filter(|id| !r.moved.contains_key(id))
        .collect()
}

/// The verdicts in one line, for the audit log and the rollout's reason.
fn summary(r: &Rollout, verdicts: &[GateVerdict]) -> String {
    verdicts
        .iter()
        .map(|v| format!("{} {:?}: {}", v.gate, v.outcome, v.detail))
        .collect::<Vec<_>>()
        .join("; ")
        + &format!(" (wave {})", r.wave + 1)
}
