//! Slow-retrieval defence over a real throttling link: a TCP proxy in front of the real hub
//! lets the first 64 KiB of each response through, then trickles. The agent gives up on the
//! download (keeping what it has), keeps serving its current model, and reports why.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Forwards 127.0.0.1:port → `upstream`, throttling upstream→client after `free` bytes.
async fn throttling_proxy(
    upstream: std::net::SocketAddr,
    free: usize,
    bytes_per_sec: usize,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                let mut sent = 0usize;
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let Ok(n) = sr.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    let mut chunk = &buf[..n];
                    while !chunk.is_empty() {
                        let step = if sent < free {
                            (free - sent).min(chunk.len())
                        } else {
                            (bytes_per_sec / 10).max(1).min(chunk.len())
                        };
                        if cw.write_all(&chunk[..step]).await.is_err() {
                            return;
                        }
                        sent += step;
                        chunk = &chunk[step..];
                        if sent >= free {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trickling_download_is_abandoned_and_the_current_model_kept() {
    let mut hub = Hub::start().await;
    hub.push_mlp("demand", 1, 1).await;
    hub.assign("shop-1", "demand", 1).await;
    let real_url = hub.url.clone();
    hub.url = throttling_proxy(hub.addr, 64 * 1024, 200).await;
    let dir = tempfile::tempdir().expect("tmp");
    let agent = Agent::start_with(&hub, "shop-1", dir, |c| {
        c.download_min_bytes_per_sec = 1024;
        c.download_rate_window_secs = 1;
    })
    .await;
    let http = client();
    let rows = edgefleet_tests::probe_rows(1, 1);
    eventually("v1 (small enough to pass before the throttle)", || {
        infer_ok(&http, &agent.url, "demand", &rows)
    })
    .await;

    // v2 is 4 MB: past the first 64 KiB it arrives at 200 B/s, under the 1024 B/s minimum.
    hub.url = real_url;
    let (_, m) = hub.push_big("demand", 2, 2).await;
    hub.assign("shop-1", "demand", 2).await;
    let e = hub.wait_error("shop-1", "too slow").await;
    assert!(e.contains("download_min_bytes_per_sec"), "{e}");
    assert_eq!(
        infer_ok(&http, &agent.url, "demand", &rows)
            .await
            .expect("still serving")
            .0,
        1
    );
    let part = staging_part(agent.dir.path(), &m);
    assert!(
        std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) > 0,
        "partial data kept for resume"
    );
    agent.stop().await;
}
