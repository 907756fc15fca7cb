//! Runs the retraining scheduler ([`crate::retrain`]): every second, jobs that schedules call
//! for are made and queued jobs start while there is capacity; each started run goes on in a
//! task of its own (a trainer may take hours), and a run cut off by a hub stop is marked
//! interrupted at the next start.

use std::sync::Arc;
use std::time::Duration;

use crate::hub::Hub;

const EVERY: Duration = Duration::from_secs(1);

pub async fn run(hub: Arc<Hub>, stop: tokio::sync::watch::Receiver<bool>) {
    super::every(&hub, stop, EVERY, || async {
        match hub.retrain.tick(crate::now()).await {
            Ok(started) => {
                for job in started {
                    let hub = hub.clone();
                    tokio::spawn(async move {
                        if let Err(error) = hub.retrain.execute(job).await {
                            tracing::warn!(%error, job, "a retraining run could not be recorded");
                        }
                    });
                }
            }
            Err(error) => tracing::warn!(%error, "retraining round failed"),
        }
    })
    .await;
}
