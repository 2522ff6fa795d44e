//! Embeds the CUDA kernels: for each `kernels/NAME.cu`, the source (with `common.cuh` inlined,
//! for NVRTC at run time) and, when `cargo xtask kernels` has produced it, `kernels/ptx/NAME.ptx`.

use std::{env, fs, path::Path};

fn main() {
    let dir = Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap()).join("kernels");
    println!("cargo::rerun-if-changed={}", dir.display());
    println!("cargo::rerun-if-changed={}", dir.join("ptx").display());
    let common = fs::read_to_string(dir.join("common.cuh")).expect("kernels/common.cuh");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .expect("kernels/")
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "cu").then(|| p.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    names.sort();
    let out = Path::new(&env::var("OUT_DIR").unwrap()).to_path_buf();
    let mut code = String::from(
        "/// (module name, CUDA source with headers inlined, prebuilt PTX)\npub const KERNELS: &[(&str, &str, Option<&str>)] = &[\n",
    );
    for n in &names {
        let src = fs::read_to_string(dir.join(format!("{n}.cu"))).unwrap();
        let inlined = src.replace("#include \"common.cuh\"", &common.replace("#pragma once", ""));
        let src_path = out.join(format!("{n}.inlined.cu"));
        fs::write(&src_path, inlined).unwrap();
        let ptx = dir.join("ptx").join(format!("{n}.ptx"));
        println!("cargo::rerun-if-changed={}", ptx.display());
        let ptx_expr = if ptx.exists() {
            format!("Some(include_str!({:?}))", ptx.display().to_string())
        } else {
            "None".to_string()
        };
        code += &format!("    ({n:?}, include_str!({:?}), {ptx_expr}),\n", src_path.display().to_string());
    }
    code += "];\n";
    fs::write(out.join("kernels.rs"), code).unwrap();
}
