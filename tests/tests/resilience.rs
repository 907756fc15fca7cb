//! The agent survives a full disk, a vanished data directory and a clock that jumps: it keeps
//! serving its model, says why updates fail, and does not crash.

mod support;

use std::process::Command;

use support::*;

/// A small tmpfs, unmounted on drop. Needs root (CI and the dev machines run as root).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(path).expect("mkdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount");
        assert!(
            ok.success(),
            "mounting a tmpfs needs root (this test simulates a full disk)"
        );
        SmallDisk(path.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn full_disk_keeps_the_model_and_frees_the_partial_download() {
    let hub = Hub::start().await;
    hub.push_mlp("demand", 1, 1).await;
    hub.assign("shop-1", "demand", 1).await;
    let tmp = tempfile::tempdir().expect("tmp");
    let _disk = SmallDisk::mount(&tmp.path().join("disk"), "2m");
    let data = tempfile::tempdir_in(tmp.path().join("disk")).expect("data dir");
    let agent = Agent::start_in(&hub, "shop-1", data).await;
    let http = client();
    let rows = edgefleet_tests::probe_rows(1, 1);
    eventually("v1", || infer_ok(&http, &agent.url, "demand", &rows)).await;

    let (_, m) = hub.push_big("demand", 2, 2).await; // 4 MB on a 2 MB disk
    hub.assign("shop-1", "demand", 2).await;
    let e = hub.wait_error("shop-1", "disk full").await;
    assert!(e.contains("discarded"), "{e}");
    assert_eq!(
        infer_ok(&http, &agent.url, "demand", &rows)
            .await
            .expect("serving")
            .0,
        1
    );
    let part = staging_part(agent.dir.path(), &m);
    assert!(!part.exists(), "the partial download is freed");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn vanished_data_dir_keeps_serving_from_memory() {
    let hub = Hub::start().await;
    hub.push_mlp("demand", 1, 1).await;
    hub.assign("shop-1", "demand", 1).await;
    let agent = Agent::start(&hub, "shop-1").await;
    let http = client();
    let rows = edgefleet_tests::probe_rows(1, 1);
    eventually("v1", || infer_ok(&http, &agent.url, "demand", &rows)).await;
    // The SD card is gone.
    std::fs::remove_dir_all(agent.dir.path()).expect("rm");
    hub.push_mlp("demand", 2, 2).await;
    hub.assign("shop-1", "demand", 2).await;
    hub.wait_error("shop-1", "No such file").await;
    assert_eq!(
        infer_ok(&http, &agent.url, "demand", &rows)
            .await
            .expect("serving")
            .0,
        1
    );
    std::fs::create_dir_all(agent.dir.path()).expect("recreate for cleanup");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clock_that_jumps_does_not_stop_serving() {
    // libfaketime preloaded into the agent itself: the `faketime` wrapper forks, so killing it
    // would leave the agent running (and holding its outbox's lock).
    // The places tests/run.sh checks: /usr/lib/<multiarch>/faketime/ (Debian) and
    // /usr/lib/faketime/.
    let libfaketime = std::fs::read_dir("/usr/lib")
        .expect("/usr/lib")
        .flatten()
        .map(|d| d.path().join("faketime/libfaketimeMT.so.1"))
        .chain([std::path::PathBuf::from(
            "/usr/lib/faketime/libfaketimeMT.so.1",
        )])
        .find(|p| p.exists())
        .expect("libfaketime is needed (Debian package faketime); tests/run.sh installs it");
    let hub = Hub::start().await;
    hub.push_mlp("demand", 1, 1).await;
    hub.assign("shop-1", "demand", 1).await;
    let data = tempfile::tempdir().expect("tmp");
    let mut a = AgentProcess::spawn(&hub.url, &hub.root_pub_path, "shop-1", data.path(), None);
    let url = a.wait_listening().await;
    let http = client();
    let rows = edgefleet_tests::probe_rows(1, 1);
    eventually("v1", || infer_ok(&http, &url, "demand", &rows)).await;
    a.kill9().await;
    hub.push_mlp("demand", 2, 2).await;
    hub.assign("shop-1", "demand", 2).await;

    // Two years ahead: the hub's delegation and assignments look expired; two years back, not
    // yet valid. Either way the agent serves v1 from disk, says why, and stays up.
    for (offset, needle) in [("+730d", "expired"), ("-730d", "not valid before")] {
        let mut cmd = tokio::process::Command::new(bin("edgefleet-agent"));
        cmd.arg("run")
            .env("LD_PRELOAD", &libfaketime)
            .env("FAKETIME", offset)
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .env("EDGEFLEET_AGENT_DEVICE_ID", "shop-1")
            .env("EDGEFLEET_AGENT_HUB_URL", &hub.url)
            .env("EDGEFLEET_AGENT_DATA_DIR", data.path())
            .env("EDGEFLEET_AGENT_ROOT_KEY", &hub.root_pub_path)
            .env("EDGEFLEET_AGENT_ENROLLMENT_TOKEN", ENROLL_TOKEN)
            .env("EDGEFLEET_AGENT_LISTEN", "127.0.0.1:0");
        let mut p = AgentProcess::spawn_command(cmd);
        let url = p.wait_listening().await;
        let (v, _) = eventually("v1 from disk", || infer_ok(&http, &url, "demand", &rows)).await;
        assert_eq!(v, 1, "{offset}");
        let e = hub.wait_error("shop-1", needle).await;
        assert!(e.contains("delegation"), "{offset}: {e}");
        assert!(
            p.child.try_wait().expect("wait").is_none(),
            "{offset}: the agent exited:\n{}",
            p.dump()
        );
        assert_eq!(
            infer_ok(&http, &url, "demand", &rows)
                .await
                .expect("serving")
                .0,
            1
        );
        p.kill9().await;
    }
}
