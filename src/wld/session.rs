//! Virtual sessions: the table of sessions and what each one runs on.
//!
//! A virtual session handle indexes a table of slots, each with its own
//! lock. A call on a session takes that session's lock only, and holds it
//! across the call into the member's vendor module; no other lock of the
//! proxy is on that path. The handle carries a generation in its upper bits
//! so a closed handle stays invalid after its slot is reused.

use super::find::FindState;
use super::login;
use super::member::Member;
use super::object::{ObjectTable, Place};
use super::ops::{ActiveOp, OP_KINDS};
use super::slot::{Candidates, VirtualSlot};
use crate::config::Policy;
use crate::error::{Result, Rv};
use crate::health;
use crate::vcall;
use crate::vendor::VendorModule;
use cryptoki_sys::*;
use parking_lot::Mutex;
use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

const INDEX_BITS: u32 = 20;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
const GENERATIONS: u64 = 4095;
const CHUNK: usize = 64;
const MAX_SESSIONS: usize = 1 << INDEX_BITS;
/// A closed session's slot is reused only once this many more are free.
const REUSE_AFTER: usize = 256;

/// One open virtual session.
pub struct Session {
    pub handle: CK_SESSION_HANDLE,
    pub slot: Arc<VirtualSlot>,
    pub member: Arc<Member>,
    /// The real session on `member`.
    pub real: CK_SESSION_HANDLE,
    pub flags: CK_FLAGS,
    /// Session objects made through this session; the vendor destroys them
    /// when the session closes, and their handles are freed then.
    pub objects: Vec<CK_OBJECT_HANDLE>,
    /// The generation of `member` the real session belongs to.
    pub generation: u64,
    /// The active search, if any.
    pub find: FindState,
    /// The active cryptographic operations, by [`super::ops::OpKind`].
    pub ops: [Option<ActiveOp>; OP_KINDS],
    /// Operations lost when the session moved to another member: the next
    /// call of that kind gets CKR_DEVICE_ERROR and ends it.
    pub lost: [bool; OP_KINDS],
    /// The busy marker of the session's last call (see [`SessionSlot`]):
    /// the member's index plus one in the upper bits, a call count below.
    marker: u64,
    /// The member position of an object that the last call could not use
    /// because it lives on that member only (a session object another
    /// session made). Failover moves the session there when it can.
    pub pinned_elsewhere: Cell<Option<usize>>,
}

impl Session {
    pub fn is_rw(&self) -> bool {
        self.flags & CKF_RW_SESSION != 0
    }

