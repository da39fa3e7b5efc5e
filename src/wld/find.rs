//! The state of a session's search, kept so the search can start again on
//! another member and go on where it stopped.

use cryptoki_sys::*;

/// One attribute of a saved search template. `value` keeps only the
/// address, so a NULL value differs from an empty one. The bytes go to
/// `FindState::values`.
#[derive(Clone, Copy)]
struct SavedAttribute {
    kind: CK_ATTRIBUTE_TYPE,
    value: usize,
    len: CK_ULONG,
}

#[derive(Default)]
pub struct FindState {
    pub active: bool,
    /// Whether the search was started again on another member, so handles
    /// returned before must be left out; see [`FindState::mark_restarted`].
    pub restarted: bool,
    /// Whether the search was lost when the session moved and could not
    /// start again: the next `C_FindObjects` gets CKR_DEVICE_ERROR.
    pub lost: bool,
    /// Whether the lost search was reported, so it returns nothing more.
    pub exhausted: bool,
    /// The template as the application passed it. The values of its
    /// attributes with a non-NULL value follow one another in `values`.
    attributes: Vec<SavedAttribute>,
    values: Vec<u8>,
    /// Virtual handles returned so far, in the order returned, except that
    /// the first `before_restart` are sorted.
    returned: Vec<CK_OBJECT_HANDLE>,
    /// The number of handles returned before the last restart.
    before_restart: usize,
    /// The real and the virtual handle of the object found last. They are
    /// kept from one search to the next, because an application often
    /// searches for the same object again.
    last_found: (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE),
}

impl FindState {
    /// Records a new search with `template`. The buffers keep their
    /// capacity, so a session that searches often does not allocate.
    ///
    /// # Safety
    /// The template passed `template::check`.
    #[inline]
    pub unsafe fn start(&mut self, template: &[CK_ATTRIBUTE]) {
        self.active = true;
        self.restarted = false;
        self.lost = false;
        self.exhausted = false;
        self.returned.clear();
        self.before_restart = 0;
        self.attributes.clear();
        self.attributes.reserve(template.len());
        self.values.clear();
        let attributes = self.attributes.as_mut_ptr();
        let mut values = self.values.as_mut_ptr();
        let mut room = self.values.capacity();
        let mut offset = 0;
        for (index, attribute) in template.iter().enumerate() {
            let len = attribute.ulValueLen as usize;
            if room - offset < len {
                // SAFETY: the values were written up to `offset`.
                unsafe { self.values.set_len(offset) };
                self.values.reserve(len);
                values = self.values.as_mut_ptr();
                room = self.values.capacity();
            }
            let saved = SavedAttribute {
                kind: attribute.type_,
                value: attribute.pValue as usize,
                len: attribute.ulValueLen,
            };
            // SAFETY: `attributes` has room for one entry per attribute. A
            // checked template has `len` readable bytes behind a non-NULL
            // value and a length of 0 behind a NULL one, and `values` has
            // room for `len` bytes from `offset` on.
            unsafe {
                attributes.add(index).write(saved);
                copy(attribute.pValue as *const u8, values.add(offset), len);
            }
            offset += len;
        }
        // SAFETY: the entries and values up to these lengths were written
        // above.
        unsafe {
            self.attributes.set_len(template.len());
            self.values.set_len(offset);
        }
    }

    pub fn finish(&mut self) {
        self.active = false;
        self.restarted = false;
        self.lost = false;
        self.exhausted = false;
    }

    /// Records that the search was started again on another member, which
    /// returns every object again: the handles returned so far are sorted,
    /// so [`FindState::record`] can tell them apart quickly.
    pub fn mark_restarted(&mut self) {
        self.restarted = true;
        self.returned.sort_unstable();
        self.before_restart = self.returned.len();
    }

    /// Records `handle` as found, and returns whether it is new to the
    /// application: false for a handle returned already, once the search
    /// was started again. Before a restart the vendor's search returns each
    /// object once, so nothing is looked up.
    #[inline]
    pub fn record(&mut self, handle: CK_OBJECT_HANDLE) -> bool {
        if self.restarted {
            let (sorted, since) = self.returned.split_at(self.before_restart);
            if sorted.binary_search(&handle).is_ok() || since.contains(&handle) {
                return false;
            }
        }
        self.returned.push(handle);
        true
    }

    /// Returns the virtual handle that `real` had when it was found last,
    /// or 0 when the object found last was another one.
    #[inline]
    pub fn hint(&self, real: CK_OBJECT_HANDLE) -> CK_OBJECT_HANDLE {
        if self.last_found.0 == real {
            self.last_found.1
        } else {
            0
        }
    }

    /// Records that `real` was found with the virtual handle `handle`.
    #[inline]
    pub fn found(&mut self, real: CK_OBJECT_HANDLE, handle: CK_OBJECT_HANDLE) {
        self.last_found = (real, handle);
    }

    /// Whether the template could be copied: it has no nested attribute
    /// arrays, whose values point to more memory of the application.
    pub fn is_restartable(&self) -> bool {
        !self.attributes.iter().any(|attribute| {
            matches!(
                attribute.kind,
                CKA_WRAP_TEMPLATE | CKA_UNWRAP_TEMPLATE | CKA_DERIVE_TEMPLATE
            )
        })
    }

