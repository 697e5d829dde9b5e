//! Generates the Kotlin, Swift and Python sources of the bindings from the built library:
//! `cargo run -p care-bindings --features bindgen --bin uniffi-bindgen -- generate
//! --library target/debug/libcare_bindings.so --language python --out-dir out`.

fn main() {
    uniffi::uniffi_bindgen_main()
}
