//! Writes the CRDs generated from the Rust types to `crds/` and the chart's copy
//! (`charts/projectvm-operator/files/crds/`, rendered by the chart's templates/crds.yaml so
//! that `helm upgrade` upgrades them).
//! `crdgen --check` fails when a committed file differs from the generated one, when either
//! directory holds a CRD the code no longer generates, or when the chart has a `crds/`
//! directory again (Helm would install those copies once and never upgrade them).

use std::path::Path;

const OUTPUT_DIRS: &[&str] = &["crds", "charts/projectvm-operator/files/crds"];

/// Helm's install-only CRD directory, which this chart must not have.
const HELM_CRDS_DIR: &str = "charts/projectvm-operator/crds";

fn main() {
    let check = std::env::args().any(|a| a == "--check");
    let generated = projectvm::api::crd_yaml();
    let mut stale = vec![];
    for dir in OUTPUT_DIRS {
        for (file, yaml) in &generated {
            let path = Path::new(dir).join(file);
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if &current == yaml {
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
        // A file left from a kind that is gone would still be installed by the chart.
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.ends_with(".yaml") && !generated.iter().any(|(f, _)| *f == name) {
                let path = entry.path();
                if check {
                    stale.push(format!("{} (not generated)", path.display()));
                } else {
                    std::fs::remove_file(&path).expect("remove CRD no longer generated");
                    println!("removed {}", path.display());
                }
            }
        }
    }
    if Path::new(HELM_CRDS_DIR).exists() {
        stale.push(format!("{HELM_CRDS_DIR}/ (Helm never upgrades it: the chart's CRDs live in files/crds/)"));
    }
    if !stale.is_empty() {
        eprintln!(
            "generated CRDs differ from the committed ones: {}\nrun `cargo run --bin crdgen` and commit the result",
            stale.join(", ")
        );
        std::process::exit(1);
    }
}
