//! Which return codes mean that a member is gone.

use cryptoki_sys::*;

/// Returns whether `rv`, returned by a member for a call on a session the
/// application did not close, means that the device or token is gone,
/// rather than that the request was wrong.
///
/// CKR_GENERAL_ERROR counts: every member answered before, when its token
/// was scanned. CKR_SESSION_HANDLE_INVALID and CKR_SESSION_CLOSED count
/// because the proxy closes real sessions only when the application closes
/// the virtual ones, so a real session that vanished means the vendor lost
/// its state (p11-kit-client.so after its server restarted, for one).
pub fn is_member_failure(rv: CK_RV) -> bool {
    matches!(
        rv,
        CKR_DEVICE_ERROR
            | CKR_DEVICE_REMOVED
            | CKR_DEVICE_MEMORY
            | CKR_TOKEN_NOT_PRESENT
            | CKR_TOKEN_NOT_RECOGNIZED
            | CKR_GENERAL_ERROR
            | CKR_SESSION_HANDLE_INVALID
            | CKR_SESSION_CLOSED
            | CKR_CRYPTOKI_NOT_INITIALIZED
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_codes_are_failures() {
        for rv in [
            CKR_DEVICE_ERROR,
            CKR_DEVICE_REMOVED,
            CKR_TOKEN_NOT_PRESENT,
            CKR_DEVICE_MEMORY,
            CKR_GENERAL_ERROR,
            CKR_SESSION_HANDLE_INVALID,
            CKR_SESSION_CLOSED,
        ] {
            assert!(is_member_failure(rv), "{rv:#x}");
        }
    }

    #[test]
    fn request_codes_are_not_failures() {
        for rv in [
            CKR_OK,
            CKR_ARGUMENTS_BAD,
            CKR_PIN_INCORRECT,
            CKR_KEY_HANDLE_INVALID,
            CKR_MECHANISM_INVALID,
            CKR_BUFFER_TOO_SMALL,
            CKR_OBJECT_HANDLE_INVALID,
            CKR_USER_NOT_LOGGED_IN,
        ] {
            assert!(!is_member_failure(rv), "{rv:#x}");
        }
    }
}