    pub fn place(&self) -> Place<'_> {
        Place {
            slot: self.slot.id,
            member: &self.member,
        }
    }

    pub fn module(&self) -> &VendorModule {
        &self.member.module
    }

    /// Returns the real handle of a virtual object handle on this session's
    /// member.
    #[inline(always)]
    pub fn object(
        &self,
        objects: &ObjectTable,
        handle: CK_OBJECT_HANDLE,
        invalid: CK_RV,
    ) -> Result<CK_OBJECT_HANDLE> {
        let result = objects.resolve(&self.place(), handle, invalid);
        if result.is_err() {
            self.note_pinned(objects, handle);
        }
        result
    }

    /// Records the member that `handle` is pinned to when it is not this
    /// session's member, after the handle could not be resolved here.
    #[cold]
    #[inline(never)]
    fn note_pinned(&self, objects: &ObjectTable, handle: CK_OBJECT_HANDLE) {
        let pinned = objects.pinned_member(handle);
        if pinned.is_some_and(|pos| pos != self.member.pos) {
            self.pinned_elsewhere.set(pinned);
        }
    }

    /// Replaces the session's member, and returns the member it was on.
    pub fn replace_member(&mut self, member: Arc<Member>) -> Arc<Member> {
        self.marker = member_marker(&member);
        std::mem::replace(&mut self.member, member)
    }

    /// Returns the busy marker of the first call on the session's member,
    /// for when the call count overflowed into the member's bits.
    #[cold]
    #[inline(never)]
    fn first_marker(&self) -> u64 {
        member_marker(&self.member) | 1
    }

    /// Whether the session holds nothing that ties it to its member: no
    /// session objects of its own, no active operation or search. Such a
    /// session can move to another member without the application noticing.
    pub fn is_movable(&self) -> bool {
        self.objects.is_empty()
            && self.ops.iter().all(Option::is_none)
            && !self.find.active
            && !self.lost.contains(&true)
    }

    /// Whether the real session was opened before the member's module was
    /// initialized again, so the vendor no longer knows it.
    pub fn is_stale(&self) -> bool {
        self.is_stale_against(&self.member)
    }

    /// Whether the real session is older than `member`'s generation, for a
    /// member the session was on.
    pub fn is_stale_against(&self, member: &Member) -> bool {
        self.generation != member.generation()
    }

    /// Turns the return code of a vendor call on this session into a result,
    /// marking the member down when the code says the device is gone. A
    /// stale real session does not count against the member.
    #[inline(always)]
    pub fn check(&self, call: &'static str, rv: CK_RV) -> Result<()> {
        if rv == CKR_OK {
            return Ok(());
        }
        self.check_failure(call, rv)
    }

    /// The part of [`Session::check`] for a code other than CKR_OK, out of
    /// line so the check of a successful call stays a comparison.
    #[cold]
    #[inline(never)]
    fn check_failure(&self, call: &'static str, rv: CK_RV) -> Result<()> {
        if health::is_member_failure(rv) && !self.is_stale() && self.member.is_up() {
            if self.member_answers(rv) {
                log::debug!(
                    "member {}: {call} returned {}, but the member answers; passed on as \
                     an error of the request",
                    self.member.describe(),
                    Rv(rv)
                );
            } else {
                self.member.mark_down(call, rv);
            }
        }
        Err(Rv(rv))
    }

    /// Whether the member still answers after a call returned `rv`, which
    /// may mean a failed device or a failed request: SoftHSM2 returns
    /// CKR_GENERAL_ERROR for a ciphertext it cannot decrypt, and
    /// p11-kit-client.so 0.24 CKR_DEVICE_ERROR for an attribute its RPC
    /// cannot carry. C_GetSessionInfo on the same real session decides.
    fn member_answers(&self, rv: CK_RV) -> bool {
        if !health::may_be_request_error(rv) {
            return false;
        }
        let mut info = CK_SESSION_INFO::default();
        vcall!(self.member.module, C_GetSessionInfo(self.real, &mut info)) == CKR_OK
    }

    /// Whether the last call's failure took the member down, or found the
    /// real session stale, so the session must move before going on.
    pub fn lost_member(&self) -> bool {
        !self.member.is_up() || self.is_stale()
    }
}

struct SessionSlot {
    inner: Mutex<Option<Session>>,
    /// The call in progress on the session, 0 when none: the member's
    /// index in the topology in the upper bits, a call count below. The
    /// health thread reads it, without the lock, to find calls that take
    /// longer than the deadline.
    busy: AtomicU64,
}

/// Bits of a busy marker that count calls; the member index is above.
pub const BUSY_CALL_BITS: u32 = 40;
const BUSY_CALL_MASK: u64 = (1 << BUSY_CALL_BITS) - 1;

/// Returns the busy marker of `member` with a call count of 0.
fn member_marker(member: &Member) -> u64 {
    (member.index as u64 + 1) << BUSY_CALL_BITS
}

type Chunk = [SessionSlot; CHUNK];

#[derive(Default)]
struct Allocator {
    next: usize,
    free: VecDeque<usize>,
    generations: Vec<u64>,
}

/// Every open virtual session of the application.
pub struct SessionTable {
    /// The pointers to the chunks, each allocated on first use. Their count
    /// is fixed, so an index masked to a handle's index bits needs no bounds
    /// check.
    chunks: Box<[AtomicPtr<Chunk>; MAX_SESSIONS / CHUNK]>,
    alloc: Mutex<Allocator>,
    open: AtomicUsize,
}

impl Default for SessionTable {
    fn default() -> Self {
        SessionTable::new()
    }
}

impl Drop for SessionTable {
    fn drop(&mut self) {
        for chunk in self.chunks.iter() {
            let ptr = chunk.load(Ordering::Acquire);
            if !ptr.is_null() {
                // SAFETY: every non-NULL chunk pointer comes from
                // Box::into_raw in `insert` and is freed only here.
                drop(unsafe { Box::from_raw(ptr) });
            }
        }
    }
}

