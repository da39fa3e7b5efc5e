//! Fuzzes the code that reads memory a PKCS#11 application passes in:
//! attribute templates (with nested arrays), mechanism parameters and their
//! deep copies, the two-call list convention and the interface lookup of
//! the exported entry points, and the extension's function list.
//!
//! Every pointer the target builds points into memory it owns, with the
//! length it passes beside it, or is NULL with any length: exactly what a
//! careless but not malicious application can pass. The code under test
//! must reject the NULL cases with a PKCS#11 code and never read past a
//! buffer.
#![no_main]

use cryptoki_sys::*;
use libfuzzer_sys::fuzz_target;
use p11wld::mechanism::{self, OwnedMechanism};
use p11wld::template::{self, Use};
use p11wld::wld::find::FindState;
use std::mem::size_of;

/// Reads the fuzz input front to back; past its end every read gives 0.
struct Input<'a> {
    bytes: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((first, rest)) => {
                self.bytes = rest;
                *first
            }
            None => 0,
        }
    }

    fn ulong(&mut self) -> CK_ULONG {
        let mut value = [0u8; 8];
        for byte in value.iter_mut() {
            *byte = self.byte();
        }
        CK_ULONG::from_le_bytes(value)
    }

    /// Takes up to `max` bytes.
    fn take(&mut self, max: usize) -> Vec<u8> {
        let len = (self.byte() as usize).min(max).min(self.bytes.len());
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        taken.to_vec()
    }

    /// A length: mostly small, sometimes one of the edge values.
    fn length(&mut self, honest: usize) -> CK_ULONG {
        match self.byte() % 8 {
            0 => CK_UNAVAILABLE_INFORMATION,
            1 => isize::MAX as CK_ULONG + 1,
            2 => honest as CK_ULONG + 1,
            _ => honest as CK_ULONG,
        }
    }
}

const ATTRIBUTE_TYPES: [CK_ATTRIBUTE_TYPE; 12] = [
    CKA_CLASS,
    CKA_TOKEN,
    CKA_LABEL,
    CKA_ID,
    CKA_VALUE,
    CKA_VALUE_LEN,
    CKA_KEY_TYPE,
    CKA_SENSITIVE,
    CKA_ALLOWED_MECHANISMS,
    CKA_WRAP_TEMPLATE,
    CKA_UNWRAP_TEMPLATE,
    CKA_DERIVE_TEMPLATE,
];

/// Owns the buffers that a built template points into.
#[derive(Default)]
struct Arena {
    values: Vec<Vec<u8>>,
    arrays: Vec<Vec<CK_ATTRIBUTE>>,
}

/// Builds a template of up to eight attributes, nested up to `depth`.
fn build_template(input: &mut Input<'_>, arena: &mut Arena, depth: usize) -> Vec<CK_ATTRIBUTE> {
    let count = input.byte() % 9;
    let mut template = Vec::new();
    for _ in 0..count {
        let selector = input.byte();
        let kind = if selector < 240 {
            ATTRIBUTE_TYPES[selector as usize % ATTRIBUTE_TYPES.len()]
        } else {
            input.ulong()
        };
        let nested = matches!(
            kind,
            CKA_WRAP_TEMPLATE | CKA_UNWRAP_TEMPLATE | CKA_DERIVE_TEMPLATE
        );
        let attribute = match input.byte() % 4 {
            // NULL with any length: must be rejected unless the length is 0.
            0 => CK_ATTRIBUTE {
                type_: kind,
                pValue: std::ptr::null_mut(),
                ulValueLen: input.ulong() % 64,
            },
            1 if nested && depth < 7 => {
                let mut inner = build_template(input, arena, depth + 1);
                let bytes = inner.len() * size_of::<CK_ATTRIBUTE>();
                // Shorter than the array is honest too; longer is not.
                let len = bytes.saturating_sub((input.byte() % 2) as usize);
                let pointer = inner.as_mut_ptr();
                arena.arrays.push(inner);
                CK_ATTRIBUTE {
                    type_: kind,
                    pValue: pointer.cast(),
                    ulValueLen: len as CK_ULONG,
                }
            }
            _ => {
                let mut value = input.take(24);
                let honest = value.len();
                let mut len = input.length(honest);
                if len as usize > honest && !nested {
                    // Lengths past the buffer are only passed where the
                    // code must reject them before reading.
                    if len != CK_UNAVAILABLE_INFORMATION && len <= isize::MAX as CK_ULONG {
                        len = honest as CK_ULONG;
                    }
                } else if nested {
                    // Raw bytes are no CK_ATTRIBUTE array: a length short
                    // of one structure keeps them from being read as one.
                    len = (honest % size_of::<CK_ATTRIBUTE>()) as CK_ULONG;
                }
                let pointer = if value.is_empty() {
                    std::ptr::NonNull::<u8>::dangling().as_ptr()
                } else {
                    value.as_mut_ptr()
                };
                arena.values.push(value);
                CK_ATTRIBUTE {
                    type_: kind,
                    pValue: pointer.cast(),
                    ulValueLen: len,
                }
            }
        };
        template.push(attribute);
    }
    template
}

