//! Members, virtual slots, and how tokens are grouped into them.

use super::login::LoginState;
use crate::config::{Config, Policy};
use crate::error::{Result, Rv};
use crate::vendor::VendorModule;
use cryptoki_sys::*;
use parking_lot::{Mutex, RwLock};
use rand::RngExt;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// One member token of a WLD slot: a physical slot of one vendor module.
pub struct Member {
    pub module: Arc<VendorModule>,
    pub module_index: usize,
    pub slot_id: CK_SLOT_ID,
    pub label: String,
    pub serial: String,
    pub up: AtomicBool,
    pub open_sessions: AtomicUsize,
    pub total_sessions: AtomicU64,
    pub failures: AtomicU64,
    pub last_error: AtomicU64,
    /// Login state and the helper session of this member. Its lock is held
    /// across calls into this member only.
    pub link: Mutex<MemberLink>,
    /// Index in the topology's member list; also the key of the object
    /// table's per-member handles.
    pub index: usize,
}

/// What the proxy keeps open on a member for the application.
#[derive(Default)]
pub struct MemberLink {
    /// Application sessions open on the member.
    pub app_sessions: usize,
    /// Whether the application's login has been applied to the member.
    pub logged_in: bool,
    /// A session of the proxy's own, open while the application has any on
    /// the member, used to resolve object handles and to log in while the
    /// application's sessions are busy with their own operations.
    pub helper: Option<CK_SESSION_HANDLE>,
}

impl Member {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn describe(&self) -> String {
        format!(
            "{} slot {} serial {}",
            self.module.name, self.slot_id, self.serial
        )
    }
}

/// The mechanisms every member of a slot supports, with the limits that
/// hold on all of them, sorted by mechanism type.
pub type MechanismTable = Arc<Vec<(CK_MECHANISM_TYPE, CK_MECHANISM_INFO)>>;

/// One virtual WLD slot: every token with one label.
pub struct VirtualSlot {
    pub id: CK_SLOT_ID,
    pub label: String,
    pub serial: [u8; 16],
    members: RwLock<Vec<Arc<Member>>>,
    mechanisms: RwLock<MechanismTable>,
    pub login: Mutex<LoginState>,
    pub sessions: AtomicUsize,
    pub rw_sessions: AtomicUsize,
    next_member: AtomicUsize,
}

impl VirtualSlot {
    fn new(id: CK_SLOT_ID, label: String) -> VirtualSlot {
        VirtualSlot {
            id,
            serial: virtual_serial(&label),
            label,
            members: RwLock::new(Vec::new()),
            mechanisms: RwLock::new(Arc::new(Vec::new())),
            login: Mutex::new(LoginState::default()),
            sessions: AtomicUsize::new(0),
            rw_sessions: AtomicUsize::new(0),
            next_member: AtomicUsize::new(0),
        }
    }

