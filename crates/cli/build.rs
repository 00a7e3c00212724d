//! Link flags for the `plinth` binary.
fn main() {
    // Pack relative relocations (DT_RELR): the binary keeps full ASLR, and start-up reads a few
    // kilobytes of relocations instead of several hundred.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
