//! Helpers of the replication tests: test HSMs with a master token whose
//! keys were generated on the token, the `p11wld` program run as a
//! separate process, and direct reads of a token through SoftHSM2.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{
    Attribute, AttributeInfo, AttributeType, CertificateType, ObjectClass, ObjectHandle,
};
use cryptoki::session::Session;
use serde_json::Value;

use crate::common::{paths, ConfigFile, ModuleEntry, P11KitHsm, SoftHsm, SO_PIN, USER_PIN};

/// Label of the master token and of its replicas.
pub const MASTER_LABEL: &str = "WLD_Slot_11";

pub const RSA_LABEL: &str = "rsa-generated";
pub const RSA_ID: &[u8] = &[0x11];
pub const EC_LABEL: &str = "ec-generated";
pub const EC_ID: &[u8] = &[0x12];
pub const AES_LABEL: &str = "aes-generated";
pub const AES_ID: &[u8] = &[0x13];
pub const CERT_LABEL: &str = "certificate";
pub const DATA_LABEL: &str = "data-object";
pub const STALE_LABEL: &str = "stale-object";

/// Certificate attributes; SoftHSM2 stores them without parsing the
/// value.
pub const CERT_SUBJECT: &[u8] = b"0\x171\x150\x13\x06\x03U\x04\x03\x0c\x0cp11wld-test";
pub const CERT_ISSUER: &[u8] = b"0\x151\x130\x11\x06\x03U\x04\x03\x0c\x0ap11wld-ca";
pub const CERT_SERIAL: &[u8] = &[0x02, 0x02, 0x10, 0x01];
pub const CERT_VALUE: &[u8] = b"0\x82\x00\x04test certificate body";
pub const DATA_APPLICATION: &[u8] = b"p11wld replication test";
pub const DATA_OBJECT_ID: &[u8] = &[0x06, 0x03, 0x2a, 0x03, 0x04];
pub const DATA_VALUE: &[u8] = b"value of the data object";

/// DER of the OID of P-256.
const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Generates on the token an RSA and an EC key pair and an AES key
/// (sensitive, extractable), and creates a certificate and a data object.
pub fn populate_master(session: &Session) {
    let private = |label: &str, id: &[u8]| {
        vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(true),
            Attribute::Sign(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
        ]
    };
    let public = |label: &str, id: &[u8]| {
        vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
        ]
    };
    let mut rsa_public = public(RSA_LABEL, RSA_ID);
    rsa_public.extend([
        Attribute::ModulusBits(2048.into()),
        Attribute::PublicExponent(vec![1, 0, 1]),
        Attribute::Encrypt(true),
    ]);
    let mut rsa_private = private(RSA_LABEL, RSA_ID);
    rsa_private.push(Attribute::Decrypt(true));
    session
        .generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &rsa_public, &rsa_private)
        .expect("C_GenerateKeyPair of RSA-2048 on the master succeeds");

    let mut ec_public = public(EC_LABEL, EC_ID);
    ec_public.push(Attribute::EcParams(P256.to_vec()));
    session
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &ec_public,
            &private(EC_LABEL, EC_ID),
        )
        .expect("C_GenerateKeyPair of P-256 on the master succeeds");

    let mut aes = private(AES_LABEL, AES_ID);
    aes.extend([
        Attribute::ValueLen(32.into()),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
    ]);
    session
        .generate_key(&Mechanism::AesKeyGen, &aes)
        .expect("C_GenerateKey of AES-256 on the master succeeds");

    session
        .create_object(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::CertificateType(CertificateType::X_509),
            Attribute::Token(true),
            Attribute::Label(CERT_LABEL.as_bytes().to_vec()),
            Attribute::Id(RSA_ID.to_vec()),
            Attribute::Subject(CERT_SUBJECT.to_vec()),
            Attribute::Issuer(CERT_ISSUER.to_vec()),
            Attribute::SerialNumber(CERT_SERIAL.to_vec()),
            Attribute::Value(CERT_VALUE.to_vec()),
        ])
        .expect("C_CreateObject of a certificate succeeds");
    create_data_object(session, DATA_LABEL, DATA_VALUE);
}

/// Creates a private data object with an application and an object id.
pub fn create_data_object(session: &Session, label: &str, value: &[u8]) -> ObjectHandle {
    session
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Application(DATA_APPLICATION.to_vec()),
            Attribute::ObjectId(DATA_OBJECT_ID.to_vec()),
            Attribute::Value(value.to_vec()),
        ])
        .unwrap_or_else(|e| panic!("C_CreateObject of data object {label} failed: {e}"))
}

