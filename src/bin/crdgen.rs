//! Writes the CRDs generated from the Rust types to `crds/` and the chart's copy.
//! `crdgen --check` fails when the committed files differ from the generated ones.

use std::path::Path;

const OUTPUT_DIRS: &[&str] = &["crds", "charts/projectvm-operator/crds"];

fn main() {
    let check = std::env::args().any(|a| a == "--check");
    let mut stale = vec![];
    for dir in OUTPUT_DIRS {
        for (file, yaml) in projectvm::api::crd_yaml() {
            let path = Path::new(dir).join(file);
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current == yaml {
                continue;
            }
            if check {
                stale.push(path.display().to_string());
            } else {
                std::fs::create_dir_all(dir).expect("create output directory");
                std::fs::write(&path, yaml).expect("write CRD");
                println!("wrote {}", path.display());
            }
        }
    }
    if !stale.is_empty() {
        eprintln!(
            "generated CRDs differ from the committed ones: {}\nrun `cargo run --bin crdgen` and commit the result",
            stale.join(", ")
        );
        std::process::exit(1);
    }
}
