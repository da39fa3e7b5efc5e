//! Mechanism parameters: their layout, checks, and owned copies.
//!
//! The proxy forwards the application's CK_MECHANISM to a vendor, so it
//! checks first that a parameter of a known layout has the right size and
//! that the buffers it points to are not NULL with a length. It translates
//! the object handles some parameters carry, and it copies a mechanism
//! deeply when an operation may have to be started again on another member.

use crate::error::{Result, Rv};
use cryptoki_sys::*;
use std::mem::size_of;

const ULONG: usize = size_of::<CK_ULONG>();
const POINTER: usize = size_of::<*const u8>();

/// Where a parameter structure keeps a pointer and the length of what it
/// points to, as byte offsets.
#[derive(Clone, Copy, Debug)]
struct Buffer {
    pointer: usize,
    length: usize,
}

/// The layout of a mechanism parameter.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// Opaque bytes, such as an IV; any length.
    Bytes,
    /// A structure of `size` bytes; `buffers` point to more bytes, and an
    /// object handle sits at each offset of `handles`.
    Struct {
        size: usize,
        buffers: &'static [Buffer],
        handles: &'static [usize],
    },
}

const fn flat(size: usize) -> Layout {
    Layout::Struct {
        size,
        buffers: &[],
        handles: &[],
    }
}

/// CK_RSA_PKCS_OAEP_PARAMS: hashAlg, mgf, source, pSourceData, ulSourceDataLen.
const OAEP: Layout = Layout::Struct {
    size: 3 * ULONG + POINTER + ULONG,
    buffers: &[Buffer {
        pointer: 3 * ULONG,
        length: 3 * ULONG + POINTER,
    }],
    handles: &[],
};
/// CK_GCM_PARAMS: pIv, ulIvLen, ulIvBits, pAAD, ulAADLen, ulTagBits.
const GCM: Layout = Layout::Struct {
    size: 2 * POINTER + 4 * ULONG,
    buffers: &[
        Buffer {
            pointer: 0,
            length: POINTER,
        },
        Buffer {
            pointer: POINTER + 2 * ULONG,
            length: 2 * POINTER + 2 * ULONG,
        },
    ],
    handles: &[],
};
/// CK_CCM_PARAMS: ulDataLen, pNonce, ulNonceLen, pAAD, ulAADLen, ulMACLen.
const CCM: Layout = Layout::Struct {
    size: 2 * POINTER + 4 * ULONG,
    buffers: &[
        Buffer {
            pointer: ULONG,
            length: ULONG + POINTER,
        },
        Buffer {
            pointer: 2 * ULONG + POINTER,
            length: 2 * ULONG + 2 * POINTER,
        },
    ],
    handles: &[],
};
/// CK_ECDH1_DERIVE_PARAMS: kdf, ulSharedDataLen, pSharedData,
/// ulPublicDataLen, pPublicData.
const ECDH1: Layout = Layout::Struct {
    size: 3 * ULONG + 2 * POINTER,
    buffers: &[
        Buffer {
            pointer: 2 * ULONG,
            length: ULONG,
        },
        Buffer {
            pointer: 3 * ULONG + POINTER,
            length: 2 * ULONG + POINTER,
        },
    ],
    handles: &[],
};
/// CK_ECDH2_DERIVE_PARAMS (ECMQV): kdf, ulSharedDataLen, pSharedData,
/// ulPublicDataLen, pPublicData, ulPrivateDataLen, hPrivateData,
/// ulPublicDataLen2, pPublicData2.
const ECMQV: Layout = Layout::Struct {
    size: 6 * ULONG + 3 * POINTER,
    buffers: &[
        Buffer {
            pointer: 2 * ULONG,
            length: ULONG,
        },
        Buffer {
            pointer: 3 * ULONG + POINTER,
            length: 2 * ULONG + POINTER,
        },
        Buffer {
            pointer: 6 * ULONG + 2 * POINTER,
            length: 5 * ULONG + 2 * POINTER,
        },
    ],
    handles: &[4 * ULONG + 2 * POINTER],
};
/// CK_KEY_DERIVATION_STRING_DATA: pData, ulLen.
const STRING_DATA: Layout = Layout::Struct {
    size: POINTER + ULONG,
    buffers: &[Buffer {
        pointer: 0,
        length: POINTER,
    }],
    handles: &[],
};
/// CK_AES_CBC_ENCRYPT_DATA_PARAMS: iv[16], pData, length.
const AES_CBC_DATA: Layout = Layout::Struct {
    size: 16 + POINTER + ULONG,
    buffers: &[Buffer {
        pointer: 16,
        length: 16 + POINTER,
    }],
    handles: &[],
};
/// CK_EDDSA_PARAMS: phFlag (padded to a CK_ULONG), ulContextDataLen,
/// pContextData.
const EDDSA: Layout = Layout::Struct {
    size: 2 * ULONG + POINTER,
    buffers: &[Buffer {
        pointer: 2 * ULONG,
        length: ULONG,
    }],
    handles: &[],
};
/// CK_RSA_PKCS_PSS_PARAMS: hashAlg, mgf, sLen.
const PSS: Layout = flat(3 * ULONG);
/// CK_AES_CTR_PARAMS: ulCounterBits, cb[16].
const CTR: Layout = flat(ULONG + 16);
/// One CK_ULONG (a MAC length, a bit offset).
const ONE_ULONG: Layout = flat(ULONG);
/// Opaque bytes.
const BYTES: Layout = Layout::Bytes;
/// A CK_OBJECT_HANDLE (CKM_CONCATENATE_BASE_AND_KEY).
const HANDLE: Layout = Layout::Struct {
    size: ULONG,
    buffers: &[],
    handles: &[0],
};

