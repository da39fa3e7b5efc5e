//! Login per application and virtual token.
//!
//! PKCS#11 logs an application into a token, not a session. A WLD token is
//! several real tokens, so a login is applied to every member the
//! application has sessions on, and to each member that gets its first
//! session later. The PIN is first tried on one member only; it is kept,
//! zeroized on drop, only after that member accepted it.

use super::topology::{Member, MemberLink, VirtualSlot};
use crate::error::{Result, Rv};
use crate::vcall;
use cryptoki_sys::*;
use std::sync::Arc;
use zeroize::Zeroizing;

/// The application's login on one virtual slot.
#[derive(Default)]
pub struct LoginState {
    pub user: Option<CK_USER_TYPE>,
    pin: Option<Zeroizing<Vec<u8>>>,
}

impl LoginState {
    pub fn pin(&self) -> Option<Zeroizing<Vec<u8>>> {
        self.pin.clone()
    }

    fn clear(&mut self) {
        self.user = None;
        self.pin = None;
    }
}

/// Applies the slot's login to a member through one of its sessions, if the
/// application is logged in and the member is not yet.
pub fn join_member(
    slot: &VirtualSlot,
    member: &Member,
    link: &mut MemberLink,
    session: CK_SESSION_HANDLE,
) -> Result<()> {
    if link.logged_in {
        return Ok(());
    }
    let (user, pin) = {
        let state = slot.login.lock();
        match (state.user, state.pin()) {
            (Some(user), Some(pin)) => (user, pin),
            _ => return Ok(()),
        }
    };
    member_login(member, session, user, &pin)?;
    link.logged_in = true;
    Ok(())
}

fn member_login(
    member: &Member,
    session: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: &[u8],
) -> Result<()> {
    let pin_ptr = if pin.is_empty() {
        std::ptr::null_mut()
    } else {
        pin.as_ptr().cast_mut()
    };
    let rv = vcall!(
        member.module,
        C_Login(session, user, pin_ptr, pin.len() as CK_ULONG)
    );
    match rv {
        CKR_OK | CKR_USER_ALREADY_LOGGED_IN => Ok(()),
        other => Err(Rv(other)),
    }
}

/// Logs the application in on a slot, trying the PIN on `first` (the
/// member of the calling session) before any other member.
pub fn login(
    slot: &VirtualSlot,
    first: &Arc<Member>,
    first_session: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: &[u8],
) -> Result<()> {
    let mut state = slot.login.lock();
    match state.user {
        Some(current) if current == user => return Err(Rv(CKR_USER_ALREADY_LOGGED_IN)),
        Some(_) => return Err(Rv(CKR_USER_ANOTHER_ALREADY_LOGGED_IN)),
        None => {}
    }
    let sessions = slot.sessions.load(std::sync::atomic::Ordering::Acquire);
    let rw = slot.rw_sessions.load(std::sync::atomic::Ordering::Acquire);
    if user == CKU_SO && sessions > rw {
        return Err(Rv(CKR_SESSION_READ_ONLY_EXISTS));
    }

    {
        let mut link = first.link.lock();
        member_login(first, first_session, user, pin)?;
        link.logged_in = true;
    }
    state.user = Some(user);
    state.pin = Some(Zeroizing::new(pin.to_vec()));
    drop(state);

    for member in slot.members() {
        if Arc::ptr_eq(&member, first) {
            continue;
        }
        let mut link = member.link.lock();
        let Some(helper) = link.helper else {
            continue;
        };
        if link.app_sessions == 0 || link.logged_in {
            continue;
        }
        match member_login(&member, helper, user, pin) {
            Ok(()) => link.logged_in = true,
            Err(rv) => log::error!(
                "WLD slot {}: login on member {} failed: {rv}; its sessions stay logged out \
                 until the member tokens are replicated with the same PINs",
                slot.id,
                member.describe()
            ),
        }
    }
    Ok(())
}

/// Logs the application out of every member of a slot.
pub fn logout(slot: &VirtualSlot) -> Result<()> {
    let mut state = slot.login.lock();
    if state.user.is_none() {
        return Err(Rv(CKR_USER_NOT_LOGGED_IN));
    }
    state.clear();
    drop(state);
    for member in slot.members() {
        let mut link = member.link.lock();
        if !link.logged_in {
            continue;
        }
        if let Some(helper) = link.helper {
            let rv = vcall!(member.module, C_Logout(helper));
            if rv != CKR_OK && rv != CKR_USER_NOT_LOGGED_IN {
                log::warn!("member {}: C_Logout returned {}", member.describe(), Rv(rv));
            }
        }
        link.logged_in = false;
    }
    Ok(())
}

/// Forgets the login once the slot's last session is closed; the vendors
/// log out by themselves when their last session closes.
pub fn forget(slot: &VirtualSlot) {
    slot.login.lock().clear();
}
