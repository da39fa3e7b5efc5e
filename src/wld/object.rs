//! Virtual object handles.
//!
//! One virtual handle names one object on every member of a WLD slot, so a
//! handle found in one session works in every other session of the
//! application, whichever member each session runs on. Objects are matched
//! across members by their identity: a digest of the attributes that tell
//! objects apart (class, CKA_ID, CKA_LABEL, key type, public modulus or EC
//! point, certificate subject and serial, the value of certificates and
//! data objects). Key values are never read. The real handle on each member
//! is resolved lazily, by a search on that member, and cached.
//!
//! Handles that cannot name one object on every member are pinned to the
//! member they came from, and a session on another member gets
//! CKR_OBJECT_HANDLE_INVALID for them, never another object:
//! - session objects, which live on the member of the session that made
//!   them;
//! - objects whose identity is ambiguous: when two objects on one member
//!   share an identity, each of them, on every member, gets a handle of its
//!   own that is valid on its member only.

use super::member::{Member, MAX_MEMBERS_PER_SLOT};
use crate::error::{Result, Rv};
use crate::vcall;
use crate::vendor::VendorModule;
use cryptoki_sys::*;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Bits of a virtual handle that index the table; the bits above carry a
/// generation, so a handle of a destroyed object does not name the object
/// that reuses its entry.
const INDEX_BITS: u32 = 20;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
const GENERATIONS: u64 = 255;
const CHUNK: usize = 256;
const MAX_OBJECTS: usize = 1 << INDEX_BITS;
/// Freed entries are reused only once this many more are free, so a stale
/// handle is rejected for as long as possible.
const REUSE_AFTER: usize = 1024;

/// Attributes that make up an object's identity. CKA_VALUE is added for
/// certificates and data objects only.
const IDENTITY_ATTRIBUTES: [CK_ATTRIBUTE_TYPE; 18] = [
    CKA_CLASS,
    CKA_TOKEN,
    CKA_PRIVATE,
    CKA_ID,
    CKA_LABEL,
    CKA_KEY_TYPE,
    CKA_CERTIFICATE_TYPE,
    CKA_MODULUS,
    CKA_PUBLIC_EXPONENT,
    CKA_EC_PARAMS,
    CKA_EC_POINT,
    CKA_VALUE_LEN,
    CKA_SUBJECT,
    CKA_ISSUER,
    CKA_SERIAL_NUMBER,
    CKA_APPLICATION,
    CKA_OBJECT_ID,
    CKA_HW_FEATURE_TYPE,
];

/// Attributes of an identity that a search on another member matches on
/// before the digests are compared.
const SEARCH_ATTRIBUTES: [CK_ATTRIBUTE_TYPE; 5] =
    [CKA_CLASS, CKA_TOKEN, CKA_ID, CKA_LABEL, CKA_KEY_TYPE];

/// What tells one object apart from the others on a token.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    digest: [u8; 32],
    token: bool,
    search: Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>,
}

impl Identity {
    /// Reads the identity of `object` through `session` on `module`.
    pub fn read(
        module: &VendorModule,
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
    ) -> Result<Identity> {
        let mut values = module.read_attributes(session, object, &IDENTITY_ATTRIBUTES)?;
        let class = values[0].as_deref().and_then(read_ulong);
        if matches!(class, Some(CKO_CERTIFICATE | CKO_DATA)) {
            let value = module.read_attributes(session, object, &[CKA_VALUE])?;
            values.extend(value);
        }
        let mut hasher = Sha256::new();
        let mut search = Vec::new();
        let types = IDENTITY_ATTRIBUTES
            .iter()
            .chain(std::iter::once(&CKA_VALUE));
        for (&kind, value) in types.zip(values.iter()) {
            hasher.update(kind.to_le_bytes());
            match value {
                Some(bytes) => {
                    hasher.update([1]);
                    hasher.update((bytes.len() as u64).to_le_bytes());
                    hasher.update(bytes);
                    if SEARCH_ATTRIBUTES.contains(&kind) {
                        search.push((kind, bytes.clone()));
                    }
                }
                None => hasher.update([0]),
            }
        }
        let token = values[1].as_deref() == Some(&[CK_TRUE][..]);
        Ok(Identity {
            digest: hasher.finalize().into(),
            token,
            search,
        })
    }