/// Returns the layout of `mechanism`'s parameter, if the proxy knows it.
fn layout(mechanism: CK_MECHANISM_TYPE) -> Option<&'static Layout> {
    let layout = match mechanism {
        CKM_RSA_PKCS_OAEP => &OAEP,
        CKM_RSA_PKCS_PSS
        | CKM_SHA1_RSA_PKCS_PSS
        | CKM_SHA224_RSA_PKCS_PSS
        | CKM_SHA256_RSA_PKCS_PSS
        | CKM_SHA384_RSA_PKCS_PSS
        | CKM_SHA512_RSA_PKCS_PSS => &PSS,
        CKM_AES_GCM => &GCM,
        CKM_AES_CCM => &CCM,
        CKM_AES_CTR => &CTR,
        CKM_ECDH1_DERIVE | CKM_ECDH1_COFACTOR_DERIVE => &ECDH1,
        CKM_ECMQV_DERIVE => &ECMQV,
        CKM_EDDSA => &EDDSA,
        CKM_CONCATENATE_BASE_AND_KEY => &HANDLE,
        CKM_CONCATENATE_BASE_AND_DATA
        | CKM_CONCATENATE_DATA_AND_BASE
        | CKM_XOR_BASE_AND_DATA
        | CKM_AES_ECB_ENCRYPT_DATA
        | CKM_DES_ECB_ENCRYPT_DATA
        | CKM_DES3_ECB_ENCRYPT_DATA => &STRING_DATA,
        CKM_AES_CBC_ENCRYPT_DATA => &AES_CBC_DATA,
        CKM_EXTRACT_KEY_FROM_KEY
        | CKM_SHA_1_HMAC_GENERAL
        | CKM_SHA224_HMAC_GENERAL
        | CKM_SHA256_HMAC_GENERAL
        | CKM_SHA384_HMAC_GENERAL
        | CKM_SHA512_HMAC_GENERAL
        | CKM_MD5_HMAC_GENERAL
        | CKM_AES_MAC_GENERAL
        | CKM_DES3_MAC_GENERAL => &ONE_ULONG,
        CKM_AES_CBC | CKM_AES_CBC_PAD | CKM_AES_OFB | CKM_AES_CFB8 | CKM_AES_CFB64
        | CKM_AES_CFB128 | CKM_AES_CTS | CKM_DES3_CBC | CKM_DES3_CBC_PAD | CKM_DES_CBC
        | CKM_DES_CBC_PAD | CKM_AES_KEY_WRAP | CKM_AES_KEY_WRAP_PAD | CKM_AES_KEY_WRAP_KWP
        | CKM_DH_PKCS_DERIVE => &BYTES,
        _ => return None,
    };
    Some(layout)
}

