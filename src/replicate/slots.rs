//! Physical slots in positional order, and the slot references callers
//! use to name them.

use super::display::escape_nonprintable;
use crate::instance::Instance;
use crate::vendor::VendorModule;
use crate::wld::topology::trim_padded;
use cryptoki_sys::*;
use std::sync::Arc;

/// One physical slot of one usable module.
#[derive(Clone)]
pub struct PhysicalSlot {
    /// Module order from the configuration, then the module's slot order.
    pub position: usize,
    pub module_index: usize,
    pub module: Arc<VendorModule>,
    pub slot_id: CK_SLOT_ID,
    /// `None` when no token is present.
    pub token: Option<TokenState>,
    /// The WLD slot the token belongs to.
    pub wld_slot: Option<CK_SLOT_ID>,
}

/// A token as C_GetTokenInfo reports it, padding removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenState {
    /// The label's bytes as the token stores them, which may not be
    /// UTF-8, so that replication copies them exactly.
    pub label: Vec<u8>,
    pub serial: String,
    pub initialized: bool,
    pub user_pin_initialized: bool,
}

impl PhysicalSlot {
    pub fn serial(&self) -> &str {
        self.token.as_ref().map_or("", |t| t.serial.as_str())
    }

    pub fn label(&self) -> &[u8] {
        self.token.as_ref().map_or(&[], |t| t.label.as_slice())
    }

    pub fn is_initialized(&self) -> bool {
        self.token.as_ref().is_some_and(|t| t.initialized)
    }

    /// Names the slot for messages: position, module, vendor slot, serial.
    pub fn describe(&self) -> String {
        let serial = self.serial();
        let serial = if serial.is_empty() { "none" } else { serial };
        format!(
            "position {} ({} slot {:#x}, serial {serial})",
            self.position, self.module.name, self.slot_id
        )
    }
}

/// Removes the padding of a 32-byte label field: trailing blanks, and the
/// NULs some vendors write. The other bytes are kept as they are.
pub fn trim_label(field: &[u8]) -> &[u8] {
    let end = field
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(0, |p| p + 1);
    &field[..end]
}

/// Reads a token's state; an uninitialized token's label is empty.
pub fn token_state(module: &VendorModule, slot_id: CK_SLOT_ID) -> Option<TokenState> {
    let present = module
        .slot_info(slot_id)
        .is_ok_and(|info| info.flags & CKF_TOKEN_PRESENT != 0);
    if !present {
        return None;
    }
    let info = match module.token_info(slot_id) {
        Ok(info) => info,
        Err(rv) => {
            log::warn!(
                "module {} slot {slot_id}: C_GetTokenInfo failed: {rv}",
                module.name
            );
            return None;
        }
    };
    let initialized = info.flags & CKF_TOKEN_INITIALIZED != 0;
    Some(TokenState {
        label: if initialized {
            trim_label(&info.label).to_vec()
        } else {
            Vec::new()
        },
        serial: trim_padded(&info.serialNumber),
        initialized,
        user_pin_initialized: info.flags & CKF_USER_PIN_INITIALIZED != 0,
    })
}

/// The reachability of a configured module, as the scan found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Initialized, and C_GetSlotList listed this many slots, at least one.
    Up(usize),
    /// C_Initialize failed, so this process never learns its tokens.
    NotInitialized,
    /// C_GetSlotList failed with this code, or listed no slot (CKR_OK).
    NoSlots(CK_RV),
}

/// One configured module as the scan found it.
#[derive(Clone)]
pub struct ModuleState {
    pub module: Arc<VendorModule>,
    pub reach: Reach,
    /// Members of WLD slots on the module, and how many of them are down.
    pub members: usize,
    pub members_down: usize,
}

impl ModuleState {
    /// Describes why the module is not reachable, or returns `None` when
    /// it is.
    pub fn unreachable_reason(&self) -> Option<String> {
        let name = &self.module.name;
        match self.reach {
            Reach::Up(_) => None,
            Reach::NotInitialized => Some(format!(
                "module {name} is not reachable (C_Initialize failed)"
            )),
            Reach::NoSlots(CKR_OK) => {
                Some(format!("module {name} is not reachable (it lists no slot)"))
            }
            Reach::NoSlots(rv) => Some(format!(
                "module {name} is not reachable (C_GetSlotList failed: {})",
                crate::error::ckr_name(rv)
            )),
        }
    }
}

/// The physical slots in positional order, and the state of every
/// configured module, in configuration order.
pub struct Scan {
    pub slots: Vec<PhysicalSlot>,
    pub modules: Vec<ModuleState>,
}

