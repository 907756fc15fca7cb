//! The systemd side: the units' hardening scores and syntax (systemd-analyze), and the
//! notify protocol spoken by the real binaries (READY=1 only once serving, WATCHDOG=1 at half
//! WatchdogSec, STOPPING=1 and a clean exit on SIGTERM).

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn unit(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("root")
        .join("systemd")
        .join(name)
}

fn exposure(unit: &Path) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit)
        .output()
        .expect("systemd-analyze is needed (Debian package systemd); tests/run.sh installs it");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no score in: {text}"));
    line.split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("score")
}

#[test]
fn units_are_hardened_and_valid() {
    let agent = exposure(&unit("edgefleet-agent.service"));
    let hub = exposure(&unit("edgefleet-hub.service"));
    assert!(agent <= 2.0, "agent exposure {agent} > 2.0");
    assert!(hub <= 3.0, "hub exposure {hub} > 3.0");
    // verify checks that ExecStart binaries exist: point the units at the ones just built.
    let dir = tempfile::tempdir().expect("tmp");
    for (name, binary) in [
        ("edgefleet-agent.service", "edgefleet-agent"),
        ("edgefleet-hub.service", "edgefleet-hub"),
    ] {
        let text = std::fs::read_to_string(unit(name)).expect("unit");
        let text = text.replace(
            &format!("/usr/bin/{binary}"),
            &bin(binary).display().to_string(),
        );
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .expect("verify");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "{name}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_speaks_the_notify_protocol() {
    let hub = Hub::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let data = dir.path().join("data");
    let mut child = Command::new(bin("edgefleet-agent"))
        .arg("run")
        .env("NOTIFY_SOCKET", &sock_path)
        .env(
            "EDGEFLEET_HUB_MQTT_LISTEN",
            support::free_addr().to_string(),
        )
        .env("WATCHDOG_USEC", "400000")
        .env("EDGEFLEET_AGENT_DEVICE_ID", "shop-1")
        .env("EDGEFLEET_AGENT_HUB_URL", &hub.url)
        .env("EDGEFLEET_AGENT_DATA_DIR", &data)
        .env("EDGEFLEET_AGENT_ROOT_KEY", &hub.root_pub_path)
        .env("EDGEFLEET_AGENT_ENROLLMENT_TOKEN", ENROLL_TOKEN)
        .env("EDGEFLEET_AGENT_LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let recv_until = |pred: &dyn Fn(&str) -> bool, what: &str| -> Vec<String> {
        let start = Instant::now();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while start.elapsed() < DEADLINE {
            if let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = pred(&msg);
                seen.push(msg);
                if done {
                    return seen;
                }
            }
        }
        panic!("no {what} from the agent; got {seen:?}");
    };
    let first = recv_until(&|m| m.contains("READY=1"), "READY=1");
    assert!(
        first
            .last()
            .expect("msg")
            .contains("STATUS=serving on 127.0.0.1:"),
        "{first:?}"
    );
    let pings = std::cell::Cell::new(0);
    recv_until(
        &|m| {
            if m.contains("WATCHDOG=1") {
                pings.set(pings.get() + 1);
            }
            pings.get() >= 2
        },
        "two WATCHDOG=1",
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    recv_until(&|m| m.contains("STOPPING=1"), "STOPPING=1");
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            assert!(s.success(), "exit status {s}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the agent did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hub_speaks_the_notify_protocol_and_logs_for_journald() {
    let fixtures = Hub::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let out_path = dir.path().join("stdout.log");
    let mut child = Command::new(bin("edgefleet-hub"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("JOURNAL_STREAM", "8:12345")
        .env("EDGEFLEET_HUB_ROOT_KEY", &fixtures.root_pub_path)
        .env("EDGEFLEET_HUB_SIGNING_KEY", &fixtures.config.signing_key)
        .env("EDGEFLEET_HUB_DELEGATION", &fixtures.config.delegation)
        .stdout(std::fs::File::create(&out_path).expect("log file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m.contains("READY=1")) {
        assert!(start.elapsed() < DEADLINE, "no READY=1: {seen:?}");
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    assert!(
        seen.iter()
            .any(|m| m.contains("STATUS=listening on 127.0.0.1:")),
        "{seen:?}"
    );
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill")
            .success()
    );
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the hub did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let mut stopping = false;
    while let Ok(n) = sock.recv(&mut buf) {
        stopping |= String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
    }
    assert!(stopping, "no STOPPING=1");
    // Under journald: no timestamps, no colour codes (journald adds its own).
    let log = std::fs::read_to_string(&out_path).expect("log");
    let line = log
        .lines()
        .find(|l| l.contains("hub listening"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.trim_start().starts_with("INFO"), "{line}");
    assert!(!log.contains('\u{1b}'), "ANSI escapes in {log}");
    assert!(log.contains("hub stopped"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = edgefleet_common::SecretKey::generate().expect("key");
    std::fs::write(
        dir.path().join("root.pub"),
        root.public().to_pem().expect("pem"),
    )
    .expect("write");
    let mut cmd = tokio::process::Command::new(bin("edgefleet-agent"));
    cmd.arg("run")
        .env("EDGEFLEET_AGENT_DEVICE_ID", "shop-1")
        .env("EDGEFLEET_AGENT_HUB_URL", DEAD_HUB)
        .env("EDGEFLEET_AGENT_ROOT_KEY", dir.path().join("root.pub"))
        .env("EDGEFLEET_AGENT_DATA_DIR", dir.path().join("data"))
        .env("EDGEFLEET_AGENT_LISTEN", "127.0.0.1:0")
        .env("EDGEFLEET_AGENT_LOG_FORMAT", "json");
    let p = AgentProcess::spawn_command(cmd);
    let line = eventually("the serving line", || async {
        p.logs
            .lock()
            .expect("lock")
            .iter()
            .find(|l| l.contains("agent serving OIP v2"))
            .cloned()
    })
    .await;
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["fields"]["message"], "agent serving OIP v2");
    assert!(
        v["fields"]["addr"]
            .as_str()
            .expect("addr")
            .starts_with("127.0.0.1:")
    );
    assert_eq!(v["level"], "INFO");
    p.kill9().await;
}
