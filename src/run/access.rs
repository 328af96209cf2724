//! Reaching a Run's VM and giving the work its environment: both come from the ProjectVM
//! (its status has the address and the pinned host key, its Secret the operator's key) and
//! from Secrets the Run names.

use std::collections::BTreeSet;

use crate::api::{ProjectVM, Run};
use crate::conditions::{self, types};
use crate::controller::owner::Owner;
use crate::controller::secrets::SecretProblem;
use crate::controller::{Context, Error};
use crate::ssh::SshTarget;

use super::guest;

/// How to reach the ProjectVM's VM, or why not now (a message for the Run's status).
pub async fn target(ctx: &Context, pvm: &ProjectVM) -> Result<Result<SshTarget, String>, Error> {
    let name = pvm.metadata.name.clone().unwrap_or_default();
    let status = pvm.status.clone().unwrap_or_default();
    if !conditions::is_true(&status.conditions, types::INSTANCE_READY) {
        return Ok(Err(format!("the VM of ProjectVM {name} is not running")));
    }
    let Some(inst) = status.instance else {
        return Ok(Err(format!("ProjectVM {name} has no instance yet")));
    };
    let address = crate::controller::instance::reachable_address(
        &ctx.config,
        inst.internal_ip.as_ref(),
        inst.external_ip.as_ref(),
    );
    let (Some(host), Some(pinned_host_key)) = (address, inst.host_key.clone()) else {
        return Ok(Err(format!("ProjectVM {name} has no address or pinned host key yet")));
    };
    let key = ctx.cluster.ssh_key(&Owner::new("projectvm", pvm)).await?;
    Ok(Ok(SshTarget {
        host,
        port: ctx.config.ssh_port,
        user: pvm.spec.machine.user.clone(),
        pinned_host_key,
        private_key_openssh: key.private_openssh,
    }))
}

/// The Run's environment: literal values and values from opted-in Secrets, in spec order
/// (a later variable of the same name wins, as in a pod). Keys of an `envFrom` Secret that
/// are not variable names are skipped and named in the returned note.
pub async fn environment(
    ctx: &Context,
    run: &Run,
) -> Result<Result<(Vec<(String, String)>, Option<String>), SecretProblem>, Error> {
    let ns = run.metadata.namespace.clone().unwrap_or_default();
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut skipped = BTreeSet::new();
    for from in &run.spec.env_from {
        let values = match ctx.cluster.secret_values(&ns, &from.secret_ref.name).await? {
            Ok(v) => v,
            Err(p) => return Ok(Err(p)),
        };
        for (key, value) in values.values {
            let name = format!("{}{key}", from.prefix.as_deref().unwrap_or(""));
            if guest::valid_env_name(&name) {
                vars.push((name, value));
            } else {
                skipped.insert(format!("{}/{key}", from.secret_ref.name));
            }
        }
    }
    for e in &run.spec.env {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => {
                let r = &from.secret_key_ref;
                let values = match ctx.cluster.secret_values(&ns, &r.name).await? {
                    Ok(v) => v,
                    Err(p) => return Ok(Err(p)),
                };
                match values.values.get(&r.key) {
                    Some(v) => v.clone(),
                    None => {
                        return Ok(Err(SecretProblem {
                            reason: crate::conditions::Reason::SecretNotFound,
                            message: format!(
                                "Secret {ns}/{} has no key {:?} (environment variable {}): add it",
                                r.name, r.key, e.name
                            ),
                        }));
                    }
                }
            }
            (None, None) => String::new(),
        };
        vars.push((e.name.clone(), value));
    }
    // The last definition of a name wins; keep one line per name.
    let mut seen = BTreeSet::new();
    let mut unique: Vec<(String, String)> = vars.into_iter().rev().filter(|(k, _)| seen.insert(k.clone())).collect();
    unique.reverse();
    let note = (!skipped.is_empty()).then(|| {
        format!(
            "skipped Secret keys that are not environment variable names: {}",
            skipped.into_iter().collect::<Vec<_>>().join(", ")
        )
    });
    Ok(Ok((unique, note)))
}
