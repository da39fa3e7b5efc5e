//! Moving sensitive keys between two tokens without their material ever
//! being in the clear outside a token.
//!
//! 1. The destination generates an RSA transport key pair.
//! 2. Its public key is imported into the master as a session object.
//! 3. The master generates an AES-256 transport key and wraps it to that
//!    public key with RSA-OAEP; the destination unwraps it.
//! 4. Each key is wrapped on the master under the AES key with AES key
//!    wrap with padding and unwrapped on the destination with its full
//!    template. A secret key small enough for RSA-OAEP may instead be
//!    wrapped directly to the RSA transport key, for tokens reached through
//!    a path without AES key wrap: p11-kit-client.so 0.24 rejects every
//!    AES key wrap mechanism with CKR_MECHANISM_INVALID.
//!
//! Every transport object is a session object, destroyed by
//! [`Transport::close`] or, on any other path, when the transport is
//! dropped. A process killed in between leaves none behind either, because
//! a token destroys session objects with their session.

use super::attributes::Attr;
use super::token::{plain_mechanism, TokenSession};
use crate::error::{Result, Rv};
use cryptoki_sys::*;
use std::ffi::c_void;

/// Bits of the RSA transport key: 3072 bits match the strength of the
/// AES-256 key they carry better than 2048 would (NIST SP 800-57 gives
/// them 128 and 112 bits of security).
const TRANSPORT_RSA_BITS: CK_ULONG = 3072;

/// Label of every transport object, so a leftover is recognizable.
const TRANSPORT_LABEL: &[u8] = b"p11wld transport key";

/// Mechanisms the transport needs on the master and on the destination,
/// besides the key wrap mechanism.
pub const MASTER_MECHANISMS: &[CK_MECHANISM_TYPE] = &[CKM_AES_KEY_GEN, CKM_RSA_PKCS_OAEP];
pub const DEST_MECHANISMS: &[CK_MECHANISM_TYPE] = &[CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_RSA_PKCS_OAEP];

/// Key wrap mechanisms that carry any key length, in order of preference.
/// SoftHSM2 2.6.1 lists only CKM_AES_KEY_WRAP_PAD (0x210A), which it
/// implements as RFC 5649; PKCS#11 3.0 names RFC 5649 CKM_AES_KEY_WRAP_KWP.
pub const PADDED_WRAPS: &[CK_MECHANISM_TYPE] = &[CKM_AES_KEY_WRAP_KWP, CKM_AES_KEY_WRAP_PAD];

/// The maximum length in bytes of a secret key wrapped with RSA-OAEP
/// directly: a 3072-bit key carries 384 - 2 * 32 - 2 = 318 bytes with
/// SHA-256, and a little more with SHA-1.
pub const MAX_OAEP_KEY_LEN: CK_ULONG = 318;

/// The transport between one master session and one destination session.
pub struct Transport<'a> {
    master: &'a TokenSession,
    dest: &'a TokenSession,
    master_objects: Vec<CK_OBJECT_HANDLE>,
    dest_objects: Vec<CK_OBJECT_HANDLE>,
    /// The destination's RSA public key, imported into the master.
    master_rsa: CK_OBJECT_HANDLE,
    dest_rsa: CK_OBJECT_HANDLE,
    /// The OAEP hash and mask generation function both tokens accepted.
    oaep: (CK_MECHANISM_TYPE, CK_RSA_PKCS_MGF_TYPE),
    master_key: CK_OBJECT_HANDLE,
    dest_key: CK_OBJECT_HANDLE,
}