    /// Whether the object is a token object rather than a session object.
    pub fn is_token_object(&self) -> bool {
        self.token
    }
}

fn read_ulong(bytes: &[u8]) -> Option<CK_ULONG> {
    Some(CK_ULONG::from_ne_bytes(bytes.try_into().ok()?))
}

/// One virtual object.
pub struct ObjectEntry {
    /// The live virtual handle; 0 while the entry is free.
    handle: AtomicU64,
    slot: AtomicU64,
    /// Member position plus one that the handle is pinned to; 0 when it
    /// names the object on every member.
    pinned: AtomicUsize,
    /// Member position plus one where the object was first seen.
    home: AtomicUsize,
    token: AtomicBool,
    identity: Mutex<Option<Arc<Identity>>>,
    real: [AtomicU64; MAX_MEMBERS_PER_SLOT],
}

impl ObjectEntry {
    fn new() -> ObjectEntry {
        ObjectEntry {
            handle: AtomicU64::new(0),
            slot: AtomicU64::new(0),
            pinned: AtomicUsize::new(0),
            home: AtomicUsize::new(0),
            token: AtomicBool::new(false),
            identity: Mutex::new(None),
            real: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Whether the object is a session object (pinned to its member).
    pub fn is_session_object(&self) -> bool {
        !self.token.load(Ordering::Relaxed)
    }
}

type Chunk = [ObjectEntry; CHUNK];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Known {
    /// One virtual handle names the object on every member.
    Shared(CK_OBJECT_HANDLE),
    /// Two objects on one member share the identity.
    Ambiguous,
}

#[derive(Default)]
struct Allocator {
    next: usize,
    free: VecDeque<usize>,
    generations: FxHashMap<usize, u64>,
    identities: FxHashMap<(CK_SLOT_ID, [u8; 32]), Known>,
}

/// Where a virtual handle is used: a WLD slot and one of its members.
pub struct Place<'a> {
    pub slot: CK_SLOT_ID,
    pub member: &'a Member,
}

pub struct ObjectTable {
    /// The pointers to the chunks, each allocated on first use. Their count
    /// is fixed, so an index masked to a handle's index bits needs no bounds
    /// check.
    chunks: Box<[AtomicPtr<Chunk>; MAX_OBJECTS / CHUNK]>,
    alloc: Mutex<Allocator>,
}

impl Default for ObjectTable {
    fn default() -> Self {
        ObjectTable::new()
    }
}

impl Drop for ObjectTable {
    fn drop(&mut self) {
        for chunk in self.chunks.iter() {
            let ptr = chunk.load(Ordering::Acquire);
            if !ptr.is_null() {
                // SAFETY: every non-NULL chunk pointer comes from
                // Box::into_raw in `entry_at` and is freed only here.
                drop(unsafe { Box::from_raw(ptr) });
            }
        }
    }
}

impl ObjectTable {
    pub fn new() -> ObjectTable {
        ObjectTable {
            chunks: (0..MAX_OBJECTS / CHUNK)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect::<Box<[_]>>()
                .try_into()
                .expect("the iterator yields the array's length"),
            alloc: Mutex::new(Allocator::default()),
        }
    }

    #[inline]
    fn entry_at(&self, index: usize) -> Option<&ObjectEntry> {
        let ptr = self.chunks.get(index / CHUNK)?.load(Ordering::Acquire);
        // SAFETY: a chunk, once published, stays allocated until the table
        // is dropped, and the table outlives every borrow of it.
        (!ptr.is_null()).then(|| unsafe { &(*ptr)[index % CHUNK] })
    }

