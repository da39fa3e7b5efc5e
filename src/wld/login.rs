//! Login per application and WLD token.
//!
//! PKCS#11 logs an application into a token, not into a session. A WLD token
//! is several real tokens, so a login is applied to every member the
//! application has sessions on, and to each member that gets a session
//! later. A new PIN is tried on the calling session's member only; it is
//! kept, zeroized when dropped, only once that member accepted it, so a
//! wrong PIN never counts against several HSMs.
//!
//! Each login and logout starts a new epoch. A member is logged in when its
//! `login_epoch` equals the slot's epoch, so a logout invalidates every
//! member at once without touching them.

use super::member::Member;
use super::slot::VirtualSlot;
use crate::error::{Result, Rv};
use crate::vcall;
use cryptoki_sys::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use zeroize::Zeroizing;

/// The application's login and session counts on one WLD slot.
#[derive(Default)]
pub struct LoginState {
    pub user: Option<CK_USER_TYPE>,
    pin: Credentials,
    pub epoch: u64,
    pub sessions: usize,
    pub rw_sessions: usize,
}

/// A user type and PIN to log a member in with.
#[derive(Clone, Default)]
pub struct Credentials {
    pub user: CK_USER_TYPE,
    /// `None` stands for a NULL PIN: the token reads it on its own
    /// protected authentication path. Shared, so each new session takes a
    /// reference instead of a copy; zeroized when the last one drops.
    pin: Option<Arc<Zeroizing<Vec<u8>>>>,
    pub epoch: u64,
}

impl Credentials {
    pub fn new(user: CK_USER_TYPE, pin: Option<&[u8]>, epoch: u64) -> Credentials {
        Credentials {
            user,
            pin: pin.map(|p| Arc::new(Zeroizing::new(p.to_vec()))),
            epoch,
        }
    }

    /// Logs `member` in through one of its sessions. A member that already
    /// is logged in as this user counts as a success.
    pub fn apply(&self, member: &Member, session: CK_SESSION_HANDLE) -> Result<()> {
        let (pin_ptr, pin_len) = pin_arguments(self.pin.as_ref().map(|pin| pin.as_slice()));
        let rv = vcall!(member.module, C_Login(session, self.user, pin_ptr, pin_len));
        match rv {
            CKR_OK | CKR_USER_ALREADY_LOGGED_IN => {
                member.login_epoch.store(self.epoch, Ordering::Release);
                Ok(())
            }
            other => Err(Rv(other)),
        }
    }
}

/// A byte for an empty PIN to point at.
static EMPTY_PIN: [u8; 1] = [0];

