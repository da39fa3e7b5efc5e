//! Demo client of libp11wld.so, run by `scripts/demo.sh`.
//!
//! Opens sessions on one WLD slot from several threads, signs a message with
//! the RSA key in each session and verifies the signature in another one.
//! Then it reads the per-member session counts through the p11wld extension
//! (`include/p11wld.h`), so the spread of the sessions over the member tokens
//! is visible. It exits with an error when a signature fails to verify or
//! when a member that is up received no session.
//!
//! Environment:
//! - `P11WLD_DEMO_PIN`: user PIN of the token (required).
//! - `P11WLD_MODULE`: path of libp11wld.so. Default: `libp11wld.so` in the
//!   directory above this executable, which is `target/<profile>/`.
//! - `P11WLD_DEMO_LABEL`: label of the WLD slot's token. Default: `WLD_DEMO`.
//! - `P11WLD_DEMO_KEY`: `CKA_LABEL` of the RSA key pair. Default: `wld-demo-key`.
//! - `P11WLD_CONFIG`: read by the module itself, not by this program.

use std::env;
use std::error::Error;
use std::ffi::{c_char, c_ulong};
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::thread;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use p11wld::ffi::ext::sys;

type DemoResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

const THREADS: usize = 4;
const SESSIONS_PER_THREAD: usize = 3;

const CKR_OK: c_ulong = 0x0;
const CKR_BUFFER_TOO_SMALL: c_ulong = 0x150;

// The extension's types, generated from include/p11wld.h by build.rs.
type P11wldVersion = sys::P11WLD_VERSION;
type P11wldMemberStatus = sys::P11WLD_MEMBER_STATUS;
type P11wldFunctionList = sys::P11WLD_FUNCTION_LIST;
const P11WLD_MEMBER_UP: c_ulong = sys::P11WLD_MEMBER_UP;

type GetFunctionListFn = unsafe extern "C" fn(*mut *mut P11wldFunctionList) -> c_ulong;

/// The p11wld extension of the loaded module.
struct Extension {
    // Keeps the library mapped while `functions` points into it.
    _library: libloading::Library,
    functions: *const P11wldFunctionList,
}

impl Extension {
    /// Loads `path` a second time and fetches its extension function list.
    ///
    /// dlopen returns the handle that cryptoki already holds, so the
    /// extension reports on the same module instance as the sessions.
    fn load(path: &Path) -> DemoResult<Self> {
        // SAFETY: the path is libp11wld.so, whose initializers are safe to
        // run again, and the symbol has the signature in include/p11wld.h.
        unsafe {
            let library = libloading::Library::new(path)?;
            let get_function_list: libloading::Symbol<GetFunctionListFn> =
                library.get(b"P11WLD_GetFunctionList\0")?;
            let mut functions: *mut P11wldFunctionList = std::ptr::null_mut();
            check_rv("P11WLD_GetFunctionList", get_function_list(&mut functions))?;
            if functions.is_null() {
                return Err("P11WLD_GetFunctionList returned CKR_OK but a NULL list".into());
            }
            Ok(Self {
                _library: library,
                functions,
            })
        }
    }

    fn version(&self) -> DemoResult<P11wldVersion> {
        // SAFETY: `functions` stays valid while `_library` is loaded.
        let get_info = unsafe { (*self.functions).GetInfo }.ok_or("GetInfo is NULL")?;
        let mut version = P11wldVersion::default();
        // SAFETY: GetInfo writes one P11WLD_VERSION.
        check_rv("GetInfo", unsafe { get_info(&mut version) })?;
        Ok(version)
    }

