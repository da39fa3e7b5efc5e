//! How tokens are grouped into WLD slots, and which ids the slots get.
//!
//! Every initialized token whose label the configuration exposes becomes a
//! member of the WLD slot of that label. Labels compare with their trailing
//! blanks removed, and only those: " A" and "A" are two labels.
//!
//! Slot ids: a label with an id fixed in `[[wld.slot]]` gets that id. At the
//! first scan the other labels, in byte order, take the lowest ids that are
//! neither fixed nor taken. Labels found by a later scan take the ids after
//! the highest one in use. An id never changes while the module is
//! initialized, and a slot whose members are all gone stays listed.

use super::member::{FoundToken, Member, MAX_MEMBERS_PER_SLOT};
use super::slot::VirtualSlot;
use crate::config::Config;
use crate::error::{Result, Rv};
use crate::vendor::VendorModule;
use cryptoki_sys::*;
use parking_lot::{Mutex, RwLock};
use std::sync::Arc;

/// Trims the blank padding of a fixed-width PKCS#11 text field. Only
/// trailing blanks (and NULs some vendors write) are padding.
pub fn trim_padded_bytes(field: &[u8]) -> &[u8] {
    let end = field
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(0, |p| p + 1);
    &field[..end]
}

/// Trims the padding of a text field, see [`trim_padded_bytes`], for
/// display: bytes that are not UTF-8 show as U+FFFD.
pub fn trim_padded(field: &[u8]) -> String {
    String::from_utf8_lossy(trim_padded_bytes(field)).into_owned()
}

/// Every member and virtual slot of an initialized module.
pub struct Topology {
    slots: RwLock<Vec<Arc<VirtualSlot>>>,
    members: RwLock<Vec<Arc<Member>>>,
    refresh_lock: Mutex<()>,
}

impl Default for Topology {
    fn default() -> Self {
        Topology::new()
    }
}

impl Topology {
    pub fn new() -> Topology {
        Topology {
            slots: RwLock::new(Vec::new()),
            members: RwLock::new(Vec::new()),
            refresh_lock: Mutex::new(()),
        }
    }

    /// Returns the slots, sorted by id.
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

    /// Scans the usable modules for tokens and adds the ones not seen yet,
    /// as members of existing slots or as new slots. Returns the slots that
    /// gained members.
    ///
    /// A module whose members are all down is left out, because a hung
    /// one would block the scan. The health thread scans it again when a
    /// member comes back.
    pub fn refresh(&self, config: &Config, modules: &[Arc<VendorModule>]) -> Vec<Arc<VirtualSlot>> {
        let members = self.members();
        let answering: Vec<usize> = (0..modules.len())
            .filter(|&index| {
                let mut own = members
                    .iter()
                    .filter(|m| m.module_index == index)
                    .peekable();
                own.peek().is_none() || own.any(|m| m.is_up())
            })
            .collect();
        self.refresh_modules(config, modules, &answering)
    }

    /// Scans the modules at `indexes`; see [`Topology::refresh`].
    pub fn refresh_modules(
        &self,
        config: &Config,
        modules: &[Arc<VendorModule>],
        indexes: &[usize],
    ) -> Vec<Arc<VirtualSlot>> {
        // The vendor calls run outside the lock: a hung module must not
        // block another thread's scan of the others.
        let found = scan(config, modules, indexes);
        let _guard = self.refresh_lock.lock();

        let mut labels: Vec<Vec<u8>> = found.iter().map(|t| t.label.clone()).collect();
        labels.extend(
            config
                .wld
                .labels
                .iter()
                .flatten()
                .map(|l| l.get_ref().as_bytes().to_vec()),
        );
        labels.sort();
        labels.dedup();
        self.add_slots(config, &labels);

        let mut changed: Vec<Arc<VirtualSlot>> = Vec::new();
        for token in found {
            let Some(slot) = self
                .slots
                .read()
                .iter()
                .find(|s| s.label_bytes == token.label)
                .cloned()
            else {
                continue;
            };
            if self.add_member(&slot, modules, token) && !changed.iter().any(|s| s.id == slot.id) {
                changed.push(slot);
            }
        }
        for slot in &changed {
            slot.refresh_mechanisms();
        }
        changed
    }

    /// Adds a slot for each label that has none, with its fixed id or the
    /// next free one.
    fn add_slots(&self, config: &Config, labels: &[Vec<u8>]) {
        let mut slots = self.slots.write();
        let first_scan = slots.is_empty();
        let reserved: Vec<CK_SLOT_ID> = config.wld.slots.iter().map(|s| *s.id.get_ref()).collect();

        // Fixed ids first, so a label sorted earlier cannot take one.
        let (fixed, free): (Vec<&Vec<u8>>, Vec<&Vec<u8>>) = labels
            .iter()
            .filter(|label| !slots.iter().any(|s| &s.label_bytes == *label))
            .partition(|label| config.fixed_id(label).is_some());
        for label in fixed {
            let id = config.fixed_id(label).unwrap_or_default();
            slots.push(Arc::new(VirtualSlot::new(id, label.clone())));
        }

        let mut next = if first_scan {
            0
        } else {
            slots.iter().map(|s| s.id + 1).max().unwrap_or(0)
        };
        for label in free {
            while reserved.contains(&next) || slots.iter().any(|s| s.id == next) {
                next += 1;
            }
            slots.push(Arc::new(VirtualSlot::new(next, label.clone())));
            next += 1;
        }
        slots.sort_by_key(|s| s.id);
    }

