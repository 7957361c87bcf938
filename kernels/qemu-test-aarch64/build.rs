//! Link the kernel as a fixed-address ELF at 0x4008_0000 (QEMU virt's RAM
//! starts at 0x4000_0000; QEMU puts the device tree there) with our
//! script.
fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    if target == "aarch64-unknown-none" {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
        println!("cargo:rustc-link-arg-bins=-T{dir}/linker.ld");
        println!("cargo:rerun-if-changed=linker.ld");
    }
}
