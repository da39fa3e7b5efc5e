//! The measured operations, each one or a few PKCS#11 calls on a session
//! of the calling thread.

use crate::pkcs11::{call, check, search_template, Module};
use cryptoki_sys::*;
use std::ptr;

/// Label of the EC P-256 key pair of the fixture's key set.
pub const EC_LABEL: &str = "ec-key";
/// Label of the RSA-2048 key pair of the fixture's key set.
pub const RSA_LABEL: &str = "rsa-key";

/// One measured operation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Op {
    /// `C_GenerateRandom` of 16 bytes.
    Random,
    /// `C_GetAttributeValue` of CKA_KEY_TYPE of the EC public key.
    Attribute,
    /// `C_DigestInit` (CKM_SHA256) and `C_Digest` of 64 bytes.
    Digest,
    /// `C_SignInit` (CKM_ECDSA) and `C_Sign` of a 32-byte prehash with the
    /// P-256 key.
    Ecdsa,
    /// `C_SignInit` (CKM_SHA256_RSA_PKCS) and `C_Sign` of 64 bytes with
    /// the RSA-2048 key.
    Rsa,
    /// `C_OpenSession` and `C_CloseSession` on the thread's slot.
    Session,
    /// `C_FindObjectsInit` (class and label of the EC public key),
    /// `C_FindObjects` (room for 4, finds 1) and `C_FindObjectsFinal`.
    Find,
}

impl Op {
    pub const ALL: [Op; 7] = [
        Op::Random,
        Op::Attribute,
        Op::Digest,
        Op::Ecdsa,
        Op::Rsa,
        Op::Session,
        Op::Find,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Random => "random",
            Op::Attribute => "attribute",
            Op::Digest => "digest",
            Op::Ecdsa => "ecdsa",
            Op::Rsa => "rsa",
            Op::Session => "session",
            Op::Find => "find",
        }
    }

    pub fn parse(name: &str) -> Result<Op, String> {
        Op::ALL
            .into_iter()
            .find(|op| op.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Op::ALL.iter().map(|op| op.name()).collect();
                format!("unknown operation {name:?}; expected one of {names:?}")
            })
    }

    /// Returns the PKCS#11 functions one operation calls, in order.
    pub fn functions(self) -> &'static [&'static str] {
        match self {
            Op::Random => &["C_GenerateRandom"],
            Op::Attribute => &["C_GetAttributeValue"],
            Op::Digest => &["C_DigestInit", "C_Digest"],
            Op::Ecdsa | Op::Rsa => &["C_SignInit", "C_Sign"],
            Op::Session => &["C_OpenSession", "C_CloseSession"],
            Op::Find => &["C_FindObjectsInit", "C_FindObjects", "C_FindObjectsFinal"],
        }
    }
}

/// A thread's session with the keys it uses, found in that session.
pub struct Context<'a> {
    pub module: &'a Module,
    pub slot: CK_SLOT_ID,
    pub session: CK_SESSION_HANDLE,
    ec_private: CK_OBJECT_HANDLE,
    ec_public: CK_OBJECT_HANDLE,
    rsa_private: CK_OBJECT_HANDLE,
    data: [u8; 64],
    output: [u8; 512],
}