/// One test HSM: a SoftHSM2 token directory, reached either through its
/// own `p11-kit server` process or by a private copy of libsofthsm2.so.
pub enum Hsm {
    /// Served by `p11-kit server` (every slot, the free one too) and
    /// reached through p11-kit-client.so.
    Served(P11KitHsm),
    /// Loaded directly from a copy of libsofthsm2.so of its own, so that
    /// one process can load several token directories: the dynamic loader
    /// maps each path once, and SoftHSM2 keeps one state per mapping.
    Direct {
        name: String,
        softhsm: SoftHsm,
        library: PathBuf,
    },
}

impl Hsm {
    pub fn softhsm(&self) -> &SoftHsm {
        match self {
            Hsm::Served(hsm) => hsm.softhsm(),
            Hsm::Direct { softhsm, .. } => softhsm,
        }
    }

    pub fn served(&mut self) -> &mut P11KitHsm {
        match self {
            Hsm::Served(hsm) => hsm,
            Hsm::Direct { name, .. } => panic!("HSM {name} is not served by p11-kit"),
        }
    }

    fn module_entry(&self) -> ModuleEntry {
        match self {
            Hsm::Served(hsm) => hsm.module_entry(),
            Hsm::Direct {
                name,
                softhsm,
                library,
            } => {
                let (variable, value) = softhsm.env();
                ModuleEntry::new(name, library).with_env(variable, value)
            }
        }
    }
}

/// How the lab reaches its HSMs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Three-process setup: each HSM behind its own `p11-kit server`.
    P11Kit,
    /// Each HSM loaded directly, from its own copy of libsofthsm2.so.
    Direct,
}

/// A master HSM and destination HSMs, each a SoftHSM2 directory.
pub struct Lab {
    pub hsms: Vec<Hsm>,
    pub config: ConfigFile,
    pub master_serial: String,
    /// Serials of the stale destination tokens, by HSM index.
    pub stale_serials: BTreeMap<usize, String>,
    /// Holds the copies of libsofthsm2.so of a direct lab.
    _libraries: tempfile::TempDir,
}

/// The content of a destination HSM at the start.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Only SoftHSM2's free slot with an uninitialized token.
    Uninitialized,
    /// A token with the master's label and PINs that contains one data
    /// object the master lacks, and the free slot.
    Stale,
}

/// Sets up HSM `hsm1` with the master token holding the objects of
/// [`populate_master`] and what `extra_master_setup` adds, then one HSM
/// per entry of `destinations`, and a configuration naming them in that
/// order.
pub fn lab(reach: Reach, destinations: &[Start], extra_master_setup: impl FnOnce(&Session)) -> Lab {
    lab_with_master(reach, destinations, |session| {
        populate_master(session);
        extra_master_setup(session);
    })
}

/// Sets up a lab as [`lab`] does, with a master that holds only what
/// `setup` creates.
pub fn lab_with_master(reach: Reach, destinations: &[Start], setup: impl FnOnce(&Session)) -> Lab {
    lab_with_init(
        reach,
        destinations,
        |master| master.init_token(MASTER_LABEL, SO_PIN, USER_PIN),
        setup,
    )
}

/// Sets up a lab as [`lab_with_master`] does, with a master token whose
/// 32-byte label field is `label`, which need not be UTF-8.
pub fn lab_with_label(
    reach: Reach,
    destinations: &[Start],
    label: &[u8; 32],
    setup: impl FnOnce(&Session),
) -> Lab {
    lab_with_init(
        reach,
        destinations,
        |master| init_token_raw(master, label),
        setup,
    )
}

