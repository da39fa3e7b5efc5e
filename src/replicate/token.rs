//! A session on one physical token, opened by replication itself outside
//! the WLD layer, with one typed method per call it makes.

use super::attributes::{raw_template, Attr};
use crate::error::{Result, Rv};
use crate::vcall;
use crate::vendor::VendorModule;
use cryptoki_sys::*;
use std::ptr;
use std::sync::Arc;
use zeroize::Zeroizing;

/// A session on one token, closed when dropped.
pub struct TokenSession {
    pub module: Arc<VendorModule>,
    pub slot_id: CK_SLOT_ID,
    pub handle: CK_SESSION_HANDLE,
}

impl TokenSession {
    /// Opens a session, read-write when `read_write`.
    pub fn open(
        module: &Arc<VendorModule>,
        slot_id: CK_SLOT_ID,
        read_write: bool,
    ) -> Result<TokenSession> {
        let mut flags = CKF_SERIAL_SESSION;
        if read_write {
            flags |= CKF_RW_SESSION;
        }
        let handle = module.open_session(slot_id, flags)?;
        Ok(TokenSession {
            module: module.clone(),
            slot_id,
            handle,
        })
    }

    /// Logs in as `user_type`. A token that reports the user logged in
    /// already (by another session of this process) counts as success.
    pub fn login(&self, user_type: CK_USER_TYPE, pin: &[u8]) -> Result<()> {
        let rv = vcall!(
            self.module,
            C_Login(
                self.handle,
                user_type,
                pin.as_ptr() as *mut _,
                pin.len() as CK_ULONG
            )
        );
        match rv {
            CKR_OK | CKR_USER_ALREADY_LOGGED_IN => Ok(()),
            rv => Err(Rv(rv)),
        }
    }

    /// Reads the session's state with C_GetSessionInfo, which fails when
    /// the session or its device is gone.
    pub fn info(&self) -> Result<CK_SESSION_INFO> {
        let mut info = CK_SESSION_INFO::default();
        Rv::check(vcall!(
            self.module,
            C_GetSessionInfo(self.handle, &mut info)
        ))?;
        Ok(info)
    }

    pub fn logout(&self) -> Result<()> {
        match vcall!(self.module, C_Logout(self.handle)) {
            CKR_OK | CKR_USER_NOT_LOGGED_IN => Ok(()),
            rv => Err(Rv(rv)),
        }
    }

    /// Sets the user PIN; the session must be logged in as the SO.
    pub fn init_pin(&self, pin: &[u8]) -> Result<()> {
        Rv::check(vcall!(
            self.module,
            C_InitPIN(self.handle, pin.as_ptr() as *mut _, pin.len() as CK_ULONG)
        ))
    }

    /// Lists the token objects the session can see.
    pub fn token_objects(&self) -> Result<Vec<CK_OBJECT_HANDLE>> {
        let on_token = Attr::bool(CKA_TOKEN, true);
        let mut template = raw_template(std::slice::from_ref(&on_token));
        self.module.find_all(self.handle, &mut template)
    }

    /// Reads attributes; each one the object lacks or keeps secret is
    /// `None`.
    pub fn read(
        &self,
        object: CK_OBJECT_HANDLE,
        types: &[CK_ATTRIBUTE_TYPE],
    ) -> Result<Vec<Option<Zeroizing<Vec<u8>>>>> {
        let values = self.module.read_attributes(self.handle, object, types)?;
        Ok(values.into_iter().map(|v| v.map(Zeroizing::new)).collect())
    }

    /// Returns the length of each attribute, `None` where the object lacks
    /// it, without reading any value.
    pub fn lengths(
        &self,
        object: CK_OBJECT_HANDLE,
        types: &[CK_ATTRIBUTE_TYPE],
    ) -> Result<Vec<Option<CK_ULONG>>> {
        let mut template: Vec<CK_ATTRIBUTE> = types
            .iter()
            .map(|&t| CK_ATTRIBUTE {
                type_: t,
                pValue: ptr::null_mut(),
                ulValueLen: 0,
            })
            .collect();
        let rv = vcall!(
            self.module,
            C_GetAttributeValue(
                self.handle,
                object,
                template.as_mut_ptr(),
                template.len() as CK_ULONG
            )
        );
        match rv {
            CKR_OK | CKR_ATTRIBUTE_SENSITIVE | CKR_ATTRIBUTE_TYPE_INVALID => {}
            rv => return Err(Rv(rv)),
        }
        Ok(template
            .iter()
            .map(|a| (a.ulValueLen != CK_UNAVAILABLE_INFORMATION).then_some(a.ulValueLen))
            .collect())
    }

