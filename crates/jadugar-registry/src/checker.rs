//! Active health checks.
//!
//! The checker claims check leases from the store (renewed every third of
//! [`Config::check_lease_secs`](crate::Config::check_lease_secs)), and runs
//! one lightweight task per leased instance. Each task starts after a random
//! delay within the interval (so 10,000 instances registered together do not
//! fire together), sleeps the interval with ±5% jitter between probes, and
//! takes a permit of a host-wide semaphore
//! ([`Config::max_concurrent_checks`](crate::Config::max_concurrent_checks))
//! for the probe itself. Status moves only after `failure_threshold`
//! consecutive failures or `success_threshold` consecutive successes, so a
//! single slow probe never flaps an instance.
//!
//! Every probe goes through the [`AddressPolicy`]: the instance's host is
//! resolved once, every address checked, and the connection made to a
//! checked address; redirects are never followed (a 3xx is a result, not an
//! instruction); the response body is never read, let alone reflected back.
//!
//! ```
//! use jadugar_core::outbound::AddressPolicy;
//! use jadugar_registry::checker::Prober;
//! use jadugar_registry::model::{Address, CheckSpec};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let prober = Prober::new(AddressPolicy::strict()).unwrap();
//! let metadata = Address::new("http", "169.254.169.254", 80);
//! let probe = prober.probe(&metadata, &CheckSpec::http("/latest/meta-data")).await;
//! assert!(!probe.ok);
//! assert_eq!(probe.output, "denied by the address policy");
//! # });
//! ```

use std::collections::HashMap;
use std::time::Duration;

use jadugar_core::outbound::AddressPolicy;
use rand::Rng;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Registry;
use crate::model::{Address, CheckKind, CheckSpec, Status};

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Whether it counts as a success.
    pub ok: bool,
    /// A short fixed description (never the response body).
    pub output: String,
}

impl Probe {
    fn fail(output: impl Into<String>) -> Self {
        Self {
            ok: false,
            output: output.into(),
        }
    }
}

/// Runs probes through an address policy.
#[derive(Debug, Clone)]
pub struct Prober {
    policy: AddressPolicy,
    client: reqwest::Client,
}

impl Prober {
    /// A prober whose every connection passes `policy`.
    pub fn new(policy: AddressPolicy) -> Result<Self, reqwest::Error> {
        let client = policy.http_client(Duration::from_secs(60))?;
        Ok(Self { policy, client })
    }

    /// Probes `address` as `spec` says.
    pub async fn probe(&self, address: &Address, spec: &CheckSpec) -> Probe {
        let timeout = Duration::from_millis(spec.timeout_ms.max(1));
        match spec.kind {
            CheckKind::Tcp => {
                match self
                    .policy
                    .connect_tcp(&address.host, address.port, timeout)
                    .await
                {
                    Ok(_) => Probe {
                        ok: true,
                        output: "TCP connect ok".to_owned(),
                    },
                    Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
                        Probe::fail("denied by the address policy")
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::TimedOut => {
                        Probe::fail("timed out")
                    }
                    Err(_) => Probe::fail("connection failed"),
                }
            }
            CheckKind::Http => self.probe_http(address, spec, timeout).await,
        }
    }

    async fn probe_http(&self, address: &Address, spec: &CheckSpec, timeout: Duration) -> Probe {
        let path = spec.path.as_deref().unwrap_or("/");
        let text = format!("{}://{}{}", address.scheme, address.authority(), path);
        let Ok(url) = url::Url::parse(&text) else {
            return Probe::fail("invalid check URL");
        };
        // The probe must stay on the instance's own address.
        let host = address.host.trim_start_matches('[').trim_end_matches(']');
        let same_host = match url.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case(host),
            Some(url::Host::Ipv4(ip)) => host.parse::<std::net::IpAddr>().ok() == Some(ip.into()),
            Some(url::Host::Ipv6(ip)) => host.parse::<std::net::IpAddr>().ok() == Some(ip.into()),
            None => false,
        };
        if !same_host || url.port_or_known_default() != Some(address.port) {
            return Probe::fail("check URL leaves the instance's address");
        }
        if self.policy.check_url(&url).is_err() {
            return Probe::fail("denied by the address policy");
        }
        match self.client.get(url).timeout(timeout).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                drop(response);
                let ok = if spec.expected_statuses.is_empty() {
                    (200..300).contains(&status)
                } else {
                    spec.expected_statuses.contains(&status)
                };
                let output = if (300..400).contains(&status) && !ok {
                    format!("HTTP {status} (redirects are not followed)")
                } else {
                    format!("HTTP {status}")
                };
                Probe { ok, output }
            }
            Err(err) if err.is_timeout() => Probe::fail("timed out"),
            Err(err) if is_policy_denial(&err) => Probe::fail("denied by the address policy"),
            Err(_) => Probe::fail("connection failed"),
        }
    }
}

