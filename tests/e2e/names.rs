//! Any name the API server accepts works: the objects derived from it (Secrets, Service,
//! EndpointSlice, label values) get valid names, listed in `status.objects`.

use crate::bed::{Bed, READY_TIMEOUT, bed, operator_shared};

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn long_and_dotted_names_reach_ready() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-names");
    let long63 = format!("w{}", "x".repeat(62));
    let dotted = "1st.dotted".to_string();
    let long202 = format!("p{}", "y".repeat(201));
    // At the limit of 253, events need names the API server generates.
    let long250 = format!("q{}", "z".repeat(249));
    for name in [&long63, &dotted] {
        b.apply(
            &ns,
            &format!(
                "apiVersion: projectvm.dev/v1alpha1\nkind: Workspace\nmetadata:\n  name: {name}\nspec:\n  size: small\n  repository:\n    url: https://git.pvm.test/public/demo.git\n"
            ),
        );
    }
    b.apply(
        &ns,
        &format!(
            "apiVersion: projectvm.dev/v1alpha1\nkind: ProjectVM\nmetadata:\n  name: {long202}\nspec:\n  size: small\n  repository:\n    url: https://git.pvm.test/public/demo.git\n"
        ),
    );
    b.apply(
        &ns,
        &format!(
            "apiVersion: projectvm.dev/v1alpha1\nkind: ProjectVM\nmetadata:\n  name: {long250}\nspec:\n  size: small\n  runStrategy: Halted\n  repository:\n    url: https://git.pvm.test/public/demo.git\n"
        ),
    );
    for name in [&long63, &dotted] {
        b.wait_condition(&ns, "ws", name, "Ready", READY_TIMEOUT);
        let o = b.get(&ns, "ws", name);
        let objects = &o["status"]["objects"];
        let service = objects["service"].as_str().expect("service name in status");
        assert!(service.len() <= 63, "{service}");
        // The objects exist under the names status gives.
        b.kubectl(&["-n", &ns, "get", "service", service]);
        b.kubectl(&["-n", &ns, "get", "endpointslice", objects["endpointSlice"].as_str().unwrap()]);
        b.kubectl(&["-n", &ns, "get", "secret", objects["sshKeySecret"].as_str().unwrap()]);
        b.kubectl(&["-n", &ns, "get", "secret", objects["passwordSecret"].as_str().unwrap()]);
        assert_eq!(Bed::condition(&o, "Routed").unwrap()["status"], "True");
        assert!(o["status"]["url"].as_str().is_some_and(|u| u.starts_with("http://")), "{o}");
    }
    b.wait_condition(&ns, "pvm", &long202, "Ready", READY_TIMEOUT);
    let o = b.get(&ns, "pvm", &long202);
    let secret = o["status"]["objects"]["sshKeySecret"].as_str().expect("ssh key secret in status");
    let labels = b.kubectl(&["-n", &ns, "get", "secret", secret, "-o", "jsonpath={.metadata.labels}"]);
    assert!(labels.contains("projectvm.dev/projectvm"), "{labels}");
    // Events about a resource whose name is 250 characters long reach it too.
    b.eventually("an event about the 250-character ProjectVM", READY_TIMEOUT, || {
        let names = b.kubectl(&[
            "-n",
            &ns,
            "get",
            "events",
            "-o",
            "jsonpath={range .items[*]}{.involvedObject.name}{\"\\n\"}{end}",
        ]);
        names.lines().any(|n| n == long250).then_some(())
    });
    b.delete_namespace(&ns);
}