/// Returns the `pPin` and `ulPinLen` arguments of C_Login for `pin`. An
/// empty PIN is passed as a valid pointer with length 0, because a NULL
/// `pPin` requests the token's protected authentication path instead.
fn pin_arguments(pin: Option<&[u8]>) -> (*mut CK_UTF8CHAR, CK_ULONG) {
    match pin {
        Some([]) => (EMPTY_PIN.as_ptr().cast_mut(), 0),
        Some(pin) => (pin.as_ptr().cast_mut(), pin.len() as CK_ULONG),
        None => (std::ptr::null_mut(), 0),
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The PIN never reaches a log line.
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl LoginState {
    fn credentials(&self) -> Option<Credentials> {
        self.user.map(|_| self.pin.clone())
    }

    fn clear(&mut self) {
        self.user = None;
        self.pin = Credentials::default();
        self.epoch += 1;
    }
}

/// Counts a new session on `slot` and returns the credentials its member
/// must be logged in with, if the application is logged in.
pub fn reserve_session(slot: &VirtualSlot, rw: bool) -> Result<Option<Credentials>> {
    let mut state = slot.login.lock();
    if state.user == Some(CKU_SO) && !rw {
        return Err(Rv(CKR_SESSION_READ_WRITE_SO_EXISTS));
    }
    state.sessions += 1;
    if rw {
        state.rw_sessions += 1;
    }
    Ok(state.credentials())
}

/// Uncounts a session. When it was the slot's last one, forgets the login
/// and closes the service sessions, so every member logs the application
/// out as PKCS#11 prescribes when its last session closes.
pub fn release_session(slot: &VirtualSlot, rw: bool) {
    let last = {
        let mut state = slot.login.lock();
        state.sessions = state.sessions.saturating_sub(1);
        if rw {
            state.rw_sessions = state.rw_sessions.saturating_sub(1);
        }
        let last = state.sessions == 0;
        if last && state.user.is_some() {
            state.clear();
        }
        last
    };
    if last {
        for member in slot.members() {
            member.close_service();
            member.login_epoch.store(0, Ordering::Release);
        }
    }
}

/// Logs `member` out when it comes back logged in at an epoch that is not
/// the slot's login any more: the application logged out, or in again,
/// while the member was down.
pub fn reconcile(slot: &VirtualSlot, member: &Member) {
    let epoch = member.login_epoch.load(Ordering::Acquire);
    if epoch == 0 {
        return;
    }
    let current = {
        let state = slot.login.lock();
        state.user.map(|_| state.epoch)
    };
    if current == Some(epoch) {
        return;
    }
    member.login_epoch.store(0, Ordering::Release);
    let result = member.with_service(|service| Rv::check(vcall!(member.module, C_Logout(service))));
    match result {
        Ok(()) | Err(Rv(CKR_USER_NOT_LOGGED_IN)) => {}
        Err(rv) => log::warn!("member {}: C_Logout failed: {rv}", member.describe()),
    }
    member.object_handles_dropped();
}

/// Whether `rv` says that a member rejected a PIN.
pub fn is_pin_error(rv: CK_RV) -> bool {
    matches!(
        rv,
        CKR_PIN_INCORRECT | CKR_PIN_INVALID | CKR_PIN_LEN_RANGE | CKR_PIN_EXPIRED | CKR_PIN_LOCKED
    )
}

/// Returns the credentials a member must be logged in with, if any.
pub fn current(slot: &VirtualSlot) -> Option<Credentials> {
    slot.login.lock().credentials()
}

/// Returns the session state PKCS#11 defines for a session of `slot`.
pub fn session_state(slot: &VirtualSlot, rw: bool) -> CK_STATE {
    let user = slot.login.lock().user;
    match (user, rw) {
        (Some(CKU_SO), _) => CKS_RW_SO_FUNCTIONS,
        (Some(_), true) => CKS_RW_USER_FUNCTIONS,
        (Some(_), false) => CKS_RO_USER_FUNCTIONS,
        (None, true) => CKS_RW_PUBLIC_SESSION,
        (None, false) => CKS_RO_PUBLIC_SESSION,
    }
}

/// Logs the application in on `slot`, trying the PIN on the member of the
/// calling session (`member`, through its real session `session`) first,
/// then on every other member that has sessions of the application.
pub fn login(
    slot: &VirtualSlot,
    member: &Member,
    session: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: Option<&[u8]>,
) -> Result<()> {
    if user == CKU_CONTEXT_SPECIFIC {
        // Re-authentication for one operation of one session concerns the
        // member that runs the operation only. It changes no login state,
        // so the member keeps its login epoch and C_Logout still reaches it.
        let (pin_ptr, pin_len) = pin_arguments(pin);
        return Rv::check(vcall!(
            member.module,
            C_Login(session, user, pin_ptr, pin_len)
        ));
    }
    if user != CKU_USER && user != CKU_SO {
        return Err(Rv(CKR_USER_TYPE_INVALID));
    }

    let _serial = slot.login_serial.lock();
    let epoch = {
        let state = slot.login.lock();
        match state.user {
            Some(current) if current == user => return Err(Rv(CKR_USER_ALREADY_LOGGED_IN)),
            Some(_) => return Err(Rv(CKR_USER_ANOTHER_ALREADY_LOGGED_IN)),
            None => {}
        }
        if user == CKU_SO && state.sessions > state.rw_sessions {
            return Err(Rv(CKR_SESSION_READ_ONLY_EXISTS));
        }
        state.epoch + 1
    };

    let credentials = Credentials::new(user, pin, epoch);
    credentials.apply(member, session)?;
    {
        let mut state = slot.login.lock();
        state.user = Some(user);
        state.epoch = epoch;
        state.pin = credentials.clone();
    }

    for other in slot.members() {
        if std::ptr::eq(other.as_ref(), member) || !other.is_up() {
            continue;
        }
        if other.open_sessions.load(Ordering::SeqCst) == 0 && !other.has_service() {
            // Logged in when it gets its first session.
            continue;
        }
        if let Err(rv) = other.with_service(|service| credentials.apply(&other, service)) {
            if is_pin_error(rv.0) {
                other.login_rejected.store(epoch, Ordering::Release);
            }
            log::error!(
                "WLD slot {} ({}): login on member {} failed with {rv} after member {} \
                 accepted the PIN; its sessions stay logged out until the members are \
                 replicated with the same PINs",
                slot.id,
                slot.label,
                other.describe(),
                member.describe()
            );
        }
    }
    Ok(())
}

/// Logs the application out of every member of `slot`.
pub fn logout(slot: &VirtualSlot) -> Result<()> {
    let _serial = slot.login_serial.lock();
    let epoch = {
        let mut state = slot.login.lock();
        if state.user.is_none() {
            return Err(Rv(CKR_USER_NOT_LOGGED_IN));
        }
        let epoch = state.epoch;
        state.clear();
        epoch
    };
    for member in slot.members() {
        if member.login_epoch.load(Ordering::Acquire) != epoch {
            continue;
        }
        if !member.is_up() {
            // Not called, because a member that is down may hang. It keeps
            // its old epoch, so it is logged out when it comes back.
            continue;
        }
        member.login_epoch.store(0, Ordering::Release);
        let result =
            member.with_service(|service| Rv::check(vcall!(member.module, C_Logout(service))));
        match result {
            Ok(()) | Err(Rv(CKR_USER_NOT_LOGGED_IN)) => {}
            Err(rv) => log::warn!("member {}: C_Logout failed: {rv}", member.describe()),
        }
        // Handles of private objects end with the login.
        member.object_handles_dropped();
    }
    Ok(())
}