impl SessionTable {
    pub fn new() -> SessionTable {
        SessionTable {
            chunks: (0..MAX_SESSIONS / CHUNK)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect::<Box<[_]>>()
                .try_into()
                .expect("the iterator yields the array's length"),
            alloc: Mutex::new(Allocator::default()),
            open: AtomicUsize::new(0),
        }
    }

    fn slot_at(&self, index: usize) -> Option<&SessionSlot> {
        let ptr = self.chunks.get(index / CHUNK)?.load(Ordering::Acquire);
        // SAFETY: a chunk, once published, stays allocated until the table
        // is dropped, and the table outlives every borrow of it.
        (!ptr.is_null()).then(|| unsafe { &(*ptr)[index % CHUNK] })
    }

    /// Runs `f` on the open session `handle`, holding its lock.
    #[inline]
    pub fn with<R>(
        &self,
        handle: CK_SESSION_HANDLE,
        f: impl FnOnce(&mut Session) -> Result<R>,
    ) -> Result<R> {
        let slot = self
            .slot_at((handle & INDEX_MASK) as usize)
            .ok_or(Rv(CKR_SESSION_HANDLE_INVALID))?;
        let mut inner = slot.inner.lock();
        match inner.as_mut() {
            Some(session) if session.handle == handle && handle != 0 => {
                session.marker += 1;
                if session.marker & BUSY_CALL_MASK == 0 {
                    session.marker = session.first_marker();
                }
                slot.busy.store(session.marker, Ordering::Relaxed);
                let result = f(session);
                slot.busy.store(0, Ordering::Relaxed);
                result
            }
            _ => Err(Rv(CKR_SESSION_HANDLE_INVALID)),
        }
    }

    /// Returns the busy markers of sessions with a call in progress, by
    /// table index.
    pub fn busy_markers(&self) -> Vec<(usize, u64)> {
        let next = self.alloc.lock().next;
        (0..next)
            .filter_map(|index| {
                let marker = self.slot_at(index)?.busy.load(Ordering::Relaxed);
                (marker != 0).then_some((index, marker))
            })
            .collect()
    }

    pub fn open_count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Opens a session on `slot`: on the member the policy picks, or when
    /// that member fails to open one, on the next healthy member.
    pub fn open(
        &self,
        slot: &Arc<VirtualSlot>,
        flags: CK_FLAGS,
        policy: Policy,
    ) -> Result<CK_SESSION_HANDLE> {
        if flags & CKF_SERIAL_SESSION == 0 {
            return Err(Rv(CKR_SESSION_PARALLEL_NOT_SUPPORTED));
        }
        // PKCS#11 defines no other session flags, so C_GetSessionInfo
        // reports these two only, as a token does.
        let flags = flags & (CKF_SERIAL_SESSION | CKF_RW_SESSION);
        let rw = flags & CKF_RW_SESSION != 0;
        login::reserve_session(slot, rw)?;
        let opened = self.open_on_member(slot, flags, policy);
        let (member, real) = match opened {
            Ok(found) => found,
            Err(rv) => {
                login::release_session(slot, rw);
                return Err(rv);
            }
        };
        let marker = member_marker(&member);
        let session = Session {
            handle: 0,
            slot: slot.clone(),
            generation: member.generation(),
            member,
            real,
            flags,
            objects: Vec::new(),
            find: FindState::default(),
            ops: Default::default(),
            lost: [false; OP_KINDS],
            marker,
            pinned_elsewhere: Cell::new(None),
        };
        self.insert(session)
            .inspect_err(|_| login::release_session(slot, rw))
    }

    /// Opens a real session on the first candidate member that accepts
    /// one, logging it in when the application is logged in.
    pub fn open_on_member(
        &self,
        slot: &VirtualSlot,
        flags: CK_FLAGS,
        policy: Policy,
    ) -> Result<(Arc<Member>, CK_SESSION_HANDLE)> {
        self.open_on_candidates(slot, slot.candidates(policy), flags)
    }

