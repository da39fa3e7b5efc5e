//! Slot and token information of a WLD slot, synthesized from its members.
//!
//! The virtual token promises only what is true of every healthy member. A
//! capability flag is set when all members have it, a warning flag
//! (write-protected, PIN locked, ...) when any member has it, and each limit
//! is the tightest one among the members.

use super::slot::VirtualSlot;
use crate::error::{Result, Rv};
use crate::ffi::{pad, pad_bytes};
use cryptoki_sys::*;

/// Token flags that the virtual token has only when every member has them.
const ALL_FLAGS: CK_FLAGS = CKF_RNG
    | CKF_USER_PIN_INITIALIZED
    | CKF_RESTORE_KEY_NOT_NEEDED
    | CKF_CLOCK_ON_TOKEN
    | CKF_DUAL_CRYPTO_OPERATIONS
    | CKF_TOKEN_INITIALIZED;

/// Token flags that the virtual token has when any member has them.
const ANY_FLAGS: CK_FLAGS = CKF_WRITE_PROTECTED
    | CKF_LOGIN_REQUIRED
    | CKF_PROTECTED_AUTHENTICATION_PATH
    | CKF_SECONDARY_AUTHENTICATION
    | CKF_USER_PIN_COUNT_LOW
    | CKF_USER_PIN_FINAL_TRY
    | CKF_USER_PIN_LOCKED
    | CKF_USER_PIN_TO_BE_CHANGED
    | CKF_SO_PIN_COUNT_LOW
    | CKF_SO_PIN_FINAL_TRY
    | CKF_SO_PIN_LOCKED
    | CKF_SO_PIN_TO_BE_CHANGED
    | CKF_ERROR_STATE;

/// Returns the slot information of a WLD slot.
pub fn slot_info(slot: &VirtualSlot, version: CK_VERSION) -> CK_SLOT_INFO {
    let mut info = CK_SLOT_INFO {
        slotDescription: [0; 64],
        manufacturerID: [0; 32],
        // The token disappears when every member is down, so the slot
        // counts as one with a removable device.
        flags: CKF_REMOVABLE_DEVICE,
        hardwareVersion: version,
        firmwareVersion: version,
    };
    pad(
        &mut info.slotDescription,
        &format!("p11wld WLD slot {}", slot.label),
    );
    pad(&mut info.manufacturerID, "p11wld");
    if slot.token_present() {
        info.flags |= CKF_TOKEN_PRESENT;
    }
    info
}

/// Combines two counts where 0 means "effectively infinite" and
/// CK_UNAVAILABLE_INFORMATION means unknown, by `combine`.
fn combine_limit(
    a: CK_ULONG,
    b: CK_ULONG,
    combine: fn(CK_ULONG, CK_ULONG) -> CK_ULONG,
) -> CK_ULONG {
    if a == CK_UNAVAILABLE_INFORMATION || b == CK_UNAVAILABLE_INFORMATION {
        CK_UNAVAILABLE_INFORMATION
    } else if a == CK_EFFECTIVELY_INFINITE || b == CK_EFFECTIVELY_INFINITE {
        CK_EFFECTIVELY_INFINITE
    } else {
        combine(a, b)
    }
}

/// Returns the token information of a WLD slot's virtual token.
/// `sessions` and `rw_sessions` are the application's open sessions on it.
pub fn token_info(
    slot: &VirtualSlot,
    version: CK_VERSION,
    sessions: usize,
    rw_sessions: usize,
) -> Result<CK_TOKEN_INFO> {
    let mut infos = Vec::new();
    for member in slot.healthy_members() {
        match member.module.token_info(member.slot_id) {
            Ok(info) => infos.push(info),
            Err(rv) => log::warn!("member {}: C_GetTokenInfo failed: {rv}", member.describe()),
        }
    }
    let Some(first) = infos.first() else {
        return Err(Rv(CKR_TOKEN_NOT_PRESENT));
    };

    let mut info = *first;
    let mut all = CK_FLAGS::MAX;
    let mut any = 0;
    for member in &infos {
        all &= member.flags;
        any |= member.flags;
    }
    for member in &infos[1..] {
        let sum = CK_ULONG::saturating_add;
        info.ulMaxSessionCount =
            combine_limit(info.ulMaxSessionCount, member.ulMaxSessionCount, sum);
        info.ulMaxRwSessionCount =
            combine_limit(info.ulMaxRwSessionCount, member.ulMaxRwSessionCount, sum);
        info.ulMaxPinLen = info.ulMaxPinLen.min(member.ulMaxPinLen);
        info.ulMinPinLen = info.ulMinPinLen.max(member.ulMinPinLen);
        let min = std::cmp::min::<CK_ULONG>;
        info.ulTotalPublicMemory =
            combine_limit(info.ulTotalPublicMemory, member.ulTotalPublicMemory, min);
        info.ulFreePublicMemory =
            combine_limit(info.ulFreePublicMemory, member.ulFreePublicMemory, min);
        info.ulTotalPrivateMemory =
            combine_limit(info.ulTotalPrivateMemory, member.ulTotalPrivateMemory, min);
        info.ulFreePrivateMemory =
            combine_limit(info.ulFreePrivateMemory, member.ulFreePrivateMemory, min);
    }
    info.flags = (all & ALL_FLAGS) | (any & ANY_FLAGS) | CKF_TOKEN_INITIALIZED;
    pad_bytes(&mut info.label, &slot.label_bytes);
    pad(&mut info.manufacturerID, "p11wld");
    pad(&mut info.model, "WLD slot");
    info.serialNumber = slot.serial;
    info.ulSessionCount = sessions as CK_ULONG;
    info.ulRwSessionCount = rw_sessions as CK_ULONG;
    info.hardwareVersion = version;
    info.firmwareVersion = version;
    if info.flags & CKF_CLOCK_ON_TOKEN == 0 {
        info.utcTime = [b' '; 16];
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_combine_with_special_values() {
        let sum = CK_ULONG::saturating_add;
        assert_eq!(combine_limit(10, 20, sum), 30);
        assert_eq!(
            combine_limit(10, CK_EFFECTIVELY_INFINITE, sum),
            CK_EFFECTIVELY_INFINITE
        );
        assert_eq!(
            combine_limit(CK_UNAVAILABLE_INFORMATION, 0, sum),
            CK_UNAVAILABLE_INFORMATION
        );
        assert_eq!(combine_limit(10, 20, std::cmp::min), 10);
    }

    #[test]
    fn slot_without_members_has_no_token() {
        let slot = VirtualSlot::new(4, "WLD_A".into());
        let version = CK_VERSION { major: 0, minor: 1 };
        let info = slot_info(&slot, version);
        assert_eq!(info.flags & CKF_TOKEN_PRESENT, 0);
        assert_eq!(&info.slotDescription[..22], b"p11wld WLD slot WLD_A ");
        let token = token_info(&slot, version, 0, 0);
        assert_eq!(token.err(), Some(Rv(CKR_TOKEN_NOT_PRESENT)));
    }
}
