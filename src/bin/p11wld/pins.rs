//! PINs: from the environment, else from a prompt without echo. Never
//! from the command line, and wiped from memory when dropped.

use std::io::IsTerminal;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;
use zeroize::Zeroizing;

pub const SO_PIN_ENV: &str = "P11WLD_SO_PIN";
pub const USER_PIN_ENV: &str = "P11WLD_USER_PIN";

/// Reads a PIN from `variable`, or prompts for it on the terminal.
pub fn read(variable: &str, what: &str) -> Result<Zeroizing<String>, String> {
    if let Some(value) = std::env::var_os(variable) {
        let pin = Zeroizing::new(
            value
                .into_string()
                .map_err(|_| format!("{variable} is not valid UTF-8"))?,
        );
        if pin.is_empty() {
            return Err(format!("{variable} is set but empty"));
        }
        return Ok(pin);
    }
    if !std::io::stdin().is_terminal() {
        return Err(format!(
            "{variable} is not set and no terminal is there to prompt for the {what}"
        ));
    }
    let pin = Zeroizing::new(
        prompt_without_echo(&format!("{what}: "))
            .map_err(|e| format!("reading the {what} failed: {e}"))?,
    );
    if pin.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    Ok(pin)
}

/// The terminal settings from before the prompt turned echo off, which the
/// signal handler puts back.
static SAVED_TERMINAL: OnceLock<libc::termios> = OnceLock::new();
/// The descriptor of the prompt's terminal, or -1 while no prompt runs.
static PROMPT_TERMINAL: AtomicI32 = AtomicI32::new(-1);

/// Signals that end the process by default and can arrive at the prompt:
/// Ctrl-C, Ctrl-\, a closed terminal, kill.
const ENDING_SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGQUIT, libc::SIGHUP, libc::SIGTERM];

/// Restores the terminal settings, then ends the process by the signal as
/// its default action would. Calls only async-signal-safe functions.
extern "C" fn restore_terminal_and_reraise(signal: libc::c_int) {
    let fd = PROMPT_TERMINAL.load(Ordering::SeqCst);
    if let (true, Some(saved)) = (fd >= 0, SAVED_TERMINAL.get()) {
        // SAFETY: tcsetattr, signal and raise are async-signal-safe; `saved`
        // is a termios that tcgetattr filled in.
        unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, saved) };
    }
    // SAFETY: as above.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

/// Prompts for a PIN on the terminal without echo, with rpassword.
///
/// rpassword 7.5 turns echo back on only when the read returns. A signal
/// such as Ctrl-C that ends the process at the prompt would leave the
/// terminal without echo, so a handler restores the settings first.
fn prompt_without_echo(prompt: &str) -> std::io::Result<String> {
    let tty = std::fs::File::open("/dev/tty")?;
    let fd = tty.as_raw_fd();
    let mut saved = std::mem::MaybeUninit::<libc::termios>::uninit();
    // SAFETY: `fd` is open, and tcgetattr fills in `saved` when it returns 0.
    if unsafe { libc::tcgetattr(fd, saved.as_mut_ptr()) } == 0 {
        // SAFETY: tcgetattr returned 0.
        let _ = SAVED_TERMINAL.set(unsafe { saved.assume_init() });
        PROMPT_TERMINAL.store(fd, Ordering::SeqCst);
    }

    let handler = restore_terminal_and_reraise as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // A signal the process ignores (as under nohup) stays ignored.
    let previous: Vec<libc::sighandler_t> = ENDING_SIGNALS
        .iter()
        .map(|&signal| {
            // SAFETY: the handler calls only async-signal-safe functions;
            // the previous handlers are put back below.
            let old = unsafe { libc::signal(signal, handler) };
            if old == libc::SIG_IGN {
                // SAFETY: as above.
                unsafe { libc::signal(signal, libc::SIG_IGN) };
            }
            old
        })
        .collect();
    let pin = rpassword::prompt_password(prompt);

    for (&signal, &handler) in ENDING_SIGNALS.iter().zip(&previous) {
        // SAFETY: puts back the handler that was there before.
        unsafe { libc::signal(signal, handler) };
    }
    PROMPT_TERMINAL.store(-1, Ordering::SeqCst);
    drop(tty);
    pin
}
