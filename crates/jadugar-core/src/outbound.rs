//! Outbound address policy: SSRF defence for addresses users register.
//!
//! Health checks, webhooks and the proxy connect to addresses that users
//! supplied. An [`AddressPolicy`] resolves a host name once, checks every
//! resulting IP, and hands back only checked socket addresses to connect to,
//! so a DNS answer cannot change between the check and the connection
//! (DNS rebinding).
//!
//! Always denied, whatever the configuration: unspecified (`0.0.0.0`, `::`),
//! link-local (`169.254.0.0/16`, `fe80::/10`, which holds the cloud metadata
//! address `169.254.169.254`), the AWS IPv6 metadata address
//! `fd00:ec2::254`, multicast, broadcast and `0.0.0.0/8`. Loopback and
//! private ranges (RFC 1918, `100.64.0.0/10`, `fc00::/7`) are denied unless
//! allowed. Explicit `deny` ranges win over explicit `allow` ranges, which
//! win over the loopback/private switches. IPv4-mapped IPv6 addresses are
//! judged as the IPv4 address they carry.
//!
//! ```
//! use std::net::IpAddr;
//! use jadugar_core::outbound::AddressPolicy;
//!
//! let strict = AddressPolicy::default();
//! assert!(strict.check_ip("169.254.169.254".parse().unwrap()).is_err());
//! assert!(strict.check_ip("10.1.2.3".parse().unwrap()).is_err());
//! assert!(strict.check_ip("93.184.216.34".parse().unwrap()).is_ok());
//!
//! let dev = AddressPolicy::default().allow_loopback(true);
//! assert!(dev.check_ip("127.0.0.1".parse().unwrap()).is_ok());
//! assert!(dev.check_ip("169.254.169.254".parse().unwrap()).is_err());
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

/// Why an outbound address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The address falls in a denied range.
    #[error("address {ip} is not allowed ({reason})")]
    Denied {
        /// The refused address.
        ip: IpAddr,
        /// Which rule refused it.
        reason: &'static str,
    },
    /// The name did not resolve.
    #[error("could not resolve {0}")]
    Unresolvable(String),
    /// The URL has no host or an unsupported scheme.
    #[error("invalid outbound URL: {0}")]
    InvalidUrl(String),
}

/// Which outbound addresses may be contacted; see the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allow_loopback: bool,
    allow_private: bool,
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl AddressPolicy {
    /// Denies loopback and private ranges as well as the always-denied ones.
    pub fn strict() -> Self {
        Self::default()
    }

    /// Allows loopback and private ranges (a single-machine or LAN setup);
    /// link-local and metadata addresses stay denied.
    pub fn permissive() -> Self {
        Self::default().allow_loopback(true).allow_private(true)
    }

    /// Whether loopback addresses are allowed.
    pub fn allow_loopback(mut self, allow: bool) -> Self {
        self.allow_loopback = allow;
        self
    }

    /// Whether private ranges are allowed.
    pub fn allow_private(mut self, allow: bool) -> Self {
        self.allow_private = allow;
        self
    }

    /// Allows `net` even if it is loopback or private.
    pub fn allow_net(mut self, net: IpNet) -> Self {
        self.allow.push(net);
        self
    }

    /// Denies `net`.
    pub fn deny_net(mut self, net: IpNet) -> Self {
        self.deny.push(net);
        self
    }

    /// Checks one IP address.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), PolicyError> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let deny = |reason| Err(PolicyError::Denied { ip, reason });
        if let Some(reason) = always_denied(ip) {
            return deny(reason);
        }
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return deny("in a denied range");
        }
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        if ip.is_loopback() && !self.allow_loopback {
            return deny("loopback");
        }
        if is_private(ip) && !self.allow_private {
            return deny("private range");
        }
        Ok(())
    }

    /// Resolves `host` once and checks every address. A name with any
    /// denied address is refused as a whole, so a resolver cannot be coaxed
    /// into a denied one later.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, PolicyError> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            self.check_ip(ip)?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| PolicyError::Unresolvable(host.to_owned()))?
            .collect();
        if addrs.is_empty() {
            return Err(PolicyError::Unresolvable(host.to_owned()));
        }
        for addr in &addrs {
            self.check_ip(addr.ip())?;
        }
        Ok(addrs)
    }

    /// Checks a URL's scheme (http or https) and, if its host is an IP
    /// literal, the IP. Names are checked at connection time by the
    /// resolver of [`http_client`](Self::http_client).
    pub fn check_url(&self, url: &url::Url) -> Result<(), PolicyError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(PolicyError::InvalidUrl(format!(
                "scheme {} is not http or https",
                url.scheme()
            )));
        }
        match url.host() {
            None => Err(PolicyError::InvalidUrl("no host".into())),
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => Ok(()),
        }
    }

    /// Connects a TCP stream to `host:port` through the policy: resolve
    /// once, check, connect to a checked address within `timeout`.
    pub async fn connect_tcp(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<tokio::net::TcpStream, std::io::Error> {
        let addrs = self
            .resolve(host, port)
            .await
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))?;
        let connect = async {
            let mut last = None;
            for addr in addrs {
                match tokio::net::TcpStream::connect(addr).await {
                    Ok(stream) => return Ok(stream),
                    Err(err) => last = Some(err),
                }
            }
            Err(last.unwrap_or_else(|| std::io::Error::other("no address")))
        };
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
    }

    /// A `reqwest` client whose every connection goes through this policy:
    /// names resolve through it, redirects are never followed, no proxy is
    /// used. Check IP-literal URLs with [`check_url`](Self::check_url) before
    /// sending, since reqwest does not resolve those.
    pub fn http_client(&self, timeout: Duration) -> reqwest::Result<reqwest::Client> {
        reqwest::Client::builder()
            .dns_resolver(Arc::new(PolicyResolver(self.clone())))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(timeout)
            .timeout(timeout)
            .build()
    }
}