    pub fn members(&self) -> Vec<Arc<Member>> {
        self.members.read().clone()
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

    pub fn supports(&self, mechanism: CK_MECHANISM_TYPE) -> bool {
        self.mechanisms
            .read()
            .binary_search_by_key(&mechanism, |(m, _)| *m)
            .is_ok()
    }

    /// Orders the healthy members for a new session: the policy's choice
    /// first, then the others as fallbacks.
    pub fn candidates(&self, policy: Policy) -> Vec<Arc<Member>> {
        let mut healthy = self.healthy_members();
        if healthy.len() < 2 {
            return healthy;
        }
        let first = match policy {
            Policy::RoundRobin => self.next_member.fetch_add(1, Ordering::Relaxed) % healthy.len(),
            Policy::LeastSessions => {
                let least = healthy
                    .iter()
                    .map(|m| m.open_sessions.load(Ordering::Relaxed))
                    .min()
                    .unwrap_or(0);
                let tied: Vec<usize> = (0..healthy.len())
                    .filter(|&i| healthy[i].open_sessions.load(Ordering::Relaxed) == least)
                    .collect();
                tied[rand::rng().random_range(0..tied.len())]
            }
        };
        healthy.rotate_left(first);
        healthy
    }

    /// Recomputes the mechanism table from the healthy members.
    pub fn refresh_mechanisms(&self) {
        let table = intersect_mechanisms(&self.healthy_members());
        *self.mechanisms.write() = Arc::new(table);
    }
}

/// Derives the virtual token's serial from its label, so it is the same in
/// every process and across restarts: 16 hex digits of SHA-256.
fn virtual_serial(label: &str) -> [u8; 16] {
    let digest = Sha256::digest(format!("p11wld WLD slot {label}").as_bytes());
    let mut serial = [b'0'; 16];
    for (i, byte) in digest.iter().take(8).enumerate() {
        let hex = format!("{byte:02x}");
        serial[2 * i..2 * i + 2].copy_from_slice(hex.as_bytes());
    }
    serial
}

fn intersect_mechanisms(members: &[Arc<Member>]) -> Vec<(CK_MECHANISM_TYPE, CK_MECHANISM_INFO)> {
    let mut combined: BTreeMap<CK_MECHANISM_TYPE, (usize, CK_MECHANISM_INFO)> = BTreeMap::new();
    let mut answered = 0;
    for member in members {
        let list = match member.module.mechanism_list(member.slot_id) {
            Ok(l) => l,
            Err(rv) => {
                log::warn!("member {}: C_GetMechanismList failed: {rv}", member.describe());
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
    combined
        .into_iter()
        .filter(|(_, (count, _))| *count == answered && answered > 0)
        .map(|(m, (_, info))| (m, info))
        .collect()
}

/// Trims the blank padding of a fixed-width PKCS#11 text field. Only
/// trailing blanks are padding, so " A" and "A" stay different labels.
pub fn trim_padded(field: &[u8]) -> String {
    let end = field
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(0, |p| p + 1);
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// A physical slot as the extension lists it.
pub struct PhysicalSlot {
    pub position: usize,
    pub module_name: String,
    pub slot_id: CK_SLOT_ID,
    pub token: Option<CK_TOKEN_INFO>,
    pub wld_slot: Option<CK_SLOT_ID>,
}

/// Every member and virtual slot of an initialized module.
pub struct Topology {
    slots: RwLock<Vec<Arc<VirtualSlot>>>,
    members: RwLock<Vec<Arc<Member>>>,
    refresh_lock: Mutex<()>,
}

impl Topology {
    pub fn new() -> Topology {
        Topology {
            slots: RwLock::new(Vec::new()),
            members: RwLock::new(Vec::new()),
            refresh_lock: Mutex::new(()),
        }
    }

    pub fn slots(&self) -> Vec<Arc<VirtualSlot>> {
        self.slots.read().clone()
    }

    pub fn slot(&self, id: CK_SLOT_ID) -> Result<Arc<VirtualSlot>> {
        let slots = self.slots.read();
        slots
            .binary_search_by_key(&id, |s| s.id)
            .map(|i| slots[i].clone())
            .map_err(|_| Rv(CKR_SLOT_ID_INVALID))
    }

    pub fn members(&self) -> Vec<Arc<Member>> {
        self.members.read().clone()
    }

    pub fn member(&self, index: usize) -> Option<Arc<Member>> {
        self.members.read().get(index).cloned()
    }

    /// Finds tokens that appeared since the last scan and adds them, as
    /// members of existing slots or as new slots. Slot ids never change.
    pub fn refresh(&self, config: &Config, modules: &[Arc<VendorModule>], usable: &[bool]) {
        let _guard = self.refresh_lock.lock();
        let mut found: Vec<(usize, CK_SLOT_ID, CK_TOKEN_INFO)> = Vec::new();
        for (index, module) in modules.iter().enumerate() {
            if !usable[index] {
                continue;
            }
            let slots = match module.slot_list(true) {
                Ok(s) => s,
                Err(rv) => {
                    log::error!("module {}: C_GetSlotList failed: {rv}", module.name);
                    continue;
                }
            };
            for slot in slots {
                match module.token_info(slot) {
                    Ok(info) if info.flags & CKF_TOKEN_INITIALIZED != 0 => {
                        found.push((index, slot, info))
                    }
                    Ok(_) => {}
                    Err(rv) => log::warn!(
                        "module {} slot {slot}: C_GetTokenInfo failed: {rv}",
                        module.name
                    ),
                }
            }
        }

        let mut labels: Vec<String> = found
            .iter()
            .map(|(_, _, info)| trim_padded(&info.label))
            .filter(|l| config.exposes(l))
            .collect();
        labels.extend(config.wld.labels.iter().flatten().map(|l| l.get_ref().clone()));
        labels.extend(
            config
                .wld
                .slots
                .iter()
                .map(|s| s.label.get_ref().clone())
                .filter(|l| config.exposes(l)),
        );
        labels.sort();
        labels.dedup();
        self.add_slots(config, &labels);

        let mut changed: Vec<Arc<VirtualSlot>> = Vec::new();
        for (module_index, slot_id, info) in found {
            let label = trim_padded(&info.label);
            let Some(vslot) = self.slots.read().iter().find(|s| s.label == label).cloned() else {
                continue;
            };
            if self.add_member(&vslot, modules, module_index, slot_id, &info) {
                if !changed.iter().any(|s| s.id == vslot.id) {
                    changed.push(vslot);
                }
            }
        }
        for vslot in changed {
            vslot.refresh_mechanisms();
        }
    }

    /// Adds a slot for each label that has none, with its fixed id or the
    /// next free one.
    fn add_slots(&self, config: &Config, labels: &[String]) {
        let mut slots = self.slots.write();
        let initial = slots.is_empty();
        let reserved: Vec<u64> = config.wld.slots.iter().map(|s| *s.id.get_ref()).collect();
        for label in labels {
            if slots.iter().any(|s| &s.label == label) {
                continue;
            }
            let taken = |id: u64, slots: &Vec<Arc<VirtualSlot>>| {
                slots.iter().any(|s| s.id == id) || reserved.contains(&id)
            };
            let id = match config.fixed_id(label) {
                Some(id) if !slots.iter().any(|s| s.id == id) => id,
                _ => {
                    let mut id = if initial {
                        0
                    } else {
                        slots.iter().map(|s| s.id + 1).max().unwrap_or(0)
                    };
                    while taken(id, &slots) {
                        id += 1;
                    }
                    id
                }
            };
            slots.push(Arc::new(VirtualSlot::new(id, label.clone())));
            slots.sort_by_key(|s| s.id);
        }
    }

    fn add_member(
        &self,
        vslot: &VirtualSlot,
        modules: &[Arc<VendorModule>],
        module_index: usize,
        slot_id: CK_SLOT_ID,
        info: &CK_TOKEN_INFO,
    ) -> bool {
        let serial = trim_padded(&info.serialNumber);
        let mut members = self.members.write();
        if members
            .iter()
            .any(|m| m.module_index == module_index && m.slot_id == slot_id && m.serial == serial)
        {
            return false;
        }
        let member = Arc::new(Member {
            module: modules[module_index].clone(),
            module_index,
            slot_id,
            label: vslot.label.clone(),
            serial,
            up: AtomicBool::new(true),
            open_sessions: AtomicUsize::new(0),
            total_sessions: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_error: AtomicU64::new(0),
            link: Mutex::new(MemberLink::default()),
            index: members.len(),
        });
        log::info!(
            "WLD slot {} ({}): member {} added",
            vslot.id,
            vslot.label,
            member.describe()
        );
        members.push(member.clone());
        vslot.members.write().push(member);
        true
    }

    /// Lists every physical slot of every module in positional order.
    pub fn physical_slots(&self, modules: &[Arc<VendorModule>], usable: &[bool]) -> Vec<PhysicalSlot> {
        let mut out = Vec::new();
        for (index, module) in modules.iter().enumerate() {
            if !usable[index] {
                continue;
            }
            let Ok(slots) = module.slot_list(false) else {
                continue;
            };
            for slot_id in slots {
                let token = module
                    .slot_info(slot_id)
                    .ok()
                    .filter(|s| s.flags & CKF_TOKEN_PRESENT != 0)
                    .and_then(|_| module.token_info(slot_id).ok());
                let wld_slot = token.as_ref().and_then(|t| {
                    let serial = trim_padded(&t.serialNumber);
                    self.members
                        .read()
                        .iter()
                        .find(|m| {
                            m.module_index == index && m.slot_id == slot_id && m.serial == serial
                        })
                        .and_then(|m| {
                            self.slots
                                .read()
                                .iter()
                                .find(|s| s.label == m.label)
                                .map(|s| s.id)
                        })
                });
                out.push(PhysicalSlot {
                    position: out.len(),
                    module_name: module.name.clone(),
                    slot_id,
                    token,
                    wld_slot,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_trailing_padding_only() {
        let mut field = [b' '; 32];
        field[..5].copy_from_slice(b"WLD_A");
        assert_eq!(trim_padded(&field), "WLD_A");
        let mut leading = [b' '; 32];
        leading[1..6].copy_from_slice(b"WLD_A");
        assert_eq!(trim_padded(&leading), " WLD_A");
        assert_eq!(trim_padded(&[b' '; 32]), "");
    }

    #[test]
    fn serial_is_stable_hex() {
        let a = virtual_serial("WLD_A");
        assert_eq!(a, virtual_serial("WLD_A"));
        assert_ne!(a, virtual_serial("WLD_B"));
        assert!(a.iter().all(|b| b.is_ascii_hexdigit()));
    }

    fn config_with(text: &str) -> Config {
        Config::parse(text, std::path::Path::new("t.toml")).unwrap()
    }

    #[test]
    fn slot_ids_sorted_and_fixed() {
        let config = config_with(
            "[[module]]\nname = \"a\"\npath = \"/a\"\n[[wld.slot]]\nlabel = \"M\"\nid = 1\n",
        );
        let topology = Topology::new();
        let labels: Vec<String> = ["Z", "A", "M", "B"].iter().map(|s| s.to_string()).collect();
        let mut sorted = labels.clone();
        sorted.sort();
        topology.add_slots(&config, &sorted);
        let ids: Vec<(String, u64)> = topology
            .slots()
            .iter()
            .map(|s| (s.label.clone(), s.id))
            .collect();
        assert_eq!(
            ids,
            vec![
                ("A".to_string(), 0),
                ("M".to_string(), 1),
                ("B".to_string(), 2),
                ("Z".to_string(), 3)
            ]
        );

        topology.add_slots(&config, &["C".to_string()]);
        assert_eq!(topology.slot(4).unwrap().label, "C");
        assert_eq!(topology.slot(0).unwrap().label, "A");
        assert!(topology.slot(9).is_err());
    }
}