    pub fn create(&self, attrs: &[Attr]) -> Result<CK_OBJECT_HANDLE> {
        let mut template = raw_template(attrs);
        let mut handle: CK_OBJECT_HANDLE = 0;
        Rv::check(vcall!(
            self.module,
            C_CreateObject(
                self.handle,
                template.as_mut_ptr(),
                template.len() as CK_ULONG,
                &mut handle
            )
        ))?;
        Ok(handle)
    }

    pub fn destroy(&self, object: CK_OBJECT_HANDLE) -> Result<()> {
        Rv::check(vcall!(self.module, C_DestroyObject(self.handle, object)))
    }

    pub fn generate_key(
        &self,
        mechanism: CK_MECHANISM_TYPE,
        attrs: &[Attr],
    ) -> Result<CK_OBJECT_HANDLE> {
        let mut mechanism = plain_mechanism(mechanism);
        let mut template = raw_template(attrs);
        let mut handle: CK_OBJECT_HANDLE = 0;
        Rv::check(vcall!(
            self.module,
            C_GenerateKey(
                self.handle,
                &mut mechanism,
                template.as_mut_ptr(),
                template.len() as CK_ULONG,
                &mut handle
            )
        ))?;
        Ok(handle)
    }

    /// Generates a key pair and returns the public and the private key.
    pub fn generate_key_pair(
        &self,
        mechanism: CK_MECHANISM_TYPE,
        public: &[Attr],
        private: &[Attr],
    ) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
        let mut mechanism = plain_mechanism(mechanism);
        let mut public = raw_template(public);
        let mut private = raw_template(private);
        let mut public_key: CK_OBJECT_HANDLE = 0;
        let mut private_key: CK_OBJECT_HANDLE = 0;
        Rv::check(vcall!(
            self.module,
            C_GenerateKeyPair(
                self.handle,
                &mut mechanism,
                public.as_mut_ptr(),
                public.len() as CK_ULONG,
                private.as_mut_ptr(),
                private.len() as CK_ULONG,
                &mut public_key,
                &mut private_key
            )
        ))?;
        Ok((public_key, private_key))
    }

    /// Wraps `key` under `wrapping_key`. The wrapped key is wiped when
    /// dropped.
    pub fn wrap(
        &self,
        mechanism: &mut CK_MECHANISM,
        wrapping_key: CK_OBJECT_HANDLE,
        key: CK_OBJECT_HANDLE,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let mut len: CK_ULONG = 0;
        Rv::check(vcall!(
            self.module,
            C_WrapKey(
                self.handle,
                mechanism,
                wrapping_key,
                key,
                ptr::null_mut(),
                &mut len
            )
        ))?;
        let mut wrapped = Zeroizing::new(vec![0u8; len as usize]);
        Rv::check(vcall!(
            self.module,
            C_WrapKey(
                self.handle,
                mechanism,
                wrapping_key,
                key,
                wrapped.as_mut_ptr(),
                &mut len
            )
        ))?;
        wrapped.truncate(len as usize);
        Ok(wrapped)
    }

    pub fn unwrap(
        &self,
        mechanism: &mut CK_MECHANISM,
        unwrapping_key: CK_OBJECT_HANDLE,
        wrapped: &[u8],
        attrs: &[Attr],
    ) -> Result<CK_OBJECT_HANDLE> {
        let mut template = raw_template(attrs);
        let mut handle: CK_OBJECT_HANDLE = 0;
        Rv::check(vcall!(
            self.module,
            C_UnwrapKey(
                self.handle,
                mechanism,
                unwrapping_key,
                wrapped.as_ptr() as *mut _,
                wrapped.len() as CK_ULONG,
                template.as_mut_ptr(),
                template.len() as CK_ULONG,
                &mut handle
            )
        ))?;
        Ok(handle)
    }

    /// Encrypts one block of `data` with a mechanism without parameters.
    pub fn encrypt(
        &self,
        mechanism: CK_MECHANISM_TYPE,
        key: CK_OBJECT_HANDLE,
        data: &[u8],
    ) -> Result<Vec<u8>> {
        let mut mechanism = plain_mechanism(mechanism);
        Rv::check(vcall!(
            self.module,
            C_EncryptInit(self.handle, &mut mechanism, key)
        ))?;
        let mut out = vec![0u8; data.len() + 64];
        let mut len = out.len() as CK_ULONG;
        Rv::check(vcall!(
            self.module,
            C_Encrypt(
                self.handle,
                data.as_ptr() as *mut _,
                data.len() as CK_ULONG,
                out.as_mut_ptr(),
                &mut len
            )
        ))?;
        out.truncate(len as usize);
        Ok(out)
    }

    /// Signs `data` with a mechanism without parameters.
    pub fn sign(
        &self,
        mechanism: CK_MECHANISM_TYPE,
        key: CK_OBJECT_HANDLE,
        data: &[u8],
    ) -> Result<Vec<u8>> {
        let mut mechanism = plain_mechanism(mechanism);
        Rv::check(vcall!(
            self.module,
            C_SignInit(self.handle, &mut mechanism, key)
        ))?;
        let mut len: CK_ULONG = 0;
        let rv = vcall!(
            self.module,
            C_Sign(
                self.handle,
                data.as_ptr() as *mut _,
                data.len() as CK_ULONG,
                ptr::null_mut(),
                &mut len
            )
        );
        Rv::check(rv)?;
        let mut out = vec![0u8; len as usize];
        Rv::check(vcall!(
            self.module,
            C_Sign(
                self.handle,
                data.as_ptr() as *mut _,
                data.len() as CK_ULONG,
                out.as_mut_ptr(),
                &mut len
            )
        ))?;
        out.truncate(len as usize);
        Ok(out)
    }

    /// Verifies a signature; returns whether it is valid.
    pub fn verify(
        &self,
        mechanism: CK_MECHANISM_TYPE,
        key: CK_OBJECT_HANDLE,
        data: &[u8],
        signature: &[u8],
    ) -> Result<bool> {
        let mut mechanism = plain_mechanism(mechanism);
        Rv::check(vcall!(
            self.module,
            C_VerifyInit(self.handle, &mut mechanism, key)
        ))?;
        let rv = vcall!(
            self.module,
            C_Verify(
                self.handle,
                data.as_ptr() as *mut _,
                data.len() as CK_ULONG,
                signature.as_ptr() as *mut _,
                signature.len() as CK_ULONG
            )
        );
        match rv {
            CKR_OK => Ok(true),
            CKR_SIGNATURE_INVALID | CKR_SIGNATURE_LEN_RANGE => Ok(false),
            rv => Err(Rv(rv)),
        }
    }
}

impl Drop for TokenSession {
    fn drop(&mut self) {
        if let Err(rv) = self.module.close_session(self.handle) {
            log::debug!(
                "module {} slot {}: C_CloseSession returned {rv}",
                self.module.name,
                self.slot_id
            );
        }
    }
}

/// Initializes the token in `slot_id` with `so_pin` and a 32-byte
/// blank-padded `label`.
pub fn init_token(
    module: &VendorModule,
    slot_id: CK_SLOT_ID,
    so_pin: &[u8],
    label: &[u8; 32],
) -> Result<()> {
    Rv::check(vcall!(
        module,
        C_InitToken(
            slot_id,
            so_pin.as_ptr() as *mut _,
            so_pin.len() as CK_ULONG,
            label.as_ptr() as *mut _
        )
    ))
}

/// Builds a mechanism without parameters.
pub fn plain_mechanism(mechanism: CK_MECHANISM_TYPE) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    }
}
