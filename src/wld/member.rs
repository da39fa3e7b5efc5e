//! Members: the physical tokens behind a WLD slot, with their health.

use crate::error::{ckr_name, Result, Rv};
use crate::vcall;
use crate::vendor::VendorModule;
use cryptoki_sys::*;
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// The most members one WLD slot can have. The object table keeps one real
/// handle per member position, so this bounds the size of each entry.
pub const MAX_MEMBERS_PER_SLOT: usize = 32;

/// One member token of a WLD slot: a physical slot of one vendor module.
pub struct Member {
    pub module: Arc<VendorModule>,
    /// Index of the module in the configuration.
    pub module_index: usize,
    /// The vendor module's own slot id.
    pub slot_id: CK_SLOT_ID,
    /// The label for logs; bytes that are not UTF-8 show as U+FFFD.
    pub label: String,
    /// The label as the token stores it, without the padding blanks.
    pub label_bytes: Vec<u8>,
    pub serial: String,
    /// The id of the WLD slot this member belongs to.
    pub wld_slot: CK_SLOT_ID,
    /// Index in the topology's list of every member.
    pub index: usize,
    /// Position in the WLD slot's member list, below
    /// [`MAX_MEMBERS_PER_SLOT`]; the object table's column for this member.
    pub pos: usize,
    /// A number that names this member in saved operation states.
    pub tag: u64,
    up: AtomicBool,
    /// Real sessions of the application open on the member, not counting
    /// the service session.
    pub open_sessions: AtomicUsize,
    /// Sessions being opened on the member: counted by the balancing policy
    /// from the moment it picks the member until the vendor returns, so
    /// sessions opened at the same time spread like sessions opened one
    /// after another.
    pub opening: AtomicUsize,
    pub total_sessions: AtomicU64,
    pub failures: AtomicU64,
    pub last_error: AtomicU64,
    /// The login epoch of the WLD slot that this member is logged in at;
    /// 0 when it is not logged in.
    pub login_epoch: AtomicU64,
    /// The login epoch at which the member rejected the application's PIN
    /// that another member accepted; 0 when it did not. New sessions avoid
    /// the member while that login lasts.
    pub login_rejected: AtomicU64,
    /// A session of the proxy's own on the member, for resolving object
    /// handles, logging in and out while the application's sessions are
    /// busy. Its lock is taken only on those slow paths.
    service: Mutex<Option<CK_SESSION_HANDLE>>,
    /// Real object handle to virtual object handle, for find results.
    pub handles: RwLock<FxHashMap<CK_OBJECT_HANDLE, CK_OBJECT_HANDLE>>,
    /// Incremented each time the vendor may have dropped the member's
    /// object handles: when the last real session on the member closes, and
    /// at C_Logout. PKCS#11 keeps an object handle valid only while a
    /// session that can use it stays open, and a private object's handle
    /// only while the user stays logged in. SoftHSM2 2.6.1 gives its objects
    /// new handles after either event.
    handle_epoch: AtomicU64,
    /// The handle epoch that the object table's bindings on this member
    /// belong to.
    pub bound_epoch: AtomicU64,
    /// Incremented each time the member's module instance is initialized
    /// again: real session and object handles of an older generation mean
    /// nothing any more.
    generation: AtomicU64,
    /// Real sessions left open on the member when their virtual sessions
    /// moved away while it was down; closed if it comes back as it was.
    pub orphans: Mutex<Vec<CK_SESSION_HANDLE>>,
    /// Sessions moved away from the member, and operations retried
    /// elsewhere, since the health thread last logged them.
    pub moved: AtomicU64,
    pub retried: AtomicU64,
}

/// An initialized token that a scan found.
pub struct FoundToken {
    pub module_index: usize,
    pub slot_id: CK_SLOT_ID,
    /// The label without its padding blanks, as the token stores it.
    pub label: Vec<u8>,
    pub serial: String,
}

