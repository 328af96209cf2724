{{/*
The namespaces the operator watches, comma-separated ("" = all namespaces). The value
watchNamespace is one namespace, a comma-separated string, or a list; blanks and
duplicates are dropped.
*/}}
{{- define "projectvm.watchNamespaces" -}}
{{- $v := .Values.watchNamespace -}}
{{- $in := list -}}
{{- if kindIs "string" $v -}}
{{- $in = splitList "," $v -}}
{{- else if $v -}}
{{- $in = $v -}}
{{- end -}}
{{- $out := list -}}
{{- range $in -}}
{{- $n := trim (toString .) -}}
{{- if and $n (not (has $n $out)) -}}
{{- $out = append $out $n -}}
{{- end -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}

{{/*
What the operator does with the API server in the namespaces it watches: the rules of the
ClusterRole (all namespaces) or of the Role in each watched namespace. Every verb is one the
code uses; the comments name where. Leases are in role.yaml (release namespace only).
*/}}
{{- define "projectvm.operatorRules" -}}
# The three kinds: list/watch for the controllers (src/controller/mod.rs, controller_for;
# src/run/mod.rs); patch adds and removes the finalizers (kube's finalizer(),
# src/controller/reconcile.rs, src/run/reconcile.rs) and, on a ProjectVM, sets the
# start-request annotation for a Run (request_start, src/controller/cluster.rs).
- apiGroups: ["projectvm.dev"]
  resources: ["projectvms", "workspaces", "runs"]
  verbs: ["list", "watch", "patch"]
# A Run reads its ProjectVM by name when the watch cache does not have it yet
# (src/run/reconcile.rs project_vm).
- apiGroups: ["projectvm.dev"]
  resources: ["projectvms"]
  verbs: ["get"]
# A finished Run past its ttlAfterFinished is deleted (delete_run, src/controller/cluster.rs).
- apiGroups: ["projectvm.dev"]
  resources: ["runs"]
  verbs: ["delete"]
# Status, written with server-side apply (write_status, src/controller/cluster.rs).
- apiGroups: ["projectvm.dev"]
  resources: ["projectvms/status", "workspaces/status", "runs/status"]
  verbs: ["patch"]
# The Secrets and route objects made for a resource carry an owner reference with
# blockOwnerDeletion; where the OwnerReferencesPermissionEnforcement admission plugin is on
# (OpenShift, hardened clusters) setting it needs update on the owner's finalizers.
- apiGroups: ["projectvm.dev"]
  resources: ["projectvms/finalizers", "workspaces/finalizers", "runs/finalizers"]
  verbs: ["update"]
# Secrets: list/watch by metadata only, never their data (the Secret watch that wakes the
# resources using a Secret, src/controller/mod.rs secret_metadata); get for a Secret by
# name: a referenced token or password, the operator's own SSH key and password
# (src/controller/secrets.rs read_token, ensure_ssh_key, ensure_password); create for the
# SSH key Secret (ensure_ssh_key) and, with patch, the generated password Secret, applied
# server-side (ensure_password; applying an object that does not exist yet creates it).
# No update, no delete: the operator's Secrets go away with their owner.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch"]
# A Workspace's route (src/controller/route.rs apply): get to check that an existing object
# is the operator's before touching it, patch (+ create for a new one) to apply it
# server-side; list/watch by metadata only, of the operator's own objects (label
# app.kubernetes.io/managed-by=projectvm), so an unchanged route is not re-applied on every
# resync and a deleted one comes back at once (src/controller/route_cache.rs). The Service
# and EndpointSlice go away with their owner.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch", "create", "patch"]
# ... and delete the operator's own Ingress when spec.ingress is removed.
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Events on the resources: kube's Recorder creates events.k8s.io/v1 Events and patches a
# repeated one's series; long names are created directly (publish, src/controller/cluster.rs).
# The core/v1 events API is not used.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