/// Reads a CK_ULONG at `offset` of a parameter structure.
fn ulong_at(param: &[u8], offset: usize) -> CK_ULONG {
    let mut bytes = [0u8; ULONG];
    bytes.copy_from_slice(&param[offset..offset + ULONG]);
    CK_ULONG::from_ne_bytes(bytes)
}

fn pointer_at(param: &[u8], offset: usize) -> *const u8 {
    ulong_at(param, offset) as usize as *const u8
}

/// Borrows the parameter bytes of `mechanism`.
///
/// # Safety
/// `mechanism.pParameter` points to `ulParameterLen` readable bytes when it
/// is not NULL.
unsafe fn param_bytes(mechanism: &CK_MECHANISM) -> Result<&[u8]> {
    let len = usize::try_from(mechanism.ulParameterLen)
        .ok()
        .filter(|len| *len <= isize::MAX as usize)
        .ok_or(Rv(CKR_MECHANISM_PARAM_INVALID))?;
    if mechanism.pParameter.is_null() {
        return if len == 0 {
            Ok(&[])
        } else {
            Err(Rv(CKR_MECHANISM_PARAM_INVALID))
        };
    }
    // SAFETY: non-NULL, with the length the caller vouches for.
    Ok(unsafe { std::slice::from_raw_parts(mechanism.pParameter.cast::<u8>(), len) })
}

/// Checks `mechanism`'s parameter against its known layout: NULL with a
/// length, a wrong structure size, or a NULL buffer with a length inside
/// the structure give CKR_MECHANISM_PARAM_INVALID.
///
/// # Safety
/// `mechanism.pParameter` points to `ulParameterLen` readable bytes when it
/// is not NULL.
pub unsafe fn check(mechanism: &CK_MECHANISM) -> Result<()> {
    // SAFETY: forwarded from the caller's contract.
    unsafe { check_layout(mechanism, layout(mechanism.mechanism)) }
}

/// Checks `mechanism`'s parameter against `layout`, the layout of its type.
///
/// # Safety
/// As [`check`].
unsafe fn check_layout(mechanism: &CK_MECHANISM, layout: Option<&Layout>) -> Result<()> {
    // SAFETY: forwarded from the caller's contract.
    let param = unsafe { param_bytes(mechanism) }?;
    let Some(&Layout::Struct { size, buffers, .. }) = layout else {
        return Ok(());
    };
    if param.is_empty() {
        // Some mechanisms take an optional parameter; the vendor decides.
        return Ok(());
    }
    if param.len() != size {
        return Err(Rv(CKR_MECHANISM_PARAM_INVALID));
    }
    for buffer in buffers {
        let len = ulong_at(param, buffer.length);
        if pointer_at(param, buffer.pointer).is_null() && len != 0 {
            return Err(Rv(CKR_MECHANISM_PARAM_INVALID));
        }
        if len > isize::MAX as CK_ULONG {
            return Err(Rv(CKR_MECHANISM_PARAM_INVALID));
        }
    }
    Ok(())
}

/// Whether `mechanism`'s parameter carries object handles.
pub fn has_handles(mechanism: CK_MECHANISM_TYPE) -> bool {
    layout_has_handles(layout(mechanism))
}

fn layout_has_handles(layout: Option<&Layout>) -> bool {
    matches!(layout, Some(Layout::Struct { handles, .. }) if !handles.is_empty())
}

