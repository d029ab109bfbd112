//! Generates the C header from src/lib.rs with cbindgen into OUT_DIR on every build. `make client-header` copies it
//! to include/akidb_client.h, and the crate's `header_is_current` test fails when the committed copy is stale.

fn main() {
    let crate_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    // The ABI's soname: bumped when the C ABI breaks (docs/C-CLIENT.md), installed with a symlink to it.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libakidb_client.so.0");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let config = cbindgen::Config::from_file(format!("{crate_dir}/cbindgen.toml")).expect("cbindgen.toml");
    cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate the header")
        .write_to_file(format!("{out_dir}/akidb_client.h"));
}