fn always_denied(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_unspecified() || v4.octets()[0] == 0 {
                Some("unspecified")
            } else if v4.is_link_local() {
                Some("link-local or cloud metadata")
            } else if v4.is_multicast() || v4.is_broadcast() {
                Some("multicast or broadcast")
            } else if v4 == Ipv4Addr::new(100, 100, 100, 200) {
                Some("cloud metadata")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let metadata = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
            if v6.is_unspecified() {
                Some("unspecified")
            } else if v6 == metadata {
                Some("cloud metadata")
            } else if (v6.segments()[0] & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private() || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// A reqwest resolver that applies an [`AddressPolicy`].
#[derive(Debug, Clone)]
pub struct PolicyResolver(pub AddressPolicy);

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let addrs = policy.resolve(name.as_str(), 0).await?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn always_denied_ranges() {
        let open = AddressPolicy::permissive().allow_net("0.0.0.0/0".parse().unwrap());
        for bad in [
            "169.254.169.254",
            "169.254.1.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:169.254.169.254",
            "100.100.100.200",
        ] {
            assert!(open.check_ip(ip(bad)).is_err(), "{bad} must be denied");
        }
    }

    #[test]
    fn loopback_and_private_per_configuration() {
        let strict = AddressPolicy::strict();
        for private in [
            "127.0.0.1",
            "::1",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "fd12::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(strict.check_ip(ip(private)).is_err(), "{private}");
        }
        let permissive = AddressPolicy::permissive();
        for private in ["127.0.0.1", "::1", "10.0.0.1", "fd12::1"] {
            assert!(permissive.check_ip(ip(private)).is_ok(), "{private}");
        }
        let allow_one = AddressPolicy::strict().allow_net("10.1.0.0/16".parse().unwrap());
        assert!(allow_one.check_ip(ip("10.1.2.3")).is_ok());
        assert!(allow_one.check_ip(ip("10.2.2.3")).is_err());
        let deny_public = AddressPolicy::strict().deny_net("8.8.8.0/24".parse().unwrap());
        assert!(deny_public.check_ip(ip("8.8.8.8")).is_err());
        assert!(deny_public.check_ip(ip("1.1.1.1")).is_ok());
    }

    #[tokio::test]
    async fn names_resolving_to_denied_addresses_are_refused() {
        let strict = AddressPolicy::strict();
        assert!(matches!(
            strict.resolve("localhost", 80).await,
            Err(PolicyError::Denied { .. })
        ));
        assert!(strict.resolve("[::1]", 80).await.is_err());
        let dev = AddressPolicy::strict().allow_loopback(true);
        let addrs = dev.resolve("localhost", 80).await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
    }

    #[test]
    fn urls() {
        let strict = AddressPolicy::strict();
        let url = |s: &str| url::Url::parse(s).unwrap();
        assert!(
            strict
                .check_url(&url("http://169.254.169.254/latest"))
                .is_err()
        );
        assert!(strict.check_url(&url("http://[fd00:ec2::254]/")).is_err());
        assert!(strict.check_url(&url("file:///etc/passwd")).is_err());
        assert!(strict.check_url(&url("https://example.com/")).is_ok());
    }

    #[tokio::test]
    async fn http_client_refuses_denied_names() {
        let client = AddressPolicy::strict()
            .http_client(Duration::from_secs(2))
            .unwrap();
        let err = client.get("http://localhost:9/").send().await.unwrap_err();
        assert!(err.is_connect() || err.is_request(), "{err:?}");
    }
}