fn is_policy_denial(err: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.downcast_ref::<jadugar_core::outbound::PolicyError>()
            .is_some()
        {
            return true;
        }
        source = e.source();
    }
    false
}

type Key = (String, String);

/// The checker loop; started by [`Registry::start`].
pub(crate) async fn run(registry: Registry, cancel: CancellationToken) {
    let prober = match Prober::new(registry.inner.policy.clone()) {
        Ok(prober) => prober,
        Err(err) => {
            tracing::error!(error = %err, "health checker could not build its HTTP client");
            cancel.cancelled().await;
            return;
        }
    };
    let config = registry.config().clone();
    let lease =
        chrono::Duration::seconds(i64::try_from(config.check_lease_secs.max(1)).unwrap_or(15));
    let renew = Duration::from_millis((config.check_lease_secs.max(1) * 1000) / 3);
    let mut tasks: HashMap<Key, (CancellationToken, JoinHandle<()>)> = HashMap::new();
    loop {
        let now = registry.inner.clock.now();
        match registry
            .inner
            .store
            .claim_checks(
                registry.host_id(),
                now,
                now + lease,
                config.max_checks_per_host,
            )
            .await
        {
            Ok(held) => {
                let held: std::collections::HashSet<Key> = held.into_iter().collect();
                tasks.retain(|key, (token, handle)| {
                    let keep = held.contains(key) && !handle.is_finished();
                    if !keep {
                        token.cancel();
                    }
                    keep
                });
                for key in held {
                    if tasks.contains_key(&key) {
                        continue;
                    }
                    let token = cancel.child_token();
                    let handle = tokio::spawn(probe_loop(
                        registry.clone(),
                        prober.clone(),
                        key.clone(),
                        token.clone(),
                    ));
                    tasks.insert(key, (token, handle));
                }
            }
            Err(err) => tracing::warn!(error = %err, "could not claim check leases"),
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(renew) => {}
            () = registry.inner.claim_now.notified() => {}
        }
    }
    for (_, (token, handle)) in tasks {
        token.cancel();
        let _ = handle.await;
    }
    if let Err(err) = registry
        .inner
        .store
        .release_checks(registry.host_id())
        .await
    {
        tracing::warn!(error = %err, "could not release check leases");
    }
}

async fn probe_loop(registry: Registry, prober: Prober, key: Key, cancel: CancellationToken) {
    let (service, id) = key;
    let Ok(first) = registry.instance(&service, &id) else {
        return;
    };
    let Some(spec) = first.check else { return };
    let start_delay = rand::thread_rng().gen_range(0..spec.interval_ms.max(1));
    tokio::select! {
        () = cancel.cancelled() => return,
        () = tokio::time::sleep(Duration::from_millis(start_delay)) => {}
    }
    let mut successes: u32 = 0;
    let mut failures: u32 = 0;
    let mut target: Option<(Address, CheckSpec)> = None;
    loop {
        let Ok(instance) = registry.instance(&service, &id) else {
            return;
        };
        let Some(spec) = instance.check.clone() else {
            return;
        };
        // A re-registration with another address or check starts the
        // thresholds afresh: earlier results were about something else.
        if target
            .as_ref()
            .is_none_or(|(a, c)| *a != instance.address || *c != spec)
        {
            successes = 0;
            failures = 0;
            target = Some((instance.address.clone(), spec.clone()));
        }
        let probe = {
            let Ok(_permit) = registry.inner.probes.acquire().await else {
                return;
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                probe = prober.probe(&instance.address, &spec) => probe,
            }
        };
        if probe.ok {
            successes = successes.saturating_add(1);
            failures = 0;
        } else {
            failures = failures.saturating_add(1);
            successes = 0;
        }
        let current = instance.check_status.unwrap_or(Status::Critical);
        let next = if probe.ok && current != Status::Passing && successes >= spec.success_threshold
        {
            Some(Status::Passing)
        } else if !probe.ok && current != Status::Critical && failures >= spec.failure_threshold {
            Some(Status::Critical)
        } else {
            None
        };
        let status = next.unwrap_or(current);
        let output_changed = instance.check_output.as_deref() != Some(probe.output.as_str());
        if (next.is_some() || output_changed)
            && let Err(err) = registry
                .set_check_status(
                    &service,
                    &id,
                    (&instance.address, &spec),
                    status,
                    &probe.output,
                )
                .await
        {
            tracing::warn!(error = %err, service, id, "could not record a check result");
        }
        let interval = spec.interval_ms.max(1);
        let spread = interval / 20;
        let jittered = if spread == 0 {
            interval
        } else {
            interval - spread + rand::thread_rng().gen_range(0..=2 * spread)
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(jittered)) => {}
        }
    }
}
