//! The hub: the one handle the transports and drivers get. It holds the store, the running
//! configuration and the domain modules built on them, and the few actions that span two of
//! them (a change that may change what devices should serve bumps the desired-state
//! generation).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use edgefleet_common::{Digest, device::DeviceStatus};

use crate::config::{RuntimeConfig, SharedConfig};
use crate::desired::Desired;
use crate::devices::{Devices, Enrolled};
use crate::error::HubResult;
use crate::registry::{Published, Registry};
use crate::retrain::Retrain;
use crate::rollout::Rollouts;
use crate::store::{DeviceRecord, Store};
use crate::telemetry::Telemetry;

pub struct Hub {
    pub registry: Registry,
    pub devices: Devices,
    pub desired: Desired,
    pub telemetry: Telemetry,
    pub rollouts: Rollouts,
    pub retrain: Retrain,
    config: SharedConfig,
    store: Store,
    admin_token_hash: Digest,
    /// Set at shutdown so long-polls answer at once instead of holding the shutdown up.
    stopping: AtomicBool,
}

impl Hub {
    /// Opens the hub's store under the configuration's `data_dir`.
    pub fn open(config: RuntimeConfig, admin_token: &str) -> HubResult<Self> {
        let store = Store::open(&config.config.data_dir)?;
        let config: SharedConfig = Arc::new(arc_swap::ArcSwap::from_pointee(config));
        let registry = Registry::new(store.clone(), config.clone());
        let devices = Devices::new(store.clone(), config.clone());
        let desired = Desired::new(store.clone(), config.clone(), registry.clone());
        let telemetry = Telemetry::open(
            store.db(),
            registry.clone(),
            devices.clone(),
            config.clone(),
        )?;
        let rollouts = Rollouts::new(
            store.clone(),
            registry.clone(),
            devices.clone(),
            desired.clone(),
            telemetry.clone(),
        );
        let retrain = Retrain::open(
            store.clone(),
            registry.clone(),
            telemetry.clone(),
            rollouts.clone(),
            config.clone(),
        )?;
        Ok(Self {
            rollouts,
            retrain,
            registry,
            devices,
            desired,
            telemetry,
            config,
            store,
            admin_token_hash: Digest::of(admin_token.trim().as_bytes()),
            stopping: AtomicBool::new(false),
        })
    }

    /// The running configuration (one consistent snapshot).
    pub fn config(&self) -> Arc<RuntimeConfig> {
        self.config.load_full()
    }

    /// Swaps in a newly validated configuration. Keys, delegation, rotations, the enrollment
    /// token and TTLs change at once; `data_dir` and `listen` only on restart.
    pub fn reload(&self, mut new: RuntimeConfig) {
        let old = self.config.load_full();
        if new.config.data_dir != old.config.data_dir || new.config.listen != old.config.listen {
            tracing::warn!("data_dir and listen change only on restart; kept their running values");
            new.config.data_dir = old.config.data_dir.clone();
            new.config.listen = old.config.listen;
        }
        tracing::info!(root = %new.trust.root_key.short(), root_version = new.trust.version, "configuration reloaded");
        self.config.store(Arc::new(new));
        // New keys or rotations: bundles are re-signed and pushed.
        self.desired.bump_generation();
    }

    /// Whether `token` is the admin token (compared as digests, so the time taken does not
    /// depend on where the strings differ).
    pub fn is_admin(&self, token: &str) -> bool {
        Digest::of(token.trim().as_bytes()) == self.admin_token_hash
    }

    /// Publishes a signed manifest; devices assigned the model hear of it.
    pub async fn publish_model(&self, body: &[u8]) -> HubResult<Published> {
        let published = self.registry.publish(body).await?;
        self.desired.bump_generation();
        Ok(published)
    }

    /// Enrolls a device; an approved one gets its assignments pushed.
    pub async fn enroll(&self, body: &[u8]) -> HubResult<Enrolled> {
        let enrolled = self.devices.enroll(body).await?;
        if enrolled.approved {
            self.desired.bump_generation();
        }
        Ok(enrolled)
    }

    /// Approves a device; it gets its assignments pushed.
    pub async fn approve(&self, id: &str) -> HubResult<DeviceRecord> {
        let device = self.devices.approve(id).await?;
        self.desired.bump_generation();
        Ok(device)
    }

    /// Stores a device's status report.
    pub fn report_status(&self, device: &str, status: DeviceStatus) -> HubResult<()> {
        // A change of the device's bundle format reaches the MQTT push at its next round
        // (its long-poll names the format itself); bumping the generation here would wake
        // the whole fleet once per device after an upgrade.
        self.devices.report_status(device, status).map(|_| ())
    }

    /// Long-polls answer at once from now on.
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        self.desired.bump_generation();
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Makes everything written so far durable.
    pub async fn flush(&self) -> HubResult<()> {
        self.store.flush().await
    }
}