    /// Builds the template again, pointing into this state's buffer.
    pub fn template(&mut self) -> Vec<CK_ATTRIBUTE> {
        let base = self.values.as_mut_ptr();
        let mut offset = 0;
        self.attributes
            .iter()
            .map(|attribute| {
                let value = if attribute.value == 0 {
                    std::ptr::null_mut()
                } else {
                    // SAFETY: the values of the attributes before this one
                    // fill `values` up to `offset`, and this one follows.
                    unsafe { base.add(offset) }.cast()
                };
                offset += attribute.len as usize;
                CK_ATTRIBUTE {
                    type_: attribute.kind,
                    pValue: value,
                    ulValueLen: attribute.len,
                }
            })
            .collect()
    }
}

/// Copies `len` bytes from `source` to `target`. A value of up to 16 bytes
/// (a class, a flag, a short label or ID) is copied with two loads and two
/// stores of overlapping words instead of a call to memcpy.
///
/// # Safety
/// `source` is valid for reads and `target` for writes of `len` bytes, and
/// the two do not overlap.
#[inline(always)]
unsafe fn copy(source: *const u8, target: *mut u8, len: usize) {
    // SAFETY: each pair of words lies within the `len` bytes of both
    // buffers: the first starts at 0, the second ends at `len`.
    unsafe {
        if len > 16 {
            std::ptr::copy_nonoverlapping(source, target, len);
        } else if len >= 8 {
            let head = source.cast::<u64>().read_unaligned();
            let tail = source.add(len - 8).cast::<u64>().read_unaligned();
            target.cast::<u64>().write_unaligned(head);
            target.add(len - 8).cast::<u64>().write_unaligned(tail);
        } else if len >= 4 {
            let head = source.cast::<u32>().read_unaligned();
            let tail = source.add(len - 4).cast::<u32>().read_unaligned();
            target.cast::<u32>().write_unaligned(head);
            target.add(len - 4).cast::<u32>().write_unaligned(tail);
        } else if len >= 2 {
            let head = source.cast::<u16>().read_unaligned();
            let tail = source.add(len - 2).cast::<u16>().read_unaligned();
            target.cast::<u16>().write_unaligned(head);
            target.add(len - 2).cast::<u16>().write_unaligned(tail);
        } else if len == 1 {
            *target = *source;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_survives_caller_buffers() {
        let mut class: CK_ULONG = CKO_PRIVATE_KEY;
        let mut label = *b"rsa-key";
        let template = [
            CK_ATTRIBUTE {
                type_: CKA_CLASS,
                pValue: (&mut class as *mut CK_ULONG).cast(),
                ulValueLen: 8,
            },
            CK_ATTRIBUTE {
                type_: CKA_LABEL,
                pValue: label.as_mut_ptr().cast(),
                ulValueLen: label.len() as CK_ULONG,
            },
            CK_ATTRIBUTE {
                type_: CKA_ID,
                pValue: std::ptr::null_mut(),
                ulValueLen: 0,
            },
        ];
        let mut state = FindState::default();
        unsafe { state.start(&template) };
        label.fill(0);
        let copy = state.template();
        assert_eq!(copy.len(), 3);
        let value = unsafe { std::slice::from_raw_parts(copy[1].pValue as *const u8, 7) };
        assert_eq!(value, b"rsa-key");
        assert!(copy[2].pValue.is_null());
        assert!(state.is_restartable());
    }

    #[test]
    fn start_again_with_longer_values() {
        let mut short = *b"ab";
        let mut long = [7u8; 100];
        let mut state = FindState::default();
        let attribute = |value: &mut [u8]| CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: value.as_mut_ptr().cast(),
            ulValueLen: value.len() as CK_ULONG,
        };
        unsafe { state.start(&[attribute(&mut short)]) };
        let template = [attribute(&mut short), attribute(&mut long)];
        unsafe { state.start(&template) };
        let copy = state.template();
        assert_eq!(copy.len(), 2);
        let first = unsafe { std::slice::from_raw_parts(copy[0].pValue as *const u8, 2) };
        assert_eq!(first, b"ab");
        let second = unsafe { std::slice::from_raw_parts(copy[1].pValue as *const u8, 100) };
        assert_eq!(second, &[7u8; 100][..]);
    }

    #[test]
    fn copy_every_length() {
        let source: Vec<u8> = (1..=40).collect();
        for len in 0..=source.len() {
            let mut target = vec![0xee; source.len() + 1];
            unsafe { copy(source.as_ptr(), target.as_mut_ptr(), len) };
            assert_eq!(&target[..len], &source[..len], "length {len}");
            assert!(target[len..].iter().all(|&b| b == 0xee), "length {len}");
        }
    }

    #[test]
    fn restart_leaves_out_returned_handles() {
        let mut state = FindState::default();
        unsafe { state.start(&[]) };
        assert!(state.record(7));
        assert!(state.record(3));
        state.mark_restarted();
        assert!(!state.record(3));
        assert!(state.record(5));
        assert!(!state.record(7));
        state.mark_restarted();
        assert!(!state.record(5));
        assert!(state.record(9));
    }
}