    /// Fetches every member of every WLD slot with the PKCS#11 two-call
    /// convention, retrying when the count grows between the two calls.
    fn member_status(&self) -> DemoResult<Vec<P11wldMemberStatus>> {
        // SAFETY: `functions` stays valid while `_library` is loaded.
        let get_member_status =
            unsafe { (*self.functions).GetMemberStatus }.ok_or("GetMemberStatus is NULL")?;
        for _ in 0..3 {
            let mut count: c_ulong = 0;
            // SAFETY: a NULL buffer asks for the count only.
            check_rv("GetMemberStatus", unsafe {
                get_member_status(std::ptr::null_mut(), &mut count)
            })?;
            // SAFETY: the struct contains only integers and byte arrays, for
            // which all-zero bytes are a valid value.
            let mut members =
                vec![unsafe { std::mem::zeroed::<P11wldMemberStatus>() }; count as usize];
            // SAFETY: `members` has room for `count` entries.
            let rv = unsafe { get_member_status(members.as_mut_ptr(), &mut count) };
            if rv == CKR_BUFFER_TOO_SMALL {
                continue;
            }
            check_rv("GetMemberStatus", rv)?;
            members.truncate(count as usize);
            return Ok(members);
        }
        Err("GetMemberStatus kept returning CKR_BUFFER_TOO_SMALL".into())
    }
}

fn check_rv(function: &str, rv: c_ulong) -> DemoResult<()> {
    if rv == CKR_OK {
        Ok(())
    } else {
        Err(format!("{function} failed with CKR 0x{rv:x}").into())
    }
}

