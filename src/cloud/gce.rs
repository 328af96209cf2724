//! [`Compute`] on the official `google-cloud-compute-v1` client. Endpoint and credentials
//! are configurable, so the same code talks to Compute Engine or to an emulator.

use std::collections::BTreeMap;
use std::time::Duration;

use google_cloud_compute_v1::client::{Instances, ZoneOperations};
use google_cloud_compute_v1::model::{
    self, AccessConfig, AttachedDisk, AttachedDiskInitializeParams, Instance, InstancesSetLabelsRequest,
    InstancesSetMachineTypeRequest, Metadata, NetworkInterface, Operation, ServiceAccount, Tags,
};
use google_cloud_gax::retry_policy::NeverRetry;
use std::sync::Arc;

use super::metrics::ComputeRequests;
use super::ratelimit::RateLimiter;

use super::error::{CloudError, CloudErrorKind, classify_operation, classify_operation_codes, redact};
use super::{
    CloudInstance, Compute, GuestAttribute, InstanceRequest, InstanceState, OperationRef, OperationState, short_name,
};

/// How the client authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialsMode {
    /// Application Default Credentials: Workload Identity, the metadata server, or a key
    /// file named by `GOOGLE_APPLICATION_CREDENTIALS`.
    Default,
    /// No credentials, for emulators.
    Anonymous,
}

/// Compute Engine through the official client.
pub struct GceCompute {
    project: String,
    instances: Instances,
    operations: ZoneOperations,
    page_size: u32,
    /// The project's token bucket; `None` sends without limit (tests).
    limiter: Option<Arc<RateLimiter>>,
    requests: Option<ComputeRequests>,
}

impl GceCompute {
    pub async fn new(project: &str, endpoint: Option<&str>, credentials: CredentialsMode) -> anyhow::Result<Self> {
        // The controller has its own capped backoff; the client should not retry on its own,
        // and no single attempt may hold a worker for long.
        let mut ib = Instances::builder().with_retry_policy(NeverRetry).with_attempt_timeout(ATTEMPT_TIMEOUT);
        let mut ob = ZoneOperations::builder().with_retry_policy(NeverRetry).with_attempt_timeout(ATTEMPT_TIMEOUT);
        if let Some(e) = endpoint {
            ib = ib.with_endpoint(e);
            ob = ob.with_endpoint(e);
        }
        if credentials == CredentialsMode::Anonymous {
            ib = ib.with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build());
            ob = ob.with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build());
        }
        Ok(Self {
            project: project.to_string(),
            instances: ib.build().await?,
            operations: ob.build().await?,
            page_size: 500,
            limiter: None,
            requests: None,
        })
    }

    /// Sends every request through this project's token bucket, and slows it down when
    /// Compute Engine answers rateLimitExceeded.
    pub fn with_rate_limit(mut self, limiter: Arc<RateLimiter>) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Counts every request in `projectvm_compute_requests_total`.
    pub fn with_request_metrics(mut self, requests: ComputeRequests) -> Self {
        self.requests = Some(requests);
        self
    }

    /// One request: a token first, then the call (bounded), then its count.
    async fn call<T>(
        &self,
        method: &'static str,
        f: impl std::future::Future<Output = Result<T, google_cloud_gax::error::Error>>,
    ) -> Result<T, CloudError> {
        if let Some(l) = &self.limiter {
            let admitted = l.acquire().await;
            if let Some(m) = &self.requests {
                m.set_rate(l.rate());
            }
            if let Err(t) = admitted {
                self.observe(method, "throttled");
                return Err(CloudError {
                    kind: CloudErrorKind::RateLimited,
                    message: format!(
                        "Compute Engine request {method} not sent: the operator's own rate limit ({:.1} requests/s now, \
                         --compute-qps {:.1}) would have held it for {}s",
                        t.rate,
                        l.full_rate(),
                        t.wait.as_secs()
                    ),
                    http_status: None,
                    reason: Some("clientRateLimitExceeded".into()),
                });
            }
        }
        let r = timed(f).await;
        let code = match &r {
            Ok(_) => "200".to_string(),
            Err(e) => e.http_status.map(|s| s.to_string()).unwrap_or_else(|| "error".into()),
        };
        self.observe(method, &code);
        if let (Err(e), Some(l)) = (&r, &self.limiter)
            && project_over_rate(e)
        {
            l.slow_down();
            if let Some(m) = &self.requests {
                m.set_rate(l.rate());
            }
        }
        r
    }

    fn observe(&self, method: &str, code: &str) {
        if let Some(m) = &self.requests {
            m.observe(method, code);
        }
    }

    /// Page size for `instances.list` (default 500, Compute Engine's maximum).
    pub fn with_list_page_size(mut self, n: u32) -> Self {
        self.page_size = n.clamp(1, 500);
        self
    }
}

