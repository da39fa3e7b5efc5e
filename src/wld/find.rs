//! The state of a session's search, kept so the search can start again on
//! another member and go on where it stopped.

use cryptoki_sys::*;

/// Marks an attribute whose value pointer was NULL.
const NULL_VALUE: usize = usize::MAX;

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
    /// Whether the template could be copied (it has no nested attribute
    /// arrays), so the search can start again elsewhere.
    restartable: bool,
    /// The template: type, offset in `values` and length of each attribute.
    attributes: Vec<(CK_ATTRIBUTE_TYPE, usize, usize)>,
    values: Vec<u8>,
    /// Virtual handles returned so far, in the order returned, except that
    /// the first `before_restart` are sorted.
    returned: Vec<CK_OBJECT_HANDLE>,
    /// The number of handles returned before the last restart.
    before_restart: usize,
}

impl FindState {
    /// Records a new search with `template`. The buffers keep their
    /// capacity, so a session that searches often does not allocate.
    ///
    /// # Safety
    /// The template passed `template::check`.
    pub unsafe fn start(&mut self, template: &[CK_ATTRIBUTE]) {
        self.active = true;
        self.restarted = false;
        self.lost = false;
        self.exhausted = false;
        self.restartable = true;
        self.attributes.clear();
        self.values.clear();
        self.returned.clear();
        self.before_restart = 0;
        for attribute in template {
            let len = attribute.ulValueLen as usize;
            if matches!(
                attribute.type_,
                CKA_WRAP_TEMPLATE | CKA_UNWRAP_TEMPLATE | CKA_DERIVE_TEMPLATE
            ) {
                self.restartable = false;
            }
            if attribute.pValue.is_null() {
                self.attributes.push((attribute.type_, NULL_VALUE, 0));
                continue;
            }
            let offset = self.values.len();
            // SAFETY: a checked template has `len` readable bytes behind a
            // non-NULL value.
            let value = unsafe { std::slice::from_raw_parts(attribute.pValue as *const u8, len) };
            self.values.extend_from_slice(value);
            self.attributes.push((attribute.type_, offset, len));
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

    pub fn is_restartable(&self) -> bool {
        self.restartable
    }

    /// Builds the template again, pointing into this state's buffer.
    pub fn template(&mut self) -> Vec<CK_ATTRIBUTE> {
        let base = self.values.as_mut_ptr();
        self.attributes
            .iter()
            .map(|&(kind, offset, len)| CK_ATTRIBUTE {
                type_: kind,
                pValue: if offset == NULL_VALUE {
                    std::ptr::null_mut()
                } else {
                    // SAFETY: `offset` is within `values`, recorded above.
                    unsafe { base.add(offset) }.cast()
                },
                ulValueLen: len as CK_ULONG,
            })
            .collect()
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
