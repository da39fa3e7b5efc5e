//! PINs: from the environment, else from a prompt without echo. Never
//! from the command line, and wiped from memory when dropped.

use std::io::IsTerminal;
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
        rpassword::prompt_password(format!("{what}: "))
            .map_err(|e| format!("reading the {what} failed: {e}"))?,
    );
    if pin.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    Ok(pin)
}