impl<'a> Context<'a> {
    /// Finds the keys in `session`, which must be logged in.
    pub fn new(
        module: &'a Module,
        slot: CK_SLOT_ID,
        session: CK_SESSION_HANDLE,
    ) -> Result<Context<'a>, String> {
        Ok(Context {
            module,
            slot,
            session,
            ec_private: module.find_one(session, CKO_PRIVATE_KEY, EC_LABEL)?,
            ec_public: module.find_one(session, CKO_PUBLIC_KEY, EC_LABEL)?,
            rsa_private: module.find_one(session, CKO_PRIVATE_KEY, RSA_LABEL)?,
            data: [0x5a; 64],
            output: [0; 512],
        })
    }

    /// Runs one operation. Any failure is returned with the function that
    /// failed, and ends the benchmark: the figures mean nothing with errors.
    #[inline(always)]
    pub fn run(&mut self, op: Op) -> Result<(), String> {
        match op {
            Op::Random => self.random(),
            Op::Attribute => self.attribute(),
            Op::Digest => self.digest(),
            Op::Ecdsa => self.sign(CKM_ECDSA, self.ec_private, 32),
            Op::Rsa => self.sign(CKM_SHA256_RSA_PKCS, self.rsa_private, 64),
            Op::Session => self.open_close(),
            Op::Find => self.find(),
        }
    }

    #[inline(always)]
    fn random(&mut self) -> Result<(), String> {
        let rv = call!(
            self.module,
            C_GenerateRandom(self.session, self.output.as_mut_ptr(), 16)
        );
        check("C_GenerateRandom", rv)
    }

    #[inline(always)]
    fn attribute(&mut self) -> Result<(), String> {
        let mut key_type: CK_KEY_TYPE = 0;
        let mut template = [CK_ATTRIBUTE {
            type_: CKA_KEY_TYPE,
            pValue: (&mut key_type as *mut CK_KEY_TYPE).cast(),
            ulValueLen: std::mem::size_of::<CK_KEY_TYPE>() as CK_ULONG,
        }];
        let rv = call!(
            self.module,
            C_GetAttributeValue(self.session, self.ec_public, template.as_mut_ptr(), 1)
        );
        check("C_GetAttributeValue", rv)?;
        if key_type != CKK_EC {
            return Err(format!("CKA_KEY_TYPE is {key_type:#x}, expected CKK_EC"));
        }
        Ok(())
    }

    #[inline(always)]
    fn digest(&mut self) -> Result<(), String> {
        let mut mechanism = CK_MECHANISM {
            mechanism: CKM_SHA256,
            pParameter: ptr::null_mut(),
            ulParameterLen: 0,
        };
        let rv = call!(self.module, C_DigestInit(self.session, &mut mechanism));
        check("C_DigestInit", rv)?;
        let mut length = self.output.len() as CK_ULONG;
        let rv = call!(
            self.module,
            C_Digest(
                self.session,
                self.data.as_mut_ptr(),
                64,
                self.output.as_mut_ptr(),
                &mut length
            )
        );
        check("C_Digest", rv)
    }

    #[inline(always)]
    fn sign(
        &mut self,
        kind: CK_MECHANISM_TYPE,
        key: CK_OBJECT_HANDLE,
        data_len: CK_ULONG,
    ) -> Result<(), String> {
        let mut mechanism = CK_MECHANISM {
            mechanism: kind,
            pParameter: ptr::null_mut(),
            ulParameterLen: 0,
        };
        let rv = call!(self.module, C_SignInit(self.session, &mut mechanism, key));
        check("C_SignInit", rv)?;
        let mut length = self.output.len() as CK_ULONG;
        let rv = call!(
            self.module,
            C_Sign(
                self.session,
                self.data.as_mut_ptr(),
                data_len,
                self.output.as_mut_ptr(),
                &mut length
            )
        );
        check("C_Sign", rv)
    }

    #[inline(always)]
    fn open_close(&mut self) -> Result<(), String> {
        let mut session: CK_SESSION_HANDLE = 0;
        let rv = call!(
            self.module,
            C_OpenSession(
                self.slot,
                CKF_SERIAL_SESSION,
                ptr::null_mut(),
                None,
                &mut session
            )
        );
        check("C_OpenSession", rv)?;
        let rv = call!(self.module, C_CloseSession(session));
        check("C_CloseSession", rv)
    }

    #[inline(always)]
    fn find(&mut self) -> Result<(), String> {
        let class = CKO_PUBLIC_KEY;
        let mut template = search_template(&class, EC_LABEL);
        let rv = call!(
            self.module,
            C_FindObjectsInit(self.session, template.as_mut_ptr(), 2)
        );
        check("C_FindObjectsInit", rv)?;
        let mut found = [0 as CK_OBJECT_HANDLE; 4];
        let mut count: CK_ULONG = 0;
        let rv = call!(
            self.module,
            C_FindObjects(self.session, found.as_mut_ptr(), 4, &mut count)
        );
        check("C_FindObjects", rv)?;
        let rv = call!(self.module, C_FindObjectsFinal(self.session));
        check("C_FindObjectsFinal", rv)?;
        if count != 1 || found[0] != self.ec_public {
            return Err(format!(
                "the search found {count} objects, expected the EC public key"
            ));
        }
        Ok(())
    }
}
