{{/* Environment of every Ray container: llmplat settings, no secrets (those are files, in the
gateway pods only: llmplat.gatewaySecrets*). */}}
{{- define "llmplat.rayEnv" -}}
- name: LLMPLAT_KEYSTORE__NAMESPACE
  value: {{ include "llmplat.keyStoreNamespace" . | quote }}
{{- end }}

{{- define "llmplat.secretsDir" -}}
/var/run/llmplat/secrets
{{- end }}

{{/* The gateway reads its secrets from files (LLMPLAT_X_FILE holds the value of LLMPLAT_X). */}}
{{- define "llmplat.gatewaySecretsEnv" -}}
- name: LLMPLAT_ADMIN_TOKEN_FILE
  value: {{ include "llmplat.secretsDir" . }}/admin-token
{{- if include "llmplat.redisUrlSecretName" . }}
- name: LLMPLAT_QUOTAS__REDIS_URL_FILE
  value: {{ include "llmplat.secretsDir" . }}/redis-url
{{- end }}
{{- end }}

{{/* The admin token and the Redis URL, owner-read-only (the pod's fsGroup adds group read for
its runAsUser's group, as Kubernetes does for every secret volume with an fsGroup). */}}
{{- define "llmplat.gatewaySecretsVolume" -}}
- name: llmplat-secrets
  projected:
    defaultMode: 0400
    sources:
      - secret:
          name: {{ include "llmplat.adminSecretName" . }}
          items:
            - key: {{ .Values.adminToken.existingSecretKey }}
              path: admin-token
      {{- with include "llmplat.redisUrlSecretName" . }}
      - secret:
          name: {{ . }}
          items:
            - key: {{ include "llmplat.redisUrlSecretKey" $ }}
              path: redis-url
      {{- end }}
{{- end }}

{{- define "llmplat.rayEnvFrom" -}}
- configMapRef:
    name: {{ include "llmplat.fullname" . }}-env
{{- end }}

{{/* KubeRay's own probes, spelled out (a custom probe replaces KubeRay's injected one). */}}
{{- define "llmplat.rayletCheck" -}}
wget --tries 1 -T 2 -q -O- http://localhost:52365/api/local_raylet_healthz | grep success
{{- end }}

{{- define "llmplat.rayProbes" -}}
{{- $checks := list (include "llmplat.rayletCheck" .root) }}
{{- if eq .role "head" }}
{{- $checks = append $checks "wget --tries 1 -T 2 -q -O- http://localhost:8265/api/gcs_healthz | grep success" }}
{{- end -}}
livenessProbe:
  exec:
    command: ["bash", "-c", {{ join " && " $checks | quote }}]
  initialDelaySeconds: 30
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 120
readinessProbe:
{{- if eq .role "head" }}
  exec:
    command: ["bash", "-c", {{ join " && " $checks | quote }}]
  failureThreshold: 10
{{- else }}
  {{- /* A worker serves traffic only while its Serve proxy is healthy (KubeRay's rule). */}}
  exec:
    command: ["bash", "-c", {{ append $checks "wget --tries 1 -T 2 -q -O- http://localhost:8000/-/healthz | grep success" | join " && " | quote }}]
  failureThreshold: 1
{{- end }}
  initialDelaySeconds: 10
  periodSeconds: 5
  timeoutSeconds: 2
{{- end }}

{{- define "llmplat.rayVolumeMounts" -}}
{{- $root := .root }}
- name: tmp
  mountPath: /tmp
{{- /* KubeRay adds an emptyDir without a size limit at /tmp/ray (the autoscaler's logs)
unless the container mounts one there: this one has a limit. */}}
- name: ray-logs
  mountPath: /tmp/ray
- name: home
  mountPath: /var/lib/llmplat
- name: shm
  mountPath: /dev/shm
- name: teams
  mountPath: /etc/llmplat
  readOnly: true
{{- if ne $root.Values.model.storage.type "none" }}
- name: models
  mountPath: {{ $root.Values.model.storage.mountPath }}
  readOnly: true
{{- end }}
{{- if eq .role "gateway" }}
- name: llmplat-secrets
  mountPath: {{ include "llmplat.secretsDir" $root }}
  readOnly: true
- name: audit
  mountPath: {{ include "llmplat.auditDir" $root }}
{{- end }}
{{- end }}

{{- define "llmplat.rayVolumes" -}}
{{- $scratch := index .root.Values.scratch .role }}
- name: tmp
  emptyDir:
    sizeLimit: {{ $scratch.tmp }}
- name: ray-logs
  emptyDir:
    sizeLimit: {{ $scratch.rayLogs }}
- name: home
  emptyDir:
    sizeLimit: {{ $scratch.home }}
- name: shm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .shm }}
- name: teams
  configMap:
    name: {{ include "llmplat.fullname" .root }}-teams
{{- $s := .root.Values.model.storage }}
{{- if eq $s.type "pvc" }}
- name: models
  persistentVolumeClaim:
    claimName: {{ $s.claimName }}
    readOnly: true
{{- else if eq $s.type "hostPath" }}
- name: models
  hostPath:
    path: {{ $s.hostPath }}
    type: Directory
{{- end }}
{{- if eq .role "gateway" }}
{{ include "llmplat.gatewaySecretsVolume" .root }}
- name: audit
  emptyDir:
    sizeLimit: {{ .root.Values.scratch.audit }}
{{- end }}
{{- end }}

