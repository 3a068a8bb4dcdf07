//! LAN discovery over multicast DNS (mdns-sd): advertise this device under
//! `_starling._udp.local.` and browse for others.
//!
//! The advertisement carries the QUIC port in SRV, the host's addresses in
//! A records (kept current by mdns-sd as interfaces come and go), and the
//! account and device ids in TXT (`docs/PROTOCOL.md` §12). Loopback and IPv6
//! are left out: the QUIC socket is IPv4 and a peer on another host cannot
//! reach our loopback.

use std::net::{IpAddr, SocketAddr};

use mdns_sd::{IfKind, Receiver, ResolvedService, ServiceDaemon, ServiceEvent, ServiceInfo};
use starling_protocol::discovery::{
    MDNS_SERVICE_TYPE, MDNS_TXT_KEY_ACCOUNT, MDNS_TXT_KEY_DEVICE, MDNS_TXT_KEY_VERSION,
    MDNS_TXT_VERSION,
};
use starling_protocol::{AccountId, DeviceId};

/// Addresses taken from one mDNS record at most.
pub const MDNS_ADDRESSES_PER_RECORD_MAX: usize = 8;

/// Why mDNS could not start.
#[derive(Debug, thiserror::Error)]
#[error("mDNS: {0}")]
pub struct MdnsError(String);

impl From<mdns_sd::Error> for MdnsError {
    fn from(e: mdns_sd::Error) -> Self {
        Self(e.to_string())
    }
}

/// A device an mDNS record claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdnsPeer {
    /// Claimed account.
    pub account: AccountId,
    /// Claimed device.
    pub device: DeviceId,
    /// Where it says it listens.
    pub addrs: Vec<SocketAddr>,
}

/// The instance name of a device: a DNS label holds 63 bytes, so the
/// device id (64 hex) is cut to 32; the full id is in TXT.
fn instance_name(device: &DeviceId) -> String {
    format!("starling-{}", &device.to_hex()[..32])
}

/// Starts an mDNS responder and browser on every non-loopback IPv4 interface.
pub fn start(daemon: &ServiceDaemon) -> Result<Receiver<ServiceEvent>, MdnsError> {
    daemon.disable_interface(vec![IfKind::LoopbackV4, IfKind::IPv6])?;
    Ok(daemon.browse(MDNS_SERVICE_TYPE)?)
}

/// Advertises `account`/`device` at `port` on every interface.
pub fn advertise(
    daemon: &ServiceDaemon,
    account: &AccountId,
    device: &DeviceId,
    port: u16,
) -> Result<String, MdnsError> {
    let host = format!("{}.local.", &device.to_hex()[..16]);
    let properties = [
        (MDNS_TXT_KEY_VERSION, MDNS_TXT_VERSION.to_owned()),
        (MDNS_TXT_KEY_ACCOUNT, account.to_hex()),
        (MDNS_TXT_KEY_DEVICE, device.to_hex()),
    ];
    let info = ServiceInfo::new(
        MDNS_SERVICE_TYPE,
        &instance_name(device),
        &host,
        "",
        port,
        &properties[..],
    )?
    .enable_addr_auto();
    let fullname = info.get_fullname().to_owned();
    daemon.register(info)?;
    Ok(fullname)
}

/// Reads what a resolved record claims; `None` if it is not a readable
/// Starling record (wrong version, bad ids, no usable address).
pub fn peer_of(service: &ResolvedService) -> Option<MdnsPeer> {
    if service.get_property_val_str(MDNS_TXT_KEY_VERSION) != Some(MDNS_TXT_VERSION) {
        return None;
    }
    let account = service
        .get_property_val_str(MDNS_TXT_KEY_ACCOUNT)?
        .parse()
        .ok()?;
    let device = service
        .get_property_val_str(MDNS_TXT_KEY_DEVICE)?
        .parse()
        .ok()?;
    let port = service.get_port();
    let mut addrs: Vec<SocketAddr> = service
        .get_addresses_v4()
        .into_iter()
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .map(|ip| SocketAddr::new(IpAddr::V4(ip), port))
        .collect();
    addrs.sort();
    addrs.truncate(MDNS_ADDRESSES_PER_RECORD_MAX);
    if addrs.is_empty() || port == 0 {
        return None;
    }
    Some(MdnsPeer {
        account,
        device,
        addrs,
    })
}

/// An mDNS advertisement kept alive by its owner, with no browsing: what
/// `starling mdns-advertise` (a diagnostic) runs. Dropping it withdraws it.
pub struct Advertisement(ServiceDaemon);

impl Advertisement {
    /// Advertises the claim `account`/`device` at `port`, true or not: the
    /// records are hints that TLS verification confirms or refutes, and this
    /// is how an operator (or a test) checks that a false claim is refused.
    pub fn start(account: &AccountId, device: &DeviceId, port: u16) -> Result<Self, MdnsError> {
        let daemon = ServiceDaemon::new()?;
        daemon.disable_interface(vec![IfKind::LoopbackV4, IfKind::IPv6])?;
        advertise(&daemon, account, device, port)?;
        Ok(Self(daemon))
    }
}

impl Drop for Advertisement {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(ip: &str, port: u16, txt: &[(&str, &str)]) -> ResolvedService {
        ServiceInfo::new(MDNS_SERVICE_TYPE, "starling-x", "x.local.", ip, port, txt)
            .unwrap()
            .as_resolved_service()
    }

    /// One row per way a stranger's record can be unusable.
    #[test]
    fn records_are_read_only_when_whole() {
        let account = "a".repeat(64);
        let device = "d".repeat(64);
        let good = [
            (MDNS_TXT_KEY_VERSION, MDNS_TXT_VERSION),
            (MDNS_TXT_KEY_ACCOUNT, account.as_str()),
            (MDNS_TXT_KEY_DEVICE, device.as_str()),
        ];
        let peer = peer_of(&resolved("10.0.0.9,127.0.0.1", 7420, &good)).unwrap();
        assert_eq!(peer.account, account.parse().unwrap());
        assert_eq!(peer.device, device.parse().unwrap());
        assert_eq!(peer.addrs, vec!["10.0.0.9:7420".parse().unwrap()]);

        let short = "a".repeat(63);
        let cases: Vec<(&str, ResolvedService)> = vec![
            (
                "version",
                resolved(
                    "10.0.0.9",
                    7420,
                    &[(MDNS_TXT_KEY_VERSION, "2"), good[1], good[2]],
                ),
            ),
            (
                "no account",
                resolved("10.0.0.9", 7420, &[good[0], good[2]]),
            ),
            (
                "bad device",
                resolved(
                    "10.0.0.9",
                    7420,
                    &[good[0], good[1], (MDNS_TXT_KEY_DEVICE, short.as_str())],
                ),
            ),
            ("loopback only", resolved("127.0.0.1", 7420, &good)),
            ("port 0", resolved("10.0.0.9", 0, &good)),
        ];
        for (name, service) in cases {
            assert_eq!(peer_of(&service), None, "{name}");
        }
    }

    #[test]
    fn instance_names_fit_a_dns_label() {
        let device: DeviceId = "f".repeat(64).parse().unwrap();
        assert!(instance_name(&device).len() <= 63);
    }
}
