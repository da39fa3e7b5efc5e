//! The attribute lists of replication: the ones read from an object, the
//! ones that go into the template of its copy, and the ones compared.
//!
//! The lists cover the attributes of PKCS#11 2.40 for the object classes
//! that travel (data objects, certificates, public, private and secret
//! keys, domain parameters). Vendor-defined attributes cannot be listed by
//! a generic reader, so they are neither copied nor compared.

use cryptoki_sys::*;
use zeroize::Zeroizing;

/// Attributes read from every object. A token returns
/// CKR_ATTRIBUTE_TYPE_INVALID for the ones an object does not have, and
/// those are left out.
pub const READ: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_CLASS,
    CKA_TOKEN,
    CKA_PRIVATE,
    CKA_LABEL,
    CKA_MODIFIABLE,
    CKA_COPYABLE,
    CKA_DESTROYABLE,
    CKA_UNIQUE_ID,
    CKA_APPLICATION,
    CKA_OBJECT_ID,
    CKA_VALUE,
    CKA_VALUE_LEN,
    CKA_CERTIFICATE_TYPE,
    CKA_CERTIFICATE_CATEGORY,
    CKA_TRUSTED,
    CKA_CHECK_VALUE,
    CKA_START_DATE,
    CKA_END_DATE,
    CKA_PUBLIC_KEY_INFO,
    CKA_SUBJECT,
    CKA_ISSUER,
    CKA_SERIAL_NUMBER,
    CKA_URL,
    CKA_HASH_OF_SUBJECT_PUBLIC_KEY,
    CKA_HASH_OF_ISSUER_PUBLIC_KEY,
    CKA_JAVA_MIDP_SECURITY_DOMAIN,
    CKA_NAME_HASH_ALGORITHM,
    CKA_OWNER,
    CKA_AC_ISSUER,
    CKA_ATTR_TYPES,
    CKA_KEY_TYPE,
    CKA_ID,
    CKA_DERIVE,
    CKA_LOCAL,
    CKA_KEY_GEN_MECHANISM,
    CKA_ALLOWED_MECHANISMS,
    CKA_ENCRYPT,
    CKA_DECRYPT,
    CKA_SIGN,
    CKA_SIGN_RECOVER,
    CKA_VERIFY,
    CKA_VERIFY_RECOVER,
    CKA_WRAP,
    CKA_UNWRAP,
    CKA_SENSITIVE,
    CKA_EXTRACTABLE,
    CKA_ALWAYS_SENSITIVE,
    CKA_NEVER_EXTRACTABLE,
    CKA_WRAP_WITH_TRUSTED,
    CKA_ALWAYS_AUTHENTICATE,
    CKA_MODULUS,
    CKA_MODULUS_BITS,
    CKA_PUBLIC_EXPONENT,
    CKA_PRIVATE_EXPONENT,
    CKA_PRIME_1,
    CKA_PRIME_2,
    CKA_EXPONENT_1,
    CKA_EXPONENT_2,
    CKA_COEFFICIENT,
    CKA_EC_PARAMS,
    CKA_EC_POINT,
    CKA_PRIME,
    CKA_SUBPRIME,
    CKA_BASE,
    CKA_PRIME_BITS,
    CKA_SUBPRIME_BITS,
    CKA_VALUE_BITS,
];

/// Attributes whose value is an array of CK_ATTRIBUTE. Reading one needs a
/// buffer per inner attribute, so only their length is read.
pub const ARRAYS: &[CK_ATTRIBUTE_TYPE] =
    &[CKA_WRAP_TEMPLATE, CKA_UNWRAP_TEMPLATE, CKA_DERIVE_TEMPLATE];

/// Attributes that only the token sets and that differ legitimately
/// between a key generated on the master and its copy. They are never put
/// in a template, and [`UNCOMPARED`] leaves them out of comparisons.
pub const TOKEN_SET: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_LOCAL,
    CKA_ALWAYS_SENSITIVE,
    CKA_NEVER_EXTRACTABLE,
    CKA_KEY_GEN_MECHANISM,
    CKA_UNIQUE_ID,
];

