//! Starting hosts for tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;

use jadugar_host::{App, Config, HostError};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A host serving on an ephemeral port.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    pub(crate) stop: Option<oneshot::Sender<()>>,
    pub(crate) task: JoinHandle<Result<(), HostError>>,
}

impl Running {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The body of `GET path`, as text.
    pub(crate) async fn text(&self, path: &str) -> String {
        reqwest::get(self.url(path))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Triggers shutdown (as SIGTERM would) and waits for `run` to return.
    pub(crate) async fn shutdown(mut self) -> Result<(), HostError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap()
    }

    /// Triggers shutdown without waiting.
    pub(crate) fn signal(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The configuration of a test host keeping its data in `dir`.
pub(crate) fn config_in(dir: &Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.join("data"),
        shutdown_grace_secs: 5,
        ..Config::default()
    }
}

async fn shutdown_future(rx: oneshot::Receiver<()>) {
    let _ = rx.await;
}

/// Starts the real host (`jadugar_host::run`) with `config`.
pub(crate) async fn start(config: Config) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(jadugar_host::run(listener, config, shutdown_future(rx)));
    wait_until_listening(addr, &task).await;
    Running {
        addr,
        stop: Some(tx),
        task,
    }
}

/// Serves an already built app.
pub(crate) async fn serve(app: App) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(app.serve(listener, shutdown_future(rx)));
    Running {
        addr,
        stop: Some(tx),
        task,
    }
}

/// The listener is bound before `run` starts, so connections queue; this
/// waits until `/healthz` answers (the backends are open).
async fn wait_until_listening(addr: SocketAddr, task: &JoinHandle<Result<(), HostError>>) {
    let client = reqwest::Client::new();
    for _ in 0..200 {
        assert!(!task.is_finished(), "the host stopped before answering");
        if let Ok(res) = client.get(format!("http://{addr}/healthz")).send().await
            && res.status().is_success()
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the host at {addr} never answered /healthz");
}