/// Converts a NUL-terminated text field of the extension to a String.
fn text_field(field: &[c_char]) -> String {
    let bytes: Vec<u8> = field
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn module_path() -> DemoResult<PathBuf> {
    if let Some(path) = env::var_os("P11WLD_MODULE") {
        return Ok(PathBuf::from(path));
    }
    // This executable is target/<profile>/examples/demo.
    let exe = env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(|examples| examples.parent())
        .ok_or("cannot find target/<profile>/ above the demo executable; set P11WLD_MODULE")?;
    Ok(profile_dir.join("libp11wld.so"))
}

fn find_slot(pkcs11: &Pkcs11, label: &str) -> DemoResult<Slot> {
    for slot in pkcs11.get_slots_with_token()? {
        if pkcs11.get_token_info(slot)?.label() == label {
            return Ok(slot);
        }
    }
    Err(format!("no slot has a token labelled {label:?}; check P11WLD_CONFIG").into())
}

fn find_key(session: &Session, class: ObjectClass, label: &str) -> DemoResult<ObjectHandle> {
    let template = [
        Attribute::Class(class),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    let handles = session.find_objects(&template)?;
    match handles.as_slice() {
        [handle] => Ok(*handle),
        [] => Err(format!("no {class} object labelled {label:?} found").into()),
        _ => Err(format!(
            "{} {class} objects labelled {label:?} found, expected one",
            handles.len()
        )
        .into()),
    }
}

/// Opens the sessions of one thread and signs in each. Every signature is
/// verified in the thread's next session, which may run on another member,
/// with key handles found in the main thread's session.
fn sign_in_sessions(
    pkcs11: &Pkcs11,
    slot: Slot,
    thread_index: usize,
    private_key: ObjectHandle,
    public_key: ObjectHandle,
) -> DemoResult<Vec<Session>> {
    let mut sessions = Vec::with_capacity(SESSIONS_PER_THREAD);
    let mut signatures = Vec::with_capacity(SESSIONS_PER_THREAD);
    for session_index in 0..SESSIONS_PER_THREAD {
        let session = pkcs11.open_ro_session(slot)?;
        let message = format!("p11wld demo, thread {thread_index}, session {session_index}");
        let signature = session.sign(&Mechanism::Sha256RsaPkcs, private_key, message.as_bytes())?;
        println!(
            "thread {thread_index}: session {:#x} signed {:?} ({} byte signature)",
            session.handle(),
            message,
            signature.len()
        );
        sessions.push(session);
        signatures.push((message, signature));
    }

    for (index, (message, signature)) in signatures.iter().enumerate() {
        let verifier = &sessions[(index + 1) % sessions.len()];
        verifier
            .verify(&Mechanism::Sha256RsaPkcs, public_key, message.as_bytes(), signature)
            .map_err(|error| {
                format!(
                    "thread {thread_index}: session {:#x} failed to verify the signature of session {:#x}: {error}",
                    verifier.handle(),
                    sessions[index].handle()
                )
            })?;
    }
    println!(
        "thread {thread_index}: verified all {SESSIONS_PER_THREAD} signatures in other sessions"
    );
    Ok(sessions)
}

fn print_members(title: &str, members: &[P11wldMemberStatus]) {
    println!("\n{title}");
    println!(
        "  {:<4} {:<12} {:<12} {:<16} {:<5} {:>13} {:>14} {:>8}",
        "slot",
        "member",
        "vendor slot",
        "serial",
        "state",
        "open sessions",
        "total sessions",
        "failures"
    );
    for member in members {
        let state = if member.state == P11WLD_MEMBER_UP {
            "up"
        } else {
            "down"
        };
        println!(
            "  {:<4} {:<12} {:<12} {:<16} {:<5} {:>13} {:>14} {:>8}",
            member.wld_slot_id,
            text_field(&member.module_name),
            format!("{:#x}", member.vendor_slot_id),
            text_field(&member.serial),
            state,
            member.open_sessions,
            member.total_sessions,
            member.failures
        );
    }
}

fn main() -> DemoResult<()> {
    let pin = env::var("P11WLD_DEMO_PIN")
        .map_err(|_| "P11WLD_DEMO_PIN is not set; set it to the user PIN of the token")?;
    let pin = AuthPin::new(pin.into());
    let label = env::var("P11WLD_DEMO_LABEL").unwrap_or_else(|_| "WLD_DEMO".to_owned());
    let key_label = env::var("P11WLD_DEMO_KEY").unwrap_or_else(|_| "wld-demo-key".to_owned());
    let path = module_path()?;

    println!("loading {}", path.display());
    let pkcs11 = Pkcs11::new(&path)?;
    pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
    let extension = Extension::load(&path)?;
    let version = extension.version()?;
    println!(
        "p11wld extension version {}.{}",
        version.major, version.minor
    );

    let slot = find_slot(&pkcs11, &label)?;
    println!("WLD slot {} has token {label:?}", slot.id());

    // Login state belongs to the application, so one C_Login covers the
    // sessions that the threads open later. The module logs into every member.
    let login_session = pkcs11.open_ro_session(slot)?;
    login_session.login(UserType::User, Some(&pin))?;
    let private_key = find_key(&login_session, ObjectClass::PRIVATE_KEY, &key_label)?;
    let public_key = find_key(&login_session, ObjectClass::PUBLIC_KEY, &key_label)?;
    println!(
        "logged in with session {:#x}; key pair {key_label:?}: private key handle {}, public key handle {}",
        login_session.handle(),
        private_key,
        public_key
    );

    // Every thread waits at `all_open` with its sessions open, so the main
    // thread can read the counts, then at `counted` before closing them.
    let all_open = Barrier::new(THREADS + 1);
    let counted = Barrier::new(THREADS + 1);
    let (open_members, thread_results) = thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|thread_index| {
                let (pkcs11, all_open, counted) = (&pkcs11, &all_open, &counted);
                scope.spawn(move || {
                    let result =
                        sign_in_sessions(pkcs11, slot, thread_index, private_key, public_key);
                    all_open.wait();
                    counted.wait();
                    // Dropping the sessions closes them.
                    result.map(drop)
                })
            })
            .collect();
        all_open.wait();
        let open_members = extension.member_status();
        counted.wait();
        let thread_results: Vec<DemoResult<()>> = workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|_| Err("a demo thread panicked".into()))
            })
            .collect();
        (open_members, thread_results)
    });
    let open_members = open_members?;
    for result in thread_results {
        result?;
    }
    print_members(
        &format!(
            "members with all {} sessions open ({THREADS} threads x {SESSIONS_PER_THREAD}, plus the login session):",
            THREADS * SESSIONS_PER_THREAD + 1
        ),
        &open_members,
    );

    let closed_members = extension.member_status()?;
    print_members(
        "members after the threads closed their sessions:",
        &closed_members,
    );

    login_session.logout()?;
    drop(login_session);
    pkcs11.finalize()?;

    let demo_members: Vec<_> = closed_members
        .iter()
        .filter(|member| text_field(&member.label) == label)
        .collect();
    if demo_members.is_empty() {
        return Err(format!("GetMemberStatus listed no member with label {label:?}").into());
    }
    for member in demo_members {
        if member.state == P11WLD_MEMBER_UP && member.total_sessions == 0 {
            return Err(format!(
                "member {} is up but received no session",
                text_field(&member.module_name)
            )
            .into());
        }
    }
    println!("\nevery member of {label:?} served sessions");
    Ok(())
}