/// Attributes the token computes from others (a check value, a bit length,
/// the encoded public key): never in a template, because many tokens
/// reject them there.
pub const DERIVED: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_CHECK_VALUE,
    CKA_MODULUS_BITS,
    CKA_VALUE_LEN,
    CKA_VALUE_BITS,
    CKA_PUBLIC_KEY_INFO,
];

/// Attributes left out of comparisons: the ones the token sets, and the
/// check value and length of a key, which SoftHSM2 2.6.1 leaves empty and
/// 0 on a key it generates but fills in on a key it unwraps. Equal key
/// material, which the comparison checks otherwise, implies equal values.
pub const UNCOMPARED: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_LOCAL,
    CKA_ALWAYS_SENSITIVE,
    CKA_NEVER_EXTRACTABLE,
    CKA_KEY_GEN_MECHANISM,
    CKA_UNIQUE_ID,
    CKA_CHECK_VALUE,
    CKA_VALUE_LEN,
];

/// Key material. The blob of C_UnwrapKey carries it, so an unwrap template
/// leaves it out.
pub const KEY_MATERIAL: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_VALUE,
    CKA_MODULUS,
    CKA_PUBLIC_EXPONENT,
    CKA_PRIVATE_EXPONENT,
    CKA_PRIME_1,
    CKA_PRIME_2,
    CKA_EXPONENT_1,
    CKA_EXPONENT_2,
    CKA_COEFFICIENT,
    CKA_EC_PARAMS,
    CKA_PRIME,
    CKA_SUBPRIME,
    CKA_BASE,
];

/// The secret part of a private or secret key's material, which a token
/// never reveals while CKA_SENSITIVE is true or CKA_EXTRACTABLE false.
pub const SECRET_MATERIAL: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_VALUE,
    CKA_PRIVATE_EXPONENT,
    CKA_PRIME_1,
    CKA_PRIME_2,
    CKA_EXPONENT_1,
    CKA_EXPONENT_2,
    CKA_COEFFICIENT,
];

/// One attribute with an owned value, wiped when dropped because it may be
/// key material.
#[derive(Clone)]
pub struct Attr {
    pub kind: CK_ATTRIBUTE_TYPE,
    pub value: Zeroizing<Vec<u8>>,
}

impl Attr {
    pub fn bytes(kind: CK_ATTRIBUTE_TYPE, value: &[u8]) -> Attr {
        Attr {
            kind,
            value: Zeroizing::new(value.to_vec()),
        }
    }

    pub fn ulong(kind: CK_ATTRIBUTE_TYPE, value: CK_ULONG) -> Attr {
        Attr::bytes(kind, &value.to_ne_bytes())
    }

    pub fn bool(kind: CK_ATTRIBUTE_TYPE, value: bool) -> Attr {
        Attr::bytes(kind, &[CK_BBOOL::from(value)])
    }
}

/// Builds the CK_ATTRIBUTE array a vendor reads, pointing into `attrs`,
/// which must outlive the call that uses the array.
pub fn raw_template(attrs: &[Attr]) -> Vec<CK_ATTRIBUTE> {
    attrs
        .iter()
        .map(|a| CK_ATTRIBUTE {
            type_: a.kind,
            pValue: a.value.as_ptr() as *mut _,
            ulValueLen: a.value.len() as CK_ULONG,
        })
        .collect()
}

/// Decodes a CK_ULONG attribute value.
pub fn as_ulong(value: &[u8]) -> Option<CK_ULONG> {
    let bytes: [u8; std::mem::size_of::<CK_ULONG>()] = value.try_into().ok()?;
    Some(CK_ULONG::from_ne_bytes(bytes))
}

/// Decodes a CK_BBOOL attribute value.
pub fn as_bool(value: &[u8]) -> Option<bool> {
    match value {
        [byte] => Some(*byte != CK_FALSE),
        _ => None,
    }
}

