//! IPAM handles: the per-request counts of addresses, written with the block they count.

use ipnet::IpNet;

use super::{dec, enc, HandleState, Ipam};
use crate::datastore::Write;
use crate::error::Result;
use crate::model::keys;
use crate::model::IpamHandle;

impl Ipam {
    /// The handle write that adds `n` addresses of `cidr` (or removes, for negative `n`).
    pub(super) fn handle_write(
        &self,
        handle: &str,
        state: &HandleState,
        cidr: &IpNet,
        n: i64,
    ) -> Result<Option<Write>> {
        if handle.is_empty() {
            // No handle (AssignIP without a HandleID): nothing to count, as in Calico.
            return Ok(None);
        }
        let key = keys::handle_key(handle);
        let mut h = match state {
            HandleState::At(h, _) => h.clone(),
            _ => IpamHandle::default(),
        };
        if n >= 0 {
            h.increment(cidr, n as u64);
        } else {
            // A handle that under-counts is left as far as it goes (Calico tolerates over-counts).
            let have = h.block.get(&cidr.trunc().to_string()).copied().unwrap_or(0);
            if have > 0 {
                h.decrement(cidr, n.unsigned_abs().min(have), handle)?;
            }
        }
        Ok(match state {
            HandleState::Unknown | HandleState::Absent => {
                if n < 0 {
                    None // nothing recorded under a handle we never saw
                } else {
                    Some(Write::create(key, enc("handle", &h)?))
                }
            }
            HandleState::At(_, rev) => {
                if h.is_empty() {
                    Some(Write::delete(key, *rev))
                } else {
                    Some(Write::update(key, enc("handle", &h)?, *rev))
                }
            }
        })
    }

    pub(super) async fn read_handle(&self, handle: &str) -> Result<HandleState> {
        Ok(match self.store.get(&keys::handle_key(handle)).await? {
            None => HandleState::Absent,
            Some(kv) => HandleState::At(dec(&kv)?, kv.revision),
        })
    }
}
