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
use crate::api::{FIELD_MANAGER, SECRET_OPT_IN_LABEL, SecretKeyRef};
use crate::conditions::Reason;
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

/// Why a referenced Secret could not be used: `SecretNotFound` or `SecretNotAllowed`, with a
/// message naming the Secret and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretProblem {
    pub reason: Reason,
    pub message: String,
}

/// The Secret type Kubernetes gives service-account tokens; never used, opted in or not.
const SERVICE_ACCOUNT_TOKEN: &str = "kubernetes.io/service-account-token";
/// The annotation a service-account token Secret carries (visible in metadata alone).
const SERVICE_ACCOUNT_ANNOTATION: &str = "kubernetes.io/service-account.name";
/// Longest value accepted from a referenced Secret key. Tokens and passwords are far shorter.
const MAX_VALUE_BYTES: usize = 16 * 1024;

fn not_found(namespace: &str, r: &SecretKeyRef) -> SecretProblem {
    SecretProblem {
        reason: Reason::SecretNotFound,
        message: format!("Secret {namespace}/{} (key {:?}) not found: create it with the value", r.name, r.key),
    }
}

fn not_allowed(namespace: &str, name: &str, why: &str) -> SecretProblem {
    SecretProblem { reason: Reason::SecretNotAllowed, message: format!("Secret {namespace}/{name} {why}") }
}

/// Whether a Secret's metadata lets projectvm use it: the opt-in label, and not a
/// service-account token.
pub fn check_opt_in(namespace: &str, name: &str, meta: &ObjectMeta) -> Result<(), SecretProblem> {
    if meta.annotations.as_ref().is_some_and(|a| a.contains_key(SERVICE_ACCOUNT_ANNOTATION)) {
        return Err(not_allowed(namespace, name, "is a service-account token, which projectvm never uses"));
    }
    let opted_in = meta.labels.as_ref().and_then(|l| l.get(SECRET_OPT_IN_LABEL)).is_some_and(|v| v == "true");
    if !opted_in {
        return Err(not_allowed(
            namespace,
            name,
            &format!(
                "has not opted in to being used by projectvm: label it {SECRET_OPT_IN_LABEL}=true \
                 (kubectl -n {namespace} label secret {name} {SECRET_OPT_IN_LABEL}=true)"
            ),
        ));
    }
    Ok(())
}

/// The value under `r.key` of an opted-in Secret, trimmed; the whole Secret is checked again
/// (type included), since it may have changed between the metadata read and this one.
pub fn token_from_secret(namespace: &str, r: &SecretKeyRef, secret: &Secret) -> Result<Token, SecretProblem> {
    check_opt_in(namespace, &r.name, &secret.metadata)?;
    if secret.type_.as_deref() == Some(SERVICE_ACCOUNT_TOKEN) {
        return Err(not_allowed(namespace, &r.name, "is a service-account token, which projectvm never uses"));
    }
    let raw = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| b.0.as_slice())
        .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(&r.key)).map(|s| s.as_bytes()));
    let Some(raw) = raw else {
        return Err(SecretProblem {
            reason: Reason::SecretNotFound,
            message: format!("Secret {namespace}/{} has no key {:?}: add the value under that key", r.name, r.key),
        });
    };
    let invalid = |why: &str| {
        Err(SecretProblem {
            reason: Reason::SecretNotAllowed,
            message: format!("Secret {namespace}/{} key {:?} {why}", r.name, r.key),
        })
    };
    if raw.len() > MAX_VALUE_BYTES {
        return invalid(&format!("is {} bytes, more than the {MAX_VALUE_BYTES} a token or password may be", raw.len()));
    }
    let Ok(text) = std::str::from_utf8(raw) else {
        return invalid("is not UTF-8 text");
    };
    let value = text.trim();
    if value.is_empty() {
        return invalid("is empty");
    }
    // git's credential protocol and code-server's config are line based: a line break or NUL
    // inside the value would let it add fields of its own.
    if value.chars().any(|c| c.is_control()) {
        return invalid("contains a line break or control character");
    }
    Ok(Token { value: value.to_string(), version: secret.resource_version().unwrap_or_default() })
}