{{/* The gateway pods' audit container: a native sidecar (started before, stopped after the Ray
container; restarted on its own) that makes the owner-only named pipe the gateway's audit log
writes into and copies every line to its stdout, where the kubelet's log files and the
cluster's log pipeline take it (kubectl logs -c audit). It holds the pipe open for reading
and writing, so it never sees an end of file when the gateway replica restarts; while it
restarts, the gateway's writes fail (reported on the gateway's stderr) and resume with it. */}}
{{- define "llmplat.auditSidecar" -}}
- name: audit
  image: {{ include "llmplat.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  restartPolicy: Always
  command: ["sh", "-c"]
  args:
    - >-
      [ -p "$AUDIT_PIPE" ] || { rm -f "$AUDIT_PIPE" && mkfifo -m 600 "$AUDIT_PIPE"; } &&
      exec cat 0<>"$AUDIT_PIPE"
  env:
    - name: AUDIT_PIPE
      value: {{ include "llmplat.auditSink" . }}
  startupProbe:
    exec:
      command: ["sh", "-c", "test -p \"$AUDIT_PIPE\""]
    periodSeconds: 1
    failureThreshold: 30
  livenessProbe:
    exec:
      command: ["sh", "-c", "test -p \"$AUDIT_PIPE\""]
    periodSeconds: 30
  resources:
    {{- toYaml .Values.gateway.audit.resources | nindent 4 }}
  securityContext:
    {{- include "llmplat.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    - name: audit
      mountPath: {{ include "llmplat.auditDir" . }}
{{- end }}

{{/* Builtin models (the tiny CPU model) are built offline into each pod's home first. */}}
{{- define "llmplat.modelInit" -}}
{{- $builtin := false }}
{{- range $app := .Values.serveConfig.applications }}
{{- range $p := $app.args.profiles }}
{{- if hasPrefix "builtin:" $p.source }}{{ $builtin = true }}{{ end }}
{{- end }}
{{- end }}
{{- if $builtin }}
  - name: build-builtin-model
    image: {{ include "llmplat.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    command: ["llmplat", "model", "build-tiny"]
    env:
      {{- include "llmplat.rayEnv" . | nindent 6 }}
    envFrom:
      {{- include "llmplat.rayEnvFrom" . | nindent 6 }}
    resources:
      requests: {cpu: "1", memory: 2Gi}
      limits: {cpu: "2", memory: 2Gi}
    securityContext:
      {{- include "llmplat.containerSecurityContext" . | nindent 6 }}
    volumeMounts:
      - name: tmp
        mountPath: /tmp
      - name: home
        mountPath: /var/lib/llmplat
{{- end }}
{{- end }}

{{/* Init containers of one role's pods: the audit sidecar (gateway), the builtin model. */}}
{{- define "llmplat.initContainers" -}}
{{- $model := include "llmplat.modelInit" .root }}
{{- if or $model (eq .role "gateway") }}
initContainers:
{{- if eq .role "gateway" }}
{{- include "llmplat.auditSidecar" .root | nindent 2 }}
{{- end }}
{{- $model }}
{{- end }}
{{- end }}

{{/* The pod spec shared by head, gateway and model pods; differences come in through args. */}}
{{- define "llmplat.rayPodSpec" -}}
{{- $root := .root }}
{{- $V := $root.Values -}}
serviceAccountName: {{ include "llmplat.serviceAccountName" (dict "root" $root "role" .role) }}
automountServiceAccountToken: {{ include "llmplat.automountToken" (dict "root" $root "role" .role) }}
securityContext:
  {{- include "llmplat.podSecurityContext" $root | nindent 2 }}
{{- with $V.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- include "llmplat.initContainers" (dict "root" $root "role" .role) }}
containers:
  - name: {{ .container }}
    image: {{ include "llmplat.image" $root }}
    imagePullPolicy: {{ $V.image.pullPolicy }}
    ports:
      {{- toYaml .ports | nindent 6 }}
    env:
      {{- include "llmplat.rayEnv" $root | nindent 6 }}
      {{- if eq .role "gateway" }}
      {{- include "llmplat.gatewaySecretsEnv" $root | nindent 6 }}
      {{- end }}
    envFrom:
      {{- include "llmplat.rayEnvFrom" $root | nindent 6 }}
    resources:
      {{- toYaml .resources | nindent 6 }}
    securityContext:
      {{- include "llmplat.containerSecurityContext" $root | nindent 6 }}
    {{- include "llmplat.rayProbes" (dict "root" $root "role" .role) | nindent 4 }}
    volumeMounts:
      {{- include "llmplat.rayVolumeMounts" (dict "root" $root "role" .role) | nindent 6 }}
volumes:
  {{- include "llmplat.rayVolumes" (dict "root" $root "shm" .shm "role" .role) | nindent 2 }}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
