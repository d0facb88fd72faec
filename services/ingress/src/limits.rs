//! Connection limits: in total (a semaphore) and per client IP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The process has `max_connections` sessions.
    Total,
    /// This IP has `max_connections_per_ip` sessions.
    PerIp,
}

/// Counts open sessions.
#[derive(Debug)]
pub struct Limits {
    /// One permit per allowed session.
    total: Arc<Semaphore>,
    /// Open sessions per client IP (entries removed at zero, so the map stays small).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// The per-IP maximum.
    max_per_ip: usize,
}

/// One admitted session; dropping it frees its places.
#[derive(Debug)]
pub struct Admission {
    /// The limits to give the places back to.
    limits: Arc<Limits>,
    /// The client.
    ip: IpAddr,
    /// The total-count permit.
    _permit: OwnedSemaphorePermit,
}

impl Limits {
    /// Limits of `max_total` sessions, `max_per_ip` from one address.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            total: Arc::new(Semaphore::new(max_total)),
            per_ip: Mutex::new(HashMap::new()),
            max_per_ip,
        })
    }

    /// Admits a session from `ip`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refusal> {
        let permit = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Total)?;
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            return Err(Refusal::PerIp);
        }
        *count += 1;
        Ok(Admission {
            limits: self.clone(),
            ip,
            _permit: permit,
        })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut per_ip = self.limits.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_and_total() {
        let limits = Limits::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = limits.admit(a).unwrap();
        let _a2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).unwrap_err(), Refusal::PerIp);
        let _b1 = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).unwrap_err(), Refusal::Total);
        drop(a1);
        assert!(limits.admit(a).is_ok());
        assert!(limits.per_ip.lock().unwrap().len() <= 2);
    }
}