/// A CK_MECHANISM of the application whose parameter passed [`check`],
/// with the layout of its parameter, looked up once per call.
#[derive(Clone, Copy)]
pub struct Checked<'a> {
    raw: &'a CK_MECHANISM,
    layout: Option<&'static Layout>,
}

impl<'a> Checked<'a> {
    /// Checks the application's mechanism pointer and its parameter.
    ///
    /// # Safety
    /// `mechanism` is NULL or points to a CK_MECHANISM whose parameter
    /// pointers are valid for their lengths, for as long as `'a`.
    #[inline]
    pub unsafe fn new(mechanism: *const CK_MECHANISM) -> Result<Checked<'a>> {
        if mechanism.is_null() {
            return Err(Rv(CKR_ARGUMENTS_BAD));
        }
        // SAFETY: checked non-NULL; the caller passes a CK_MECHANISM.
        let raw = unsafe { &*mechanism };
        if raw.ulParameterLen == 0 {
            // Every layout accepts an empty parameter, and it has nothing
            // to copy or translate, so the layout is not looked up.
            return Ok(Checked { raw, layout: None });
        }
        // SAFETY: forwarded from the caller's contract.
        unsafe { Checked::with_parameter(raw) }
    }

    /// Looks up and checks the layout of a mechanism with a parameter. It
    /// is out of line, so the common case without a parameter stays short.
    ///
    /// # Safety
    /// As [`Checked::new`], for `raw`.
    #[inline(never)]
    unsafe fn with_parameter(raw: &'a CK_MECHANISM) -> Result<Checked<'a>> {
        let layout = layout(raw.mechanism);
        // SAFETY: forwarded from the caller's contract.
        unsafe { check_layout(raw, layout) }?;
        Ok(Checked { raw, layout })
    }

    pub fn kind(&self) -> CK_MECHANISM_TYPE {
        self.raw.mechanism
    }

    /// Whether the parameter carries object handles.
    pub fn has_handles(&self) -> bool {
        layout_has_handles(self.layout)
    }

    /// Returns the pointer to hand to a vendor.
    pub fn as_ptr(&self) -> *mut CK_MECHANISM {
        self.raw as *const CK_MECHANISM as *mut CK_MECHANISM
    }

    /// Copies the mechanism deeply; see [`OwnedMechanism::copy`].
    #[inline]
    pub fn to_owned(&self) -> Option<OwnedMechanism> {
        if self.raw.ulParameterLen == 0 {
            return Some(OwnedMechanism {
                mechanism: self.raw.mechanism,
                param: None,
            });
        }
        // SAFETY: `new` checked the parameter, and its caller vouched for
        // the pointers for the lifetime of `self`.
        unsafe { OwnedMechanism::copy_layout(self.raw, self.layout) }
    }
}

/// A deep copy of a CK_MECHANISM, with its own parameter buffers. A
/// mechanism without a parameter, the common case, needs no heap memory.
pub struct OwnedMechanism {
    mechanism: CK_MECHANISM_TYPE,
    /// The parameter; `None` when it is empty. Boxed, so a record of an
    /// operation without a parameter stays small.
    param: Option<Box<OwnedParam>>,
}

/// The maximum number of buffers a known parameter layout points to
/// (ECMQV has three).
const MAX_BUFFERS: usize = 3;

/// The copy of a non-empty mechanism parameter: the structure and the
/// buffers it points to share one allocation of words.
struct OwnedParam {
    /// The parameter structure, then the contents of each buffer it points
    /// to, each from a word boundary on. In u64 words so the structure is
    /// aligned as C expects.
    words: Box<[u64]>,
    /// The length of the structure in bytes.
    len: usize,
    /// The byte offset in `words` and the length of each buffer's copy, in
    /// the order of the layout's buffers.
    buffers: [(usize, usize); MAX_BUFFERS],
}

