//! General-purpose functions: initialization, library information.

use super::{check_out, pad};
use crate::error::{Result, Rv};
use crate::instance::{self, enter};
use cryptoki_sys::*;

/// # Safety
/// `pInitArgs` is NULL or points to a CK_C_INITIALIZE_ARGS.
pub(super) unsafe extern "C" fn C_Initialize(pInitArgs: CK_VOID_PTR) -> CK_RV {
    // SAFETY: forwarded from the caller's contract.
    unsafe { instance::initialize(pInitArgs.cast()) }
}

pub(super) extern "C" fn C_Finalize(pReserved: CK_VOID_PTR) -> CK_RV {
    instance::finalize(pReserved)
}

fn library_info(pInfo: *mut CK_INFO, version: CK_VERSION) -> Result<()> {
    check_out(pInfo)?;
    let mut info = CK_INFO {
        cryptokiVersion: version,
        manufacturerID: [0; 32],
        flags: 0,
        libraryDescription: [0; 32],
        libraryVersion: library_version(),
    };
    pad(&mut info.manufacturerID, "p11wld");
    pad(&mut info.libraryDescription, "p11wld WLD slots");
    // SAFETY: checked non-NULL; the caller passes a CK_INFO.
    unsafe { pInfo.write(info) };
    Ok(())
}

/// The crate version as a CK_VERSION.
pub(crate) fn library_version() -> CK_VERSION {
    CK_VERSION {
        major: env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap_or(0),
        minor: env!("CARGO_PKG_VERSION_MINOR").parse().unwrap_or(0),
    }
}

/// `C_GetInfo` of the PKCS#11 2.40 function list.
pub(super) extern "C" fn C_GetInfo(pInfo: *mut CK_INFO) -> CK_RV {
    enter("C_GetInfo", |_| {
        library_info(
            pInfo,
            CK_VERSION {
                major: 2,
                minor: 40,
            },
        )
    })
}

/// `C_GetInfo` of the PKCS#11 3.0 interface.
pub(super) extern "C" fn C_GetInfo_3_0(pInfo: *mut CK_INFO) -> CK_RV {
    enter("C_GetInfo", |_| {
        library_info(pInfo, CK_VERSION { major: 3, minor: 0 })
    })
}

/// The legacy parallel-function calls: PKCS#11 says they return
/// CKR_FUNCTION_NOT_PARALLEL.
pub(super) extern "C" fn C_GetFunctionStatus(hSession: CK_SESSION_HANDLE) -> CK_RV {
    enter("C_GetFunctionStatus", |instance| {
        instance
            .sessions
            .with(hSession, |_| Err(Rv(CKR_FUNCTION_NOT_PARALLEL)))
    })
}

pub(super) extern "C" fn C_CancelFunction(hSession: CK_SESSION_HANDLE) -> CK_RV {
    enter("C_CancelFunction", |instance| {
        instance
            .sessions
            .with(hSession, |_| Err(Rv(CKR_FUNCTION_NOT_PARALLEL)))
    })
}