/// Template checks, the helpers that read checked templates, and the copy
/// a search keeps.
fn fuzz_template(input: &mut Input<'_>) {
    let mut arena = Arena::default();
    let template = build_template(input, &mut arena, 0);
    for usage in [Use::Write, Use::Search] {
        // SAFETY: every pointer of the template is NULL or points into the
        // arena with at most its length, and nested arrays hold attributes.
        let checked = unsafe { template::check(&template, usage) };
        if checked.is_ok() {
            let _ = template::bool_value(&template, CKA_TOKEN);
            let _ = template::touches(&template, &[CKA_LABEL, CKA_VALUE]);
            if usage == Use::Search {
                let mut state = FindState::default();
                // SAFETY: the template passed the search checks.
                unsafe { state.start(&template) };
                let copy = state.template();
                assert_eq!(copy.len(), template.len());
                for (original, copied) in template.iter().zip(&copy) {
                    assert_eq!(original.ulValueLen, copied.ulValueLen);
                    if !original.pValue.is_null() && original.ulValueLen > 0 {
                        // SAFETY: both point to ulValueLen readable bytes.
                        let (a, b) = unsafe {
                            (
                                std::slice::from_raw_parts(
                                    original.pValue as *const u8,
                                    original.ulValueLen as usize,
                                ),
                                std::slice::from_raw_parts(
                                    copied.pValue as *const u8,
                                    copied.ulValueLen as usize,
                                ),
                            )
                        };
                        assert_eq!(a, b);
                    }
                }
            }
        }
    }
}

/// A buffer a parameter structure points to: honest (into the arena,
/// with at most its length) or NULL with any small length.
fn buffer(input: &mut Input<'_>, arena: &mut Arena) -> (*mut u8, CK_ULONG) {
    if input.byte() % 4 == 0 {
        return (std::ptr::null_mut(), input.ulong() % 64);
    }
    let mut value = input.take(32);
    let len = value.len() as CK_ULONG;
    let pointer = if value.is_empty() {
        std::ptr::null_mut()
    } else {
        value.as_mut_ptr()
    };
    arena.values.push(value);
    (pointer, len)
}

/// Copies a parameter structure into aligned words with 16 bytes to spare,
/// so a length a little past the structure still stays in owned memory.
fn words_of<T>(value: &T) -> (Vec<u64>, usize) {
    let size = size_of::<T>();
    let mut words = vec![0u64; size.div_ceil(8) + 2];
    // SAFETY: `words` has room for `size` bytes; T is plain data.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (value as *const T).cast::<u8>(),
            words.as_mut_ptr().cast::<u8>(),
            size,
        )
    };
    (words, size)
}