/// Sets up a lab whose master token `init_master` initializes and whose
/// serial it returns.
fn lab_with_init(
    reach: Reach,
    destinations: &[Start],
    init_master: impl FnOnce(&SoftHsm) -> String,
    setup: impl FnOnce(&Session),
) -> Lab {
    let libraries = tempfile::Builder::new()
        .prefix("p11wld-softhsm-copies-")
        .tempdir()
        .expect("failed to create a directory for copies of libsofthsm2.so");
    let wrap = |name: String, softhsm: SoftHsm| match reach {
        Reach::P11Kit => Hsm::Served(P11KitHsm::start(&name, softhsm)),
        Reach::Direct => {
            let library = libraries.path().join(format!("libsofthsm2-{name}.so"));
            std::fs::copy(paths::softhsm_module(), &library)
                .unwrap_or_else(|e| panic!("failed to copy libsofthsm2.so: {e}"));
            Hsm::Direct {
                name,
                softhsm,
                library,
            }
        }
    };

    let master = SoftHsm::new();
    let master_serial = init_master(&master);
    master.with_user_session(&master_serial, USER_PIN, setup);
    let mut hsms = vec![wrap("hsm1".to_owned(), master)];
    let mut stale_serials = BTreeMap::new();
    for (index, start) in destinations.iter().enumerate() {
        let softhsm = SoftHsm::new();
        if *start == Start::Stale {
            let serial = softhsm.init_token(MASTER_LABEL, SO_PIN, USER_PIN);
            softhsm.with_user_session(&serial, USER_PIN, |session| {
                create_data_object(session, STALE_LABEL, b"left over");
            });
            stale_serials.insert(index + 1, serial);
        }
        hsms.push(wrap(format!("hsm{}", index + 2), softhsm));
    }
    let entries: Vec<_> = hsms.iter().map(Hsm::module_entry).collect();
    let config = ConfigFile::write(&entries, "[log]\nlevel = \"warn\"\n");
    Lab {
        hsms,
        config,
        master_serial,
        stale_serials,
        _libraries: libraries,
    }
}

/// Calls one function of SoftHSM2's list and checks that it returns
/// CKR_OK.
macro_rules! softhsm_call {
    ($functions:expr, $name:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: the entry comes from SoftHSM2's function list, and the
        // callers pass pointers that are valid for the call.
        let rv = unsafe { $functions.$name.unwrap()($($arg),*) };
        assert_eq!(rv, cryptoki_sys::CKR_OK, "{} returned {rv:#x}", stringify!($name));
    }};
}

/// Lists (slot id, initialized, serial) of every slot with a token.
fn raw_tokens(functions: &cryptoki_sys::CK_FUNCTION_LIST) -> Vec<(u64, bool, String)> {
    use cryptoki_sys::*;
    let mut count: CK_ULONG = 0;
    softhsm_call!(
        functions,
        C_GetSlotList(CK_TRUE, std::ptr::null_mut(), &mut count)
    );
    let mut slots = vec![0; count as usize];
    softhsm_call!(
        functions,
        C_GetSlotList(CK_TRUE, slots.as_mut_ptr(), &mut count)
    );
    slots.truncate(count as usize);
    slots
        .into_iter()
        .map(|slot| {
            let mut info = CK_TOKEN_INFO::default();
            softhsm_call!(functions, C_GetTokenInfo(slot, &mut info));
            let serial = String::from_utf8_lossy(&info.serialNumber)
                .trim_end()
                .to_owned();
            (slot, info.flags & CKF_TOKEN_INITIALIZED != 0, serial)
        })
        .collect()
}

/// Initializes the free token of `softhsm` with the 32-byte label field
/// `label` as it is, through SoftHSM2's C ABI, because the cryptoki crate
/// takes a label as a `&str`. Sets the user PIN and returns the serial.
pub fn init_token_raw(softhsm: &SoftHsm, label: &[u8; 32]) -> String {
    use cryptoki_sys::*;
    let _conf =
        crate::common::ScopedEnv::set(crate::common::softhsm::SOFTHSM2_CONF, softhsm.conf_path());
    // SAFETY: loading SoftHSM2 runs its initializers only.
    let library =
        unsafe { libloading::Library::new(paths::softhsm_module()) }.expect("libsofthsm2.so loads");
    // SAFETY: C_GetFunctionList has this signature in every PKCS#11 version.
    let get: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
        unsafe { library.get(b"C_GetFunctionList\0") }.expect("SoftHSM2 has C_GetFunctionList");
    let mut list = std::ptr::null_mut();
    // SAFETY: a valid out pointer; the list stays valid while loaded.
    let functions = unsafe {
        assert_eq!(get(&mut list), CKR_OK);
        &*list
    };
    softhsm_call!(functions, C_Initialize(std::ptr::null_mut()));
    let before = raw_tokens(functions);
    let free = before
        .iter()
        .find(|(_, initialized, _)| !initialized)
        .map(|(slot, _, _)| *slot)
        .expect("SoftHSM2 has a free slot");
    let so_pin = SO_PIN.as_bytes();
    let user_pin = USER_PIN.as_bytes();
    softhsm_call!(
        functions,
        C_InitToken(
            free,
            so_pin.as_ptr() as *mut _,
            so_pin.len() as CK_ULONG,
            label.as_ptr() as *mut _
        )
    );
    // SoftHSM2 2.6.1 moves the token it initializes to a new slot with a
    // new serial.
    let (slot, _, serial) = raw_tokens(functions)
        .into_iter()
        .find(|(_, initialized, serial)| {
            *initialized && !before.iter().any(|(_, _, old)| old == serial)
        })
        .expect("the initialized token has a new serial");
    let mut session = 0;
    softhsm_call!(
        functions,
        C_OpenSession(
            slot,
            CKF_SERIAL_SESSION | CKF_RW_SESSION,
            std::ptr::null_mut(),
            None,
            &mut session
        )
    );
    softhsm_call!(
        functions,
        C_Login(
            session,
            CKU_SO,
            so_pin.as_ptr() as *mut _,
            so_pin.len() as CK_ULONG
        )
    );
    softhsm_call!(
        functions,
        C_InitPIN(
            session,
            user_pin.as_ptr() as *mut _,
            user_pin.len() as CK_ULONG
        )
    );
    softhsm_call!(functions, C_Logout(session));
    softhsm_call!(functions, C_CloseSession(session));
    softhsm_call!(functions, C_Finalize(std::ptr::null_mut()));
    serial
}

