//! The Run controller: project work executed on a ProjectVM the way a Job runs in a pod.
//!
//! - [`plan`]: what to do with a Run not launched yet (pure: queue, stopped VM, missing VM).
//! - [`guest`]: the scripts on the VM (worktree, systemd unit, state, listing) and parsers.
//! - [`access`]: reaching the VM, and the environment from opted-in Secrets.
//! - [`artifacts`]: the upload task (SSH stream → Cloud Storage).
//! - [`status`]: the pure status builder (phase, conditions, kstatus, events).
//! - [`reconcile`]: one pass, top to bottom.
//!
//! A Run shares the operator's [`Context`] with the VM kinds: their edges, task registry and
//! the ProjectVM watch cache.

pub mod access;
pub mod artifacts;
pub mod guest;
pub mod plan;
pub mod reconcile;
pub mod status;

use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;

use crate::api::{ProjectVM, Run, RunPhase};
use crate::controller::{Context, Error};

fn error_policy(run: Arc<Run>, err: &Error, ctx: Arc<Context>) -> Action {
    crate::controller::backoff_after(&ctx, &reconcile::key(&run), reconcile::LABEL, err)
}

/// Runs the Run controller until shutdown. Besides Runs it watches ProjectVMs (a VM that
/// became Ready, or stopped, moves the Runs waiting on it) and Secrets by metadata (an
/// opted-in Secret unblocks the Runs that named it).
pub async fn run(
    client: Client,
    ctx: Arc<Context>,
    wakeups: mpsc::UnboundedReceiver<ObjectRef<Run>>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let namespaces = ctx.config.watched_namespaces();
    let (reader, writer) = reflector::store();
    let watches = crate::controller::scoped_apis::<Run>(&client, &namespaces)
        .into_iter()
        .map(|(ns, api)| {
            (
                ns,
                watcher(api, watcher::Config::default())
                    .default_backoff()
                    .modify(crate::controller::drop_managed_fields)
                    .boxed(),
            )
        })
        .collect();
    let changes = crate::controller::merge_namespaces(watches, reader.clone())
        .reflect(writer)
        .applied_objects()
        .predicate_filter(crate::controller::spec_or_metadata_changed::<Run>, Default::default());
    let controller = Controller::for_stream(changes, reader);
    ctx.set_run_store(controller.store());
    let by_vm = controller.store();
    let by_secret = controller.store();
    let projectvms =
        futures::stream::select_all(crate::controller::scoped_apis::<ProjectVM>(&client, &namespaces).into_iter().map(
            |(_, api)| watcher(api, crate::controller::shard_watch(&ctx)).default_backoff().touched_objects().boxed(),
        ));
    controller
        .watches_stream(projectvms, move |pvm| {
            let ns = pvm.namespace();
            let name = pvm.name_any();
            by_vm
                .state()
                .iter()
                .filter(|r| r.namespace() == ns && r.spec.project_vm_ref.name == name)
                .filter(|r| !r.status.as_ref().and_then(|s| s.phase).is_some_and(RunPhase::finished))
                .map(|r| ObjectRef::from_obj(&**r))
                .collect::<Vec<_>>()
        })
        .watches_stream(crate::controller::secret_metadata(&client, &namespaces), move |secret| {
            let ns = secret.namespace();
            let name = secret.name_any();
            by_secret
                .state()
                .iter()
                .filter(|r| r.namespace() == ns && r.secret_names().contains(&name.as_str()))
                .filter(|r| r.status.as_ref().is_none_or(|s| s.start_time.is_none()))
                .map(|r| ObjectRef::from_obj(&**r))
                .collect::<Vec<_>>()
        })
        .reconcile_on(tokio_stream::wrappers::UnboundedReceiverStream::new(wakeups))
        .graceful_shutdown_on(shutdown)
        .with_config(crate::controller::controller_config(&ctx))
        .run(reconcile::reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}
