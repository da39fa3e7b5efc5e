//! Token objects as replication reads them: every readable attribute, an
//! identity to match copies by, and comparisons that never reveal a
//! sensitive value.

use super::attributes::{self, as_bool, as_ulong, ARRAYS, READ, SECRET_MATERIAL, UNCOMPARED};
use super::display::escape_nonprintable;
use super::token::TokenSession;
use crate::error::Result;
use cryptoki_sys::*;
use zeroize::Zeroizing;

/// A token object with every attribute it revealed.
pub struct Object {
    pub handle: CK_OBJECT_HANDLE,
    pub class: CK_OBJECT_CLASS,
    /// CKA_KEY_TYPE or CKA_CERTIFICATE_TYPE.
    pub subtype: Option<CK_ULONG>,
    /// The attributes of [`READ`] the object has and reveals, in that
    /// order.
    pub attributes: Vec<(CK_ATTRIBUTE_TYPE, Zeroizing<Vec<u8>>)>,
    /// Array attributes (CKA_WRAP_TEMPLATE and the like) with a non-empty
    /// value.
    pub arrays: Vec<CK_ATTRIBUTE_TYPE>,
}

/// The identity of an object across tokens. Two objects of one identity
/// on a token are distinguished by their other attributes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity {
    pub class: CK_OBJECT_CLASS,
    pub subtype: Option<CK_ULONG>,
    pub label: Vec<u8>,
    pub id: Vec<u8>,
    pub application: Vec<u8>,
}

impl Object {
    /// Reads one object.
    pub fn read(session: &TokenSession, handle: CK_OBJECT_HANDLE) -> Result<Object> {
        let values = session.read(handle, READ)?;
        let attributes: Vec<(CK_ATTRIBUTE_TYPE, Zeroizing<Vec<u8>>)> = READ
            .iter()
            .zip(values)
            .filter_map(|(kind, value)| value.map(|v| (*kind, v)))
            .collect();
        let arrays = read_arrays(session, handle);
        let mut object = Object {
            handle,
            class: CK_UNAVAILABLE_INFORMATION,
            subtype: None,
            attributes,
            arrays,
        };
        object.class = object
            .ulong(CKA_CLASS)
            .unwrap_or(CK_UNAVAILABLE_INFORMATION);
        object.subtype = object
            .ulong(CKA_KEY_TYPE)
            .or_else(|| object.ulong(CKA_CERTIFICATE_TYPE));
        Ok(object)
    }

    /// Reads every token object the session can see.
    pub fn read_all(session: &TokenSession) -> Result<Vec<Object>> {
        let handles = session.token_objects()?;
        handles
            .into_iter()
            .map(|h| Object::read(session, h))
            .collect()
    }

    pub fn get(&self, kind: CK_ATTRIBUTE_TYPE) -> Option<&[u8]> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_slice())
    }

    pub fn ulong(&self, kind: CK_ATTRIBUTE_TYPE) -> Option<CK_ULONG> {
        self.get(kind).and_then(as_ulong)
    }

    pub fn flag(&self, kind: CK_ATTRIBUTE_TYPE) -> Option<bool> {
        self.get(kind).and_then(as_bool)
    }

    pub fn label(&self) -> &[u8] {
        self.get(CKA_LABEL).unwrap_or_default()
    }

    pub fn id(&self) -> &[u8] {
        self.get(CKA_ID).unwrap_or_default()
    }

    pub fn identity(&self) -> Identity {
        Identity {
            class: self.class,
            subtype: self.subtype,
            label: self.label().to_vec(),
            id: self.id().to_vec(),
            application: self.get(CKA_APPLICATION).unwrap_or_default().to_vec(),
        }
    }

    /// Returns whether the object is a private or secret key.
    pub fn is_secret_class(&self) -> bool {
        matches!(self.class, CKO_PRIVATE_KEY | CKO_SECRET_KEY)
    }

    /// Returns whether the key keeps its material from this process: a
    /// private or secret key that is sensitive, or whose secret material was
    /// not revealed for another reason.
    pub fn hides_material(&self) -> bool {
        if !self.is_secret_class() {
            return false;
        }
        if self.flag(CKA_SENSITIVE) != Some(false) {
            return true;
        }
        let revealed = SECRET_MATERIAL.iter().any(|kind| self.get(*kind).is_some());
        !revealed
    }

    /// Describes the object for messages: class, type, label and id, never
    /// a value.
    pub fn describe(&self) -> String {
        describe(self.class, self.subtype, self.label(), self.id())
    }
}