/// Reads `key` of the referenced Secret in `namespace`. Its metadata is read first: the data
/// of a Secret that has not opted in is never fetched.
pub async fn read_token(
    client: &Client,
    namespace: &str,
    r: &SecretKeyRef,
) -> Result<Result<Token, SecretProblem>, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let Some(meta) = api.get_metadata_opt(&r.name).await? else {
        return Ok(Err(not_found(namespace, r)));
    };
    if let Err(p) = check_opt_in(namespace, &r.name, &meta.metadata) {
        return Ok(Err(p));
    }
    let Some(secret) = api.get_opt(&r.name).await? else {
        return Ok(Err(not_found(namespace, r)));
    };
    Ok(token_from_secret(namespace, r, &secret))
}

/// Longest value of one key a Run takes into its environment, and of all keys together.
const MAX_ENV_VALUE_BYTES: usize = 64 * 1024;
const MAX_ENV_TOTAL_BYTES: usize = 256 * 1024;

/// Every key of an opted-in Secret as text, for a Run's environment. Values must be UTF-8
/// without NUL bytes (an environment cannot hold them) and bounded in size; line breaks are
/// fine, since they travel in a file, quoted. `Debug` of the result never prints values.
pub fn values_from_secret(namespace: &str, name: &str, secret: &Secret) -> Result<SecretValues, SecretProblem> {
    check_opt_in(namespace, name, &secret.metadata)?;
    if secret.type_.as_deref() == Some(SERVICE_ACCOUNT_TOKEN) {
        return Err(not_allowed(namespace, name, "is a service-account token, which projectvm never uses"));
    }
    let mut values = BTreeMap::new();
    let mut total = 0;
    let raw = secret.data.iter().flatten().map(|(k, v)| (k, v.0.as_slice()));
    let strings = secret.string_data.iter().flatten().map(|(k, v)| (k, v.as_bytes()));
    for (key, bytes) in raw.chain(strings) {
        let invalid = |why: &str| SecretProblem {
            reason: Reason::SecretNotAllowed,
            message: format!("Secret {namespace}/{name} key {key:?} {why}"),
        };
        if bytes.len() > MAX_ENV_VALUE_BYTES {
            return Err(invalid(&format!(
                "is {} bytes, more than the {MAX_ENV_VALUE_BYTES} an environment variable may be",
                bytes.len()
            )));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| invalid("is not UTF-8 text"))?;
        if text.contains('\0') {
            return Err(invalid("contains a NUL byte, which no environment variable can hold"));
        }
        total += bytes.len();
        if total > MAX_ENV_TOTAL_BYTES {
            return Err(not_allowed(
                namespace,
                name,
                &format!("holds more than the {MAX_ENV_TOTAL_BYTES} bytes a Run's environment may take"),
            ));
        }
        values.insert(key.clone(), text.to_string());
    }
    Ok(SecretValues { values, version: secret.resource_version().unwrap_or_default() })
}

/// The keys of a Secret, read for a Run's environment. `Debug` shows only the key names.
#[derive(Clone, Default)]
pub struct SecretValues {
    pub values: BTreeMap<String, String>,
    pub version: String,
}

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValues").field("keys", &self.values.keys().collect::<Vec<_>>()).finish_non_exhaustive()
    }
}

