//! One virtual WLD slot: every member token with one label.

use super::login::LoginState;
use super::member::Member;
use crate::config::Policy;
use cryptoki_sys::*;
use parking_lot::{Mutex, RwLock};
use rand::RngExt;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Mechanism types below this value are kept in a bitmap as well, so the
/// check on every `C_*Init` reads atomics instead of taking a lock.
const BITMAP_LIMIT: CK_MECHANISM_TYPE = 0x1_0000;

/// The mechanisms every healthy member of a slot supports, with the limits
/// that hold on all of them, sorted by mechanism type.
pub type MechanismTable = Arc<Vec<(CK_MECHANISM_TYPE, CK_MECHANISM_INFO)>>;

/// The members to try for a new session, in order.
pub struct Candidates {
    pub members: Vec<Arc<Member>>,
    /// Whether the first member is claimed: its `opening` count was raised
    /// for this open, and must be lowered once the open is done.
    pub claimed: bool,
}

pub struct VirtualSlot {
    pub id: CK_SLOT_ID,
    /// The label for logs and descriptions; bytes that are not UTF-8 show
    /// as U+FFFD.
    pub label: String,
    /// The label as the tokens store it, without the padding blanks.
    pub label_bytes: Vec<u8>,
    /// The virtual token's serial: 16 hex digits derived from the label, so
    /// every process and every run shows the same one.
    pub serial: [u8; 16],
    members: RwLock<Vec<Arc<Member>>>,
    mechanisms: RwLock<MechanismTable>,
    mechanism_bits: Box<[AtomicU64]>,
    pub login: Mutex<LoginState>,
    /// Serializes `C_Login` and `C_Logout` on this slot. Held across the
    /// vendor call that checks the PIN on the first member, and never taken
    /// by session or crypto calls.
    pub login_serial: Mutex<()>,
    next_member: AtomicUsize,
}

impl VirtualSlot {
    /// Makes the slot of the label `label`, its bytes without the padding
    /// blanks.
    pub fn new(id: CK_SLOT_ID, label: Vec<u8>) -> VirtualSlot {
        VirtualSlot {
            id,
            serial: virtual_serial(&label),
            label: String::from_utf8_lossy(&label).into_owned(),
            label_bytes: label,
            members: RwLock::new(Vec::new()),
            mechanisms: RwLock::new(Arc::new(Vec::new())),
            mechanism_bits: (0..BITMAP_LIMIT / 64).map(|_| AtomicU64::new(0)).collect(),
            login: Mutex::new(LoginState::default()),
            login_serial: Mutex::new(()),
            next_member: AtomicUsize::new(0),
        }
    }

    pub fn members(&self) -> Vec<Arc<Member>> {
        self.members.read().clone()
    }

    pub fn member_count(&self) -> usize {
        self.members.read().len()
    }

    pub(super) fn add_member(&self, member: Arc<Member>) {
        self.members.write().push(member);
    }

    pub fn healthy_members(&self) -> Vec<Arc<Member>> {
        self.members
            .read()
            .iter()
            .filter(|m| m.is_up())
            .cloned()
            .collect()
    }

    pub fn token_present(&self) -> bool {
        self.members.read().iter().any(|m| m.is_up())
    }

    pub fn mechanisms(&self) -> MechanismTable {
        self.mechanisms.read().clone()
    }

    /// Returns whether every healthy member supports `mechanism`.
    #[inline]
    pub fn supports(&self, mechanism: CK_MECHANISM_TYPE) -> bool {
        if mechanism < BITMAP_LIMIT {
            let word = self.mechanism_bits[(mechanism / 64) as usize].load(Ordering::Relaxed);
            return word & (1 << (mechanism % 64)) != 0;
        }
        self.mechanisms
            .read()
            .binary_search_by_key(&mechanism, |(m, _)| *m)
            .is_ok()
    }

    /// Orders the healthy members for a new session: the policy's choice
    /// first, then the others as fallbacks.
    ///
    /// Under `least-sessions` the choice is random among the members with
    /// the fewest sessions, and is claimed: its count of sessions being
    /// opened goes up before this returns, so a concurrent open sees it
    /// loaded and picks another. The caller releases the claim.
    pub fn candidates(&self, policy: Policy) -> Candidates {
        if policy == Policy::LeastSessions {
            for _ in 0..8 {
                if let Some(claimed) = self.claim_least_loaded() {
                    return claimed;
                }
            }
        }
        Candidates {
            members: self.ranked(policy),
            claimed: false,
        }
    }

    /// Picks a random member among the least loaded and claims it, unless
    /// another thread claimed or opened on it since its load was read.
    fn claim_least_loaded(&self) -> Option<Candidates> {
        let mut ranked: Vec<(usize, usize, Arc<Member>)> = self
            .members
            .read()
            .iter()
            .filter(|m| m.is_up())
            .map(|m| {
                let opening = m.opening.load(Ordering::Acquire);
                (
                    m.open_sessions.load(Ordering::Acquire) + opening,
                    opening,
                    m.clone(),
                )
            })
            .collect();
        let least = ranked.iter().map(|(load, _, _)| *load).min()?;
        let pick = random_tied(ranked.iter().map(|(load, _, _)| *load == least))?;
        let (_, opening, member) = &ranked[pick];
        member
            .opening
            .compare_exchange(*opening, opening + 1, Ordering::AcqRel, Ordering::Relaxed)
            .ok()?;
        ranked.swap(0, pick);
        // The fallbacks, too, go to the least loaded member first.
        ranked[1..].sort_by_key(|(load, _, _)| *load);
        Some(Candidates {
            members: ranked.into_iter().map(|(_, _, m)| m).collect(),
            claimed: true,
        })
    }

