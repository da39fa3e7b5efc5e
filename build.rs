//! Generates the Rust side of `include/p11wld.h` with bindgen, so the
//! extension's C header and the structures the module fills in cannot drift.

use std::env;
use std::path::PathBuf;

fn main() {
    let header = "include/p11wld.h";
    println!("cargo:rerun-if-changed={header}");

    let bindings = bindgen::Builder::default()
        .header(header)
        .allowlist_type("P11WLD_.*")
        .allowlist_type("p11wld_.*")
        .allowlist_var("P11WLD_.*")
        .allowlist_function("P11WLD_GetFunctionList")
        .derive_default(true)
        .layout_tests(true)
        .generate()
        .expect("bindgen failed on include/p11wld.h");

    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("p11wld_ext.rs"))
        .expect("writing the generated extension bindings failed");
}