/// Reads a whole opted-in Secret for a Run's environment: metadata first, so the data of a
/// Secret that has not opted in is never fetched.
pub async fn read_values(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Result<SecretValues, SecretProblem>, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let missing = || SecretProblem {
        reason: Reason::SecretNotFound,
        message: format!("Secret {namespace}/{name} not found: create it (and label it {SECRET_OPT_IN_LABEL}=true)"),
    };
    let Some(meta) = api.get_metadata_opt(name).await? else {
        return Ok(Err(missing()));
    };
    if let Err(p) = check_opt_in(namespace, name, &meta.metadata) {
        return Ok(Err(p));
    }
    let Some(secret) = api.get_opt(name).await? else {
        return Ok(Err(missing()));
    };
    Ok(values_from_secret(namespace, name, &secret))
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
    fn run_environment_values_keep_line_breaks_and_refuse_the_rest() {
        let ok = secret(&[(SECRET_OPT_IN_LABEL, "true")], Some("Opaque"), b"line 1\nline 2");
        let v = values_from_secret("n", "tok", &ok).unwrap();
        assert_eq!(v.values["token"], "line 1\nline 2");
        assert!(!format!("{v:?}").contains("line 1"), "Debug never shows values");
        let unlabelled = secret(&[], Some("Opaque"), b"x");
        assert_eq!(values_from_secret("n", "tok", &unlabelled).unwrap_err().reason, Reason::SecretNotAllowed);
        for bad in [&b"a\0b"[..], &[0xff, 0xfe][..], &vec![b'x'; MAX_ENV_VALUE_BYTES + 1][..]] {
            let s = secret(&[(SECRET_OPT_IN_LABEL, "true")], Some("Opaque"), bad);
            let p = values_from_secret("n", "tok", &s).unwrap_err();
            assert_eq!(p.reason, Reason::SecretNotAllowed);
            assert!(p.message.contains("n/tok"));
        }
        let sa = secret(&[(SECRET_OPT_IN_LABEL, "true")], Some(SERVICE_ACCOUNT_TOKEN), b"x");
        assert!(values_from_secret("n", "tok", &sa).is_err());
    }

    fn secret(labels: &[(&str, &str)], type_: Option<&str>, value: &[u8]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("tok".into()),
                resource_version: Some("7".into()),
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            },
            type_: type_.map(String::from),
            data: Some(BTreeMap::from([("token".to_string(), ByteString(value.to_vec()))])),
            ..Default::default()
        }
    }

    fn key() -> SecretKeyRef {
        SecretKeyRef { name: "tok".into(), key: "token".into() }
    }

    #[test]
    fn only_opted_in_secrets_are_used() {
        let allowed = [(SECRET_OPT_IN_LABEL, "true")];
        let t = token_from_secret("team", &key(), &secret(&allowed, Some("Opaque"), b" ghp_x\n")).unwrap();
        assert_eq!((t.value.as_str(), t.version.as_str()), ("ghp_x", "7"));

        let p = token_from_secret("team", &key(), &secret(&[], None, b"db-password")).unwrap_err();
        assert_eq!(p.reason, Reason::SecretNotAllowed);
        assert!(p.message.contains("team/tok") && p.message.contains("projectvm.dev/allowed=true"), "{}", p.message);
        assert!(!p.message.contains("db-password"));
        let p = token_from_secret("team", &key(), &secret(&[(SECRET_OPT_IN_LABEL, "yes")], None, b"x")).unwrap_err();
        assert_eq!(p.reason, Reason::SecretNotAllowed);
    }

    #[test]
    fn service_account_tokens_are_refused_even_when_labelled() {
        let allowed = [(SECRET_OPT_IN_LABEL, "true")];
        let p = token_from_secret("team", &key(), &secret(&allowed, Some(SERVICE_ACCOUNT_TOKEN), b"eyJ")).unwrap_err();
        assert_eq!(p.reason, Reason::SecretNotAllowed);
        assert!(p.message.contains("service-account token"), "{}", p.message);
        let mut meta = secret(&allowed, None, b"").metadata;
        meta.annotations = Some(BTreeMap::from([(SERVICE_ACCOUNT_ANNOTATION.to_string(), "default".to_string())]));
        assert_eq!(check_opt_in("team", "tok", &meta).unwrap_err().reason, Reason::SecretNotAllowed);
    }

    #[test]
    fn values_that_could_inject_lines_or_are_huge_are_refused() {
        let allowed = [(SECRET_OPT_IN_LABEL, "true")];
        for bad in [&b"tok\nhost=evil"[..], b"tok\0x", b"\xff\xfe", b"  ", &vec![b'a'; MAX_VALUE_BYTES + 1]] {
            let p = token_from_secret("team", &key(), &secret(&allowed, None, bad)).unwrap_err();
            assert_eq!(p.reason, Reason::SecretNotAllowed, "{bad:?}");
        }
        let missing = SecretKeyRef { name: "tok".into(), key: "other".into() };
        assert_eq!(
            token_from_secret("team", &missing, &secret(&allowed, None, b"x")).unwrap_err().reason,
            Reason::SecretNotFound
        );
    }

    #[test]
    fn token_debug_hides_value() {
        let t = Token { value: "ghp_supersecret".into(), version: "42".into() };
        let d = format!("{t:?}");
        assert!(!d.contains("supersecret"), "{d}");
        assert!(d.contains("42"));
    }
}
