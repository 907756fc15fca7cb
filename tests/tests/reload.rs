//! SIGHUP (or a changed file) reloads what can be reloaded without dropping the model; a bad
//! file is refused and the running configuration kept.

mod support;

use std::process::{Command, Stdio};

use edgefleet_common::SecretKey;
use support::*;

fn sighup(pid: u32) {
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill")
            .success()
    );
}

async fn wait_log(p: &AgentProcess, needle: &str) {
    eventually(&format!("log line {needle:?}"), || async {
        p.log_contains(needle).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_reloads_on_sighup_and_keeps_serving() {
    let hub = Hub::start().await;
    hub.push_mlp("demand", 1, 1).await;
    hub.assign("shop-1", "demand", 1).await;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("agent.toml");
    let write = |poll: u64, device: &str, extra: &str| {
        std::fs::write(
            &cfg,
            format!(
                "device_id = \"{device}\"\nhub_url = \"{}\"\ndata_dir = \"{}\"\nroot_key = \"{}\"\nenrollment_token = \"{ENROLL_TOKEN}\"\nlisten = \"127.0.0.1:0\"\npoll_interval_secs = {poll}\n{extra}",
                hub.url,
                dir.path().join("data").display(),
                hub.root_pub_path.display()
            ),
        )
        .expect("write config")
    };
    write(2, "shop-1", "");
    let mut cmd = tokio::process::Command::new(bin("edgefleet-agent"));
    cmd.arg("run")
        .arg("--config")
        .arg(&cfg)
        .env("EDGEFLEET_LOG", "info");
    let mut agent = AgentProcess::spawn_command(cmd);
    let url = agent.wait_listening().await;
    let http = client();
    let rows = edgefleet_tests::probe_rows(1, 1);
    eventually("v1", || infer_ok(&http, &url, "demand", &rows)).await;

    write(3, "shop-9", "");
    sighup(agent.child.id().expect("pid"));
    wait_log(&agent, "poll_interval_secs=3").await;
    wait_log(&agent, "change only on restart").await;
    assert!(agent.log_contains("device_id"), "{}", agent.dump());

    // A changed file is picked up without a signal too.
    std::thread::sleep(std::time::Duration::from_millis(1100)); // a distinct mtime
    write(4, "shop-1", "");
    wait_log(&agent, "configuration file changed").await;
    wait_log(&agent, "poll_interval_secs=4").await;

    write(3, "shop-1", "bogus_key = 1\n");
    sighup(agent.child.id().expect("pid"));
    wait_log(&agent, "reload refused").await;
    assert!(agent.log_contains("bogus_key"), "{}", agent.dump());
    assert_eq!(
        infer_ok(&http, &url, "demand", &rows)
            .await
            .expect("still serving")
            .0,
        1
    );
    agent.kill9().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hub_reloads_its_enrollment_token_on_sighup() {
    // Keys and delegation from an in-process hub's fixtures; this test runs the real binary.
    let fixtures = Hub::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("hub.toml");
    let write = |token: &str| {
        std::fs::write(
            &cfg,
            format!(
                "data_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\nroot_key = \"{}\"\nsigning_key = \"{}\"\ndelegation = \"{}\"\nenrollment_token = \"{token}\"\n",
                dir.path().join("data").display(),
                fixtures.root_pub_path.display(),
                fixtures.config.signing_key.display(),
                fixtures.config.delegation.display()
            ),
        )
        .expect("write")
    };
    write("first-token-0123456789");
    let mut child = Command::new(bin("edgefleet-hub"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env(
            "EDGEFLEET_HUB_MQTT_LISTEN",
            support::free_addr().to_string(),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hub");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let addr = loop {
        let l = rx.recv_timeout(DEADLINE).expect("hub log");
        // The HTTP listener's line, not the embedded broker's (rumqttd logs `listen_addr=`).
        if let Some(a) = Some(&l)
            .filter(|l| l.contains("hub listening"))
            .and_then(|l| l.split(" addr=").nth(1))
            .and_then(|s| s.split_whitespace().next())
        {
            break a.to_owned();
        }
        lines.push(l);
    };
    let http = client();
    let key = SecretKey::generate().expect("key");
    let enroll = |token: &str| {
        let req = edgefleet_common::device::EnrollRequest {
            device_id: "d1".into(),
            public_key: key.public(),
            tags: vec![],
            hostname: "h".into(),
            agent_version: "t".into(),
            enrollment_token: Some(token.into()),
            requested_at: now(),
        };
        let body = edgefleet_common::Signed::sign(&req, &key, None)
            .expect("sign")
            .to_bytes()
            .expect("bytes");
        http.post(format!("http://{addr}/api/v1/enroll"))
            .body(body)
            .send()
    };
    assert_eq!(
        enroll("second-token-0123456789")
            .await
            .expect("post")
            .status(),
        403
    );
    write("second-token-0123456789");
    sighup(child.id());
    eventually("the new token to be accepted", || async {
        (enroll("second-token-0123456789").await.ok()?.status() == 200).then_some(())
    })
    .await;
    assert_eq!(
        enroll("first-token-0123456789")
            .await
            .expect("post")
            .status(),
        403
    );
    let _ = child.kill();
    let _ = child.wait();
}
