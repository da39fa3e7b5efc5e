//! Generates the Rust side of `include/p11wld.h` with bindgen, so the
//! extension's C header and the structures the module fills in cannot drift.

use bindgen::callbacks::{IntKind, ParseCallbacks};
use std::env;
use std::path::PathBuf;

/// Gives the header's `P11WLD_*` integer macros the type of the fields they
/// go into, `p11wld_ulong` (an unsigned long, as CK_ULONG).
#[derive(Debug)]
struct UlongMacros;

impl ParseCallbacks for UlongMacros {
    fn int_macro(&self, name: &str, _value: i64) -> Option<IntKind> {
        (name.starts_with("P11WLD_") && !name.starts_with("P11WLD_VERSION_"))
            .then_some(IntKind::ULong)
    }
}

fn main() {
    let header = "include/p11wld.h";
    println!("cargo:rerun-if-changed={header}");

    let bindings = bindgen::Builder::default()
        .header(header)
        .allowlist_type("P11WLD_.*")
        .allowlist_type("p11wld_.*")
        .allowlist_var("P11WLD_.*")
        .allowlist_function("P11WLD_GetFunctionList")
        .parse_callbacks(Box::new(UlongMacros))
        .derive_default(true)
        .layout_tests(true)
        .generate()
        .expect("bindgen failed on include/p11wld.h");

    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("p11wld_ext.rs"))
        .expect("writing the generated extension bindings failed");
}
