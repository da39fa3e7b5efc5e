//! Attribute templates from the application: checks before forwarding.
//!
//! A vendor reads a template with the lengths the application gives, so a
//! CK_ULONG attribute with four bytes, or a NULL value with a length, would
//! make it read memory that is not there. These checks reject such
//! templates with the code PKCS#11 defines, before any vendor sees them.

use crate::error::{Result, Rv};
use cryptoki_sys::*;
use std::mem::size_of;

/// The most attributes one template may have. No object type has nearly
/// as many; a larger count is taken for a corrupt argument.
pub const MAX_ATTRIBUTES: CK_ULONG = 4096;

/// How deep attribute arrays (CKA_WRAP_TEMPLATE and the like) may nest.
const MAX_DEPTH: usize = 4;

/// Attributes whose value is one CK_ULONG.
const ULONG_ATTRIBUTES: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_CLASS,
    CKA_KEY_TYPE,
    CKA_CERTIFICATE_TYPE,
    CKA_CERTIFICATE_CATEGORY,
    CKA_JAVA_MIDP_SECURITY_DOMAIN,
    CKA_VALUE_LEN,
    CKA_VALUE_BITS,
    CKA_MODULUS_BITS,
    CKA_PRIME_BITS,
    CKA_SUBPRIME_BITS,
    CKA_KEY_GEN_MECHANISM,
    CKA_MECHANISM_TYPE,
    CKA_HW_FEATURE_TYPE,
    CKA_NAME_HASH_ALGORITHM,
    CKA_PROFILE_ID,
];

/// Attributes whose value is one CK_BBOOL.
const BOOL_ATTRIBUTES: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_TOKEN,
    CKA_PRIVATE,
    CKA_MODIFIABLE,
    CKA_COPYABLE,
    CKA_DESTROYABLE,
    CKA_TRUSTED,
    CKA_SENSITIVE,
    CKA_ENCRYPT,
    CKA_DECRYPT,
    CKA_WRAP,
    CKA_UNWRAP,
    CKA_SIGN,
    CKA_SIGN_RECOVER,
    CKA_VERIFY,
    CKA_VERIFY_RECOVER,
    CKA_DERIVE,
    CKA_EXTRACTABLE,
    CKA_LOCAL,
    CKA_NEVER_EXTRACTABLE,
    CKA_ALWAYS_SENSITIVE,
    CKA_WRAP_WITH_TRUSTED,
    CKA_ALWAYS_AUTHENTICATE,
    CKA_RESET_ON_INIT,
    CKA_HAS_RESET,
];

/// Attributes whose value is an array of CK_ATTRIBUTE.
pub const ARRAY_ATTRIBUTES: &[CK_ATTRIBUTE_TYPE] =
    &[CKA_WRAP_TEMPLATE, CKA_UNWRAP_TEMPLATE, CKA_DERIVE_TEMPLATE];

/// The size rule the checks apply to an attribute's value.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ValueSize {
    Any,
    Ulong,
    Bool,
    /// An array of CK_MECHANISM_TYPE.
    Mechanisms,
    /// An array of CK_ATTRIBUTE.
    Attributes,
}

/// Attribute types below this value are classified by a table lookup.
const TABLE_LEN: usize = 0x700;

/// The value size of every attribute type below [`TABLE_LEN`], built from
/// the lists above at compile time, so checking a template costs a lookup
/// per attribute instead of a scan of the lists.
static VALUE_SIZES: [ValueSize; TABLE_LEN] = value_sizes();

const fn value_sizes() -> [ValueSize; TABLE_LEN] {
    let mut table = [ValueSize::Any; TABLE_LEN];
    let mut i = 0;
    while i < ULONG_ATTRIBUTES.len() {
        if (ULONG_ATTRIBUTES[i] as usize) < TABLE_LEN {
            table[ULONG_ATTRIBUTES[i] as usize] = ValueSize::Ulong;
        }
        i += 1;
    }
    let mut i = 0;
    while i < BOOL_ATTRIBUTES.len() {
        if (BOOL_ATTRIBUTES[i] as usize) < TABLE_LEN {
            table[BOOL_ATTRIBUTES[i] as usize] = ValueSize::Bool;
        }
        i += 1;
    }
    let mut i = 0;
    while i < ARRAY_ATTRIBUTES.len() {
        if (ARRAY_ATTRIBUTES[i] as usize) < TABLE_LEN {
            table[ARRAY_ATTRIBUTES[i] as usize] = ValueSize::Attributes;
        }
        i += 1;
    }
    if (CKA_ALLOWED_MECHANISMS as usize) < TABLE_LEN {
        table[CKA_ALLOWED_MECHANISMS as usize] = ValueSize::Mechanisms;
    }
    table
}