    /// Returns the live entry of `handle`.
    #[inline]
    pub fn get(&self, handle: CK_OBJECT_HANDLE) -> Option<&ObjectEntry> {
        let entry = self.entry_at((handle & INDEX_MASK) as usize)?;
        (handle != 0 && entry.handle.load(Ordering::Acquire) == handle).then_some(entry)
    }

    /// Returns the real handle of `handle` on `place.member`, resolving it
    /// there first if needed. `invalid` is the code for a handle that names
    /// no object there (CKR_OBJECT_HANDLE_INVALID or CKR_KEY_HANDLE_INVALID).
    #[inline(always)]
    pub fn resolve(
        &self,
        place: &Place<'_>,
        handle: CK_OBJECT_HANDLE,
        invalid: CK_RV,
    ) -> Result<CK_OBJECT_HANDLE> {
        let entry = self.get(handle).ok_or(Rv(invalid))?;
        if entry.slot.load(Ordering::Relaxed) != place.slot {
            return Err(Rv(invalid));
        }
        self.sync_member(place.member);
        let pinned = entry.pinned.load(Ordering::Relaxed);
        if pinned != 0 && pinned != place.member.pos + 1 {
            return Err(Rv(invalid));
        }
        let real = entry.real[place.member.pos].load(Ordering::Acquire);
        if real != 0 {
            return Ok(real);
        }
        if pinned != 0 {
            return Err(Rv(invalid));
        }
        self.resolve_slow(place, handle, entry, invalid)
    }

    /// Returns the member position that `handle` is pinned to, if it is.
    pub fn pinned_member(&self, handle: CK_OBJECT_HANDLE) -> Option<usize> {
        let pinned = self.get(handle)?.pinned.load(Ordering::Relaxed);
        pinned.checked_sub(1)
    }

    /// Searches `place.member` for the object with the entry's identity.
    #[inline(never)]
    fn resolve_slow(
        &self,
        place: &Place<'_>,
        handle: CK_OBJECT_HANDLE,
        entry: &ObjectEntry,
        invalid: CK_RV,
    ) -> Result<CK_OBJECT_HANDLE> {
        let Some(identity) = entry.identity.lock().clone() else {
            return Err(Rv(invalid));
        };
        let member = place.member;
        let generation = member.generation();
        let module = &member.module;
        let matches = member.with_service(|service| {
            let mut template: Vec<CK_ATTRIBUTE> = identity
                .search
                .iter()
                .map(|(kind, value)| CK_ATTRIBUTE {
                    type_: *kind,
                    pValue: value.as_ptr() as *mut _,
                    ulValueLen: value.len() as CK_ULONG,
                })
                .collect();
            let candidates = module.find_all(service, &mut template)?;
            let mut matches = Vec::new();
            for candidate in candidates {
                if Identity::read(module, service, candidate)?.digest == identity.digest {
                    matches.push(candidate);
                }
            }
            Ok(matches)
        })?;
        if member.generation() != generation {
            // The instance was initialized again meanwhile: the handles
            // found belong to the old one.
            return Err(Rv(CKR_DEVICE_ERROR));
        }
        match matches.as_slice() {
            [] => Err(Rv(invalid)),
            [real] => {
                self.bind(place, handle, entry, *real);
                Ok(*real)
            }
            _ => {
                self.mark_ambiguous(place.slot, &identity, handle, entry);
                Err(Rv(invalid))
            }
        }
    }

    /// Records that `handle` names `real` on `place.member`.
    fn bind(&self, place: &Place<'_>, handle: CK_OBJECT_HANDLE, entry: &ObjectEntry, real: u64) {
        entry.real[place.member.pos].store(real, Ordering::Release);
        place.member.handles.write().insert(real, handle);
    }