/// Compute Engine refused a request because the project is over its API rate (not one
/// resource's operation rate, which slowing every call down would not help).
pub fn project_over_rate(e: &CloudError) -> bool {
    e.kind == CloudErrorKind::RateLimited
        && e.http_status.is_some()
        && e.reason.as_deref() != Some("RESOURCE_OPERATION_RATE_EXCEEDED")
}

/// The client's own per-request timeout.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// A backstop around each call (also covers fetching an access token).
const TIMEOUT: Duration = Duration::from_secs(35);

fn op_ref(op: Operation, zone: &str) -> Result<OperationRef, CloudError> {
    let name = op
        .name
        .ok_or_else(|| CloudError::new(CloudErrorKind::Other, "Compute Engine returned an operation without a name"))?;
    Ok(OperationRef { name, zone: op.zone.as_deref().map(short_name).unwrap_or_else(|| zone.to_string()) })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

fn state(s: Option<&model::instance::Status>) -> InstanceState {
    use model::instance::Status as S;
    match s {
        Some(S::Provisioning) | Some(S::Pending) => InstanceState::Provisioning,
        Some(S::Staging) => InstanceState::Staging,
        Some(S::Running) => InstanceState::Running,
        Some(S::Stopping) | Some(S::PendingStop) => InstanceState::Stopping,
        Some(S::Suspending) => InstanceState::Suspending,
        Some(S::Suspended) => InstanceState::Suspended,
        Some(S::Repairing) => InstanceState::Repairing,
        Some(S::Terminated) | Some(S::Stopped) => InstanceState::Terminated,
        Some(other) => InstanceState::Other(other.name().unwrap_or("UNKNOWN").to_string()),
        None => InstanceState::Other("UNKNOWN".into()),
    }
}

/// Maps the client's instance to the operator's view.
pub fn to_cloud_instance(i: Instance) -> CloudInstance {
    let nic = i.network_interfaces.first();
    let metadata = i.metadata.as_ref();
    CloudInstance {
        name: i.name.clone().unwrap_or_default(),
        id: i.id.map(|v| v.to_string()).unwrap_or_default(),
        zone: i.zone.as_deref().map(short_name).unwrap_or_default(),
        machine_type: i.machine_type.as_deref().map(short_name).unwrap_or_default(),
        state: state(i.status.as_ref()),
        labels: i.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        label_fingerprint: i.label_fingerprint.as_ref().map(|f| hex(f)),
        metadata_fingerprint: metadata.and_then(|m| m.fingerprint.as_ref()).map(|f| hex(f)),
        metadata: metadata
            .map(|m| {
                m.items.iter().filter_map(|it| Some((it.key.clone()?, it.value.clone().unwrap_or_default()))).collect()
            })
            .unwrap_or_default(),
        internal_ip: nic.and_then(|n| n.network_ip.clone()),
        external_ip: nic.and_then(|n| n.access_configs.iter().find_map(|a| a.nat_ip.clone())),
        deletion_protection: i.deletion_protection.unwrap_or(false),
        created_at: i.creation_timestamp.clone(),
        last_start_at: i.last_start_timestamp.clone(),
        last_stop_at: i.last_stop_timestamp.clone(),
    }
}

fn metadata_items(items: &BTreeMap<String, String>) -> Vec<model::metadata::Items> {
    items.iter().map(|(k, v)| model::metadata::Items::new().set_key(k).set_value(v)).collect()
}

/// The label filter expression for a list call (empty for no labels).
pub fn label_filter(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("(labels.{k} = \"{}\")", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The instance body for an insert.
pub fn instance_body(req: &InstanceRequest) -> Instance {
    let mut nic =
        NetworkInterface::new().set_network(req.network.clone().unwrap_or_else(|| "global/networks/default".into()));
    if let Some(s) = &req.subnetwork {
        nic = nic.set_subnetwork(s.clone());
    }
    if req.external_ip {
        nic = nic.set_access_configs([AccessConfig::new()
            .set_name("External NAT")
            .set_type(model::access_config::Type::OneToOneNat)]);
    }
    let mut body = Instance::new()
        .set_name(req.name.clone())
        .set_machine_type(format!("zones/{}/machineTypes/{}", req.zone, req.machine_type))
        .set_labels(req.labels.clone())
        .set_metadata(Metadata::new().set_items(metadata_items(&req.metadata)))
        .set_disks([AttachedDisk::new().set_boot(true).set_auto_delete(true).set_initialize_params(
            AttachedDiskInitializeParams::new()
                .set_disk_size_gb(req.disk_size_gb)
                .set_source_image(req.source_image.clone()),
        )])
        .set_network_interfaces([nic])
        .set_tags(Tags::new().set_items(req.tags.clone()));
    if let Some(email) = &req.service_account_email {
        body = body.set_service_accounts([ServiceAccount::new()
            .set_email(email.clone())
            .set_scopes(["https://www.googleapis.com/auth/cloud-platform"])]);
    }
    body
}

async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, google_cloud_gax::error::Error>>,
) -> Result<T, CloudError> {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(r) => r.map_err(CloudError::from),
        Err(_) => Err(CloudError::new(
            CloudErrorKind::Unavailable,
            format!("Compute Engine did not answer within {}s", TIMEOUT.as_secs()),
        )),
    }
}

#[async_trait::async_trait]
impl Compute for GceCompute {
    async fn insert_instance(&self, req: &InstanceRequest) -> Result<OperationRef, CloudError> {
        let op = self
            .call(
                "instances.insert",
                self.instances
                    .insert()
                    .set_project(&self.project)
                    .set_zone(&req.zone)
                    .set_body(instance_body(req))
                    .send(),
            )
            .await
            .map_err(insert_not_found)?;
        op_ref(op, &req.zone)
    }

    async fn get_instance(&self, zone: &str, name: &str) -> Result<Option<CloudInstance>, CloudError> {
        match self
            .call(
                "instances.get",
                self.instances.get().set_project(&self.project).set_zone(zone).set_instance(name).send(),
            )
            .await
        {
            Ok(i) => Ok(Some(to_cloud_instance(i))),
            Err(e) if e.kind == CloudErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list_instances(
        &self,
        zone: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<CloudInstance>, CloudError> {
        let mut out = vec![];
        let mut token: Option<String> = None;
        // Bounded: a misbehaving server cannot keep us paging forever.
        for _ in 0..100 {
            let mut call =
                self.instances.list().set_project(&self.project).set_zone(zone).set_max_results(self.page_size);
            if !labels.is_empty() {
                call = call.set_filter(label_filter(labels));
            }
            if let Some(t) = &token {
                call = call.set_page_token(t.clone());
            }
            let page = self.call("instances.list", call.send()).await?;
            out.extend(page.items.into_iter().map(to_cloud_instance));
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
        Ok(out)
    }

    async fn start_instance(&self, zone: &str, name: &str) -> Result<OperationRef, CloudError> {
        let op = self
            .call(
                "instances.start",
                self.instances.start().set_project(&self.project).set_zone(zone).set_instance(name).send(),
            )
            .await?;
        op_ref(op, zone)
    }

    async fn stop_instance(&self, zone: &str, name: &str) -> Result<OperationRef, CloudError> {
        let op = self
            .call(
                "instances.stop",
                self.instances.stop().set_project(&self.project).set_zone(zone).set_instance(name).send(),
            )
            .await?;
        op_ref(op, zone)
    }

    async fn delete_instance(&self, zone: &str, name: &str) -> Result<Option<OperationRef>, CloudError> {
        match self
            .call(
                "instances.delete",
                self.instances.delete().set_project(&self.project).set_zone(zone).set_instance(name).send(),
            )
            .await
        {
            Ok(op) => op_ref(op, zone).map(Some),
            Err(e) if e.kind == CloudErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn set_machine_type(&self, zone: &str, name: &str, machine_type: &str) -> Result<OperationRef, CloudError> {
        let body =
            InstancesSetMachineTypeRequest::new().set_machine_type(format!("zones/{zone}/machineTypes/{machine_type}"));
        let op = self
            .call(
                "instances.setMachineType",
                self.instances
                    .set_machine_type()
                    .set_project(&self.project)
                    .set_zone(zone)
                    .set_instance(name)
                    .set_body(body)
                    .send(),
            )
            .await?;
        op_ref(op, zone)
    }

    async fn set_labels(
        &self,
        zone: &str,
        name: &str,
        fingerprint: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<OperationRef, CloudError> {
        let mut body = InstancesSetLabelsRequest::new().set_labels(labels.clone());
        if let Some(fp) = fingerprint.and_then(unhex) {
            body = body.set_label_fingerprint(bytes::Bytes::from(fp));
        }
        let op = self
            .call(
                "instances.setLabels",
                self.instances
                    .set_labels()
                    .set_project(&self.project)
                    .set_zone(zone)
                    .set_instance(name)
                    .set_body(body)
                    .send(),
            )
            .await?;
        op_ref(op, zone)
    }

    async fn set_metadata(
        &self,
        zone: &str,
        name: &str,
        fingerprint: Option<&str>,
        items: &BTreeMap<String, String>,
    ) -> Result<OperationRef, CloudError> {
        let mut body = Metadata::new().set_items(metadata_items(items));
        if let Some(fp) = fingerprint.and_then(unhex) {
            body = body.set_fingerprint(bytes::Bytes::from(fp));
        }
        let op = self
            .call(
                "instances.setMetadata",
                self.instances
                    .set_metadata()
                    .set_project(&self.project)
                    .set_zone(zone)
                    .set_instance(name)
                    .set_body(body)
                    .send(),
            )
            .await?;
        op_ref(op, zone)
    }

    async fn guest_attributes(
        &self,
        zone: &str,
        name: &str,
        query_path: &str,
    ) -> Result<Vec<GuestAttribute>, CloudError> {
        let call = self
            .instances
            .get_guest_attributes()
            .set_project(&self.project)
            .set_zone(zone)
            .set_instance(name)
            .set_query_path(query_path);
        match self.call("instances.getGuestAttributes", call.send()).await {
            Ok(ga) => Ok(ga
                .query_value
                .map(|v| v.items)
                .unwrap_or_default()
                .into_iter()
                .map(|e| GuestAttribute {
                    namespace: e.namespace.unwrap_or_default(),
                    key: e.key.unwrap_or_default(),
                    value: e.value.unwrap_or_default(),
                })
                .collect()),
            Err(e) if e.kind == CloudErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(e),
        }
    }

    async fn operation(&self, op: &OperationRef) -> Result<OperationState, CloudError> {
        let o = self
            .call(
                "zoneOperations.get",
                self.operations.get().set_project(&self.project).set_zone(&op.zone).set_operation(&op.name).send(),
            )
            .await?;
        Ok(operation_state(&o))
    }
}

/// A 404 on insert never means the instance (it does not exist yet): it is a referenced
/// image, network, machine type or zone that is missing, i.e. a request to fix.
fn insert_not_found(mut e: CloudError) -> CloudError {
    if e.kind == CloudErrorKind::NotFound {
        e.kind = CloudErrorKind::InvalidRequest;
    }
    e
}

/// Where an operation stands, including the error it finished with. The message is
/// Google's (it names the quota, zone or permission); when an error only carries the quota
/// in its structured details, the quota's metric and limit are added.
pub fn operation_state(o: &Operation) -> OperationState {
    if o.status != Some(model::operation::Status::Done) {
        return OperationState::Running { progress: o.progress };
    }
    let errors = o.error.as_ref().map(|e| e.errors.as_slice()).unwrap_or_default();
    if errors.is_empty() {
        return OperationState::Done;
    }
    let codes: Vec<&str> = errors.iter().filter_map(|e| e.code.as_deref()).collect();
    let kind = classify_operation_codes(&codes, o.http_error_status_code);
    // The error that decided the kind, else the first.
    let main = errors
        .iter()
        .find(|e| e.code.as_deref().is_some_and(|c| classify_operation(c, None) == kind))
        .unwrap_or(&errors[0]);
    let code = main.code.clone().unwrap_or_default();
    let mut message = main
        .message
        .clone()
        .filter(|m| !m.is_empty())
        .or_else(|| o.http_error_message.clone())
        .unwrap_or_else(|| code.clone());
    for q in main.error_details.iter().filter_map(|d| d.quota_info.as_ref()) {
        let Some(metric) = q.metric_name.as_deref().or(q.limit_name.as_deref()) else { continue };
        if !message.contains(metric) {
            message.push_str(&format!(" (quota {metric}"));
            if let Some(limit) = q.limit {
                message.push_str(&format!(", limit {limit}"));
            }
            message.push(')');
        }
    }
    OperationState::Failed(CloudError {
        kind,
        message: redact(&message),
        http_status: o.http_error_status_code.and_then(|s| u16::try_from(s).ok()),
        reason: Some(code).filter(|c| !c.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        let l = BTreeMap::from([
            ("managed-by".to_string(), "projectvm".to_string()),
            ("projectvm-kind".to_string(), "workspace".to_string()),
        ]);
        assert_eq!(label_filter(&l), "(labels.managed-by = \"projectvm\") AND (labels.projectvm-kind = \"workspace\")");
    }

    #[test]
    fn hex_round_trip() {
        let b = [0u8, 1, 0xab, 0xff];
        assert_eq!(unhex(&hex(&b)).unwrap(), b);
        assert!(unhex("abc").is_none());
    }

    #[test]
    fn instance_mapping() {
        let i = Instance::new()
            .set_name("pvm-a")
            .set_id(42u64)
            .set_zone("https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-a")
            .set_machine_type(
                "https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-a/machineTypes/e2-small",
            )
            .set_status(model::instance::Status::Running)
            .set_network_interfaces([NetworkInterface::new()
                .set_network_ip("10.0.0.2")
                .set_access_configs([AccessConfig::new().set_nat_ip("34.1.2.3")])])
            .set_metadata(
                Metadata::new()
                    .set_fingerprint(bytes::Bytes::from_static(&[1, 2]))
                    .set_items([model::metadata::Items::new().set_key("ssh-keys").set_value("u:k")]),
            );
        let c = to_cloud_instance(i);
        assert_eq!(c.id, "42");
        assert_eq!(c.zone, "us-central1-a");
        assert_eq!(c.machine_type, "e2-small");
        assert_eq!(c.state, InstanceState::Running);
        assert_eq!(c.internal_ip.as_deref(), Some("10.0.0.2"));
        assert_eq!(c.external_ip.as_deref(), Some("34.1.2.3"));
        assert_eq!(c.metadata["ssh-keys"], "u:k");
        assert_eq!(c.metadata_fingerprint.as_deref(), Some("0102"));
    }

    #[test]
    fn insert_body() {
        let req = InstanceRequest {
            name: "pvm-a".into(),
            zone: "us-central1-a".into(),
            machine_type: "e2-medium".into(),
            source_image: "projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts".into(),
            disk_size_gb: 50,
            labels: BTreeMap::from([("managed-by".into(), "projectvm".into())]),
            metadata: BTreeMap::from([("enable-guest-attributes".into(), "TRUE".into())]),
            network: None,
            subnetwork: None,
            external_ip: true,
            service_account_email: None,
            tags: vec!["projectvm".into()],
        };
        let body = instance_body(&req);
        assert_eq!(body.machine_type.as_deref(), Some("zones/us-central1-a/machineTypes/e2-medium"));
        assert_eq!(body.disks[0].initialize_params.as_ref().unwrap().disk_size_gb, Some(50));
        assert_eq!(body.network_interfaces[0].access_configs.len(), 1);
        assert_eq!(body.metadata.unwrap().items[0].key.as_deref(), Some("enable-guest-attributes"));
    }

    #[test]
    fn operation_errors() {
        let op = Operation::new().set_status(model::operation::Status::Done).set_http_error_status_code(403).set_error(
            model::operation::Error::new().set_errors([model::operation::error::Errors::new()
                .set_code("QUOTA_EXCEEDED")
                .set_message("Quota 'CPUS' exceeded.  Limit: 8.0 in region us-central1.")]),
        );
        let OperationState::Failed(e) = operation_state(&op) else { panic!() };
        assert_eq!(e.kind, CloudErrorKind::QuotaExceeded);
        assert!(e.message.contains("CPUS"));
        assert_eq!(
            operation_state(&Operation::new().set_status(model::operation::Status::Running).set_progress(40)),
            OperationState::Running { progress: Some(40) }
        );
        assert_eq!(operation_state(&Operation::new().set_status(model::operation::Status::Done)), OperationState::Done);
    }

    #[test]
    fn operation_errors_pick_the_specific_code_and_name_the_quota() {
        use model::operation::error::Errors;
        let quota_detail = model::operation::error::errors::ErrorDetails::new().set_quota_info(
            model::QuotaExceededInfo::new().set_metric_name("compute.googleapis.com/cpus").set_limit(8.0),
        );
        let op = Operation::new().set_status(model::operation::Status::Done).set_http_error_status_code(403).set_error(
            model::operation::Error::new().set_errors([
                Errors::new().set_code("SOMETHING_GENERIC").set_message("generic"),
                Errors::new()
                    .set_code("QUOTA_EXCEEDED")
                    .set_message("Quota exceeded.")
                    .set_error_details([quota_detail]),
            ]),
        );
        let OperationState::Failed(e) = operation_state(&op) else { panic!() };
        assert_eq!(e.kind, CloudErrorKind::QuotaExceeded);
        assert_eq!(e.reason.as_deref(), Some("QUOTA_EXCEEDED"));
        assert!(e.message.contains("compute.googleapis.com/cpus") && e.message.contains("limit 8"), "{}", e.message);

        let op = Operation::new().set_status(model::operation::Status::Done).set_http_error_status_code(503).set_error(
            model::operation::Error::new().set_errors([Errors::new()
                .set_code("ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS")
                .set_message("The zone 'projects/p/zones/us-central1-a' does not have enough resources available to fulfill the request.")]),
        );
        let OperationState::Failed(e) = operation_state(&op) else { panic!() };
        assert_eq!(e.kind, CloudErrorKind::ZoneResourcesExhausted);
        assert!(e.message.contains("us-central1-a"));
    }

    #[test]
    fn insert_404_is_a_bad_reference() {
        let e = insert_not_found(CloudError::new(
            CloudErrorKind::NotFound,
            "The resource 'projects/p/global/images/family/nope' was not found",
        ));
        assert_eq!(e.kind, CloudErrorKind::InvalidRequest);
        assert!(e.message.contains("images/family/nope"));
        assert_eq!(
            insert_not_found(CloudError::new(CloudErrorKind::QuotaExceeded, "q")).kind,
            CloudErrorKind::QuotaExceeded
        );
    }

    #[test]
    fn filter_quotes_values() {
        assert_eq!(label_filter(&BTreeMap::new()), "");
        let l = BTreeMap::from([("k".to_string(), "a\"b".to_string())]);
        assert_eq!(label_filter(&l), r#"(labels.k = "a\"b")"#);
    }
}
