//! Provisions the ONNX Runtime shared library that `ort` loads at run time.
//!
//! `ORT_DYLIB_PATH` (set when building) names a library the user brings (e.g. from
//! `onnxruntime-gpu`) and skips the download. Otherwise the official CPU build is taken from the
//! PyPI wheel `onnxruntime==1.31.1` with the machine's `python3 -m pip` and cached next to the
//! build outputs. The chosen path is compiled in as `RISKPIPE_BUNDLED_ORT`; at run time
//! `ORT_DYLIB_PATH` still overrides it.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const VERSION: &str = "1.31.1";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=ORT_DYLIB_PATH");
    if let Ok(path) = env::var("ORT_DYLIB_PATH") {
        println!("cargo:rustc-env=RISKPIPE_BUNDLED_ORT={path}");
        return;
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // target/<profile>/build/<pkg>/out -> target/<profile>: one copy per profile, kept across
    // rebuilds of this crate.
    let cache = out_dir
        .ancestors()
        .nth(3)
        .unwrap_or(&out_dir)
        .join(format!("onnxruntime-{VERSION}"));
    let lib = cache.join(format!("libonnxruntime.so.{VERSION}"));
    if !lib.exists()
        && let Err(e) = provision(&cache, &lib)
    {
        panic!(
            "riskpipe could not provision ONNX Runtime {VERSION}: {e}\n\
             Either make `python3 -m pip` able to download the `onnxruntime=={VERSION}` wheel, \
             or build with ORT_DYLIB_PATH=/path/to/libonnxruntime.so (API 31 or newer)."
        );
    }
    println!("cargo:rustc-env=RISKPIPE_BUNDLED_ORT={}", lib.display());
}

fn provision(cache: &Path, lib: &Path) -> Result<(), String> {
    let wheels = cache.join("wheel");
    std::fs::create_dir_all(&wheels).map_err(|e| format!("creating {}: {e}", wheels.display()))?;
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
        ])
        .arg(format!("onnxruntime=={VERSION}"))
        .arg("-d")
        .arg(&wheels)
        .status()
        .map_err(|e| format!("running python3 -m pip: {e}"))?;
    if !status.success() {
        return Err(format!("pip download exited with {status}"));
    }
    // Unzip with Python's zipfile: no dependency on an unzip binary.
    let script = format!(
        "import glob, sys, zipfile\n\
         whl = glob.glob(sys.argv[1] + '/onnxruntime-{VERSION}-*.whl')[0]\n\
         with zipfile.ZipFile(whl) as z:\n\
         \x20   data = z.read('onnxruntime/capi/libonnxruntime.so.{VERSION}')\n\
         open(sys.argv[2] + '.part', 'wb').write(data)\n"
    );
    let status = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&wheels)
        .arg(lib)
        .status()
        .map_err(|e| format!("running python3: {e}"))?;
    if !status.success() {
        return Err(format!(
            "extracting the library from the wheel exited with {status}"
        ));
    }
    let part = PathBuf::from(format!("{}.part", lib.display()));
    std::fs::rename(&part, lib).map_err(|e| format!("renaming {}: {e}", part.display()))?;
    let _ = std::fs::remove_dir_all(&wheels);
    Ok(())
}
