{{/* Chart name, overridable with nameOverride. */}}
{{- define "projectvm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified name of the release's objects, overridable with fullnameOverride. */}}
{{- define "projectvm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "projectvm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "projectvm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: projectvm
{{ include "projectvm.releaseLabel" . }}
{{- with .Shard }}
projectvm.dev/shard: {{ . }}
{{- end }}
{{- end -}}

{{/*
Pod selector labels. A shard's Deployment (the context carries .Shard, see deployment.yaml)
gets an instance of its own, so no two Deployments of the release select each other's pods.
*/}}
{{- define "projectvm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "projectvm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}{{ with .Shard }}-{{ . }}{{ end }}
{{- end -}}

{{/* On every object and pod of the release, shards included: what the ServiceMonitor and the NetworkPolicy select. */}}
{{- define "projectvm.releaseLabel" -}}
projectvm.dev/release: {{ .Release.Name }}
{{- end -}}

{{/* The name of a Deployment (and its Service and PDB): the release's, with the shard's name after it. */}}
{{- define "projectvm.shardName" -}}
{{ include "projectvm.fullname" . }}{{ with .Shard }}-{{ . }}{{ end }}
{{- end -}}

{{/* --shard-selector: a shard takes its label value; with shards, the main Deployment takes the unlabelled rest. */}}
{{- define "projectvm.shardSelector" -}}
{{- $key := .Values.sharding.key -}}
{{- if .Shard -}}
{{ $key }} in ({{ .Shard }})
{{- else if .Values.sharding.shards -}}
!{{ $key }}
{{- end -}}
{{- end -}}

{{- define "projectvm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "projectvm.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Leader election: on when asked for, and always with more than one replica. */}}
{{- define "projectvm.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicas) 1) -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{- define "projectvm.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Where the key Secret (keySecret mode) and the rates ConfigMap are mounted. */}}
{{- define "projectvm.keyDir" -}}/var/run/secrets/projectvm/gcp{{- end -}}
{{- define "projectvm.ratesDir" -}}/etc/projectvm{{- end -}}

{{/* Fails rendering with a clear message when required values are missing or inconsistent. */}}
{{- define "projectvm.validate" -}}
{{- if not .Values.gcp.project -}}
{{- fail "gcp.project is required: the Google Cloud project the VMs are created in (e.g. --set gcp.project=my-project)" -}}
{{- end -}}
{{- $mode := .Values.gcp.credentials.mode -}}
{{- if and (eq $mode "keySecret") (not .Values.gcp.credentials.keySecret.name) -}}
{{- fail "gcp.credentials.keySecret.name is required when gcp.credentials.mode is keySecret: the Secret holding the service-account key file" -}}
{{- end -}}
{{- if and (eq $mode "anonymous") (not .Values.gcp.computeEndpoint) -}}
{{- fail "gcp.credentials.mode=anonymous only works against an emulator: set gcp.computeEndpoint to its URL" -}}
{{- end -}}
{{- if and (eq $mode "anonymous") .Values.artifacts.bucket (not .Values.gcp.storageEndpoint) -}}
{{- fail "gcp.credentials.mode=anonymous only works against an emulator: set gcp.storageEndpoint to the Cloud Storage emulator's URL, or leave artifacts.bucket empty" -}}
{{- end -}}
{{- end -}}

{{/* A NetworkPolicy egress rule to TCP ports on CIDRs (dict "cidrs" LIST "ports" LIST); no cidrs: any address. */}}
{{- define "projectvm.egressRule" -}}
{{- with .cidrs }}
to:
  {{- range . }}
  - ipBlock:
      cidr: {{ . | quote }}
  {{- end }}
{{- end }}
ports:
  {{- range .ports }}
  - port: {{ . }}
    protocol: TCP
  {{- end }}
{{- end -}}

{{/* topologySpreadConstraints, each given the pod selector labels unless it has a labelSelector. */}}
{{- define "projectvm.topologySpreadConstraints" -}}
{{- $selector := include "projectvm.selectorLabels" . | fromYaml -}}
{{- $out := list -}}
{{- range .Values.topologySpreadConstraints -}}
{{- $c := deepCopy . -}}
{{- if not (hasKey $c "labelSelector") -}}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $selector) -}}
{{- end -}}
{{- $out = append $out $c -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}