impl std::fmt::Debug for OwnedMechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Parameters may carry secrets (derivation data); show the type only.
        write!(f, "OwnedMechanism({:#x})", self.mechanism)
    }
}

impl OwnedMechanism {
    /// Copies `mechanism`. Returns `None` when its parameter has a layout
    /// the proxy does not know, so it cannot be copied safely.
    ///
    /// # Safety
    /// `mechanism` was checked with [`check`] and its pointers are valid.
    pub unsafe fn copy(mechanism: &CK_MECHANISM) -> Option<OwnedMechanism> {
        // SAFETY: forwarded from the caller's contract.
        unsafe { OwnedMechanism::copy_layout(mechanism, layout(mechanism.mechanism)) }
    }

    /// Copies `mechanism`, whose parameter has `layout`.
    ///
    /// # Safety
    /// As [`OwnedMechanism::copy`].
    unsafe fn copy_layout(
        mechanism: &CK_MECHANISM,
        layout: Option<&Layout>,
    ) -> Option<OwnedMechanism> {
        // SAFETY: forwarded from the caller's contract.
        let param = unsafe { param_bytes(mechanism) }.ok()?;
        if param.is_empty() {
            return Some(OwnedMechanism {
                mechanism: mechanism.mechanism,
                param: None,
            });
        }
        let mut sources: [&[u8]; MAX_BUFFERS] = [&[]; MAX_BUFFERS];
        match layout? {
            Layout::Bytes => {}
            Layout::Struct { buffers, .. } => {
                for (source, buffer) in sources.iter_mut().zip(buffers.iter()) {
                    let len = ulong_at(param, buffer.length) as usize;
                    let pointer = pointer_at(param, buffer.pointer);
                    if !pointer.is_null() && len != 0 {
                        // SAFETY: `check` accepted the structure, and the
                        // caller vouches for the buffers it points to.
                        *source = unsafe { std::slice::from_raw_parts(pointer, len) };
                    }
                }
            }
        }
        let words =
            param.len().div_ceil(8) + sources.iter().map(|b| b.len().div_ceil(8)).sum::<usize>();
        let mut owned = OwnedParam {
            words: vec![0u64; words].into_boxed_slice(),
            len: param.len(),
            buffers: [(0, 0); MAX_BUFFERS],
        };
        let mut offset = param.len().div_ceil(8) * 8;
        owned.bytes_mut(0, param.len()).copy_from_slice(param);
        for (index, source) in sources.iter().enumerate() {
            owned
                .bytes_mut(offset, source.len())
                .copy_from_slice(source);
            owned.buffers[index] = (offset, source.len());
            offset += source.len().div_ceil(8) * 8;
        }
        Some(OwnedMechanism {
            mechanism: mechanism.mechanism,
            param: Some(Box::new(owned)),
        })
    }

    pub fn mechanism_type(&self) -> CK_MECHANISM_TYPE {
        self.mechanism
    }