/// Which PINs the `p11wld` process finds in its environment.
pub struct Pins<'a> {
    pub so: Option<&'a str>,
    pub user: Option<&'a str>,
}

pub const BOTH_PINS: Pins<'static> = Pins {
    so: Some(SO_PIN),
    user: Some(USER_PIN),
};

/// Builds the `p11wld` command with the module under test, the lab's
/// configuration and the PINs in the environment, never on the command
/// line. Stdin is not a terminal.
pub fn command(config: &ConfigFile, args: &[&str], pins: &Pins) -> Command {
    let mut command = Command::new(paths::p11wld_cli());
    command
        .arg("--module")
        .arg(paths::p11wld_module())
        .args(args)
        .env("P11WLD_CONFIG", config.path())
        .env_remove("P11WLD_SO_PIN")
        .env_remove("P11WLD_USER_PIN")
        .stdin(Stdio::null());
    if let Some(pin) = pins.so {
        command.env("P11WLD_SO_PIN", pin);
    }
    if let Some(pin) = pins.user {
        command.env("P11WLD_USER_PIN", pin);
    }
    command
}

/// Runs `p11wld` and returns its output.
pub fn run(config: &ConfigFile, args: &[&str], pins: &Pins) -> Output {
    command(config, args, pins)
        .output()
        .unwrap_or_else(|e| panic!("failed to run {}: {e}", paths::p11wld_cli().display()))
}

/// Describes a finished `p11wld` run for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Parses the JSON a `--json` run printed.
pub fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("output is not JSON ({e}):\n{}", describe(output)))
}

/// Runs `p11wld --json list` and returns its slots.
pub fn list(config: &ConfigFile) -> Vec<Value> {
    let output = run(
        config,
        &["--json", "list"],
        &Pins {
            so: None,
            user: None,
        },
    );
    assert!(output.status.success(), "{}", describe(&output));
    json(&output)
        .as_array()
        .expect("list prints an array")
        .clone()
}

/// Returns the position of the slot of `module` whose token has `serial`
/// (an empty serial: the uninitialized token).
pub fn position(slots: &[Value], module: &str, serial: &str) -> u64 {
    slots
        .iter()
        .find(|s| s["module"] == module && s["serial"] == serial)
        .and_then(|s| s["position"].as_u64())
        .unwrap_or_else(|| panic!("no slot of {module} with serial {serial:?} in {slots:#?}"))
}

