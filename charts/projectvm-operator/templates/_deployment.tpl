{{/*
One operator Deployment: the main one (.Shard empty) or a shard's. The context is the chart's
root context with .Shard added (see deployment.yaml).
*/}}
{{- define "projectvm.deployment" -}}
{{- $mode := .Values.gcp.credentials.mode -}}
{{- $leader := include "projectvm.leaderElection" . -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "projectvm.shardName" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "projectvm.labels" . | nindent 4 }}
spec:
  replicas: {{ .Values.replicas }}
  revisionHistoryLimit: 5
  {{- if eq $leader "false" }}
  # Without leader election two operators must never overlap, not even during a rollout.
  strategy:
    type: Recreate
  {{- end }}
  selector:
    matchLabels:
      {{- include "projectvm.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "projectvm.selectorLabels" . | nindent 8 }}
        {{- include "projectvm.releaseLabel" . | nindent 8 }}
        {{- with .Values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- if or .Values.rates .Values.podAnnotations }}
      annotations:
        {{- if .Values.rates }}
        checksum/rates: {{ toYaml .Values.rates | sha256sum }}
        {{- end }}
        {{- with .Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
    spec:
      serviceAccountName: {{ include "projectvm.serviceAccountName" . }}
      automountServiceAccountToken: true
      {{- with .Values.priorityClassName }}
      priorityClassName: {{ . | quote }}
      {{- end }}
      terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
      {{- with .Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        runAsGroup: 65532
        fsGroup: 65532
        seccompProfile:
          type: RuntimeDefault
      containers:
        - name: operator
          image: {{ include "projectvm.image" . | quote }}
          imagePullPolicy: {{ .Values.image.pullPolicy }}
          {{- with .Values.extraArgs }}
          args:
            {{- range . }}
            - {{ . | quote }}
            {{- end }}
          {{- end }}
          env:
            - name: PROJECTVM_GCP_PROJECT
              value: {{ .Values.gcp.project | quote }}
            {{- with .Values.clusterName }}
            - name: PROJECTVM_CLUSTER_NAME
              value: {{ . | quote }}
            {{- end }}
            - name: PROJECTVM_DEFAULT_ZONE
              value: {{ .Values.gcp.zone | quote }}
            {{- with .Values.gcp.computeEndpoint }}
            - name: PROJECTVM_COMPUTE_ENDPOINT
              value: {{ . | quote }}
            {{- end }}
            {{- with .Values.artifacts.bucket }}
            - name: PROJECTVM_ARTIFACT_BUCKET
              value: {{ . | quote }}
            {{- end }}
            - name: PROJECTVM_ARTIFACT_PREFIX
              value: {{ .Values.artifacts.prefix | quote }}
            - name: PROJECTVM_RUN_ARTIFACTS_MAX_BYTES
              value: {{ .Values.artifacts.maxBytes | int64 | quote }}
            {{- with .Values.gcp.storageEndpoint }}
            - name: PROJECTVM_STORAGE_ENDPOINT
              value: {{ . | quote }}
            {{- end }}
            {{- with .Values.gcp.network }}
            - name: PROJECTVM_NETWORK
              value: {{ . | quote }}
            {{- end }}
            {{- with .Values.gcp.subnetwork }}
            - name: PROJECTVM_SUBNETWORK
              value: {{ . | quote }}
            {{- end }}
            - name: PROJECTVM_COMPUTE_QPS
              value: {{ .Values.gcp.computeQps | quote }}
            - name: PROJECTVM_COMPUTE_BURST
              value: {{ .Values.gcp.computeBurst | quote }}
            - name: PROJECTVM_USE_INTERNAL_IP
              value: {{ .Values.gcp.useInternalIp | quote }}
            - name: PROJECTVM_CREDENTIALS
              value: {{ if eq $mode "anonymous" }}anonymous{{ else }}default{{ end }}
            {{- if eq $mode "keySecret" }}
            - name: GOOGLE_APPLICATION_CREDENTIALS
              value: {{ printf "%s/%s" (include "projectvm.keyDir" .) .Values.gcp.credentials.keySecret.key | quote }}
            {{- end }}
            - name: PROJECTVM_METRICS_ADDR
              value: {{ printf "0.0.0.0:%d" (int .Values.metrics.port) | quote }}
            - name: PROJECTVM_LEADER_ELECTION
              value: {{ $leader | quote }}
            - name: PROJECTVM_LEASE_NAME
              value: {{ printf "%s%s" .Values.leaderElection.leaseName (.Shard | empty | ternary "" (printf "-%s" .Shard)) | quote }}
            {{- with include "projectvm.shardSelector" . }}
            # Sharding: the objects this Deployment reconciles (see sharding in values.yaml).
            - name: PROJECTVM_SHARD_SELECTOR
              value: {{ . | quote }}
            {{- end }}
            - name: PROJECTVM_LEASE_DURATION
              value: {{ .Values.leaderElection.leaseDuration | quote }}
            - name: PROJECTVM_LEASE_RENEW_DEADLINE
              value: {{ .Values.leaderElection.renewDeadline | quote }}
            - name: PROJECTVM_LEASE_RETRY_PERIOD
              value: {{ .Values.leaderElection.retryPeriod | quote }}
            # The Lease lives in the release namespace (the Role grants leases there only).
            - name: POD_NAMESPACE
              valueFrom:
                fieldRef:
                  fieldPath: metadata.namespace
            # Leader identity and the events' reporting instance.
            - name: POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            - name: PROJECTVM_MAX_CONCURRENT_TASKS
              value: {{ .Values.maxConcurrentTasks | quote }}
            - name: PROJECTVM_MAX_CONCURRENT_RECONCILES
              value: {{ .Values.maxConcurrentReconciles | quote }}
            - name: PROJECTVM_ALLOW_AUTH_NONE
              value: {{ .Values.codeServer.allowAuthNone | quote }}
            - name: PROJECTVM_CODE_SERVER_VERSION
              value: {{ .Values.codeServer.install.version | quote }}
            - name: PROJECTVM_CODE_SERVER_URL
              value: {{ .Values.codeServer.install.url | quote }}
            {{- with .Values.codeServer.install.sha256 }}
            - name: PROJECTVM_CODE_SERVER_SHA256
              value: {{ . | quote }}
            {{- end }}
            {{- with include "projectvm.watchNamespaces" . }}
            # Only these namespaces: the Roles of role.yaml grant nothing elsewhere.
            - name: PROJECTVM_WATCH_NAMESPACE
              value: {{ . | quote }}
            {{- end }}
            {{- if .Values.rates }}
            - name: PROJECTVM_RATES_FILE
              value: {{ printf "%s/rates.yaml" (include "projectvm.ratesDir" .) | quote }}
            {{- end }}
            - name: PROJECTVM_LOG_FORMAT
              value: {{ .Values.logging.format | quote }}
            - name: RUST_LOG
              value: {{ .Values.logging.level | quote }}
            {{- with .Values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: metrics
              containerPort: {{ .Values.metrics.port }}
              protocol: TCP
          livenessProbe:
            httpGet:
              path: /healthz
              port: metrics
            initialDelaySeconds: 5
            periodSeconds: 20
            timeoutSeconds: 5
            failureThreshold: 3
          readinessProbe:
            httpGet:
              path: /readyz
              port: metrics
            periodSeconds: 10
            timeoutSeconds: 5
          securityContext:
            allowPrivilegeEscalation: false
            privileged: false
            readOnlyRootFilesystem: true
            runAsNonRoot: true
            capabilities:
              drop: ["ALL"]
            seccompProfile:
              type: RuntimeDefault
          resources:
            {{- toYaml .Values.resources | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if eq $mode "keySecret" }}
            - name: gcp-key
              mountPath: {{ include "projectvm.keyDir" . }}
              readOnly: true
            {{- end }}
            {{- if .Values.rates }}
            - name: rates
              mountPath: {{ include "projectvm.ratesDir" . }}
              readOnly: true
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
        {{- if eq $mode "keySecret" }}
        - name: gcp-key
          secret:
            secretName: {{ .Values.gcp.credentials.keySecret.name | quote }}
            defaultMode: 0440
            items:
              - key: {{ .Values.gcp.credentials.keySecret.key | quote }}
                path: {{ .Values.gcp.credentials.keySecret.key | quote }}
        {{- end }}
        {{- if .Values.rates }}
        - name: rates
          configMap:
            name: {{ include "projectvm.fullname" . }}-rates
        {{- end }}
      {{- with .Values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if .Values.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- include "projectvm.topologySpreadConstraints" . | nindent 8 }}
      {{- end }}
{{- end -}}