    /// Runs `f` with a CK_MECHANISM built from this copy, whose pointers
    /// stay valid during `f`, and whose object handles are replaced by
    /// `translate`. The copy itself keeps the handles it was made with.
    pub fn with<R>(
        &self,
        translate: impl Fn(CK_OBJECT_HANDLE) -> Result<CK_OBJECT_HANDLE>,
        f: impl FnOnce(*mut CK_MECHANISM) -> R,
    ) -> Result<R> {
        let Some(param) = &self.param else {
            let mut mechanism = CK_MECHANISM {
                mechanism: self.mechanism,
                pParameter: std::ptr::null_mut(),
                ulParameterLen: 0,
            };
            return Ok(f(&mut mechanism));
        };
        // The structure is patched in a scratch copy. Its pointers lead to
        // the buffers' copies in `param`, which the vendor only reads.
        let mut scratch = param.words[..param.len.div_ceil(8)].to_vec();
        if let Some(Layout::Struct {
            buffers, handles, ..
        }) = layout(self.mechanism)
        {
            // SAFETY: `scratch` holds at least `param.len` bytes.
            let bytes = unsafe {
                std::slice::from_raw_parts_mut(scratch.as_mut_ptr().cast::<u8>(), param.len)
            };
            let base = param.words.as_ptr().cast::<u8>();
            for (buffer, &(offset, len)) in buffers.iter().zip(&param.buffers) {
                let pointer = if len == 0 {
                    0
                } else {
                    // SAFETY: the copy of the buffer lies within `words`.
                    let address = unsafe { base.add(offset) };
                    address as usize as CK_ULONG
                };
                bytes[buffer.pointer..buffer.pointer + ULONG]
                    .copy_from_slice(&pointer.to_ne_bytes());
            }
            for &offset in handles.iter() {
                let handle = translate(ulong_at(bytes, offset))?;
                bytes[offset..offset + ULONG].copy_from_slice(&handle.to_ne_bytes());
            }
        }
        let mut mechanism = CK_MECHANISM {
            mechanism: self.mechanism,
            pParameter: scratch.as_mut_ptr().cast(),
            ulParameterLen: param.len as CK_ULONG,
        };
        Ok(f(&mut mechanism))
    }
}

impl OwnedParam {
    /// Returns `len` bytes of `words` from byte `offset` on.
    fn bytes_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        let bytes: &mut [u8] = words_as_bytes(&mut self.words);
        &mut bytes[offset..offset + len]
    }
}

