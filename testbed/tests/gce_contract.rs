//! Contract test: the emulator (backend `none`, in-process) driven through the official
//! `google-cloud-compute-v1` client exactly as the operator drives Compute Engine.

use std::time::{Duration, Instant};

use google_cloud_compute_v1::client::{Instances, ZoneOperations};
use google_cloud_compute_v1::model::{self, Instance, InstancesSetMachineTypeRequest, Metadata, Operation};
use google_cloud_gax::error::Error as GaxError;
use google_cloud_gax::error::rpc::StatusDetails;
use projectvm_testbed::gce::{BackendChoice, Config, RunningEmulator, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const P: &str = "pvm-test";
const Z: &str = "us-central1-a";

struct Bed {
    emu: RunningEmulator,
    instances: Instances,
    ops: ZoneOperations,
}

async fn bed() -> Bed {
    let mut cfg = Config::none_backend();
    cfg.backend = BackendChoice::None { boot_delay: Duration::from_millis(50) };
    cfg.operation_wait_timeout = Duration::from_secs(2);
    let emu = serve(cfg, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let creds = || google_cloud_auth::credentials::anonymous::Builder::new().build();
    let instances = Instances::builder().with_endpoint(emu.endpoint()).with_credentials(creds()).build().await.unwrap();
    let ops = ZoneOperations::builder().with_endpoint(emu.endpoint()).with_credentials(creds()).build().await.unwrap();
    Bed { emu, instances, ops }
}

/// A tiny HTTP/1.1 client for the admin API (no extra dependencies).
async fn admin(bed: &Bed, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let mut s = tokio::net::TcpStream::connect(bed.emu.addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        bed.emu.addr,
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let code: u16 = text[9..12].parse().unwrap();
    let (_, rest) = text.split_once("\r\n\r\n").unwrap();
    // chunked or not: take the JSON object in the body
    let start = rest.find('{').unwrap_or(0);
    let end = rest.rfind('}').map(|e| e + 1).unwrap_or(rest.len());
    let v = serde_json::from_str(&rest[start..end]).unwrap_or(serde_json::Value::Null);
    (code, v)
}

fn instance(name: &str, ns: &str) -> Instance {
    Instance::new()
        .set_name(name)
        .set_machine_type(format!("zones/{Z}/machineTypes/e2-medium"))
        .set_labels([("managed-by", "projectvm"), ("projectvm-namespace", ns), ("projectvm-name", name)])
        .set_metadata(Metadata::new().set_items([
            model::metadata::Items::new().set_key("enable-guest-attributes").set_value("TRUE"),
            model::metadata::Items::new().set_key("ssh-keys").set_value(
                "projectvm:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBcJ8oFvVY6kgkQ7b7D0t1n9hN0w0Yl0G3j2Zl3mQw8x projectvm",
            ),
        ]))
        .set_disks([model::AttachedDisk::new().set_boot(true).set_auto_delete(true).set_initialize_params(
            model::AttachedDiskInitializeParams::new()
                .set_disk_size_gb(50)
                .set_source_image("projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts"),
        )])
        .set_network_interfaces([model::NetworkInterface::new()
            .set_network("global/networks/default")
            .set_access_configs([model::AccessConfig::new()
                .set_name("External NAT")
                .set_type(model::access_config::Type::OneToOneNat)])])
}

/// Poll `zoneOperations.get` until DONE, as the operator does.
async fn poll_done(bed: &Bed, op: &Operation) -> Operation {
    let name = op.name.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cur = bed.ops.get().set_project(P).set_zone(Z).set_operation(&name).send().await.unwrap();
        if cur.status == Some(model::operation::Status::Done) {
            return cur;
        }
        assert!(Instant::now() < deadline, "operation {name} not DONE in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn reason(e: &GaxError) -> Option<String> {
    e.status()?.details.iter().find_map(|d| match d {
        StatusDetails::ErrorInfo(i) => Some(i.reason.clone()),
        _ => None,
    })
}

async fn get(bed: &Bed, name: &str) -> Result<Instance, GaxError> {
    bed.instances.get().set_project(P).set_zone(Z).set_instance(name).send().await
}

#[tokio::test]
async fn lifecycle_through_the_official_client() {
    let bed = bed().await;

    // insert → operation → DONE
    let op = bed
        .instances
        .insert()
        .set_project(P)
        .set_zone(Z)
        .set_body(instance("pvm-alpha", "team-a"))
        .send()
        .await
        .unwrap();
    assert_eq!(op.operation_type.as_deref(), Some("insert"));
    assert!(op.name.as_deref().unwrap().starts_with("operation-"));
    assert!(op.id.is_some() && op.target_id.is_some());
    assert_eq!(
        op.target_link.as_deref(),
        Some("https://www.googleapis.com/compute/v1/projects/pvm-test/zones/us-central1-a/instances/pvm-alpha")
    );
    let done = poll_done(&bed, &op).await;
    assert!(done.error.is_none(), "{done:?}");
    assert_eq!(done.progress, Some(100));
    assert!(done.end_time.is_some() && done.start_time.is_some());

    // get
    let inst = get(&bed, "pvm-alpha").await.unwrap();
    assert_eq!(inst.status, Some(model::instance::Status::Running));
    assert_eq!(inst.id, op.target_id);
    assert!(inst.machine_type.as_deref().unwrap().ends_with("/machineTypes/e2-medium"));
    assert_eq!(
        inst.zone.as_deref(),
        Some("https://www.googleapis.com/compute/v1/projects/pvm-test/zones/us-central1-a")
    );
    assert_eq!(inst.labels.get("managed-by").map(String::as_str), Some("projectvm"));
    let nic = &inst.network_interfaces[0];
    let ip = nic.network_ip.clone().unwrap();
    assert_eq!(nic.access_configs[0].nat_ip.as_deref(), Some(ip.as_str()));
    assert_eq!(inst.disks[0].disk_size_gb, Some(50));
    assert!(inst.disks[0].boot.unwrap_or(false));
    assert!(inst.last_start_timestamp.is_some() && inst.creation_timestamp.is_some());
    let fp1 = inst.metadata.as_ref().unwrap().fingerprint.clone().unwrap();

    // a second instance in another namespace, then list with a label filter
    let op2 = bed
        .instances
        .insert()
        .set_project(P)
        .set_zone(Z)
        .set_body(instance("pvm-beta", "team-b"))
        .send()
        .await
        .unwrap();
    poll_done(&bed, &op2).await;
    let all = bed
        .instances
        .list()
        .set_project(P)
        .set_zone(Z)
        .set_filter(r#"labels.managed-by = "projectvm""#)
        .send()
        .await
        .unwrap();
    assert_eq!(all.items.len(), 2);
    let team_a = bed
        .instances
        .list()
        .set_project(P)
        .set_zone(Z)
        .set_filter(r#"(labels.managed-by = "projectvm") AND (labels.projectvm-namespace = "team-a")"#)
        .send()
        .await
        .unwrap();
    assert_eq!(team_a.items.len(), 1);
    assert_eq!(team_a.items[0].name.as_deref(), Some("pvm-alpha"));
    let bare = bed
        .instances
        .list()
        .set_project(P)
        .set_zone(Z)
        .set_filter("labels.projectvm-namespace=team-b")
        .send()
        .await
        .unwrap();
    assert_eq!(bare.items.len(), 1);
    // paging
    let page1 = bed.instances.list().set_project(P).set_zone(Z).set_max_results(1_u32).send().await.unwrap();
    assert_eq!(page1.items.len(), 1);
    let token = page1.next_page_token.clone().expect("a next page");
    let page2 = bed
        .instances
        .list()
        .set_project(P)
        .set_zone(Z)
        .set_max_results(1_u32)
        .set_page_token(token)
        .send()
        .await
        .unwrap();
    assert_eq!(page2.items.len(), 1);
    assert_ne!(page1.items[0].name, page2.items[0].name);
    assert!(page2.next_page_token.as_deref().unwrap_or("").is_empty());

    // aggregatedList
    let agg = bed
        .instances
        .aggregated_list()
        .set_project(P)
        .set_filter(r#"labels.managed-by = "projectvm""#)
        .send()
        .await
        .unwrap();
    let scoped = agg.items.get("zones/us-central1-a").expect("zone scope");
    assert_eq!(scoped.instances.len(), 2);

    // setMetadata with the current fingerprint; a stale one gets 412 conditionNotMet
    let new_items = [
        model::metadata::Items::new().set_key("enable-guest-attributes").set_value("TRUE"),
        model::metadata::Items::new().set_key("ssh-keys").set_value(
            "projectvm:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBcJ8oFvVY6kgkQ7b7D0t1n9hN0w0Yl0G3j2Zl3mQw8y rotated",
        ),
    ];
    let op = bed
        .instances
        .set_metadata()
        .set_project(P)
        .set_zone(Z)
        .set_instance("pvm-alpha")
        .set_body(Metadata::new().set_fingerprint(fp1.clone()).set_items(new_items.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(op.operation_type.as_deref(), Some("setMetadata"));
    poll_done(&bed, &op).await;
    let inst = get(&bed, "pvm-alpha").await.unwrap();
    let md = inst.metadata.unwrap();
    assert_ne!(md.fingerprint.clone().unwrap(), fp1, "fingerprint changes");
    assert!(md.items.iter().any(|i| i.value.as_deref().unwrap_or("").ends_with("rotated")));
    let stale = bed
        .instances
        .set_metadata()
        .set_project(P)
        .set_zone(Z)
        .set_instance("pvm-alpha")
        .set_body(Metadata::new().set_fingerprint(fp1).set_items(new_items))
        .send()
        .await
        .unwrap_err();
    assert_eq!(stale.http_status_code(), Some(412), "{stale:?}");
    assert_eq!(reason(&stale).as_deref(), Some("conditionNotMet"));

    // getGuestAttributes: the published host key
    let ga = bed
        .instances
        .get_guest_attributes()
        .set_project(P)
        .set_zone(Z)
        .set_instance("pvm-alpha")
        .set_query_path("hostkeys/")
        .send()
        .await
        .unwrap();
    let items = ga.query_value.unwrap().items;
    let ed = items.iter().find(|e| e.key.as_deref() == Some("ssh-ed25519")).expect("ed25519 host key");
    assert_eq!(ed.namespace.as_deref(), Some("hostkeys"));
    assert!(ed.value.as_deref().unwrap().starts_with("AAAAC3NzaC1lZDI1NTE5"));

    // setMachineType while RUNNING is refused
    let busy = bed
        .instances
        .set_machine_type()
        .set_project(P)
        .set_zone(Z)
        .set_instance("pvm-alpha")
        .set_body(
            InstancesSetMachineTypeRequest::new().set_machine_type(format!("zones/{Z}/machineTypes/e2-standard-4")),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(busy.http_status_code(), Some(400));

    // stop → TERMINATED
    let op = bed.instances.stop().set_project(P).set_zone(Z).set_instance("pvm-alpha").send().await.unwrap();
    let done = bed.ops.wait().set_project(P).set_zone(Z).set_operation(op.name.clone().unwrap()).send().await.unwrap();
    assert_eq!(done.status, Some(model::operation::Status::Done));
    let inst = get(&bed, "pvm-alpha").await.unwrap();
    assert_eq!(inst.status, Some(model::instance::Status::Terminated));
    assert!(inst.last_stop_timestamp.is_some());
    // guest attributes are gone while stopped
    let gone = bed
        .instances
        .get_guest_attributes()
        .set_project(P)
        .set_zone(Z)
        .set_instance("pvm-alpha")
        .set_query_path("hostkeys/")
        .send()
        .await
        .unwrap_err();
    assert_eq!(gone.http_status_code(), Some(404));

    // setMachineType while TERMINATED
    let op = bed
        .instances
        .set_machine_type()
        .set_project(P)
        .set_zone(Z)
        .set_instance("pvm-alpha")
        .set_body(
            InstancesSetMachineTypeRequest::new().set_machine_type(format!("zones/{Z}/machineTypes/e2-standard-4")),
        )
        .send()
        .await
        .unwrap();
    poll_done(&bed, &op).await;
    let inst = get(&bed, "pvm-alpha").await.unwrap();
    assert!(inst.machine_type.unwrap().ends_with("/e2-standard-4"));

    // start → RUNNING, same host key as before
    let op = bed.instances.start().set_project(P).set_zone(Z).set_instance("pvm-alpha").send().await.unwrap();
    poll_done(&bed, &op).await;
    let inst = get(&bed, "pvm-alpha").await.unwrap();
    assert_eq!(inst.status, Some(model::instance::Status::Running));
    let ga = bed
        .instances
        .get_guest_attributes()
        .set_project(P)
        .set_zone(Z)
        .set_instance("pvm-alpha")
        .set_query_path("hostkeys/")
        .send()
        .await
        .unwrap();
    assert_eq!(ga.query_value.unwrap().items[0].value.as_deref(), ed.value.as_deref());

    // duplicate insert → 409 alreadyExists
    let dup = bed
        .instances
        .insert()
        .set_project(P)
        .set_zone(Z)
        .set_body(instance("pvm-alpha", "team-a"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(dup.http_status_code(), Some(409));
    assert_eq!(reason(&dup).as_deref(), Some("alreadyExists"));

    // delete → get 404 notFound
    for name in ["pvm-alpha", "pvm-beta"] {
        let op = bed.instances.delete().set_project(P).set_zone(Z).set_instance(name).send().await.unwrap();
        assert_eq!(op.operation_type.as_deref(), Some("delete"));
        poll_done(&bed, &op).await;
    }
    let e = get(&bed, "pvm-alpha").await.unwrap_err();
    assert_eq!(e.http_status_code(), Some(404), "{e:?}");
    assert_eq!(reason(&e).as_deref(), Some("notFound"));
    let st = e.status().unwrap();
    assert_eq!(st.message, "The resource 'projects/pvm-test/zones/us-central1-a/instances/pvm-alpha' was not found");

    // nothing leaked
    let (code, v) = admin(&bed, "GET", "/emulator/v1/instances", "").await;
    assert_eq!(code, 200);
    assert_eq!(v["instances"].as_array().unwrap().len(), 0, "{v}");
    bed.emu.stop(true).await;
}

#[tokio::test]
async fn deletion_protection() {
    let bed = bed().await;
    let op = bed
        .instances
        .insert()
        .set_project(P)
        .set_zone(Z)
        .set_body(instance("pvm-keep", "team-a").set_deletion_protection(true))
        .send()
        .await
        .unwrap();
    poll_done(&bed, &op).await;
    assert_eq!(get(&bed, "pvm-keep").await.unwrap().deletion_protection, Some(true));
    let e = bed.instances.delete().set_project(P).set_zone(Z).set_instance("pvm-keep").send().await.unwrap_err();
    assert_eq!(e.http_status_code(), Some(400));
    assert_eq!(reason(&e).as_deref(), Some("invalidResourceUsage"));
    assert!(get(&bed, "pvm-keep").await.is_ok());
    bed.emu.stop(true).await;
}

#[tokio::test]
async fn faults_quota_zone_errors_and_stuck_operations() {
    let bed = bed().await;

    // quota: the next insert's operation fails with QUOTA_EXCEEDED, no instance is made
    let (code, _) =
        admin(&bed, "PUT", "/emulator/v1/faults/quota", r#"{"metric":"CPUS","limit":8.0,"remaining":1}"#).await;
    assert_eq!(code, 200);
    let op = bed
        .instances
        .insert()
        .set_project(P)
        .set_zone(Z)
        .set_body(instance("pvm-quota", "team-a"))
        .send()
        .await
        .unwrap();
    let done = poll_done(&bed, &op).await;
    let err = done.error.as_ref().expect("operation error");
    assert_eq!(err.errors[0].code.as_deref(), Some("QUOTA_EXCEEDED"));
    assert_eq!(err.errors[0].message.as_deref(), Some("Quota 'CPUS' exceeded.  Limit: 8.0 in region us-central1."));
    assert_eq!(done.http_error_status_code, Some(403));
    assert_eq!(get(&bed, "pvm-quota").await.unwrap_err().http_status_code(), Some(404));

    // zone exhausted
    admin(&bed, "PUT", "/emulator/v1/faults/zones/us-central1-a/exhausted", "").await;
    let op = bed
        .instances
        .insert()
        .set_project(P)
        .set_zone(Z)
        .set_body(instance("pvm-zone", "team-a"))
        .send()
        .await
        .unwrap();
    let done = poll_done(&bed, &op).await;
    let e = &done.error.as_ref().unwrap().errors[0];
    assert_eq!(e.code.as_deref(), Some("ZONE_RESOURCE_POOL_EXHAUSTED"));
    assert!(e.message.as_deref().unwrap().contains("projects/pvm-test/zones/us-central1-a"));
    admin(&bed, "DELETE", "/emulator/v1/faults/zones/us-central1-a/exhausted", "").await;

    // 403 forbidden on insert
    admin(
        &bed,
        "PUT",
        "/emulator/v1/faults/methods/instances.insert",
        r#"{"errorRate":1.0,"errorCode":403,"remaining":1}"#,
    )
    .await;
    let e = bed
        .instances
        .insert()
        .set_project(P)
        .set_zone(Z)
        .set_body(instance("pvm-denied", "team-a"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.http_status_code(), Some(403));
    assert_eq!(reason(&e).as_deref(), Some("forbidden"));
    assert_eq!(
        e.status().unwrap().message,
        "Required 'compute.instances.create' permission for 'projects/pvm-test/zones/us-central1-a/instances/pvm-denied'"
    );

    // 503 on a POST is not retried by the client: the caller sees it
    admin(
        &bed,
        "PUT",
        "/emulator/v1/faults/methods/instances.insert",
        r#"{"errorRate":1.0,"errorCode":503,"remaining":1}"#,
    )
    .await;
    let e = bed
        .instances
        .insert()
        .set_project(P)
        .set_zone(Z)
        .set_body(instance("pvm-ok", "team-a"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.http_status_code(), Some(503));
    assert_eq!(reason(&e).as_deref(), Some("backendError"));
    // the next call goes through
    let op =
        bed.instances.insert().set_project(P).set_zone(Z).set_body(instance("pvm-ok", "team-a")).send().await.unwrap();
    poll_done(&bed, &op).await;

    // 503 on GETs: the client retries them by itself (AIP-194) and succeeds
    admin(
        &bed,
        "PUT",
        "/emulator/v1/faults/methods/instances.get",
        r#"{"errorRate":1.0,"errorCode":503,"remaining":2}"#,
    )
    .await;
    let t0 = Instant::now();
    let inst = get(&bed, "pvm-ok").await.unwrap();
    assert_eq!(inst.status, Some(model::instance::Status::Running));
    eprintln!("GET succeeded after 2 injected 503s in {:?}", t0.elapsed());
    let (_, f) = admin(&bed, "GET", "/emulator/v1/faults", "").await;
    assert_eq!(f["methods"]["instances.get"]["remaining"], 0);

    // 429 rateLimitExceeded on list is not retried
    admin(
        &bed,
        "PUT",
        "/emulator/v1/faults/methods/instances.list",
        r#"{"errorRate":1.0,"errorCode":429,"remaining":1}"#,
    )
    .await;
    let e = bed.instances.list().set_project(P).set_zone(Z).send().await.unwrap_err();
    assert_eq!(e.http_status_code(), Some(429));
    assert_eq!(reason(&e).as_deref(), Some("rateLimitExceeded"));

    // a stuck operation stays RUNNING (wait returns it unfinished), until released
    admin(&bed, "PUT", "/emulator/v1/faults/stuck", r#"{"operationTypes":["stop"],"remaining":1}"#).await;
    let op = bed.instances.stop().set_project(P).set_zone(Z).set_instance("pvm-ok").send().await.unwrap();
    let name = op.name.clone().unwrap();
    let waited = bed.ops.wait().set_project(P).set_zone(Z).set_operation(&name).send().await.unwrap();
    assert_eq!(waited.status, Some(model::operation::Status::Running));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = bed.ops.get().set_project(P).set_zone(Z).set_operation(&name).send().await.unwrap();
    assert_eq!(again.status, Some(model::operation::Status::Running));
    assert_eq!(get(&bed, "pvm-ok").await.unwrap().status, Some(model::instance::Status::Running));
    let (code, _) = admin(&bed, "POST", "/emulator/v1/operations/unstick", "").await;
    assert_eq!(code, 200);
    let done = poll_done(&bed, &op).await;
    assert!(done.error.is_none());
    assert_eq!(get(&bed, "pvm-ok").await.unwrap().status, Some(model::instance::Status::Terminated));

    // unknown operation → 404
    let e = bed.ops.get().set_project(P).set_zone(Z).set_operation("operation-nope").send().await.unwrap_err();
    assert_eq!(e.http_status_code(), Some(404));

    // reset clears faults and deletes everything
    let (code, _) = admin(&bed, "POST", "/emulator/v1/reset", r#"{"instances":true}"#).await;
    assert_eq!(code, 200);
    let (_, v) = admin(&bed, "GET", "/emulator/v1/instances", "").await;
    assert_eq!(v["instances"].as_array().unwrap().len(), 0);
    let (_, f) = admin(&bed, "GET", "/emulator/v1/faults", "").await;
    assert_eq!(f["methods"], serde_json::json!({}));
    bed.emu.stop(true).await;
}

#[tokio::test]
async fn invalid_requests_get_google_errors() {
    let bed = bed().await;
    let e =
        bed.instances.insert().set_project(P).set_zone(Z).set_body(instance("Bad_Name", "x")).send().await.unwrap_err();
    assert_eq!(e.http_status_code(), Some(400));
    assert_eq!(reason(&e).as_deref(), Some("invalid"));
    let e = bed
        .instances
        .list()
        .set_project(P)
        .set_zone(Z)
        .set_filter("labels.a = b OR labels.c = d")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.http_status_code(), Some(400));
    let e = bed.instances.start().set_project(P).set_zone(Z).set_instance("missing").send().await.unwrap_err();
    assert_eq!(e.http_status_code(), Some(404));
    bed.emu.stop(true).await;
}

#[tokio::test]
async fn request_counters_per_method_and_instance() {
    let bed = bed().await;
    let (code, v) = admin(&bed, "GET", "/emulator/v1/requests", "").await;
    assert_eq!(code, 200);
    assert_eq!(v, serde_json::json!({}));

    let op =
        bed.instances.insert().set_project(P).set_zone(Z).set_body(instance("pvm-count", "c")).send().await.unwrap();
    poll_done(&bed, &op).await;
    get(&bed, "pvm-count").await.unwrap();
    get(&bed, "pvm-count").await.unwrap();
    get(&bed, "missing").await.unwrap_err();
    bed.instances.list().set_project(P).set_zone(Z).send().await.unwrap();

    let (_, v) = admin(&bed, "GET", "/emulator/v1/requests", "").await;
    assert_eq!(v["instances.insert"], 1);
    assert_eq!(v["instances.get"], 3, "failed calls count too: {v}");
    assert_eq!(v["instances.list"], 1);
    let polls = v["zoneOperations.get"].as_u64().unwrap();
    assert!(polls >= 1, "{v}");

    let (code, per) = admin(&bed, "GET", "/emulator/v1/requests/instances", "").await;
    assert_eq!(code, 200);
    let mine = &per[format!("{P}/{Z}/pvm-count")];
    assert_eq!(mine["instances.insert"], 1);
    assert_eq!(mine["instances.get"], 2);
    assert_eq!(mine["zoneOperations.get"], polls, "operation polls count for their target: {per}");
    assert_eq!(per[format!("{P}/{Z}/missing")]["instances.get"], 1);

    let (code, _) = admin(&bed, "DELETE", "/emulator/v1/requests", "").await;
    assert_eq!(code, 200);
    let (_, v) = admin(&bed, "GET", "/emulator/v1/requests", "").await;
    assert_eq!(v, serde_json::json!({}));
    bed.emu.stop(true).await;
}

#[tokio::test]
async fn booting_knob_holds_matching_machines_until_cleared() {
    let bed = bed().await;
    for n in ["ws-held-1", "ws-held-2", "other"] {
        let op = bed.instances.insert().set_project(P).set_zone(Z).set_body(instance(n, "b")).send().await.unwrap();
        poll_done(&bed, &op).await;
    }
    let held = |v: &serde_json::Value| -> Vec<String> {
        let mut h: Vec<String> = v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["machine"]["bootingHeld"] == true)
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect();
        h.sort();
        h
    };
    let (code, f) = admin(&bed, "PUT", "/emulator/v1/faults/booting", r#"{"instances":["ws-held-"]}"#).await;
    assert_eq!(code, 200);
    assert_eq!(f["booting"], serde_json::json!({"instances": ["ws-held-"]}));
    let (_, v) = admin(&bed, "GET", "/emulator/v1/instances", "").await;
    assert_eq!(held(&v), ["ws-held-1", "ws-held-2"], "a prefix matches, others are not held");
    // still RUNNING as far as the Compute API goes
    assert_eq!(get(&bed, "ws-held-1").await.unwrap().status, Some(model::instance::Status::Running));

    // a boot while the knob is set is held too
    let op = bed.instances.stop().set_project(P).set_zone(Z).set_instance("ws-held-1").send().await.unwrap();
    poll_done(&bed, &op).await;
    let op = bed.instances.start().set_project(P).set_zone(Z).set_instance("ws-held-1").send().await.unwrap();
    poll_done(&bed, &op).await;
    let (_, v) = admin(&bed, "GET", "/emulator/v1/instances", "").await;
    assert_eq!(held(&v), ["ws-held-1", "ws-held-2"]);

    let (code, f) = admin(&bed, "DELETE", "/emulator/v1/faults/booting", "").await;
    assert_eq!(code, 200);
    assert!(f["booting"].is_null(), "{f}");
    let (_, v) = admin(&bed, "GET", "/emulator/v1/instances", "").await;
    assert!(held(&v).is_empty(), "{v}");

    // empty list = all; the reset clears it like every knob
    admin(&bed, "PUT", "/emulator/v1/faults/booting", "").await;
    let (_, v) = admin(&bed, "GET", "/emulator/v1/instances", "").await;
    assert_eq!(held(&v).len(), 3);
    admin(&bed, "POST", "/emulator/v1/reset", "").await;
    let (_, v) = admin(&bed, "GET", "/emulator/v1/instances", "").await;
    assert!(held(&v).is_empty(), "{v}");
    bed.emu.stop(true).await;
}