/// Builds the parameter of one mechanism, with honest or NULL pointers,
/// and returns its bytes and its true size.
fn build_parameter(
    input: &mut Input<'_>,
    arena: &mut Arena,
) -> (CK_MECHANISM_TYPE, Vec<u64>, usize) {
    let choice = input.byte() % 16;
    let number = |input: &mut Input<'_>| input.ulong() % 512;
    match choice {
        0 => {
            let (data, len) = buffer(input, arena);
            let value = CK_RSA_PKCS_OAEP_PARAMS {
                hashAlg: number(input),
                mgf: number(input),
                source: number(input),
                pSourceData: data.cast(),
                ulSourceDataLen: len,
            };
            let (words, size) = words_of(&value);
            (CKM_RSA_PKCS_OAEP, words, size)
        }
        1 => {
            let value = CK_RSA_PKCS_PSS_PARAMS {
                hashAlg: number(input),
                mgf: number(input),
                sLen: number(input),
            };
            let (words, size) = words_of(&value);
            (CKM_SHA256_RSA_PKCS_PSS, words, size)
        }
        2 => {
            let (iv, iv_len) = buffer(input, arena);
            let (aad, aad_len) = buffer(input, arena);
            let value = CK_GCM_PARAMS {
                pIv: iv,
                ulIvLen: iv_len,
                ulIvBits: number(input),
                pAAD: aad,
                ulAADLen: aad_len,
                ulTagBits: number(input),
            };
            let (words, size) = words_of(&value);
            (CKM_AES_GCM, words, size)
        }
        3 => {
            let (nonce, nonce_len) = buffer(input, arena);
            let (aad, aad_len) = buffer(input, arena);
            let value = CK_CCM_PARAMS {
                ulDataLen: number(input),
                pNonce: nonce,
                ulNonceLen: nonce_len,
                pAAD: aad,
                ulAADLen: aad_len,
                ulMACLen: number(input),
            };
            let (words, size) = words_of(&value);
            (CKM_AES_CCM, words, size)
        }
        4 => {
            let value = CK_AES_CTR_PARAMS {
                ulCounterBits: number(input),
                cb: [input.byte(); 16],
            };
            let (words, size) = words_of(&value);
            (CKM_AES_CTR, words, size)
        }
        5 => {
            let (shared, shared_len) = buffer(input, arena);
            let (public, public_len) = buffer(input, arena);
            let value = CK_ECDH1_DERIVE_PARAMS {
                kdf: number(input),
                ulSharedDataLen: shared_len,
                pSharedData: shared,
                ulPublicDataLen: public_len,
                pPublicData: public,
            };
            let (words, size) = words_of(&value);
            (CKM_ECDH1_DERIVE, words, size)
        }
        6 => {
            let (shared, shared_len) = buffer(input, arena);
            let (public, public_len) = buffer(input, arena);
            let (public2, public2_len) = buffer(input, arena);
            let value = CK_ECDH2_DERIVE_PARAMS {
                kdf: number(input),
                ulSharedDataLen: shared_len,
                pSharedData: shared,
                ulPublicDataLen: public_len,
                pPublicData: public,
                ulPrivateDataLen: number(input),
                hPrivateData: input.ulong(),
                ulPublicDataLen2: public2_len,
                pPublicData2: public2,
            };
            let (words, size) = words_of(&value);
            (CKM_ECMQV_DERIVE, words, size)
        }
        7 => {
            let (context, context_len) = buffer(input, arena);
            let value = CK_EDDSA_PARAMS {
                phFlag: input.byte(),
                ulContextDataLen: context_len,
                pContextData: context,
            };
            let (words, size) = words_of(&value);
            (CKM_EDDSA, words, size)
        }
        8 => {
            let value: CK_OBJECT_HANDLE = input.ulong();
            let (words, size) = words_of(&value);
            (CKM_CONCATENATE_BASE_AND_KEY, words, size)
        }
        9 => {
            let (data, len) = buffer(input, arena);
            let value = CK_KEY_DERIVATION_STRING_DATA {
                pData: data,
                ulLen: len,
            };
            let (words, size) = words_of(&value);
            (CKM_AES_ECB_ENCRYPT_DATA, words, size)
        }
        10 => {
            let (data, len) = buffer(input, arena);
            let value = CK_AES_CBC_ENCRYPT_DATA_PARAMS {
                iv: [input.byte(); 16],
                pData: data,
                length: len,
            };
            let (words, size) = words_of(&value);
            (CKM_AES_CBC_ENCRYPT_DATA, words, size)
        }
        11 => {
            let value: CK_ULONG = input.ulong();
            let (words, size) = words_of(&value);
            (CKM_SHA256_HMAC_GENERAL, words, size)
        }
        _ => {
            // Opaque bytes, of a known (an IV) or an unknown mechanism.
            let kind = match choice {
                12 => CKM_AES_CBC_PAD,
                13 => CKM_SHA256,
                14 => CKM_ECDSA,
                _ => CKM_VENDOR_DEFINED | input.ulong() % 16,
            };
            let bytes = input.take(48);
            let mut words = vec![0u64; bytes.len().div_ceil(8) + 2];
            // SAFETY: `words` has room for the bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    words.as_mut_ptr().cast::<u8>(),
                    bytes.len(),
                )
            };
            (kind, words, bytes.len())
        }
    }
}