/// Returns the size rule for the value of `kind`.
#[inline]
fn value_size(kind: CK_ATTRIBUTE_TYPE) -> ValueSize {
    if let Some(size) = VALUE_SIZES.get(kind as usize) {
        return *size;
    }
    if ULONG_ATTRIBUTES.contains(&kind) {
        ValueSize::Ulong
    } else if BOOL_ATTRIBUTES.contains(&kind) {
        ValueSize::Bool
    } else if kind == CKA_ALLOWED_MECHANISMS {
        ValueSize::Mechanisms
    } else if ARRAY_ATTRIBUTES.contains(&kind) {
        ValueSize::Attributes
    } else {
        ValueSize::Any
    }
}

/// How a template is used, which decides the checks that apply.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Use {
    /// Values that make or change an object: no duplicate attributes.
    Write,
    /// Values to match in a search: duplicates are the vendor's business.
    Search,
}

/// Borrows the template the application passed as a pointer and a count.
///
/// # Safety
/// `template` points to `count` CK_ATTRIBUTE structures when not NULL.
pub unsafe fn borrow<'a>(
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
) -> Result<&'a mut [CK_ATTRIBUTE]> {
    if count == 0 {
        return Ok(&mut []);
    }
    if template.is_null() || count > MAX_ATTRIBUTES {
        return Err(Rv(CKR_ARGUMENTS_BAD));
    }
    // SAFETY: non-NULL, and the caller vouches for `count` entries.
    Ok(unsafe { std::slice::from_raw_parts_mut(template, count as usize) })
}

/// Checks the values of a template that a vendor will read.
///
/// # Safety
/// Every non-NULL `pValue` points to `ulValueLen` readable bytes, and those
/// of array attributes to CK_ATTRIBUTE structures.
#[inline(always)]
pub unsafe fn check(template: &[CK_ATTRIBUTE], usage: Use) -> Result<()> {
    // SAFETY: forwarded from the caller's contract.
    unsafe { check_at(template, usage, 0) }
}

/// Checks the attributes of a template at nesting depth `depth`. It is
/// inlined into each caller of [`check`], and the attribute arrays nested
/// in a template are checked out of line by [`check_nested`].
///
/// # Safety
/// As [`check`].
#[inline(always)]
unsafe fn check_at(template: &[CK_ATTRIBUTE], usage: Use, depth: usize) -> Result<()> {
    for (i, attribute) in template.iter().enumerate() {
        let len = attribute.ulValueLen;
        if len > isize::MAX as CK_ULONG || len == CK_UNAVAILABLE_INFORMATION {
            return Err(Rv(CKR_ATTRIBUTE_VALUE_INVALID));
        }
        if attribute.pValue.is_null() && len != 0 {
            return Err(Rv(CKR_ATTRIBUTE_VALUE_INVALID));
        }
        let kind = attribute.type_;
        let size = value_size(kind);
        let size_ok = match size {
            ValueSize::Ulong => len as usize == size_of::<CK_ULONG>(),
            ValueSize::Bool => len as usize == size_of::<CK_BBOOL>(),
            ValueSize::Mechanisms => len as usize % size_of::<CK_MECHANISM_TYPE>() == 0,
            ValueSize::Attributes => len as usize % size_of::<CK_ATTRIBUTE>() == 0,
            ValueSize::Any => true,
        };
        if !size_ok {
            return Err(Rv(CKR_ATTRIBUTE_VALUE_INVALID));
        }
        if usage == Use::Write && template[..i].iter().any(|a| a.type_ == kind) {
            return Err(Rv(CKR_TEMPLATE_INCONSISTENT));
        }
        if size == ValueSize::Attributes && len != 0 {
            // SAFETY: forwarded from the caller's contract.
            unsafe { check_nested(attribute, depth) }?;
        }
    }
    Ok(())
}

/// Checks the attribute array that `attribute`, an array attribute with a
/// non-empty value at nesting depth `depth`, points to.
///
/// # Safety
/// As [`check`], for `attribute`.
#[inline(never)]
unsafe fn check_nested(attribute: &CK_ATTRIBUTE, depth: usize) -> Result<()> {
    if depth >= MAX_DEPTH {
        return Err(Rv(CKR_ATTRIBUTE_VALUE_INVALID));
    }
    let count = attribute.ulValueLen as usize / size_of::<CK_ATTRIBUTE>();
    // SAFETY: the caller vouches for the array behind `pValue`.
    let inner =
        unsafe { std::slice::from_raw_parts(attribute.pValue as *const CK_ATTRIBUTE, count) };
    // SAFETY: as above, for the inner attributes.
    unsafe { check_at(inner, Use::Write, depth + 1) }
}

/// Returns whether the template sets an attribute of `kinds`.
pub fn touches(template: &[CK_ATTRIBUTE], kinds: &[CK_ATTRIBUTE_TYPE]) -> bool {
    template.iter().any(|a| kinds.contains(&a.type_))
}

