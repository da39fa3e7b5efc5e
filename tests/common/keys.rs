//! The standard key set that the fixture imports into every test token, and
//! signature checks made outside any HSM.
//!
//! The key material is fixed, committed under `tests/data/` (test-only keys,
//! see `tests/data/README.md`), so every token of every test HSM contains
//! the same keys. A signature made through the code under test on any member
//! token can then be checked with the public key parsed here.

use std::sync::OnceLock;

use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use cryptoki::session::Session;
use cryptoki::types::Ulong;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::Verifier;
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::{BigUint, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};

pub const RSA_LABEL: &str = "rsa-key";
pub const RSA_ID: &[u8] = &[0x01];
pub const EC_LABEL: &str = "ec-key";
pub const EC_ID: &[u8] = &[0x02];
pub const AES_LABEL: &str = "aes-key";
pub const AES_ID: &[u8] = &[0x03];

/// Number of objects that [`import_key_set`] creates: two RSA keys, two EC
/// keys and one AES key.
pub const KEY_SET_OBJECT_COUNT: usize = 5;

/// PSS salt length of [`rsa_pss_sha256_mechanism`] and
/// [`verify_rsa_pss_sha256`], in bytes (the SHA-256 output size).
pub const PSS_SALT_LEN: usize = 32;

const RSA_PRIVATE_PEM: &str = include_str!("../data/rsa-2048.pem");
const EC_PRIVATE_PEM: &str = include_str!("../data/ec-p256.pem");
const AES_KEY_HEX: &str = include_str!("../data/aes-256.hex");

/// DER encoding of the OID of P-256 (1.2.840.10045.3.1.7, "prime256v1"),
/// the value of `CKA_EC_PARAMS` for P-256 keys.
pub const P256_EC_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Returns the RSA-2048 private key of the key set.
pub fn rsa_private_key() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| {
        RsaPrivateKey::from_pkcs8_pem(RSA_PRIVATE_PEM)
            .expect("tests/data/rsa-2048.pem is a valid PKCS#8 RSA key")
    })
}

/// Returns the RSA-2048 public key of the key set.
pub fn rsa_public_key() -> RsaPublicKey {
    rsa_private_key().to_public_key()
}

/// Returns the P-256 private key of the key set.
pub fn ec_secret_key() -> &'static p256::SecretKey {
    static KEY: OnceLock<p256::SecretKey> = OnceLock::new();
    KEY.get_or_init(|| {
        p256::SecretKey::from_pkcs8_pem(EC_PRIVATE_PEM)
            .expect("tests/data/ec-p256.pem is a valid PKCS#8 P-256 key")
    })
}

/// Returns the P-256 public key of the key set as an ECDSA verifying key.
pub fn ec_verifying_key() -> p256::ecdsa::VerifyingKey {
    p256::ecdsa::VerifyingKey::from(ec_secret_key().public_key())
}

/// Returns the uncompressed SEC1 encoding of the P-256 public key
/// (`04 || x || y`, 65 bytes).
pub fn ec_public_point() -> Vec<u8> {
    ec_secret_key()
        .public_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec()
}

/// Returns the value of `CKA_EC_POINT` for the P-256 public key: the
/// uncompressed point wrapped in a DER OCTET STRING, as PKCS#11 2.40
/// specifies and SoftHSM2 stores it.
pub fn ec_point_attribute() -> Vec<u8> {
    let point = ec_public_point();
    let length = u8::try_from(point.len()).expect("a P-256 point has 65 bytes");
    let mut der = vec![0x04, length];
    der.extend_from_slice(&point);
    der
}

/// Returns the AES-256 key of the key set.
pub fn aes_key() -> [u8; 32] {
    let hex = AES_KEY_HEX.trim();
    assert_eq!(
        hex.len(),
        64,
        "tests/data/aes-256.hex must hold 64 hex digits"
    );
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .expect("tests/data/aes-256.hex holds only hex digits");
    }
    key
}

/// One object of the key set, with the template that creates it.
pub struct KeyObject {
    pub label: &'static str,
    pub id: &'static [u8],
    pub class: ObjectClass,
    pub key_type: KeyType,
    pub template: Vec<Attribute>,
}

