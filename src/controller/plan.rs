//! The planning stage: from the spec and what was observed, the one thing to do with the
//! instance now. Pure; the step plan is made by `steps::run` with `engine::plan_steps`.

use kube::ResourceExt;

use super::kind::VmKind;
use super::observe::{Observed, idle_expired, running_time_left};
use super::status::Report;
use crate::api::{START_ANNOTATION, STOP_ANNOTATION};
use crate::cloud::naming::Ownership;
use crate::engine::instance::{InstanceAction, InstanceInputs, plan_instance};

pub fn instance<K: VmKind>(report: &Report, obj: &K, observed: &Observed) -> InstanceAction {
    let inst = observed.instance.as_ref();
    let power = report.status.power.clone().unwrap_or_default();
    let desired_machine_type = obj.machine().desired_machine_type();
    plan_instance(&InstanceInputs {
        instance: inst,
        owned: observed.ownership.as_ref().is_some_and(Ownership::is_ours),
        cluster_label_missing: observed.ownership == Some(Ownership::OursUnlabelled),
        desired_machine_type: &desired_machine_type,
        run_strategy: obj.machine().run_strategy,
        desired_metadata: &observed.desired_metadata,
        power: &power,
        start_request: obj.annotations().get(START_ANNOTATION).map(String::as_str),
        stop_request: obj.annotations().get(STOP_ANNOTATION).map(String::as_str),
        idle_expired: idle_expired(report, obj, inst),
        running_expired: running_time_left(report, obj, inst).is_some_and(|left| left.is_zero()),
    })
}