/// Returns the CK_BBOOL value of `kind` in a checked template.
pub fn bool_value(template: &[CK_ATTRIBUTE], kind: CK_ATTRIBUTE_TYPE) -> Option<bool> {
    let attribute = template.iter().find(|a| a.type_ == kind)?;
    if attribute.pValue.is_null() || attribute.ulValueLen != 1 {
        return None;
    }
    // SAFETY: checked templates have one readable byte behind a CK_BBOOL.
    Some(unsafe { *(attribute.pValue as *const CK_BBOOL) } != CK_FALSE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribute<T>(kind: CK_ATTRIBUTE_TYPE, value: &mut T, len: usize) -> CK_ATTRIBUTE {
        CK_ATTRIBUTE {
            type_: kind,
            pValue: (value as *mut T).cast(),
            ulValueLen: len as CK_ULONG,
        }
    }

    #[test]
    fn null_value_with_length_rejected() {
        let template = [CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: std::ptr::null_mut(),
            ulValueLen: 4,
        }];
        let result = unsafe { check(&template, Use::Search) };
        assert_eq!(result, Err(Rv(CKR_ATTRIBUTE_VALUE_INVALID)));
    }

    #[test]
    fn short_ulong_rejected() {
        let mut class: CK_ULONG = CKO_DATA;
        let template = [attribute(CKA_CLASS, &mut class, 4)];
        let result = unsafe { check(&template, Use::Write) };
        assert_eq!(result, Err(Rv(CKR_ATTRIBUTE_VALUE_INVALID)));
        let template = [attribute(CKA_CLASS, &mut class, 8)];
        assert_eq!(unsafe { check(&template, Use::Write) }, Ok(()));
    }

    #[test]
    fn wide_bool_rejected() {
        let mut flag: CK_ULONG = 1;
        let template = [attribute(CKA_TOKEN, &mut flag, 8)];
        let result = unsafe { check(&template, Use::Write) };
        assert_eq!(result, Err(Rv(CKR_ATTRIBUTE_VALUE_INVALID)));
    }

    #[test]
    fn duplicates_rejected_for_write_only() {
        let mut a: CK_BBOOL = CK_TRUE;
        let mut b: CK_BBOOL = CK_FALSE;
        let template = [
            attribute(CKA_TOKEN, &mut a, 1),
            attribute(CKA_TOKEN, &mut b, 1),
        ];
        let result = unsafe { check(&template, Use::Write) };
        assert_eq!(result, Err(Rv(CKR_TEMPLATE_INCONSISTENT)));
        assert_eq!(unsafe { check(&template, Use::Search) }, Ok(()));
    }

    #[test]
    fn nested_template_checked() {
        let mut class: CK_ULONG = CKO_SECRET_KEY;
        let mut inner = [attribute(CKA_CLASS, &mut class, 3)];
        let len = size_of::<CK_ATTRIBUTE>();
        let template = [CK_ATTRIBUTE {
            type_: CKA_WRAP_TEMPLATE,
            pValue: inner.as_mut_ptr().cast(),
            ulValueLen: len as CK_ULONG,
        }];
        let result = unsafe { check(&template, Use::Write) };
        assert_eq!(result, Err(Rv(CKR_ATTRIBUTE_VALUE_INVALID)));
    }

    #[test]
    fn value_size_table_matches_lists() {
        for kind in ULONG_ATTRIBUTES {
            assert_eq!(value_size(*kind), ValueSize::Ulong, "{kind:#x}");
        }
        for kind in BOOL_ATTRIBUTES {
            assert_eq!(value_size(*kind), ValueSize::Bool, "{kind:#x}");
        }
        for kind in ARRAY_ATTRIBUTES {
            assert_eq!(value_size(*kind), ValueSize::Attributes, "{kind:#x}");
        }
        assert_eq!(value_size(CKA_ALLOWED_MECHANISMS), ValueSize::Mechanisms);
        for kind in [CKA_LABEL, CKA_ID, CKA_VALUE, CKA_VENDOR_DEFINED | 1] {
            assert_eq!(value_size(kind), ValueSize::Any, "{kind:#x}");
        }
    }

    #[test]
    fn borrow_rejects_null_and_huge() {
        let result = unsafe { borrow(std::ptr::null_mut(), 1) };
        assert_eq!(result.err(), Some(Rv(CKR_ARGUMENTS_BAD)));
        let mut one = [CK_ATTRIBUTE::default()];
        let result = unsafe { borrow(one.as_mut_ptr(), CK_ULONG::MAX) };
        assert_eq!(result.err(), Some(Rv(CKR_ARGUMENTS_BAD)));
        assert_eq!(unsafe { borrow(std::ptr::null_mut(), 0) }.unwrap().len(), 0);
    }
}
