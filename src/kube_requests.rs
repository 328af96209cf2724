//! `projectvm_kubernetes_requests_total{verb,code}`: every request the operator's
//! Kubernetes client sends, by Kubernetes verb (get, list, watch, create, update, patch,
//! delete) and the HTTP status of the answer (`error` when none came). A long-running watch
//! counts once, when it starts.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    verb: &'static str,
    code: String,
}

/// The counter family; clones share it.
#[derive(Clone, Debug, Default)]
pub struct KubeRequests(Family<Labels, Counter>);

impl KubeRequests {
    pub fn registered(metrics: &crate::metrics::Metrics) -> Self {
        let r = Self::default();
        metrics.register("kubernetes_requests", "Kubernetes API requests sent, by verb and HTTP status", r.0.clone());
        r
    }

    /// Requests counted so far for this verb and code.
    pub fn count(&self, verb: &'static str, code: &str) -> u64 {
        self.0.get(&Labels { verb, code: code.into() }).map(|c| c.get()).unwrap_or(0)
    }
}

/// The Kubernetes verb of a request, from its method, path and query.
pub fn verb(method: &http::Method, path: &str, query: Option<&str>) -> &'static str {
    match *method {
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => {
            if names_object(path) {
                "delete"
            } else {
                "deletecollection"
            }
        }
        http::Method::GET => {
            let watch = query.is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
            if watch {
                "watch"
            } else if names_object(path) {
                "get"
            } else {
                "list"
            }
        }
        _ => "other",
    }
}

/// Whether the path names one object (`…/projectvms/a`, `…/projectvms/a/status`) rather
/// than a collection (`…/projectvms`).
fn names_object(path: &str) -> bool {
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    // /api/v1/… or /apis/GROUP/VERSION/…
    let rest = match segs.as_slice() {
        ["api", _, rest @ ..] => rest,
        ["apis", _, _, rest @ ..] => rest,
        _ => return false,
    };
    // `namespaces/NS/RESOURCE…` is a namespaced resource; `namespaces[/NS]` the namespaces.
    let rest = if rest.len() >= 3 && rest[0] == "namespaces" { &rest[2..] } else { rest };
    rest.len() >= 2
}

/// Counts every request passing through the client.
#[derive(Clone)]
pub struct CountLayer(pub KubeRequests);

impl<S> tower::Layer<S> for CountLayer {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Counted { inner, counts: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    counts: KubeRequests,
}

impl<S, B, R> tower::Service<http::Request<B>> for Counted<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = tower::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<R>, tower::BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let verb = verb(req.method(), req.uri().path(), req.uri().query());
        let counts = self.counts.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await.map_err(Into::into);
            let code = match &r {
                Ok(resp) => resp.status().as_u16().to_string(),
                Err(_) => "error".to_string(),
            };
            counts.0.get_or_create(&Labels { verb, code }).inc();
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn verbs() {
        #[rustfmt::skip]
        let cases: &[(Method, &str, Option<&str>, &str)] = &[
            (Method::GET, "/apis/projectvm.dev/v1alpha1/projectvms", None, "list"),
            (Method::GET, "/apis/projectvm.dev/v1alpha1/projectvms", Some("watch=true&resourceVersion=5"), "watch"),
            (Method::GET, "/apis/projectvm.dev/v1alpha1/namespaces/a/projectvms", Some("limit=500"), "list"),
            (Method::GET, "/apis/projectvm.dev/v1alpha1/namespaces/a/projectvms/x", None, "get"),
            (Method::PATCH, "/apis/projectvm.dev/v1alpha1/namespaces/a/projectvms/x/status", None, "patch"),
            (Method::GET, "/api/v1/namespaces", None, "list"),
            (Method::GET, "/api/v1/namespaces/a", None, "get"),
            (Method::GET, "/api/v1/namespaces/a/secrets/s", None, "get"),
            (Method::GET, "/api/v1/namespaces/a/secrets", Some("watch=1"), "watch"),
            (Method::POST, "/apis/events.k8s.io/v1/namespaces/a/events", None, "create"),
            (Method::PUT, "/apis/coordination.k8s.io/v1/namespaces/a/leases/l", None, "update"),
            (Method::DELETE, "/api/v1/namespaces/a/services/s", None, "delete"),
            (Method::DELETE, "/api/v1/namespaces/a/services", None, "deletecollection"),
            (Method::GET, "/version", None, "list"),
        ];
        for (m, path, q, want) in cases {
            assert_eq!(verb(m, path, *q), *want, "{m} {path} {q:?}");
        }
    }

    #[tokio::test]
    async fn counts_by_verb_and_status() {
        use tower::{Layer, Service, ServiceExt};
        let counts = KubeRequests::default();
        let inner = tower::service_fn(|req: http::Request<()>| async move {
            let status = if req.uri().path().ends_with("/missing") { 404 } else { 200 };
            Ok::<_, std::convert::Infallible>(http::Response::builder().status(status).body(()).unwrap())
        });
        let mut svc = CountLayer(counts.clone()).layer(inner);
        for path in
            ["/api/v1/namespaces/a/secrets/s", "/api/v1/namespaces/a/secrets/missing", "/api/v1/namespaces/a/secrets/s"]
        {
            let req = http::Request::get(path).body(()).unwrap();
            svc.ready().await.unwrap().call(req).await.unwrap();
        }
        assert_eq!(counts.count("get", "200"), 2);
        assert_eq!(counts.count("get", "404"), 1);
        assert_eq!(counts.count("list", "200"), 0);
    }
}