/// Lists the array attributes of an object that have a value.
///
/// NOTE: p11-kit 0.24's RPC (p11-kit-client.so) returns CKR_DEVICE_ERROR
/// to any query of an array attribute, even of its length, so through it
/// such attributes are neither seen nor copied. An attribute whose query
/// fails is taken as absent.
fn read_arrays(session: &TokenSession, handle: CK_OBJECT_HANDLE) -> Vec<CK_ATTRIBUTE_TYPE> {
    let present = |lengths: Vec<Option<CK_ULONG>>| {
        lengths
            .first()
            .copied()
            .flatten()
            .is_some_and(|len| len > 0)
    };
    if let Ok(lengths) = session.lengths(handle, ARRAYS) {
        return ARRAYS
            .iter()
            .zip(lengths)
            .filter(|(_, len)| len.is_some_and(|len| len > 0))
            .map(|(kind, _)| *kind)
            .collect();
    }
    ARRAYS
        .iter()
        .copied()
        .filter(|kind| match session.lengths(handle, &[*kind]) {
            Ok(lengths) => present(lengths),
            Err(rv) => {
                log::debug!(
                    "object {handle}: reading the length of {} failed: {rv}; taken as absent",
                    attributes::name(*kind)
                );
                false
            }
        })
        .collect()
}

/// Describes an object by class, type, label and id.
pub fn describe(
    class: CK_OBJECT_CLASS,
    subtype: Option<CK_ULONG>,
    label: &[u8],
    id: &[u8],
) -> String {
    let class_name = match class {
        CKO_DATA => "data object",
        CKO_CERTIFICATE => "certificate",
        CKO_PUBLIC_KEY => "public key",
        CKO_PRIVATE_KEY => "private key",
        CKO_SECRET_KEY => "secret key",
        CKO_DOMAIN_PARAMETERS => "domain parameters",
        _ => "object",
    };
    let type_name = match (class, subtype) {
        (CKO_PUBLIC_KEY | CKO_PRIVATE_KEY | CKO_SECRET_KEY, Some(kind)) => match kind {
            CKK_RSA => "RSA ",
            CKK_EC => "EC ",
            CKK_AES => "AES ",
            CKK_DES3 => "DES3 ",
            CKK_GENERIC_SECRET => "generic ",
            CKK_DSA => "DSA ",
            CKK_DH => "DH ",
            _ => "",
        },
        (CKO_CERTIFICATE, Some(CKC_X_509)) => "X.509 ",
        _ => "",
    };
    let id_hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{type_name}{class_name} label \"{}\" id {}",
        escape_nonprintable(label),
        if id_hex.is_empty() { "(none)" } else { &id_hex }
    )
}

/// Lists the attributes whose values differ between `a` and `b`,
/// including attributes only one of them has, except [`UNCOMPARED`] ones.
pub fn differing_attributes(a: &Object, b: &Object) -> Vec<CK_ATTRIBUTE_TYPE> {
    let mut differing = Vec::new();
    for kind in READ {
        if UNCOMPARED.contains(kind) {
            continue;
        }
        if a.get(*kind) != b.get(*kind) {
            differing.push(*kind);
        }
    }
    for kind in ARRAYS {
        if a.arrays.contains(kind) != b.arrays.contains(kind) {
            differing.push(*kind);
        }
    }
    differing
}

/// The outcome of comparing the material of two keys that hide it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Material {
    Same,
    Differs,
    /// No mechanism the keys allow could compare them; the reason.
    NotCompared(String),
}

/// A zero block, encrypted to make a key check value.
const ZERO_BLOCK: [u8; 16] = [0; 16];