/// Lists every physical slot of every usable module, in positional order.
/// A module whose slot list cannot be read is left out, so the positions
/// after it shift, as they would if its device were unplugged.
pub fn scan(instance: &Instance) -> Scan {
    let members = instance.topology.members();
    let mut slots = Vec::new();
    let mut modules = Vec::new();
    for (module_index, module) in instance.modules.iter().enumerate() {
        let own: Vec<_> = members
            .iter()
            .filter(|m| m.module_index == module_index)
            .collect();
        let mut state = ModuleState {
            module: module.clone(),
            reach: Reach::NotInitialized,
            members: own.len(),
            members_down: own.iter().filter(|m| !m.is_up()).count(),
        };
        if !module.is_usable() {
            modules.push(state);
            continue;
        }
        let ids = match module.slot_list(false) {
            Ok(ids) => ids,
            Err(rv) => {
                log::warn!("module {}: C_GetSlotList failed: {rv}", module.name);
                state.reach = Reach::NoSlots(rv.0);
                modules.push(state);
                continue;
            }
        };
        state.reach = if ids.is_empty() {
            Reach::NoSlots(CKR_OK)
        } else {
            Reach::Up(ids.len())
        };
        modules.push(state);
        for slot_id in ids {
            let token = token_state(module, slot_id);
            let wld_slot = token.as_ref().and_then(|token| {
                own.iter()
                    .find(|m| m.slot_id == slot_id && m.serial == token.serial && token.initialized)
                    .map(|m| m.wld_slot)
            });
            slots.push(PhysicalSlot {
                position: slots.len(),
                module_index,
                module: module.clone(),
                slot_id,
                token,
                wld_slot,
            });
        }
    }
    Scan { slots, modules }
}

/// Lists the reasons why the members the scan found in `wld_slot` may not
/// be all of them. Each configured module that is not reachable is one,
/// because its tokens may be members. Each member that is down or that the
/// scan did not find is another.
pub fn unreachable_members(instance: &Instance, scan: &Scan, wld_slot: CK_SLOT_ID) -> Vec<String> {
    let mut reasons: Vec<String> = scan
        .modules
        .iter()
        .filter_map(ModuleState::unreachable_reason)
        .collect();
    for member in instance.topology.members() {
        if member.wld_slot != wld_slot {
            continue;
        }
        let found = scan
            .slots
            .iter()
            .any(|s| s.module_index == member.module_index && s.serial() == member.serial);
        if !member.is_up() {
            reasons.push(format!(
                "member {} of WLD slot {wld_slot} is down",
                member.describe()
            ));
        } else if !found {
            reasons.push(format!(
                "member {} of WLD slot {wld_slot} is not found",
                member.describe()
            ));
        }
    }
    reasons
}

/// A caller's name for a physical slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotRef {
    /// A position and the serial expected there; an empty serial expects
    /// an uninitialized token without one. A non-empty `module` must be
    /// the name of the position's module, and `slot_id`, when set, its
    /// vendor slot id.
    Position {
        position: usize,
        serial: String,
        module: String,
        slot_id: Option<CK_SLOT_ID>,
    },
    /// A token serial.
    Serial(String),
}

impl std::fmt::Display for SlotRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlotRef::Position {
                position,
                serial,
                module,
                slot_id,
            } => {
                write!(f, "position {position} (expected: ")?;
                if serial.is_empty() {
                    write!(f, "uninitialized, no serial")?;
                } else {
                    write!(f, "serial {serial}")?;
                }
                if !module.is_empty() {
                    write!(f, ", module {module}")?;
                }
                if let Some(slot_id) = slot_id {
                    write!(f, ", vendor slot {slot_id:#x}")?;
                }
                write!(f, ")")
            }
            SlotRef::Serial(serial) => write!(f, "serial {serial}"),
        }
    }
}

/// Finds the slot `reference` names, or explains why none matches.
pub fn resolve<'a>(
    slots: &'a [PhysicalSlot],
    reference: &SlotRef,
) -> Result<&'a PhysicalSlot, String> {
    match reference {
        SlotRef::Position {
            position,
            serial,
            module,
            slot_id,
        } => {
            let slot = slots.get(*position).ok_or_else(|| {
                format!(
                    "{reference}: no such position; {} physical slots are listed now",
                    slots.len()
                )
            })?;
            if !module.is_empty() && slot.module.name != *module {
                return Err(format!(
                    "{reference}: the slot there now belongs to module {}, not {module}; \
                     positions shift when a device drops out, so list the slots again",
                    slot.module.name
                ));
            }
            if slot_id.is_some_and(|id| id != slot.slot_id) {
                return Err(format!(
                    "{reference}: the slot there now is {} slot {:#x}; positions shift when a \
                     device drops out, so list the slots again",
                    slot.module.name, slot.slot_id
                ));
            }
            let Some(token) = &slot.token else {
                return Err(format!("{reference}: the slot has no token now"));
            };
            if token.serial != *serial {
                let found = if token.serial.is_empty() {
                    "no serial".to_owned()
                } else {
                    format!("serial {}", token.serial)
                };
                return Err(format!(
                    "{reference}: the token there now has {found} ({} slot {:#x}); positions \
                     shift when a device drops out, so list the slots again",
                    slot.module.name, slot.slot_id
                ));
            }
            if serial.is_empty() && token.initialized {
                return Err(format!(
                    "{reference}: the token there is initialized (label \"{}\")",
                    escape_nonprintable(&token.label)
                ));
            }
            Ok(slot)
        }
        SlotRef::Serial(serial) => {
            if serial.is_empty() {
                return Err("an empty serial names no token".to_owned());
            }
            let found: Vec<&PhysicalSlot> = slots.iter().filter(|s| s.serial() == serial).collect();
            match found.as_slice() {
                [slot] => Ok(slot),
                [] => Err(format!("{reference}: no token with this serial is present")),
                _ => Err(format!(
                    "{reference}: {} slots show a token with this serial; name it by position",
                    found.len()
                )),
            }
        }
    }
}
