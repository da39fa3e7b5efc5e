//! PKCS#11 client helpers on top of the `cryptoki` crate, for loading a
//! module in the test process and finding slots, sessions and keys.

use std::path::Path;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use super::env::ScopedEnv;
use super::p11kit::P11_KIT_SERVER_ADDRESS;
use super::paths;

/// Loads the PKCS#11 module at `path` and calls `C_Initialize` with
/// `CKF_OS_LOCKING_OK`.
pub fn load_initialized(path: &Path) -> Pkcs11 {
    let pkcs11 =
        Pkcs11::new(path).unwrap_or_else(|e| panic!("failed to load {}: {e}", path.display()));
    initialize(&pkcs11, path);
    pkcs11
}

/// Loads a new instance of `p11-kit-client.so` for the server at `address`
/// (`unix:path=<socket>`) and initializes it.
///
/// `p11-kit-client.so` 0.24.1 reads `P11_KIT_SERVER_ADDRESS` in
/// `C_GetFunctionList`, so the variable is set only while `Pkcs11::new` runs.
pub fn load_p11kit_client(address: &str) -> Pkcs11 {
    let path = paths::p11kit_client_module();
    let pkcs11 = {
        let _address = ScopedEnv::set(P11_KIT_SERVER_ADDRESS, address);
        Pkcs11::new(&path).unwrap_or_else(|e| panic!("failed to load {}: {e}", path.display()))
    };
    initialize(&pkcs11, &path);
    pkcs11
}

fn initialize(pkcs11: &Pkcs11, path: &Path) {
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap_or_else(|e| panic!("C_Initialize of {} failed: {e}", path.display()));
}

/// Returns the slots whose token has label `label`, in slot list order.
pub fn slots_with_label(pkcs11: &Pkcs11, label: &str) -> Vec<Slot> {
    pkcs11
        .get_slots_with_token()
        .expect("C_GetSlotList succeeds")
        .into_iter()
        .filter(|slot| {
            let info = pkcs11
                .get_token_info(*slot)
                .unwrap_or_else(|e| panic!("C_GetTokenInfo of slot {slot} failed: {e}"));
            info.token_initialized() && info.label() == label
        })
        .collect()
}

/// Returns the slot whose token has serial number `serial`.
pub fn slot_with_serial(pkcs11: &Pkcs11, serial: &str) -> Slot {
    let slots = pkcs11
        .get_slots_with_token()
        .expect("C_GetSlotList succeeds");
    let mut serials = Vec::new();
    for slot in slots {
        let info = pkcs11
            .get_token_info(slot)
            .unwrap_or_else(|e| panic!("C_GetTokenInfo of slot {slot} failed: {e}"));
        if info.token_initialized() && info.serial_number() == serial {
            return slot;
        }
        serials.push(info.serial_number().to_owned());
    }
    panic!("no token with serial number {serial} found among serial numbers {serials:?}");
}

/// Opens a read-only session on `slot` and logs in as the user.
pub fn user_session(pkcs11: &Pkcs11, slot: Slot, user_pin: &str) -> Session {
    let session = pkcs11
        .open_ro_session(slot)
        .unwrap_or_else(|e| panic!("C_OpenSession on slot {slot} failed: {e}"));
    session
        .login(UserType::User, Some(&AuthPin::from(user_pin)))
        .unwrap_or_else(|e| panic!("C_Login as user on slot {slot} failed: {e}"));
    session
}

/// Returns the one object of class `class` with label `label`, and panics
/// when there is none or more than one.
pub fn find_key(session: &Session, class: ObjectClass, label: &str) -> ObjectHandle {
    let template = [
        Attribute::Class(class),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    let objects = session
        .find_objects(&template)
        .unwrap_or_else(|e| panic!("C_FindObjects for {label} ({class}) failed: {e}"));
    match objects.as_slice() {
        [object] => *object,
        _ => panic!(
            "expected one object {label} ({class}), found {}",
            objects.len()
        ),
    }
}
