//! Advances the staged rollouts ([`crate::rollout`]): one step every second, so a wave with
//! no bake moves on as soon as its devices report the version, and a gate is judged within a
//! second of the end of its bake.

use std::sync::Arc;
use std::time::Duration;

use crate::hub::Hub;

const EVERY: Duration = Duration::from_secs(1);

pub async fn run(hub: Arc<Hub>, stop: tokio::sync::watch::Receiver<bool>) {
    super::every(&hub, stop, EVERY, || async {
        if let Err(error) = hub.rollouts.step(crate::now()).await {
            tracing::warn!(%error, "rollout step failed");
        }
    })
    .await;
}
