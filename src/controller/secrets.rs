//! Secrets the operator reads (repository tokens) and owns (per-resource SSH keys and
//! code-server passwords).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use rand::distr::{Alphanumeric, SampleString};

use super::Error;
use super::owner::Owner;
use crate::api::FIELD_MANAGER;
use crate::api::SecretKeyRef;
use crate::ssh;

/// A token read from a Secret. `Debug` never prints the value.
#[derive(Clone)]
pub struct Token {
    pub value: String,
    /// The Secret's resourceVersion: part of step fingerprints, so a refreshed token
    /// re-runs the steps that use it.
    pub version: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("version", &self.version).finish_non_exhaustive()
    }
}

/// Why a referenced Secret could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretProblem {
    pub message: String,
}

/// Reads `key` of the referenced Secret in `namespace`.
pub async fn read_token(
    client: &Client,
    namespace: &str,
    r: &SecretKeyRef,
) -> Result<Result<Token, SecretProblem>, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let Some(secret) = api.get_opt(&r.name).await? else {
        return Ok(Err(SecretProblem {
            message: format!(
                "Secret {namespace}/{} (key {:?}) not found: create it with the repository token",
                r.name, r.key
            ),
        }));
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
        .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(&r.key)).map(|s| s.trim().to_string()));
    match value {
        Some(v) if !v.is_empty() => Ok(Ok(Token { value: v, version: secret.resource_version().unwrap_or_default() })),
        _ => Ok(Err(SecretProblem {
            message: format!(
                "Secret {namespace}/{} has no key {:?}: add the repository token under that key",
                r.name, r.key
            ),
        })),
    }
}

/// The operator's SSH key pair for one resource. `Debug` never prints the private key.
#[derive(Clone)]
pub struct SshKey {
    pub private_openssh: String,
    pub public_openssh: String,
}

impl std::fmt::Debug for SshKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshKey").field("public_openssh", &self.public_openssh).finish_non_exhaustive()
    }
}

/// Name of the Secret holding the operator's SSH key for a resource.
pub fn ssh_secret_name(owner: &Owner) -> String {
    super::names::ssh_key_secret(owner.label, &owner.name)
}

/// Name of the generated code-server password Secret.
pub fn password_secret_name(name: &str) -> String {
    super::names::password_secret(name)
}

fn owned_meta(owner: &Owner, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(owner.namespace.clone()),
        owner_references: owner.owner_ref.clone().map(|o| vec![o]),
        labels: Some(BTreeMap::from([
            ("app.kubernetes.io/managed-by".to_string(), "projectvm".to_string()),
            (format!("projectvm.dev/{}", owner.label), super::names::label_value(&owner.name)),
        ])),
        ..Default::default()
    }
}

/// Gets or creates the resource's SSH key Secret (type `kubernetes.io/ssh-auth`, owned by
/// the resource so it goes away with it).
pub async fn ensure_ssh_key(client: &Client, owner: &Owner) -> Result<SshKey, Error> {
    let ns = &owner.namespace;
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let name = ssh_secret_name(owner);
    if let Some(s) = api.get_opt(&name).await?
        && let Some(key) = parse_ssh_secret(&s)
    {
        return Ok(key);
    }
    let pair = ssh::generate_keypair(&format!("projectvm:{ns}/{}", owner.name));
    let secret = Secret {
        metadata: owned_meta(owner, &name),
        type_: Some("kubernetes.io/ssh-auth".into()),
        data: Some(BTreeMap::from([
            ("ssh-privatekey".to_string(), ByteString(pair.private_openssh.clone().into_bytes())),
            ("ssh-publickey".to_string(), ByteString(pair.public_openssh.clone().into_bytes())),
        ])),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(SshKey { private_openssh: pair.private_openssh, public_openssh: pair.public_openssh }),
        // Lost a race with another reconcile: use what is stored.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let s = api.get(&name).await?;
            parse_ssh_secret(&s).ok_or_else(|| Error::Invalid(format!("Secret {ns}/{name} holds no SSH key")))
        }
        Err(e) => Err(e.into()),
    }
}

fn parse_ssh_secret(s: &Secret) -> Option<SshKey> {
    let d = s.data.as_ref()?;
    let private = String::from_utf8(d.get("ssh-privatekey")?.0.clone()).ok()?;
    let public = String::from_utf8(d.get("ssh-publickey")?.0.clone()).ok()?;
    Some(SshKey { private_openssh: private, public_openssh: public.trim().to_string() })
}

/// Gets or creates the generated code-server password Secret; returns the password and the
/// Secret's resourceVersion.
pub async fn ensure_password(client: &Client, owner: &Owner) -> Result<Token, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &owner.namespace);
    let name = password_secret_name(&owner.name);
    if let Some(s) = api.get_opt(&name).await?
        && let Some(p) = s.data.as_ref().and_then(|d| d.get("password"))
    {
        return Ok(Token {
            value: String::from_utf8_lossy(&p.0).to_string(),
            version: s.resource_version().unwrap_or_default(),
        });
    }
    let password = Alphanumeric.sample_string(&mut rand::rng(), 24);
    let secret = Secret {
        metadata: owned_meta(owner, &name),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([("password".to_string(), ByteString(password.into_bytes()))])),
        ..Default::default()
    };
    let _ = api.patch(&name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&secret)).await?;
    let s = api.get(&name).await?;
    let p = s
        .data
        .as_ref()
        .and_then(|d| d.get("password"))
        .map(|b| String::from_utf8_lossy(&b.0).to_string())
        .unwrap_or_default();
    Ok(Token { value: p, version: s.resource_version().unwrap_or_default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_debug_hides_value() {
        let t = Token { value: "ghp_supersecret".into(), version: "42".into() };
        let d = format!("{t:?}");
        assert!(!d.contains("supersecret"), "{d}");
        assert!(d.contains("42"));
    }
}