    /// Opens a real session on the first of `candidates` that accepts one.
    /// A member that rejected the application's PIN at this login is left
    /// out, so the PIN is not presented to it again and again.
    pub fn open_on_candidates(
        &self,
        slot: &VirtualSlot,
        candidates: Candidates,
        flags: CK_FLAGS,
    ) -> Result<(Arc<Member>, CK_SESSION_HANDLE)> {
        let epoch = login::current(slot).map(|c| c.epoch);
        let mut last = Rv(CKR_TOKEN_NOT_PRESENT);
        for (i, member) in candidates.members.into_iter().enumerate() {
            // The policy's choice may be claimed already; every other
            // candidate is counted as being opened here.
            let claimed = i == 0 && candidates.claimed;
            if !claimed {
                member.opening.fetch_add(1, Ordering::AcqRel);
            }
            if epoch.is_some_and(|e| member.login_rejected.load(Ordering::Acquire) == e) {
                member.opening.fetch_sub(1, Ordering::AcqRel);
                last = Rv(CKR_PIN_INCORRECT);
                continue;
            }
            let opened = open_real(slot, &member, flags);
            member.opening.fetch_sub(1, Ordering::AcqRel);
            match opened {
                Ok(real) => return Ok((member, real)),
                Err(rv) if health::is_member_failure(rv.0) => {
                    member.mark_down("C_OpenSession", rv.0);
                    last = rv;
                }
                Err(rv) if rv.0 == CKR_SESSION_COUNT || login::is_pin_error(rv.0) => {
                    // A member that is full, or that rejects the PIN the
                    // others accepted, is skipped for this session.
                    last = rv;
                }
                Err(rv) => return Err(rv),
            }
        }
        if !slot.token_present() {
            return Err(Rv(CKR_TOKEN_NOT_PRESENT));
        }
        if health::is_member_failure(last.0) {
            return Err(Rv(CKR_DEVICE_ERROR));
        }
        Err(last)
    }

    /// Stores `session` in a free slot of the table and returns its handle.
    fn insert(&self, mut session: Session) -> Result<CK_SESSION_HANDLE> {
        let (index, handle) = match self.reserve() {
            Ok(reserved) => reserved,
            Err(rv) => {
                self.close_real(&session);
                return Err(rv);
            }
        };
        session.handle = handle;
        let Some(slot) = self.slot_at(index) else {
            self.close_real(&session);
            return Err(Rv(CKR_GENERAL_ERROR));
        };
        *slot.inner.lock() = Some(session);
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(handle)
    }

    /// Takes a free slot index and returns it with the handle it gets.
    fn reserve(&self) -> Result<(usize, CK_SESSION_HANDLE)> {
        let mut alloc = self.alloc.lock();
        let index = if alloc.free.len() > REUSE_AFTER {
            alloc.free.pop_front().unwrap_or_default()
        } else if alloc.next < MAX_SESSIONS {
            alloc.next += 1;
            alloc.generations.push(0);
            alloc.next - 1
        } else if let Some(index) = alloc.free.pop_front() {
            index
        } else {
            log::error!("too many open sessions ({MAX_SESSIONS})");
            return Err(Rv(CKR_SESSION_COUNT));
        };
        if self.slot_at(index).is_none() {
            let chunk: Box<Chunk> = Box::new(std::array::from_fn(|_| SessionSlot {
                inner: Mutex::new(None),
                busy: AtomicU64::new(0),
            }));
            self.chunks[index / CHUNK].store(Box::into_raw(chunk), Ordering::Release);
        }
        let generation = &mut alloc.generations[index];
        *generation = *generation % GENERATIONS + 1;
        Ok((index, (*generation << INDEX_BITS) | index as u64))
    }

    /// Closes one session.
    pub fn close(&self, objects: &ObjectTable, handle: CK_SESSION_HANDLE) -> Result<()> {
        let slot = self
            .slot_at((handle & INDEX_MASK) as usize)
            .ok_or(Rv(CKR_SESSION_HANDLE_INVALID))?;
        let session = {
            let mut inner = slot.inner.lock();
            match inner.as_ref() {
                Some(session) if session.handle == handle && handle != 0 => inner.take(),
                _ => None,
            }
        };
        let session = session.ok_or(Rv(CKR_SESSION_HANDLE_INVALID))?;
        for object in &session.objects {
            objects.free(*object);
        }
        let virtual_slot = session.slot.clone();
        let rw = session.is_rw();
        self.close_real(&session);
        self.alloc
            .lock()
            .free
            .push_back((handle & INDEX_MASK) as usize);
        self.open.fetch_sub(1, Ordering::Relaxed);
        login::release_session(&virtual_slot, rw);
        Ok(())
    }

