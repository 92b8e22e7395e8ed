//! With the `torch` feature, records libtorch's folder (LIBTORCH/lib) as the
//! run path, so binaries and tests start without LD_LIBRARY_PATH, which still
//! wins when set (a CUDA machine's own torch install).
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_some()
        && let Some(libtorch) = std::env::var_os("LIBTORCH")
    {
        let lib = std::path::Path::new(&libtorch).join("lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