/// Attributes compared between a master object and its copy: all but the
/// ones the token sets itself (CKA_LOCAL, CKA_ALWAYS_SENSITIVE,
/// CKA_NEVER_EXTRACTABLE, CKA_KEY_GEN_MECHANISM), which legitimately
/// differ between a key generated on the master and its unwrapped copy,
/// and CKA_CHECK_VALUE and CKA_VALUE_LEN, which SoftHSM2 2.6.1 leaves empty
/// and 0 on a key it generates but fills in on a key it unwraps (the tests
/// compare the keys by using them instead).
const COMPARED: &[AttributeType] = &[
    AttributeType::Class,
    AttributeType::Token,
    AttributeType::Private,
    AttributeType::Label,
    AttributeType::Modifiable,
    AttributeType::Copyable,
    AttributeType::Destroyable,
    AttributeType::Application,
    AttributeType::ObjectId,
    AttributeType::Value,
    AttributeType::CertificateType,
    AttributeType::Trusted,
    AttributeType::StartDate,
    AttributeType::EndDate,
    AttributeType::Subject,
    AttributeType::Issuer,
    AttributeType::SerialNumber,
    AttributeType::KeyType,
    AttributeType::Id,
    AttributeType::Derive,
    AttributeType::Encrypt,
    AttributeType::Decrypt,
    AttributeType::Sign,
    AttributeType::SignRecover,
    AttributeType::Verify,
    AttributeType::VerifyRecover,
    AttributeType::Wrap,
    AttributeType::Unwrap,
    AttributeType::Sensitive,
    AttributeType::Extractable,
    AttributeType::WrapWithTrusted,
    AttributeType::AlwaysAuthenticate,
    AttributeType::Modulus,
    AttributeType::ModulusBits,
    AttributeType::PublicExponent,
    AttributeType::EcParams,
    AttributeType::EcPoint,
    AttributeType::AllowedMechanisms,
];

/// Every token object: "class label id" to its readable attributes, as
/// text. Sensitive attributes are left out by the token.
pub type Snapshot = BTreeMap<String, BTreeMap<String, String>>;

/// Reads every token object of the token `serial` directly through
/// SoftHSM2.
pub fn snapshot(softhsm: &SoftHsm, serial: &str) -> Snapshot {
    softhsm.with_user_session(serial, USER_PIN, |session| {
        let objects = session
            .find_objects(&[Attribute::Token(true)])
            .expect("C_FindObjects succeeds");
        let mut snapshot = Snapshot::new();
        for object in objects {
            let attributes = session
                .get_attributes(object, COMPARED)
                .expect("C_GetAttributeValue succeeds");
            let mut values = BTreeMap::new();
            let mut key = (String::new(), String::new(), String::new());
            for attribute in attributes {
                match &attribute {
                    Attribute::Class(class) => key.0 = format!("{class}"),
                    Attribute::Label(label) => key.1 = String::from_utf8_lossy(label).into_owned(),
                    Attribute::Id(id) => key.2 = format!("{id:02x?}"),
                    _ => {}
                }
                values.insert(
                    format!("{:?}", attribute.attribute_type()),
                    format!("{attribute:?}"),
                );
            }
            let name = format!("{} {} {}", key.0, key.1, key.2);
            assert!(
                snapshot.insert(name.clone(), values).is_none(),
                "two objects named {name} on token {serial}"
            );
        }
        snapshot
    })
}

/// Returns how the token reports one attribute of a key, read directly.
pub fn attribute_info(
    session: &Session,
    class: ObjectClass,
    label: &str,
    kind: AttributeType,
) -> AttributeInfo {
    let key = crate::common::client::find_key(session, class, label);
    session
        .get_attribute_info(key, &[kind])
        .expect("C_GetAttributeValue succeeds")[0]
}

/// Returns the expected-serial argument for `positions`: each one's
/// position and serial in `slots`, with its module and vendor slot id for
/// a token without serial.
pub fn expect_serials(slots: &[Value], positions: &[u64]) -> String {
    positions
        .iter()
        .map(|&p| {
            let slot = slots
                .iter()
                .find(|s| s["position"] == p)
                .unwrap_or_else(|| panic!("no position {p} in {slots:#?}"));
            let serial = slot["serial"].as_str().unwrap();
            if serial.is_empty() {
                format!(
                    "{p}=@{}:{:#x}",
                    slot["module"].as_str().unwrap(),
                    slot["vendor_slot_id"].as_u64().unwrap()
                )
            } else {
                format!("{p}={serial}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs `p11wld --json replicate` from `master` to `destinations` with
/// the serials `slots` lists, and returns the output.
pub fn replicate(
    lab: &Lab,
    slots: &[Value],
    master: u64,
    destinations: &[u64],
    extra: &[&str],
    pins: &Pins,
) -> Output {
    let mut positions = vec![master];
    positions.extend(destinations);
    let expect = expect_serials(slots, &positions);
    let targets = destinations
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let master = master.to_string();
    let mut args = vec![
        "--json",
        "replicate",
        "-s",
        &master,
        "-d",
        &targets,
        "--expect-serial",
        &expect,
    ];
    args.extend(extra);
    run(&lab.config, &args, pins)
}

/// Returns the token states of an HSM's directory, read directly.
pub fn tokens(lab: &Lab, hsm: usize) -> Vec<crate::common::TokenSummary> {
    lab.hsms[hsm].softhsm().tokens()
}