    /// Adds a token to a slot unless it is a member already. Returns whether
    /// it was added.
    fn add_member(
        &self,
        slot: &VirtualSlot,
        modules: &[Arc<VendorModule>],
        token: FoundToken,
    ) -> bool {
        let mut members = self.members.write();
        let existing = members.iter().find(|m| {
            m.module_index == token.module_index
                && m.slot_id == token.slot_id
                && m.serial == token.serial
        });
        if existing.is_some() {
            return false;
        }
        let in_slot: Vec<&Arc<Member>> = members.iter().filter(|m| m.wld_slot == slot.id).collect();
        if !token.serial.is_empty() && in_slot.iter().any(|m| m.serial == token.serial) {
            log::warn!(
                "WLD slot {} ({}): token serial {} is seen again through module {} slot {}; \
                 the second path is ignored",
                slot.id,
                slot.label,
                token.serial,
                modules[token.module_index].name,
                token.slot_id
            );
            return false;
        }
        if in_slot.len() >= MAX_MEMBERS_PER_SLOT {
            log::error!(
                "WLD slot {} ({}): already has {MAX_MEMBERS_PER_SLOT} members; token serial {} \
                 on module {} is not added",
                slot.id,
                slot.label,
                token.serial,
                modules[token.module_index].name
            );
            return false;
        }
        let module = modules[token.module_index].clone();
        let member = Arc::new(Member::new(
            module,
            token,
            slot.id,
            members.len(),
            in_slot.len(),
        ));
        log::info!(
            "WLD slot {} ({}): member {} added",
            slot.id,
            slot.label,
            member.describe()
        );
        members.push(member.clone());
        slot.add_member(member);
        true
    }
}

/// Lists the initialized tokens whose label the configuration exposes, of
/// the usable modules at `indexes`.
fn scan(config: &Config, modules: &[Arc<VendorModule>], indexes: &[usize]) -> Vec<FoundToken> {
    let mut found = Vec::new();
    for &module_index in indexes {
        let module = &modules[module_index];
        if !module.is_usable() {
            continue;
        }
        let slots = match module.slot_list(true) {
            Ok(slots) => slots,
            Err(rv) => {
                log::error!("module {}: C_GetSlotList failed: {rv}", module.name);
                continue;
            }
        };
        for slot_id in slots {
            let info = match module.token_info(slot_id) {
                Ok(info) => info,
                Err(rv) => {
                    log::warn!(
                        "module {} slot {slot_id}: C_GetTokenInfo failed: {rv}",
                        module.name
                    );
                    continue;
                }
            };
            if info.flags & CKF_TOKEN_INITIALIZED == 0 {
                continue;
            }
            let label = trim_padded_bytes(&info.label).to_vec();
            if !config.exposes(&label) {
                continue;
            }
            found.push(FoundToken {
                module_index,
                slot_id,
                label,
                serial: trim_padded(&info.serialNumber),
            });
        }
    }
    found
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

    fn config_with(text: &str) -> Config {
        Config::parse(text, std::path::Path::new("t.toml")).unwrap()
    }

    fn ids(topology: &Topology) -> Vec<(String, CK_SLOT_ID)> {
        topology
            .slots()
            .iter()
            .map(|s| (s.label.clone(), s.id))
            .collect()
    }

    #[test]
    fn slot_ids_sorted_and_fixed() {
        let config = config_with(
            "[[module]]\nname = \"a\"\npath = \"/a\"\n[[wld.slot]]\nlabel = \"M\"\nid = 1\n",
        );
        let topology = Topology::new();
        let labels: Vec<Vec<u8>> = ["A", "B", "M", "Z"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        topology.add_slots(&config, &labels);
        let expected = vec![
            ("A".to_string(), 0),
            ("M".to_string(), 1),
            ("B".to_string(), 2),
            ("Z".to_string(), 3),
        ];
        assert_eq!(ids(&topology), expected);
    }

    #[test]
    fn later_labels_take_ids_after_highest() {
        let config = config_with("[[module]]\nname = \"a\"\npath = \"/a\"\n");
        let topology = Topology::new();
        topology.add_slots(&config, &[b"B".to_vec()]);
        topology.add_slots(&config, &[b"A".to_vec(), b"B".to_vec()]);
        assert_eq!(topology.slot(0).unwrap().label, "B");
        assert_eq!(topology.slot(1).unwrap().label, "A");
        assert_eq!(topology.slot(7).err(), Some(Rv(CKR_SLOT_ID_INVALID)));
    }

    #[test]
    fn fixed_id_beyond_others_is_skipped_by_them() {
        let config = config_with(
            "[[module]]\nname = \"a\"\npath = \"/a\"\n[[wld.slot]]\nlabel = \"Z\"\nid = 0\n",
        );
        let topology = Topology::new();
        topology.add_slots(&config, &[b"A".to_vec(), b"Z".to_vec()]);
        assert_eq!(
            ids(&topology),
            vec![("Z".to_string(), 0), ("A".to_string(), 1)]
        );
    }
}
