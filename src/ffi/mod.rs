//! The C ABI: the exported entry points, the function tables, and the
//! checks of the application's pointers and lengths.
//!
//! Each entry point checks its arguments, reaches the instance through
//! [`crate::instance::enter`] (which also catches panics), and calls a safe
//! function of the `wld` layer. The functions of the tables are not
//! exported by name, so they never shadow a vendor library's `C_*` symbols:
//! only `C_GetFunctionList`, `C_GetInterfaceList`, `C_GetInterface` and
//! `P11WLD_GetFunctionList` are.
#![allow(non_snake_case)]

mod crypto;
pub mod ext;
mod general;
mod keys;
mod object;
mod session;
mod slot;
pub mod table;
mod v3;

use crate::error::{Result, Rv};
use cryptoki_sys::*;

/// Checks an input buffer: NULL is accepted with length 0 only, and no
/// buffer can be longer than `isize::MAX`.
#[inline]
pub(crate) fn check_in(data: *const u8, len: CK_ULONG) -> Result<()> {
    if (data.is_null() && len != 0) || len > isize::MAX as CK_ULONG {
        return Err(Rv(CKR_ARGUMENTS_BAD));
    }
    Ok(())
}

/// Borrows an input buffer after [`check_in`].
///
/// # Safety
/// `data` points to `len` readable bytes when it is not NULL.
pub(crate) unsafe fn bytes<'a>(data: *const u8, len: CK_ULONG) -> Result<&'a [u8]> {
    check_in(data, len)?;
    if len == 0 {
        return Ok(&[]);
    }
    // SAFETY: non-NULL and within isize::MAX, with the caller's length.
    Ok(unsafe { std::slice::from_raw_parts(data, len as usize) })
}

/// Checks that an output pointer is not NULL.
#[inline]
pub(crate) fn check_out<T>(pointer: *mut T) -> Result<()> {
    if pointer.is_null() {
        return Err(Rv(CKR_ARGUMENTS_BAD));
    }
    Ok(())
}

/// Writes `text` into a fixed-width PKCS#11 field, blank-padded and never
/// NUL-terminated; text longer than the field is cut at a character
/// boundary.
pub(crate) fn pad(field: &mut [u8], text: &str) {
    field.fill(b' ');
    let mut end = text.len().min(field.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    field[..end].copy_from_slice(&text.as_bytes()[..end]);
}

/// Writes `bytes` into a fixed-width PKCS#11 field, blank-padded and never
/// NUL-terminated, cut to the field's width.
pub(crate) fn pad_bytes(field: &mut [u8], bytes: &[u8]) {
    field.fill(b' ');
    let end = bytes.len().min(field.len());
    field[..end].copy_from_slice(&bytes[..end]);
}

/// Copies `items` to a caller's list by the PKCS#11 two-call convention:
/// a NULL `list` asks for the count; a list too short gives
/// CKR_BUFFER_TOO_SMALL with the count needed.
///
/// # Safety
/// `count` is valid for reads and writes; `list` points to `*count`
/// writable entries when not NULL.
pub(crate) unsafe fn fill_list<T: Copy>(
    items: &[T],
    list: *mut T,
    count: *mut CK_ULONG,
) -> Result<()> {
    check_out(count)?;
    // SAFETY: checked non-NULL; the caller vouches for it.
    let count = unsafe { &mut *count };
    let needed = items.len() as CK_ULONG;
    if list.is_null() {
        *count = needed;
        return Ok(());
    }
    if *count < needed {
        *count = needed;
        return Err(Rv(CKR_BUFFER_TOO_SMALL));
    }
    if !items.is_empty() {
        // SAFETY: the caller's list has room for at least `needed` entries.
        unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), list, items.len()) };
    }
    *count = needed;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_blank_fills_without_nul() {
        let mut field = [0u8; 32];
        pad(&mut field, "WLD_A");
        assert_eq!(&field[..5], b"WLD_A");
        assert!(field[5..].iter().all(|&b| b == b' '));
    }

    #[test]
    fn pad_cuts_at_char_boundary() {
        let mut field = [0u8; 4];
        pad(&mut field, "abcé");
        assert_eq!(&field, b"abc ");
    }

    #[test]
    fn fill_list_two_calls() {
        let items = [1u64, 2, 3];
        let mut count: CK_ULONG = 0;
        unsafe { fill_list(&items, std::ptr::null_mut(), &mut count) }.unwrap();
        assert_eq!(count, 3);
        let mut short = [0u64; 2];
        let mut count: CK_ULONG = 2;
        let result = unsafe { fill_list(&items, short.as_mut_ptr(), &mut count) };
        assert_eq!(result, Err(Rv(CKR_BUFFER_TOO_SMALL)));
        assert_eq!(count, 3);
        let mut list = [0u64; 3];
        unsafe { fill_list(&items, list.as_mut_ptr(), &mut count) }.unwrap();
        assert_eq!(list, items);
    }

    #[test]
    fn fill_list_empty_with_buffer() {
        let mut buffer = [7u64; 1];
        let mut count: CK_ULONG = 0;
        unsafe { fill_list::<u64>(&[], buffer.as_mut_ptr(), &mut count) }.unwrap();
        assert_eq!(count, 0);
        assert_eq!(buffer[0], 7);
    }

    #[test]
    fn check_in_rejects_null_with_length() {
        assert_eq!(check_in(std::ptr::null(), 1), Err(Rv(CKR_ARGUMENTS_BAD)));
        assert_eq!(check_in(std::ptr::null(), 0), Ok(()));
        let byte = 0u8;
        assert_eq!(check_in(&byte, CK_ULONG::MAX), Err(Rv(CKR_ARGUMENTS_BAD)));
    }
}