/// Compares the material of `a` on `a_session` with `b` on `b_session`
/// without revealing it. Both have the same class and type and equal
/// attributes. `a_objects` are the objects of `a`'s token, searched for
/// the public key that checks a signature of `b`.
pub fn compare_material(
    a_session: &TokenSession,
    a: &Object,
    a_objects: &[Object],
    b_session: &TokenSession,
    b: &Object,
) -> Material {
    if !a.hides_material() && !b.hides_material() {
        // Every value, the secret ones too, was compared as an attribute.
        return Material::Same;
    }
    match a.class {
        CKO_SECRET_KEY => compare_check_values(a_session, a, b_session, b),
        CKO_PRIVATE_KEY => compare_private(a_session, a, a_objects, b_session, b),
        _ => Material::Same,
    }
}

/// Compares two secret keys by a check value: a zero block encrypted in
/// ECB mode, or a MAC over it when the keys may not encrypt.
fn compare_check_values(
    a_session: &TokenSession,
    a: &Object,
    b_session: &TokenSession,
    b: &Object,
) -> Material {
    let check = |session: &TokenSession, key: &Object| -> std::result::Result<Vec<u8>, String> {
        let (mechanism, block) = match (key.subtype, key.flag(CKA_ENCRYPT), key.flag(CKA_SIGN)) {
            (Some(CKK_AES), Some(true), _) => (CKM_AES_ECB, &ZERO_BLOCK[..]),
            (Some(CKK_AES), _, Some(true)) => (CKM_AES_CMAC, &ZERO_BLOCK[..]),
            (Some(CKK_DES3), Some(true), _) => (CKM_DES3_ECB, &ZERO_BLOCK[..8]),
            (Some(CKK_GENERIC_SECRET), _, Some(true)) => (CKM_SHA256_HMAC, &ZERO_BLOCK[..]),
            _ => {
                return Err(
                    "the key may neither encrypt nor sign, so no check value can be made"
                        .to_owned(),
                )
            }
        };
        let result = if mechanism == CKM_AES_ECB || mechanism == CKM_DES3_ECB {
            session.encrypt(mechanism, key.handle, block)
        } else {
            session.sign(mechanism, key.handle, block)
        };
        result.map_err(|rv| format!("making a check value failed: {rv}"))
    };
    match (check(a_session, a), check(b_session, b)) {
        (Ok(x), Ok(y)) if x == y => Material::Same,
        (Ok(_), Ok(_)) => Material::Differs,
        (Err(reason), _) | (_, Err(reason)) => Material::NotCompared(reason),
    }
}

/// Compares two private keys: by their public values where the token
/// reveals them (an RSA modulus), else by a signature that `b` makes and
/// `a`'s public key checks.
fn compare_private(
    a_session: &TokenSession,
    a: &Object,
    a_objects: &[Object],
    b_session: &TokenSession,
    b: &Object,
) -> Material {
    if a.subtype == Some(CKK_RSA) && a.get(CKA_MODULUS).is_some() {
        // The modulus and public exponent were compared as attributes.
        return Material::Same;
    }
    let mechanism = match a.subtype {
        Some(CKK_EC) => CKM_ECDSA,
        Some(CKK_RSA) => CKM_RSA_PKCS,
        _ => return Material::NotCompared("no signature check for this key type".to_owned()),
    };
    if b.flag(CKA_SIGN) != Some(true) {
        return Material::NotCompared("the key may not sign (CKA_SIGN is false)".to_owned());
    }
    let public = a_objects.iter().find(|o| {
        o.class == CKO_PUBLIC_KEY
            && o.subtype == a.subtype
            && o.id() == a.id()
            && o.flag(CKA_VERIFY) == Some(true)
    });
    let Some(public) = public else {
        return Material::NotCompared(
            "no public key with the same CKA_ID may verify its signatures".to_owned(),
        );
    };
    let digest: [u8; 32] = rand::random();
    let signature = match b_session.sign(mechanism, b.handle, &digest) {
        Ok(signature) => signature,
        Err(rv) => return Material::NotCompared(format!("signing a test digest failed: {rv}")),
    };
    match a_session.verify(mechanism, public.handle, &digest, &signature) {
        Ok(true) => Material::Same,
        Ok(false) => Material::Differs,
        Err(rv) => Material::NotCompared(format!("checking a test signature failed: {rv}")),
    }
}

/// Returns the attribute names of `kinds`, joined for a message.
pub fn attribute_list(kinds: &[CK_ATTRIBUTE_TYPE]) -> String {
    kinds
        .iter()
        .map(|k| attributes::name(*k))
        .collect::<Vec<_>>()
        .join(", ")
}