impl Member {
    /// Makes `token` of `module` a member of the WLD slot `wld_slot`, at
    /// `index` in the topology and `pos` in the slot.
    pub fn new(
        module: Arc<VendorModule>,
        token: FoundToken,
        wld_slot: CK_SLOT_ID,
        index: usize,
        pos: usize,
    ) -> Member {
        let FoundToken {
            module_index,
            slot_id,
            label,
            serial,
        } = token;
        let digest = Sha256::digest(format!("{}/{slot_id}/{serial}", module.name).as_bytes());
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&digest[..8]);
        Member {
            tag: u64::from_ne_bytes(tag),
            module,
            module_index,
            slot_id,
            label: String::from_utf8_lossy(&label).into_owned(),
            label_bytes: label,
            serial,
            wld_slot,
            index,
            pos,
            up: AtomicBool::new(true),
            open_sessions: AtomicUsize::new(0),
            opening: AtomicUsize::new(0),
            total_sessions: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_error: AtomicU64::new(0),
            login_epoch: AtomicU64::new(0),
            login_rejected: AtomicU64::new(0),
            service: Mutex::new(None),
            handles: RwLock::new(FxHashMap::default()),
            handle_epoch: AtomicU64::new(0),
            bound_epoch: AtomicU64::new(0),
            generation: AtomicU64::new(1),
            orphans: Mutex::new(Vec::new()),
            moved: AtomicU64::new(0),
            retried: AtomicU64::new(0),
        }
    }

    /// Returns the sessions the balancing policy counts on the member:
    /// those open and those being opened.
    pub fn load(&self) -> usize {
        self.open_sessions.load(Ordering::Relaxed) + self.opening.load(Ordering::Relaxed)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Starts a new generation after the module instance was initialized
    /// again.
    pub fn next_generation(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn handle_epoch(&self) -> u64 {
        self.handle_epoch.load(Ordering::Acquire)
    }

    /// Records that the vendor may have dropped the member's object handles,
    /// so the object table searches its objects again before using them.
    /// Call it after the vendor call that ended the handles' validity.
    pub fn object_handles_dropped(&self) {
        self.handle_epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Marks the member down after `call` returned `rv`. Returns whether
    /// this call changed the state, so the caller logs the change once.
    pub fn mark_down(&self, call: &str, rv: CK_RV) -> bool {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.last_error.store(rv, Ordering::Relaxed);
        let was_up = self.up.swap(false, Ordering::AcqRel);
        if was_up {
            log::error!(
                "member {} is down: {call} returned {}",
                self.describe(),
                ckr_name(rv)
            );
        }
        was_up
    }

    /// Marks the member down for new sessions because a call on it has run
    /// for longer than `deadline`. The call itself returns when the vendor
    /// returns.
    pub fn mark_hung(&self, deadline: std::time::Duration) {
        self.last_error.store(CKR_DEVICE_ERROR, Ordering::Relaxed);
        if self.up.swap(false, Ordering::AcqRel) {
            self.failures.fetch_add(1, Ordering::Relaxed);
            log::error!(
                "member {} is down: a call has been running for more than {deadline:?}",
                self.describe()
            );
        }
    }

    /// Marks the member up again, after the health check found its token.
    pub fn mark_up(&self) -> bool {
        !self.up.swap(true, Ordering::AcqRel)
    }

    pub fn describe(&self) -> String {
        format!(
            "{} slot {:#x} serial {}",
            self.module.name, self.slot_id, self.serial
        )
    }

    /// Opens a real session on the member.
    pub fn open_session(&self, flags: CK_FLAGS) -> Result<CK_SESSION_HANDLE> {
        self.module.open_session(self.slot_id, flags)
    }

    /// Runs `f` with the member's service session, opening it first when
    /// needed. The service session shares the login state of the
    /// application's sessions, as every session of one application on one
    /// token does. It is read-write, because a read-only session makes the
    /// member reject an SO login (CKR_SESSION_READ_ONLY_EXISTS) and cannot
    /// be opened while the SO is logged in (CKR_SESSION_READ_WRITE_SO_EXISTS).
    /// Only a write-protected token gets a read-only one.
    pub fn with_service<R>(&self, f: impl FnOnce(CK_SESSION_HANDLE) -> Result<R>) -> Result<R> {
        let mut service = self.service.lock();
        let handle = match *service {
            Some(handle) => handle,
            None => {
                let handle = match self.open_session(CKF_SERIAL_SESSION | CKF_RW_SESSION) {
                    Err(Rv(CKR_TOKEN_WRITE_PROTECTED)) => self.open_session(CKF_SERIAL_SESSION)?,
                    opened => opened?,
                };
                *service = Some(handle);
                handle
            }
        };
        let result = f(handle);
        if matches!(
            result,
            Err(Rv(CKR_SESSION_HANDLE_INVALID | CKR_SESSION_CLOSED))
        ) {
            // The vendor dropped the session (restart, C_CloseAllSessions
            // by another path); open a new one next time.
            *service = None;
        }
        result
    }

    pub fn has_service(&self) -> bool {
        self.service.lock().is_some()
    }

    /// Closes the service session, if open. Called when the application's
    /// last session on the WLD slot is closed, so the vendor logs the
    /// application out of the token as PKCS#11 prescribes.
    pub fn close_service(&self) {
        if let Some(handle) = self.service.lock().take() {
            if !self.is_up() {
                // A member that is down may hang; the session is closed
                // when it comes back as it was.
                self.orphans.lock().push(handle);
                return;
            }
            let rv = vcall!(self.module, C_CloseSession(handle));
            if rv != CKR_OK && rv != CKR_SESSION_HANDLE_INVALID {
                log::debug!(
                    "member {}: closing the service session returned {}",
                    self.describe(),
                    ckr_name(rv)
                );
            }
            if self.open_sessions.load(Ordering::Acquire) == 0 {
                self.object_handles_dropped();
            }
        }
    }

    /// Forgets the service session without calling the vendor, after the
    /// module instance was initialized again and the handle means nothing.
    pub fn drop_service(&self) {
        self.service.lock().take();
    }
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}