    /// Closes the real session behind a virtual one. A member that is down
    /// is not called, because a hung one would block the caller; its real
    /// session is closed when it comes back.
    fn close_real(&self, session: &Session) {
        release_real(&session.member, session.real, session.is_stale());
    }

    /// Returns the handles of the open sessions that `keep` selects.
    pub fn handles(&self, keep: impl Fn(&Session) -> bool) -> Vec<CK_SESSION_HANDLE> {
        let next = self.alloc.lock().next;
        (0..next)
            .filter_map(|index| {
                let slot = self.slot_at(index)?;
                let inner = slot.inner.lock();
                inner.as_ref().filter(|s| keep(s)).map(|s| s.handle)
            })
            .collect()
    }

    /// Closes every session on the WLD slot `slot_id`.
    pub fn close_all(&self, objects: &ObjectTable, slot_id: CK_SLOT_ID) {
        for handle in self.handles(|s| s.slot.id == slot_id) {
            // A session closed meanwhile by another thread is no error.
            let _ = self.close(objects, handle);
        }
    }
}

/// Closes or abandons a real session on `member` and uncounts it. A stale
/// session (from before the module was initialized again) is gone already.
pub fn release_real(member: &Member, real: CK_SESSION_HANDLE, stale: bool) {
    if stale {
        // Nothing to close.
    } else if member.is_up() {
        let rv = vcall!(member.module, C_CloseSession(real));
        if rv != CKR_OK {
            log::warn!(
                "member {}: C_CloseSession returned {}",
                member.describe(),
                Rv(rv)
            );
        }
    } else {
        member.orphans.lock().push(real);
    }
    if member.open_sessions.fetch_sub(1, Ordering::AcqRel) == 1 && !member.has_service() {
        // The vendor logged the application out with its last session, and
        // its object handles ended with it.
        member.login_epoch.store(0, Ordering::Release);
        member.object_handles_dropped();
    }
}

/// Opens a real session on `member` and logs it in as the application is
/// logged in on `slot`.
///
/// The login state is read after the real session is counted, so a
/// C_Login in another thread either sees this member's session and logs it
/// in, or has finished and is seen here. A login or logout that ends while
/// this one applies the PIN is caught by reading the state again.
fn open_real(slot: &VirtualSlot, member: &Member, flags: CK_FLAGS) -> Result<CK_SESSION_HANDLE> {
    let real = member.open_session(flags)?;
    member.open_sessions.fetch_add(1, Ordering::SeqCst);
    member.total_sessions.fetch_add(1, Ordering::Relaxed);
    for _ in 0..3 {
        let Some(credentials) = login::current(slot) else {
            // Logged out meanwhile: a member logged in at an older epoch
            // is logged out.
            login::reconcile(slot, member);
            return Ok(real);
        };
        if member.login_epoch.load(Ordering::Acquire) == credentials.epoch {
            return Ok(real);
        }
        if let Err(rv) = credentials.apply(member, real) {
            log::error!(
                "member {}: login with the WLD slot's PIN failed: {rv}",
                member.describe()
            );
            if login::is_pin_error(rv.0) {
                member
                    .login_rejected
                    .store(credentials.epoch, Ordering::Release);
            }
            let _ = vcall!(member.module, C_CloseSession(real));
            member.open_sessions.fetch_sub(1, Ordering::AcqRel);
            return Err(rv);
        }
        // A service session keeps the member logged in when the
        // application's sessions on it close, for as long as the
        // application stays logged in to the WLD token; otherwise every
        // session that lands on an idle member logs in again.
        if let Err(rv) = member.with_service(|_| Ok(())) {
            log::debug!(
                "member {}: no service session to keep the login: {rv}",
                member.describe()
            );
        }
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_handles_invalid() {
        let table = SessionTable::new();
        for handle in [0, 1, 1 << INDEX_BITS, CK_ULONG::MAX] {
            let result = table.with(handle, |_| Ok(()));
            assert_eq!(result, Err(Rv(CKR_SESSION_HANDLE_INVALID)), "{handle:#x}");
        }
    }
}