/// Returns the spec name of an attribute type, for messages.
pub fn name(kind: CK_ATTRIBUTE_TYPE) -> String {
    macro_rules! names {
        ($($attr:ident),* $(,)?) => {
            match kind {
                $($attr => return stringify!($attr).to_owned(),)*
                _ => {}
            }
        };
    }
    names!(
        CKA_CLASS,
        CKA_TOKEN,
        CKA_PRIVATE,
        CKA_LABEL,
        CKA_MODIFIABLE,
        CKA_COPYABLE,
        CKA_DESTROYABLE,
        CKA_UNIQUE_ID,
        CKA_APPLICATION,
        CKA_OBJECT_ID,
        CKA_VALUE,
        CKA_VALUE_LEN,
        CKA_CERTIFICATE_TYPE,
        CKA_CERTIFICATE_CATEGORY,
        CKA_TRUSTED,
        CKA_CHECK_VALUE,
        CKA_START_DATE,
        CKA_END_DATE,
        CKA_PUBLIC_KEY_INFO,
        CKA_SUBJECT,
        CKA_ISSUER,
        CKA_SERIAL_NUMBER,
        CKA_URL,
        CKA_HASH_OF_SUBJECT_PUBLIC_KEY,
        CKA_HASH_OF_ISSUER_PUBLIC_KEY,
        CKA_JAVA_MIDP_SECURITY_DOMAIN,
        CKA_NAME_HASH_ALGORITHM,
        CKA_OWNER,
        CKA_AC_ISSUER,
        CKA_ATTR_TYPES,
        CKA_KEY_TYPE,
        CKA_ID,
        CKA_DERIVE,
        CKA_LOCAL,
        CKA_KEY_GEN_MECHANISM,
        CKA_ALLOWED_MECHANISMS,
        CKA_ENCRYPT,
        CKA_DECRYPT,
        CKA_SIGN,
        CKA_SIGN_RECOVER,
        CKA_VERIFY,
        CKA_VERIFY_RECOVER,
        CKA_WRAP,
        CKA_UNWRAP,
        CKA_SENSITIVE,
        CKA_EXTRACTABLE,
        CKA_ALWAYS_SENSITIVE,
        CKA_NEVER_EXTRACTABLE,
        CKA_WRAP_WITH_TRUSTED,
        CKA_ALWAYS_AUTHENTICATE,
        CKA_MODULUS,
        CKA_MODULUS_BITS,
        CKA_PUBLIC_EXPONENT,
        CKA_PRIVATE_EXPONENT,
        CKA_PRIME_1,
        CKA_PRIME_2,
        CKA_EXPONENT_1,
        CKA_EXPONENT_2,
        CKA_COEFFICIENT,
        CKA_EC_PARAMS,
        CKA_EC_POINT,
        CKA_PRIME,
        CKA_SUBPRIME,
        CKA_BASE,
        CKA_PRIME_BITS,
        CKA_SUBPRIME_BITS,
        CKA_VALUE_BITS,
        CKA_WRAP_TEMPLATE,
        CKA_UNWRAP_TEMPLATE,
        CKA_DERIVE_TEMPLATE,
    );
    format!("CKA_{kind:#x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_set_and_derived_are_read() {
        for kind in TOKEN_SET.iter().chain(DERIVED) {
            assert!(READ.contains(kind), "{} is not read", name(*kind));
        }
    }

    #[test]
    fn ulong_round_trips() {
        let attr = Attr::ulong(CKA_CLASS, CKO_SECRET_KEY);
        assert_eq!(as_ulong(&attr.value), Some(CKO_SECRET_KEY));
        assert_eq!(as_ulong(&[1, 2]), None);
        assert_eq!(as_bool(&Attr::bool(CKA_TOKEN, true).value), Some(true));
    }

    #[test]
    fn names_known_and_unknown() {
        assert_eq!(name(CKA_EC_POINT), "CKA_EC_POINT");
        assert_eq!(name(0x8000_0001), "CKA_0x80000001");
    }
}