    /// Returns the virtual handle of `real`, an object found or created on
    /// `place.member`, registering it first if it is new. `session` is a
    /// real session on that member to read the identity through.
    #[inline(always)]
    pub fn register(
        &self,
        place: &Place<'_>,
        session: CK_SESSION_HANDLE,
        real: CK_OBJECT_HANDLE,
    ) -> Result<CK_OBJECT_HANDLE> {
        self.sync_member(place.member);
        if let Some(handle) = self.known(place, real) {
            return Ok(handle);
        }
        self.register_new(place, session, real)
    }

    /// Registers `real` as [`ObjectTable::register`] does, after trying
    /// `hint`, the virtual handle that `real` had when the caller last
    /// registered it. A hint still bound to `real` on the member is
    /// returned without a lookup in the member's map of real handles.
    #[inline(always)]
    pub fn register_hinted(
        &self,
        place: &Place<'_>,
        session: CK_SESSION_HANDLE,
        real: CK_OBJECT_HANDLE,
        hint: CK_OBJECT_HANDLE,
    ) -> Result<CK_OBJECT_HANDLE> {
        self.sync_member(place.member);
        let hit = self.get(hint).is_some_and(|entry| {
            entry.slot.load(Ordering::Relaxed) == place.slot
                && entry.real[place.member.pos].load(Ordering::Acquire) == real
        });
        if hit {
            return Ok(hint);
        }
        if let Some(handle) = self.known(place, real) {
            return Ok(handle);
        }
        self.register_new(place, session, real)
    }

    /// Registers `real`, which had no virtual handle when
    /// [`ObjectTable::register`] looked, reading its identity first.
    #[inline(never)]
    fn register_new(
        &self,
        place: &Place<'_>,
        session: CK_SESSION_HANDLE,
        real: CK_OBJECT_HANDLE,
    ) -> Result<CK_OBJECT_HANDLE> {
        let identity = Arc::new(Identity::read(&place.member.module, session, real)?);
        let key = (place.slot, identity.digest);
        let mut alloc = self.alloc.lock();
        // Another thread may have registered it meanwhile.
        if let Some(handle) = self.known(place, real) {
            return Ok(handle);
        }
        if !identity.token {
            return self.allocate(&mut alloc, place, identity, real, true);
        }
        match alloc.identities.get(&key).copied() {
            None => {
                let handle = self.allocate(&mut alloc, place, identity, real, false)?;
                alloc.identities.insert(key, Known::Shared(handle));
                Ok(handle)
            }
            Some(Known::Ambiguous) => self.allocate(&mut alloc, place, identity, real, true),
            Some(Known::Shared(handle)) => {
                let Some(entry) = self.get(handle) else {
                    let handle = self.allocate(&mut alloc, place, identity, real, false)?;
                    alloc.identities.insert(key, Known::Shared(handle));
                    return Ok(handle);
                };
                let bound = entry.real[place.member.pos].load(Ordering::Acquire);
                if bound == 0 {
                    drop(alloc);
                    self.bind(place, handle, entry, real);
                    return Ok(handle);
                }
                // A second object with this identity on one member.
                alloc.identities.insert(key, Known::Ambiguous);
                drop(alloc);
                self.mark_ambiguous(place.slot, &identity, handle, entry);
                let mut alloc = self.alloc.lock();
                self.allocate(&mut alloc, place, identity, real, true)
            }
        }
    }

    /// Drops the shared handles' bindings on `member` when the vendor may
    /// have dropped its object handles since they were made (see
    /// [`Member::object_handles_dropped`]), so those objects are searched
    /// again by identity. Without this, an object found again under a new
    /// real handle would look like a second object with the same identity.
    /// Pinned handles keep their bindings: their objects cannot be searched
    /// for on the member, and a public session object outlives C_Logout.
    #[inline]
    fn sync_member(&self, member: &Member) {
        let epoch = member.handle_epoch();
        if member.bound_epoch.load(Ordering::Acquire) != epoch {
            self.sync_member_slow(member);
        }
    }