fn big_endian(value: &BigUint) -> Vec<u8> {
    value.to_bytes_be()
}

/// Attributes common to every object of the key set.
fn common_attributes(
    class: ObjectClass,
    key_type: KeyType,
    label: &str,
    id: &[u8],
) -> Vec<Attribute> {
    vec![
        Attribute::Class(class),
        Attribute::KeyType(key_type),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
        Attribute::Token(true),
    ]
}

/// Attributes of every private or secret key of the key set.
fn secret_attributes() -> Vec<Attribute> {
    vec![
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
    ]
}

fn rsa_objects() -> [KeyObject; 2] {
    let key = rsa_private_key();
    let primes = key.primes();
    let dp = key.dp().expect("the parsed RSA key has CRT values");
    let dq = key.dq().expect("the parsed RSA key has CRT values");
    let qinv = key
        .crt_coefficient()
        .expect("the parsed RSA key has a CRT coefficient");

    let mut private = common_attributes(ObjectClass::PRIVATE_KEY, KeyType::RSA, RSA_LABEL, RSA_ID);
    private.extend(secret_attributes());
    private.extend([
        Attribute::Sign(true),
        Attribute::Decrypt(true),
        Attribute::Unwrap(true),
        Attribute::Modulus(big_endian(key.n())),
        Attribute::PublicExponent(big_endian(key.e())),
        Attribute::PrivateExponent(big_endian(key.d())),
        Attribute::Prime1(big_endian(&primes[0])),
        Attribute::Prime2(big_endian(&primes[1])),
        Attribute::Exponent1(big_endian(dp)),
        Attribute::Exponent2(big_endian(dq)),
        Attribute::Coefficient(big_endian(&qinv)),
    ]);

    let mut public = common_attributes(ObjectClass::PUBLIC_KEY, KeyType::RSA, RSA_LABEL, RSA_ID);
    public.extend([
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Encrypt(true),
        Attribute::Wrap(true),
        Attribute::Modulus(big_endian(key.n())),
        Attribute::PublicExponent(big_endian(key.e())),
    ]);

    [
        KeyObject {
            label: RSA_LABEL,
            id: RSA_ID,
            class: ObjectClass::PRIVATE_KEY,
            key_type: KeyType::RSA,
            template: private,
        },
        KeyObject {
            label: RSA_LABEL,
            id: RSA_ID,
            class: ObjectClass::PUBLIC_KEY,
            key_type: KeyType::RSA,
            template: public,
        },
    ]
}

fn ec_objects() -> [KeyObject; 2] {
    let mut private = common_attributes(ObjectClass::PRIVATE_KEY, KeyType::EC, EC_LABEL, EC_ID);
    private.extend(secret_attributes());
    private.extend([
        Attribute::Sign(true),
        Attribute::Derive(true),
        Attribute::EcParams(P256_EC_PARAMS.to_vec()),
        Attribute::Value(ec_secret_key().to_bytes().to_vec()),
    ]);

    let mut public = common_attributes(ObjectClass::PUBLIC_KEY, KeyType::EC, EC_LABEL, EC_ID);
    public.extend([
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::EcParams(P256_EC_PARAMS.to_vec()),
        Attribute::EcPoint(ec_point_attribute()),
    ]);

    [
        KeyObject {
            label: EC_LABEL,
            id: EC_ID,
            class: ObjectClass::PRIVATE_KEY,
            key_type: KeyType::EC,
            template: private,
        },
        KeyObject {
            label: EC_LABEL,
            id: EC_ID,
            class: ObjectClass::PUBLIC_KEY,
            key_type: KeyType::EC,
            template: public,
        },
    ]
}

fn aes_object() -> KeyObject {
    let mut secret = common_attributes(ObjectClass::SECRET_KEY, KeyType::AES, AES_LABEL, AES_ID);
    secret.extend(secret_attributes());
    // CKA_VALUE_LEN is left out because the token derives it from
    // CKA_VALUE.
    secret.extend([
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Sign(true),
        Attribute::Verify(true),
        Attribute::Value(aes_key().to_vec()),
    ]);
    KeyObject {
        label: AES_LABEL,
        id: AES_ID,
        class: ObjectClass::SECRET_KEY,
        key_type: KeyType::AES,
        template: secret,
    }
}