/// Returns the bytes of `words`.
fn words_as_bytes(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: u8 has no alignment or validity requirement, and the byte
    // view covers exactly the words' memory.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 8) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mechanism(kind: CK_MECHANISM_TYPE, param: &mut [u8]) -> CK_MECHANISM {
        CK_MECHANISM {
            mechanism: kind,
            pParameter: if param.is_empty() {
                std::ptr::null_mut()
            } else {
                param.as_mut_ptr().cast()
            },
            ulParameterLen: param.len() as CK_ULONG,
        }
    }

    #[test]
    fn null_parameter_with_length_rejected() {
        let m = CK_MECHANISM {
            mechanism: CKM_AES_CBC,
            pParameter: std::ptr::null_mut(),
            ulParameterLen: 16,
        };
        assert_eq!(unsafe { check(&m) }, Err(Rv(CKR_MECHANISM_PARAM_INVALID)));
    }

    #[test]
    fn wrong_structure_size_rejected() {
        let mut param = [0u8; 20];
        let m = mechanism(CKM_RSA_PKCS_PSS, &mut param);
        assert_eq!(unsafe { check(&m) }, Err(Rv(CKR_MECHANISM_PARAM_INVALID)));
        let mut param = [0u8; 24];
        let m = mechanism(CKM_RSA_PKCS_PSS, &mut param);
        assert_eq!(unsafe { check(&m) }, Ok(()));
    }

    #[test]
    fn null_buffer_inside_structure_rejected() {
        let mut params = CK_GCM_PARAMS {
            pIv: std::ptr::null_mut(),
            ulIvLen: 12,
            ulIvBits: 96,
            pAAD: std::ptr::null_mut(),
            ulAADLen: 0,
            ulTagBits: 128,
        };
        let m = CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: (&mut params as *mut CK_GCM_PARAMS).cast(),
            ulParameterLen: size_of::<CK_GCM_PARAMS>() as CK_ULONG,
        };
        assert_eq!(unsafe { check(&m) }, Err(Rv(CKR_MECHANISM_PARAM_INVALID)));
    }

    #[test]
    fn layouts_match_cryptoki_sys() {
        let size = |kind| match layout(kind) {
            Some(&Layout::Struct { size, .. }) => size,
            _ => 0,
        };
        assert_eq!(
            size(CKM_RSA_PKCS_OAEP),
            size_of::<CK_RSA_PKCS_OAEP_PARAMS>()
        );
        assert_eq!(size(CKM_RSA_PKCS_PSS), size_of::<CK_RSA_PKCS_PSS_PARAMS>());
        assert_eq!(size(CKM_AES_GCM), size_of::<CK_GCM_PARAMS>());
        assert_eq!(size(CKM_AES_CCM), size_of::<CK_CCM_PARAMS>());
        assert_eq!(size(CKM_ECDH1_DERIVE), size_of::<CK_ECDH1_DERIVE_PARAMS>());
        assert_eq!(size(CKM_ECMQV_DERIVE), size_of::<CK_ECDH2_DERIVE_PARAMS>());
        assert_eq!(
            size(CKM_AES_ECB_ENCRYPT_DATA),
            size_of::<CK_KEY_DERIVATION_STRING_DATA>()
        );
        assert_eq!(
            size(CKM_AES_CBC_ENCRYPT_DATA),
            size_of::<CK_AES_CBC_ENCRYPT_DATA_PARAMS>()
        );
        assert_eq!(size(CKM_AES_CTR), size_of::<CK_AES_CTR_PARAMS>());
    }

    #[test]
    fn copy_owns_pointed_buffers() {
        let mut label = b"label".to_vec();
        let mut params = CK_RSA_PKCS_OAEP_PARAMS {
            hashAlg: CKM_SHA256,
            mgf: CKG_MGF1_SHA256,
            source: CKZ_DATA_SPECIFIED,
            pSourceData: label.as_mut_ptr().cast(),
            ulSourceDataLen: label.len() as CK_ULONG,
        };
        let m = CK_MECHANISM {
            mechanism: CKM_RSA_PKCS_OAEP,
            pParameter: (&mut params as *mut CK_RSA_PKCS_OAEP_PARAMS).cast(),
            ulParameterLen: size_of::<CK_RSA_PKCS_OAEP_PARAMS>() as CK_ULONG,
        };
        let owned = unsafe { OwnedMechanism::copy(&m) }.unwrap();
        label.fill(0);
        let seen = owned
            .with(Ok, |m| {
                let p = unsafe { &*((*m).pParameter as *const CK_RSA_PKCS_OAEP_PARAMS) };
                let data = unsafe {
                    std::slice::from_raw_parts(
                        p.pSourceData as *const u8,
                        p.ulSourceDataLen as usize,
                    )
                };
                (p.hashAlg, data.to_vec())
            })
            .unwrap();
        assert_eq!(seen, (CKM_SHA256, b"label".to_vec()));
    }

    #[test]
    fn copy_translates_handles() {
        let mut handle: CK_OBJECT_HANDLE = 0x1234;
        let m = CK_MECHANISM {
            mechanism: CKM_CONCATENATE_BASE_AND_KEY,
            pParameter: (&mut handle as *mut CK_OBJECT_HANDLE).cast(),
            ulParameterLen: ULONG as CK_ULONG,
        };
        let owned = unsafe { OwnedMechanism::copy(&m) }.unwrap();
        let seen = owned
            .with(
                |h| Ok(h + 1),
                |m| unsafe { *((*m).pParameter as *const CK_ULONG) },
            )
            .unwrap();
        assert_eq!(seen, 0x1235);
        let again = owned
            .with(
                |h| Ok(h + 1),
                |m| unsafe { *((*m).pParameter as *const CK_ULONG) },
            )
            .unwrap();
        assert_eq!(again, 0x1235);
        assert!(has_handles(CKM_CONCATENATE_BASE_AND_KEY));
        assert!(!has_handles(CKM_SHA256_RSA_PKCS));
    }

    #[test]
    fn unknown_layout_not_copied() {
        let mut param = [1u8; 8];
        let m = mechanism(CKM_VENDOR_DEFINED | 7, &mut param);
        assert!(unsafe { OwnedMechanism::copy(&m) }.is_none());
        let m = mechanism(CKM_VENDOR_DEFINED | 7, &mut []);
        assert!(unsafe { OwnedMechanism::copy(&m) }.is_some());
    }
}