/// Mechanism parameter checks and the deep copy that failover keeps.
fn fuzz_mechanism(input: &mut Input<'_>) {
    let mut arena = Arena::default();
    let (kind, mut words, size) = build_parameter(input, &mut arena);
    let room = words.len() * 8;
    let (pointer, length): (*mut std::ffi::c_void, CK_ULONG) = match input.byte() % 8 {
        // NULL with any length, or NULL with none.
        0 => (std::ptr::null_mut(), input.ulong() % 64),
        1 => (std::ptr::null_mut(), 0),
        // A wrong length that stays within the owned words, or one that
        // no buffer can have.
        2 => (words.as_mut_ptr().cast(), (input.byte() as usize % room) as CK_ULONG),
        3 => (words.as_mut_ptr().cast(), isize::MAX as CK_ULONG + 1),
        _ => (words.as_mut_ptr().cast(), size as CK_ULONG),
    };
    let raw = CK_MECHANISM {
        mechanism: kind,
        pParameter: pointer,
        ulParameterLen: length,
    };
    // SAFETY: pParameter is NULL or points to ulParameterLen owned bytes,
    // except for a length past isize::MAX, which check rejects unread.
    let checked = unsafe { mechanism::check(&raw) };
    if checked.is_err() {
        return;
    }
    assert!(length <= room as CK_ULONG || pointer.is_null());
    // SAFETY: checked; every pointer inside the structure is NULL (with
    // any length, which check rejected unless 0) or points into the arena
    // with at most its length.
    if let Some(owned) = unsafe { OwnedMechanism::copy(&raw) } {
        let _ = owned.with(
            |handle| Ok(handle.wrapping_add(1)),
            |copy| {
                // SAFETY: `with` passes a valid CK_MECHANISM.
                let copy = unsafe { &*copy };
                assert_eq!(copy.mechanism, kind);
                assert_eq!(copy.ulParameterLen, raw.ulParameterLen);
            },
        );
    }
}

/// The exported entry points that work before C_Initialize.
fn fuzz_entry_points(input: &mut Input<'_>) {
    // The two-call convention of C_GetInterfaceList.
    let room = (input.byte() % 6) as usize;
    let mut list = vec![CK_INTERFACE::default(); room];
    let mut count: CK_ULONG = input.byte() as CK_ULONG % (room as CK_ULONG + 1);
    let pointer = if input.byte() % 2 == 0 {
        std::ptr::null_mut()
    } else {
        list.as_mut_ptr()
    };
    // SAFETY: the list has room for `count` entries or is NULL.
    let rv = unsafe { p11wld::ffi::table::C_GetInterfaceList(pointer, &mut count) };
    assert!(rv == CKR_OK || rv == CKR_BUFFER_TOO_SMALL, "{rv:#x}");
    assert_eq!(count, 3);

    // C_GetInterface with any NUL-terminated name, version and flags.
    let mut name = input.take(12);
    name.retain(|&b| b != 0);
    name.push(0);
    let mut version = CK_VERSION {
        major: input.byte(),
        minor: input.byte(),
    };
    let flags = input.ulong();
    let sentinel = 0x40 as *mut CK_INTERFACE;
    let mut found = sentinel;
    let name_pointer = if input.byte() % 4 == 0 {
        std::ptr::null_mut()
    } else {
        name.as_mut_ptr()
    };
    let version_pointer: *mut CK_VERSION = if input.byte() % 4 == 0 {
        std::ptr::null_mut()
    } else {
        &mut version
    };
    // SAFETY: the name is NULL or NUL-terminated, the version NULL or valid.
    let rv = unsafe {
        p11wld::ffi::table::C_GetInterface(name_pointer, version_pointer, &mut found, flags)
    };
    if rv == CKR_OK {
        assert_ne!(found, sentinel);
        // SAFETY: a found interface is one of the module's statics.
        let interface = unsafe { &*found };
        assert!(!interface.pFunctionList.is_null());
    } else {
        assert_eq!(rv, CKR_ARGUMENTS_BAD);
        assert_eq!(found, sentinel, "C_GetInterface wrote on failure");
    }

    // The extension's version.
    let mut list: *mut p11wld::ffi::ext::P11WLD_FUNCTION_LIST = std::ptr::null_mut();
    // SAFETY: a valid out pointer.
    let rv = unsafe { p11wld::ffi::ext::P11WLD_GetFunctionList(&mut list) };
    assert_eq!(rv, CKR_OK);
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input { bytes: data };
    match input.byte() % 3 {
        0 => fuzz_template(&mut input),
        1 => fuzz_mechanism(&mut input),
        _ => fuzz_entry_points(&mut input),
    }
});
