//! With the `torch` feature: records libtorch's folder (LIBTORCH/lib) as the
//! run path, so binaries and tests start without LD_LIBRARY_PATH (which still
//! wins when set: a CUDA machine's own torch install); and, when that libtorch
//! has CUDA support, compiles the small C++ shim that gives each instance its
//! own CUDA stream (`cfg(switchyard_cuda_streams)`).
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rustc-check-cfg=cfg(switchyard_cuda_streams)");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=SWITCHYARD_CUDA_INCLUDE");
    println!("cargo:rerun-if-changed=src/torch/cuda_streams.cpp");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none() {
        return;
    }
    let Some(libtorch) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        return;
    };
    let lib = libtorch.join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if !lib.join("libc10_cuda.so").exists() {
        println!(
            "cargo:warning=LIBTORCH has no CUDA support; instances will share the default CUDA stream"
        );
        return;
    }
    // The CUDA runtime headers c10's stream header includes: beside a PyPI
    // torch (nvidia/cu13/include), or where SWITCHYARD_CUDA_INCLUDE says.
    let cuda_include = std::env::var_os("SWITCHYARD_CUDA_INCLUDE")
        .map(PathBuf::from)
        .or_else(|| find_cuda_include(&libtorch));
    let Some(cuda_include) = cuda_include else {
        println!(
            "cargo:warning=no CUDA runtime headers found (set SWITCHYARD_CUDA_INCLUDE); instances will share the default CUDA stream"
        );
        return;
    };
    compile_stream_shim(&libtorch, &cuda_include);
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=c10_cuda");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rustc-cfg=switchyard_cuda_streams");
}

// `cc` is a build dependency of the `torch` feature only.
#[cfg(feature = "torch")]
fn compile_stream_shim(libtorch: &Path, cuda_include: &Path) {
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    cc::Build::new()
        .cpp(true)
        .file("src/torch/cuda_streams.cpp")
        .include(libtorch.join("include"))
        .include(cuda_include)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .warnings(false)
        .compile("switchyard_cuda_streams");
}

#[cfg(not(feature = "torch"))]
fn compile_stream_shim(_libtorch: &Path, _cuda_include: &Path) {}

fn find_cuda_include(libtorch: &Path) -> Option<PathBuf> {
    let site_packages = libtorch.parent()?;
    ["nvidia/cu13/include", "nvidia/cuda_runtime/include"]
        .iter()
        .map(|rel| site_packages.join(rel))
        .find(|dir| dir.join("cuda_runtime_api.h").exists())
}