impl<'a> Transport<'a> {
    /// Sets up the AES transport key on both tokens.
    pub fn open(master: &'a TokenSession, dest: &'a TokenSession) -> Result<Transport<'a>> {
        let mut transport = Transport {
            master,
            dest,
            master_objects: Vec::new(),
            dest_objects: Vec::new(),
            master_rsa: CK_INVALID_HANDLE,
            dest_rsa: CK_INVALID_HANDLE,
            oaep: (CKM_SHA256, CKG_MGF1_SHA256),
            master_key: CK_INVALID_HANDLE,
            dest_key: CK_INVALID_HANDLE,
        };
        transport.establish()?;
        Ok(transport)
    }

    fn establish(&mut self) -> Result<()> {
        let (rsa_public, rsa_private) = self.dest.generate_key_pair(
            CKM_RSA_PKCS_KEY_PAIR_GEN,
            &[
                Attr::bool(CKA_TOKEN, false),
                Attr::bool(CKA_WRAP, true),
                Attr::bool(CKA_ENCRYPT, false),
                Attr::bool(CKA_VERIFY, false),
                Attr::ulong(CKA_MODULUS_BITS, TRANSPORT_RSA_BITS),
                Attr::bytes(CKA_PUBLIC_EXPONENT, &[0x01, 0x00, 0x01]),
                Attr::bytes(CKA_LABEL, TRANSPORT_LABEL),
            ],
            &[
                Attr::bool(CKA_TOKEN, false),
                Attr::bool(CKA_PRIVATE, true),
                Attr::bool(CKA_SENSITIVE, true),
                Attr::bool(CKA_EXTRACTABLE, false),
                Attr::bool(CKA_UNWRAP, true),
                Attr::bool(CKA_DECRYPT, false),
                Attr::bool(CKA_SIGN, false),
                Attr::bytes(CKA_LABEL, TRANSPORT_LABEL),
            ],
        )?;
        self.dest_objects.extend([rsa_public, rsa_private]);

        let public = self
            .dest
            .read(rsa_public, &[CKA_MODULUS, CKA_PUBLIC_EXPONENT])?;
        let [Some(modulus), Some(exponent)] = <[_; 2]>::try_from(public).unwrap_or([None, None])
        else {
            return Err(Rv(CKR_GENERAL_ERROR));
        };
        let imported = self.master.create(&[
            Attr::ulong(CKA_CLASS, CKO_PUBLIC_KEY),
            Attr::ulong(CKA_KEY_TYPE, CKK_RSA),
            Attr::bool(CKA_TOKEN, false),
            Attr::bool(CKA_WRAP, true),
            Attr::bytes(CKA_MODULUS, &modulus),
            Attr::bytes(CKA_PUBLIC_EXPONENT, &exponent),
            Attr::bytes(CKA_LABEL, TRANSPORT_LABEL),
        ])?;
        self.master_objects.push(imported);
        self.master_rsa = imported;
        self.dest_rsa = rsa_private;

        self.master_key = self.master.generate_key(
            CKM_AES_KEY_GEN,
            &[
                Attr::ulong(CKA_CLASS, CKO_SECRET_KEY),
                Attr::ulong(CKA_KEY_TYPE, CKK_AES),
                Attr::ulong(CKA_VALUE_LEN, 32),
                Attr::bool(CKA_TOKEN, false),
                Attr::bool(CKA_SENSITIVE, true),
                Attr::bool(CKA_EXTRACTABLE, true),
                Attr::bool(CKA_WRAP, true),
                Attr::bool(CKA_ENCRYPT, false),
                Attr::bool(CKA_DECRYPT, false),
                Attr::bytes(CKA_LABEL, TRANSPORT_LABEL),
            ],
        )?;
        self.master_objects.push(self.master_key);

        let template = [
            Attr::ulong(CKA_CLASS, CKO_SECRET_KEY),
            Attr::ulong(CKA_KEY_TYPE, CKK_AES),
            Attr::bool(CKA_TOKEN, false),
            Attr::bool(CKA_SENSITIVE, true),
            Attr::bool(CKA_EXTRACTABLE, false),
            Attr::bool(CKA_UNWRAP, true),
            Attr::bool(CKA_ENCRYPT, false),
            Attr::bool(CKA_DECRYPT, false),
            Attr::bytes(CKA_LABEL, TRANSPORT_LABEL),
        ];
        self.dest_key = self.negotiate_oaep(&template)?;
        self.dest_objects.push(self.dest_key);
        Ok(())
    }

    /// Wraps the master's AES key to the destination's RSA key with OAEP
    /// and unwraps it there, finding the OAEP hash both tokens accept.
    /// SHA-256 is tried first; SoftHSM2 2.6.1 wraps with SHA-1 only and
    /// rejects other hashes with CKR_ARGUMENTS_BAD.
    fn negotiate_oaep(&mut self, template: &[Attr]) -> Result<CK_OBJECT_HANDLE> {
        let mut last = Rv(CKR_MECHANISM_PARAM_INVALID);
        for oaep in [(CKM_SHA256, CKG_MGF1_SHA256), (CKM_SHA_1, CKG_MGF1_SHA1)] {
            self.oaep = oaep;
            match self.carry_oaep(self.master_key, template) {
                Ok(handle) => return Ok(handle),
                Err(Rv(CKR_ARGUMENTS_BAD | CKR_MECHANISM_PARAM_INVALID)) => {
                    last = Rv(CKR_MECHANISM_PARAM_INVALID);
                }
                Err(rv) => return Err(rv),
            }
        }
        Err(last)
    }

    /// Wraps `key` on the master directly to the destination's RSA key with
    /// OAEP and unwraps it there with `template`.
    fn carry_oaep(&self, key: CK_OBJECT_HANDLE, template: &[Attr]) -> Result<CK_OBJECT_HANDLE> {
        let (hash, mgf) = self.oaep;
        let mut params = CK_RSA_PKCS_OAEP_PARAMS {
            hashAlg: hash,
            mgf,
            source: CKZ_DATA_SPECIFIED,
            pSourceData: std::ptr::null_mut(),
            ulSourceDataLen: 0,
        };
        let mut mechanism = CK_MECHANISM {
            mechanism: CKM_RSA_PKCS_OAEP,
            pParameter: (&mut params as *mut CK_RSA_PKCS_OAEP_PARAMS).cast::<c_void>(),
            ulParameterLen: std::mem::size_of::<CK_RSA_PKCS_OAEP_PARAMS>() as CK_ULONG,
        };
        let wrapped = self.master.wrap(&mut mechanism, self.master_rsa, key)?;
        self.dest
            .unwrap(&mut mechanism, self.dest_rsa, &wrapped, template)
    }

    /// Wraps `key` on the master and unwraps it on the destination with
    /// `template`; returns the new object. With CKM_RSA_PKCS_OAEP the key
    /// is wrapped directly to the RSA transport key, else under the AES
    /// transport key with `mechanism`.
    pub fn carry(
        &self,
        mechanism: CK_MECHANISM_TYPE,
        key: CK_OBJECT_HANDLE,
        template: &[Attr],
    ) -> Result<CK_OBJECT_HANDLE> {
        if mechanism == CKM_RSA_PKCS_OAEP {
            return self.carry_oaep(key, template);
        }
        let mut wrap_mechanism = plain_mechanism(mechanism);
        let wrapped = self
            .master
            .wrap(&mut wrap_mechanism, self.master_key, key)?;
        let mut unwrap_mechanism = plain_mechanism(mechanism);
        self.dest
            .unwrap(&mut unwrap_mechanism, self.dest_key, &wrapped, template)
    }

    /// Destroys every transport object; returns the failures as
    /// (on the master, return code).
    pub fn close(mut self) -> Vec<(bool, Rv)> {
        self.destroy_all()
    }

    fn destroy_all(&mut self) -> Vec<(bool, Rv)> {
        let mut failures = Vec::new();
        for handle in self.master_objects.drain(..).rev() {
            if let Err(rv) = self.master.destroy(handle) {
                failures.push((true, rv));
            }
        }
        for handle in self.dest_objects.drain(..).rev() {
            if let Err(rv) = self.dest.destroy(handle) {
                failures.push((false, rv));
            }
        }
        failures
    }
}

impl Drop for Transport<'_> {
    fn drop(&mut self) {
        for (on_master, rv) in self.destroy_all() {
            let token = if on_master { "master" } else { "destination" };
            log::error!(
                "destroying a transport session object on the {token} failed: {rv}; the \
                 token destroys it when the session closes"
            );
        }
    }
}