    /// Orders the healthy members without claiming any.
    fn ranked(&self, policy: Policy) -> Vec<Arc<Member>> {
        // Other threads open and close sessions meanwhile, so each load is
        // read once: a second read could disagree with the first. The one
        // vector allocated is reused for the list returned.
        let mut ranked: Vec<(usize, Arc<Member>)> = self
            .members
            .read()
            .iter()
            .filter(|m| m.is_up())
            .map(|m| (m.load(), m.clone()))
            .collect();
        if ranked.len() >= 2 {
            let first = match policy {
                Policy::RoundRobin => {
                    self.next_member.fetch_add(1, Ordering::Relaxed) % ranked.len()
                }
                Policy::LeastSessions => {
                    let least = ranked.iter().map(|(load, _)| *load).min().unwrap_or(0);
                    random_tied(ranked.iter().map(|(load, _)| *load == least)).unwrap_or(0)
                }
            };
            ranked.rotate_left(first);
            if policy == Policy::LeastSessions {
                // The fallbacks, too, go to the least loaded member first.
                ranked[1..].sort_by_key(|(load, _)| *load);
            }
        }
        ranked.into_iter().map(|(_, m)| m).collect()
    }

    /// Recomputes the mechanism table from the healthy members. A slot
    /// without healthy members keeps its last table, so a size query and the
    /// fetch that follows agree while every member is down.
    pub fn refresh_mechanisms(&self) {
        let healthy = self.healthy_members();
        if healthy.is_empty() {
            return;
        }
        let Some(table) = intersect_mechanisms(&healthy) else {
            return;
        };
        // Built aside and stored word by word, so a concurrent check never
        // sees a cleared bitmap.
        let mut bits = vec![0u64; self.mechanism_bits.len()];
        for (mechanism, _) in &table {
            if *mechanism < BITMAP_LIMIT {
                bits[(*mechanism / 64) as usize] |= 1 << (*mechanism % 64);
            }
        }
        for (word, value) in self.mechanism_bits.iter().zip(bits) {
            word.store(value, Ordering::Relaxed);
        }
        *self.mechanisms.write() = Arc::new(table);
    }
}

/// Returns the position of a random one of the `true` entries of `tied`,
/// without allocating.
fn random_tied(tied: impl Iterator<Item = bool> + Clone) -> Option<usize> {
    let count = tied.clone().filter(|&t| t).count();
    if count == 0 {
        return None;
    }
    let pick = rand::rng().random_range(0..count);
    tied.enumerate()
        .filter(|(_, t)| *t)
        .nth(pick)
        .map(|(i, _)| i)
}

/// Derives the virtual token's serial from its label.
fn virtual_serial(label: &[u8]) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::new()
        .chain_update(b"p11wld WLD slot ")
        .chain_update(label)
        .finalize();
    let mut serial = [b'0'; 16];
    for (i, byte) in digest.iter().take(8).enumerate() {
        serial[2 * i] = HEX[usize::from(byte >> 4)];
        serial[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    serial
}

/// Intersects the mechanism lists of `members`. Returns `None` when no
/// member returned its list.
fn intersect_mechanisms(
    members: &[Arc<Member>],
) -> Option<Vec<(CK_MECHANISM_TYPE, CK_MECHANISM_INFO)>> {
    let mut combined: BTreeMap<CK_MECHANISM_TYPE, (usize, CK_MECHANISM_INFO)> = BTreeMap::new();
    let mut answered = 0;
    for member in members {
        let list = match member.module.mechanism_list(member.slot_id) {
            Ok(list) => list,
            Err(rv) => {
                log::warn!(
                    "member {}: C_GetMechanismList failed: {rv}",
                    member.describe()
                );
                continue;
            }
        };
        answered += 1;
        for mechanism in list {
            let Ok(info) = member.module.mechanism_info(member.slot_id, mechanism) else {
                continue;
            };
            let entry = combined.entry(mechanism).or_insert((0, info));
            if entry.0 > 0 {
                entry.1.ulMinKeySize = entry.1.ulMinKeySize.max(info.ulMinKeySize);
                entry.1.ulMaxKeySize = entry.1.ulMaxKeySize.min(info.ulMaxKeySize);
                entry.1.flags &= info.flags;
            }
            entry.0 += 1;
        }
    }
    if answered == 0 {
        return None;
    }
    Some(
        combined
            .into_iter()
            .filter(|(_, (count, _))| *count == answered)
            .map(|(mechanism, (_, info))| (mechanism, info))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_is_stable_hex() {
        let a = virtual_serial(b"WLD_A");
        assert_eq!(a, virtual_serial(b"WLD_A"));
        assert_ne!(a, virtual_serial(b"WLD_B"));
        assert!(a.iter().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn empty_slot_supports_nothing() {
        let slot = VirtualSlot::new(0, b"X".to_vec());
        assert!(!slot.supports(CKM_RSA_PKCS));
        assert!(!slot.supports(CKM_VENDOR_DEFINED | 1));
        assert!(slot.candidates(Policy::LeastSessions).members.is_empty());
    }
}