/// Returns the objects of the key set in creation order: RSA private and
/// public key, EC private and public key, AES key.
pub fn key_set() -> Vec<KeyObject> {
    let mut objects = Vec::with_capacity(KEY_SET_OBJECT_COUNT);
    objects.extend(rsa_objects());
    objects.extend(ec_objects());
    objects.push(aes_object());
    objects
}

/// Creates the key set with `C_CreateObject` in `session`, which must be a
/// read-write session logged in as the user.
pub fn import_key_set(session: &Session) {
    for object in key_set() {
        if let Err(error) = session.create_object(&object.template) {
            panic!(
                "C_CreateObject failed for {} ({:?}): {error}",
                object.label, object.class
            );
        }
    }
}

/// Returns the `CKM_SHA256_RSA_PKCS_PSS` mechanism with MGF1-SHA-256 and a
/// salt of [`PSS_SALT_LEN`] bytes, which [`verify_rsa_pss_sha256`] checks.
pub fn rsa_pss_sha256_mechanism() -> Mechanism<'static> {
    Mechanism::Sha256RsaPkcsPss(PkcsPssParams {
        hash_alg: MechanismType::SHA256,
        mgf: PkcsMgfType::MGF1_SHA256,
        s_len: Ulong::try_from(PSS_SALT_LEN).expect("the salt length fits in CK_ULONG"),
    })
}

/// Verifies an RSASSA-PKCS1-v1_5 signature with SHA-256 over `message`, as
/// `CKM_SHA256_RSA_PKCS` makes it, with the key set's RSA public key.
pub fn verify_rsa_pkcs1_sha256(message: &[u8], signature: &[u8]) -> Result<(), String> {
    let key = rsa::pkcs1v15::VerifyingKey::<Sha256>::new(rsa_public_key());
    let signature = rsa::pkcs1v15::Signature::try_from(signature)
        .map_err(|error| format!("invalid RSA PKCS#1 v1.5 signature encoding: {error}"))?;
    key.verify(message, &signature)
        .map_err(|error| format!("RSA PKCS#1 v1.5 SHA-256 signature does not verify: {error}"))
}

/// Verifies an RSASSA-PSS signature with SHA-256, MGF1-SHA-256 and a salt of
/// [`PSS_SALT_LEN`] bytes over `message`, as [`rsa_pss_sha256_mechanism`]
/// makes it, with the key set's RSA public key.
pub fn verify_rsa_pss_sha256(message: &[u8], signature: &[u8]) -> Result<(), String> {
    let key = rsa::pss::VerifyingKey::<Sha256>::new_with_salt_len(rsa_public_key(), PSS_SALT_LEN);
    let signature = rsa::pss::Signature::try_from(signature)
        .map_err(|error| format!("invalid RSA PSS signature encoding: {error}"))?;
    key.verify(message, &signature)
        .map_err(|error| format!("RSA PSS SHA-256 signature does not verify: {error}"))
}

/// Verifies an ECDSA P-256 signature over a 32-byte `digest`, as `CKM_ECDSA`
/// returns it: `r || s`, each 32 bytes big-endian.
pub fn verify_ecdsa_p256_prehash(digest: &[u8], signature: &[u8]) -> Result<(), String> {
    let signature = p256::ecdsa::Signature::from_slice(signature).map_err(|error| {
        format!(
            "invalid ECDSA P-256 signature of {} bytes (expected r || s, 64 bytes): {error}",
            signature.len()
        )
    })?;
    ec_verifying_key()
        .verify_prehash(digest, &signature)
        .map_err(|error| format!("ECDSA P-256 signature does not verify: {error}"))
}

/// Verifies an ECDSA P-256 signature (`r || s`) that `CKM_ECDSA` made over
/// the SHA-256 digest of `message`.
///
/// SoftHSM2 2.6.1 implements only `CKM_ECDSA`, which signs a digest that the
/// caller computed, and not `CKM_ECDSA_SHA256`.
pub fn verify_ecdsa_p256_sha256(message: &[u8], signature: &[u8]) -> Result<(), String> {
    verify_ecdsa_p256_prehash(&sha256(message), signature)
}

/// Returns the SHA-256 digest of `data`.
pub fn sha256(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}
