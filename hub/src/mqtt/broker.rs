//! The embedded MQTT broker (rumqttd), for a hub that runs alone.
//!
//! rumqttd runs its router and one server per protocol version on threads of its own, takes
//! addresses rather than bound listeners (so no port 0), and only logs when it cannot bind. So
//! the port is checked here first, with an error that says what to do, and the broker is
//! started only when the port was free; then the hub waits until it accepts connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};

fn server(name: &str, listen: SocketAddr, max_payload: usize) -> ServerSettings {
    ServerSettings {
        name: name.into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: max_payload,
            max_inflight_count: 200,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    }
}

fn check_free(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => anyhow::bail!(
            "the embedded MQTT broker cannot listen on {addr} ({what}): the port is taken, perhaps by \
             another broker (Mosquitto listens on 1883) or another hub. Choose a free port with \
             --mqtt-listen / mqtt_listen, or use the broker that is there with \
             --mqtt-url mqtt://{addr}"
        ),
        Err(e) => {
            Err(e).with_context(|| format!("the embedded MQTT broker cannot listen on {addr}"))
        }
    }
}

/// Starts rumqttd with an MQTT 3.1.1 listener on `v4` (and MQTT 5 on `v5`), payloads up to
/// `max_payload` bytes, and returns once it accepts connections on `v4`.
pub async fn start(
    v4: SocketAddr,
    v5: Option<SocketAddr>,
    max_payload: usize,
) -> anyhow::Result<()> {
    check_free(v4, "mqtt_listen")?;
    if let Some(v5) = v5 {
        check_free(v5, "mqtt_v5_listen")?;
    }
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 100_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([(
            "1".to_owned(),
            server("edgefleet-v4", v4, max_payload),
        )])),
        v5: v5.map(|v5| HashMap::from([("1".to_owned(), server("edgefleet-v5", v5, max_payload))])),
        ..Config::default()
    };
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "the embedded MQTT broker stopped");
            }
        })
        .context("cannot start the embedded MQTT broker's thread")?;
    // Connectable = listening. Loopback for a wildcard listen address.
    let target = if v4.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], v4.port()))
    } else {
        v4
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(target).await.is_ok() {
            tracing::info!(listen = %v4, v5 = ?v5, "embedded MQTT broker listening");
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the embedded MQTT broker did not start listening on {v4} within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