    #[cold]
    #[inline(never)]
    fn sync_member_slow(&self, member: &Member) {
        let epoch = member.handle_epoch();
        let mut handles = member.handles.write();
        if member.bound_epoch.load(Ordering::Acquire) == epoch {
            return;
        }
        handles.retain(|&real, &mut handle| {
            let Some(entry) = self.get(handle) else {
                return false;
            };
            if entry.pinned.load(Ordering::Relaxed) != 0 {
                return true;
            }
            let _ = entry.real[member.pos].compare_exchange(
                real,
                0,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
            false
        });
        member.bound_epoch.store(epoch, Ordering::Release);
    }

    /// Returns the virtual handle already bound to `real` on the member.
    #[inline(always)]
    fn known(&self, place: &Place<'_>, real: CK_OBJECT_HANDLE) -> Option<CK_OBJECT_HANDLE> {
        let handle = *place.member.handles.read().get(&real)?;
        let entry = self.get(handle)?;
        (entry.real[place.member.pos].load(Ordering::Acquire) == real).then_some(handle)
    }

    /// Pins a shared handle to the member it was first seen on, after its
    /// identity turned out to be ambiguous. Its bindings on other members
    /// are dropped, so the objects there get handles of their own.
    fn mark_ambiguous(
        &self,
        slot: CK_SLOT_ID,
        identity: &Identity,
        handle: CK_OBJECT_HANDLE,
        entry: &ObjectEntry,
    ) {
        self.alloc
            .lock()
            .identities
            .insert((slot, identity.digest), Known::Ambiguous);
        let home = entry.home.load(Ordering::Relaxed);
        if entry.pinned.swap(home, Ordering::AcqRel) == home {
            return;
        }
        for (pos, real) in entry.real.iter().enumerate() {
            if pos + 1 != home {
                real.store(0, Ordering::Release);
            }
        }
        log::warn!(
            "WLD slot {slot}: two objects on one member share the identity of object \
             handle {handle:#x}; each such object is usable only in sessions on its own member"
        );
    }

    /// Takes a free entry and publishes it for `real` on `place.member`.
    fn allocate(
        &self,
        alloc: &mut Allocator,
        place: &Place<'_>,
        identity: Arc<Identity>,
        real: CK_OBJECT_HANDLE,
        pinned: bool,
    ) -> Result<CK_OBJECT_HANDLE> {
        let index = if alloc.free.len() > REUSE_AFTER {
            alloc.free.pop_front().unwrap_or_default()
        } else if alloc.next < MAX_OBJECTS {
            alloc.next += 1;
            alloc.next - 1
        } else if let Some(index) = alloc.free.pop_front() {
            index
        } else {
            log::error!("the object table is full ({MAX_OBJECTS} objects)");
            return Err(Rv(CKR_DEVICE_MEMORY));
        };
        let entry = match self.entry_at(index) {
            Some(entry) => entry,
            None => {
                let chunk: Box<Chunk> = Box::new(std::array::from_fn(|_| ObjectEntry::new()));
                self.chunks[index / CHUNK].store(Box::into_raw(chunk), Ordering::Release);
                self.entry_at(index).ok_or(Rv(CKR_GENERAL_ERROR))?
            }
        };
        let generation = alloc.generations.entry(index).or_insert(0);
        *generation = *generation % GENERATIONS + 1;
        let handle = (*generation << INDEX_BITS) | index as u64;

        let pos = place.member.pos;
        for column in entry.real.iter() {
            column.store(0, Ordering::Relaxed);
        }
        entry.real[pos].store(real, Ordering::Relaxed);
        entry.slot.store(place.slot, Ordering::Relaxed);
        entry
            .pinned
            .store(if pinned { pos + 1 } else { 0 }, Ordering::Relaxed);
        entry.home.store(pos + 1, Ordering::Relaxed);
        entry.token.store(identity.token, Ordering::Relaxed);
        *entry.identity.lock() = Some(identity);
        entry.handle.store(handle, Ordering::Release);
        place.member.handles.write().insert(real, handle);
        Ok(handle)
    }

    /// Forgets that `handle` names an object on `member`, after the object
    /// was destroyed there. A pinned handle is freed; a shared one stays
    /// valid on the other members.
    pub fn destroyed(&self, member: &Member, handle: CK_OBJECT_HANDLE) {
        let Some(entry) = self.get(handle) else {
            return;
        };
        let real = entry.real[member.pos].swap(0, Ordering::AcqRel);
        if real != 0 {
            member.handles.write().remove(&real);
        }
        if entry.pinned.load(Ordering::Relaxed) != 0 {
            self.free(handle);
        }
    }

    /// Frees the entry of `handle`, which then names nothing.
    pub fn free(&self, handle: CK_OBJECT_HANDLE) {
        let Some(entry) = self.get(handle) else {
            return;
        };
        let mut alloc = self.alloc.lock();
        if entry
            .handle
            .compare_exchange(handle, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        if let Some(identity) = entry.identity.lock().take() {
            let key = (entry.slot.load(Ordering::Relaxed), identity.digest);
            if alloc.identities.get(&key) == Some(&Known::Shared(handle)) {
                alloc.identities.remove(&key);
            }
        }
        alloc.free.push_back((handle & INDEX_MASK) as usize);
    }

    /// Updates the identity of `handle` after an attribute of it changed on
    /// `place.member`. Its bindings on other members are dropped: their
    /// copies carry the old attributes until the members are replicated.
    pub fn changed(
        &self,
        place: &Place<'_>,
        session: CK_SESSION_HANDLE,
        handle: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        let Some(entry) = self.get(handle) else {
            return Ok(());
        };
        let real = entry.real[place.member.pos].load(Ordering::Acquire);
        if real == 0 {
            return Ok(());
        }
        let identity = Arc::new(Identity::read(&place.member.module, session, real)?);
        let mut alloc = self.alloc.lock();
        let old = entry.identity.lock().replace(identity.clone());
        if old.as_ref().map(|o| o.digest) == Some(identity.digest) {
            return Ok(());
        }
        if let Some(old) = old {
            let key = (place.slot, old.digest);
            if alloc.identities.get(&key) == Some(&Known::Shared(handle)) {
                alloc.identities.remove(&key);
            }
        }
        if entry.pinned.load(Ordering::Relaxed) == 0 {
            let key = (place.slot, identity.digest);
            alloc.identities.entry(key).or_insert(Known::Shared(handle));
            for (pos, column) in entry.real.iter().enumerate() {
                if pos != place.member.pos {
                    column.store(0, Ordering::Release);
                }
            }
        }
        Ok(())
    }

    /// Forgets every real handle of `member`, whose module instance was
    /// initialized again so its handles may mean other objects now. Its
    /// pinned handles are freed: session objects died with the instance.
    pub fn forget_member(&self, member: &Member) {
        let reals: Vec<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> =
            member.handles.write().drain().collect();
        for (real, handle) in reals {
            let Some(entry) = self.get(handle) else {
                continue;
            };
            let _ = entry.real[member.pos].compare_exchange(
                real,
                0,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
            if entry.pinned.load(Ordering::Relaxed) == member.pos + 1 {
                self.free(handle);
            }
        }
    }
}

/// Destroys a real object, for the transport objects and session objects
/// the proxy makes itself.
pub fn destroy_real(module: &VendorModule, session: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE) {
    let rv = vcall!(module, C_DestroyObject(session, object));
    if rv != CKR_OK {
        log::warn!(
            "module {}: C_DestroyObject({object:#x}) returned {}",
            module.name,
            Rv(rv)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_zero_is_never_live() {
        let table = ObjectTable::new();
        assert!(table.get(0).is_none());
        assert!(table.get(1 << INDEX_BITS).is_none());
        assert!(table.get(CK_ULONG::MAX).is_none());
    }

    #[test]
    fn read_ulong_needs_exact_size() {
        assert_eq!(read_ulong(&CKO_DATA.to_ne_bytes()), Some(CKO_DATA));
        assert_eq!(read_ulong(&[0, 0, 0, 0]), None);
    }
}
