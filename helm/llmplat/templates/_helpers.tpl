{{/* Chart name, truncated to a DNS label. */}}
{{- define "llmplat.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped name; the RayService and most objects carry it. */}}
{{- define "llmplat.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "llmplat.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llmplat.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmplat.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "llmplat.labels" -}}
helm.sh/chart: {{ include "llmplat.chart" . }}
{{ include "llmplat.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: llmplat
{{- end }}

{{/* Labels of the Ray pods of one role: head, gateway or model. */}}
{{- define "llmplat.rayPodLabels" -}}
{{ include "llmplat.selectorLabels" .root }}
app.kubernetes.io/component: ray
llmplat.io/role: {{ .role }}
{{- end }}

{{/* The ServiceAccount of one role's pods (.role: head, gateway or model). */}}
{{- define "llmplat.serviceAccountName" -}}
{{- printf "%s-%s" (default (include "llmplat.fullname" .root) .root.Values.serviceAccount.name) .role }}
{{- end }}

{{/* Whether a role's pods mount an API token: the gateway (key store), the head only for the
autoscaler (KubeRay binds its autoscaler Role to the head's account), model pods never. */}}
{{- define "llmplat.automountToken" -}}
{{- if eq .role "gateway" }}true
{{- else if eq .role "head" }}{{ .root.Values.autoscaler.enabled }}
{{- else }}false
{{- end }}
{{- end }}

{{/* Namespace of the key store's Secrets: a namespace of its own by default, because the
gateway's Role covers every Secret of that namespace (RBAC grants no Secret by label). */}}
{{- define "llmplat.keyStoreNamespace" -}}
{{- default (printf "%s-keys" .Release.Namespace) .Values.keyStore.namespace }}
{{- end }}

{{/* The audit log: a named pipe the gateway writes and the gateway pods' `audit` container
copies to its stdout (kubectl logs -c audit). */}}
{{- define "llmplat.auditDir" -}}
/var/log/llmplat
{{- end }}

{{- define "llmplat.auditSink" -}}
{{ include "llmplat.auditDir" . }}/audit.log
{{- end }}

{{/* The llmplat image: a digest pins it exactly; else the tag (default <appVersion>-<cpu|gpu>). */}}
{{- define "llmplat.image" -}}
{{- $img := .Values.image }}
{{- $ref := $img.repository }}
{{- if $img.registry }}{{ $ref = printf "%s/%s" $img.registry $img.repository }}{{ end }}
{{- if $img.digest }}
{{- printf "%s@%s" $ref $img.digest }}
{{- else }}
{{- printf "%s:%s" $ref (default (printf "%s-%s" .Chart.AppVersion .Values.modelWorkers.kind) $img.tag) }}
{{- end }}
{{- end }}

{{- define "llmplat.rayTokenSecretName" -}}
{{- default (printf "%s-ray-token" (include "llmplat.fullname" .)) .Values.rayAuth.existingSecret }}
{{- end }}

{{/* The Redis ACL of the gateway's user, past its name and password (files/redis-quota-acl.txt:
the quota store's commands and keys; tests start a real Redis with it). */}}
{{- define "llmplat.redisQuotaAcl" -}}
{{- .Files.Get "files/redis-quota-acl.txt" | trim }}
{{- end }}

{{- define "llmplat.redisImage" -}}
{{- $img := .Values.redis.image }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository $img.tag }}
{{- end }}
{{- end }}

{{- define "llmplat.adminSecretName" -}}
{{- default (printf "%s-admin" (include "llmplat.fullname" .)) .Values.adminToken.existingSecret }}
{{- end }}

{{/* Secret and key holding the Redis URL the gateway uses for quotas ("" when none). */}}
{{- define "llmplat.redisUrlSecretName" -}}
{{- if .Values.redis.enabled }}
{{- default (printf "%s-redis" (include "llmplat.fullname" .)) .Values.redis.existingSecret }}
{{- else if .Values.externalRedis.existingSecret }}
{{- .Values.externalRedis.existingSecret }}
{{- else if .Values.externalRedis.url }}
{{- printf "%s-redis-url" (include "llmplat.fullname" .) }}
{{- end }}
{{- end }}

{{- define "llmplat.redisUrlSecretKey" -}}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.existingSecret }}
{{- .Values.externalRedis.existingSecretKey }}
{{- else }}
{{- "redis-url" }}
{{- end }}
{{- end }}

{{- define "llmplat.podSecurityContext" -}}
{{ toYaml .Values.podSecurityContext }}
{{- end }}

{{- define "llmplat.containerSecurityContext" -}}
{{ toYaml .Values.containerSecurityContext }}
{{- end }}

{{/*
Refuse values that cannot work, before any pod (or GPU) is requested. Each message names the
value to change.
*/}}
{{- define "llmplat.checks" -}}
{{- if not .Values.serveConfig }}
{{- fail "serveConfig is empty: generate a layout with `llmplat deploy values --model PROFILE` (see deploy/values/)" }}
{{- end }}
{{- $w := .Values.modelWorkers }}
{{- if and (eq $w.kind "gpu") (lt (int $w.gpusPerPod) 1) }}
{{- fail (printf "modelWorkers.gpusPerPod is %v: GPU model workers need at least one GPU" $w.gpusPerPod) }}
{{- end }}
{{- if gt (int $w.minReplicas) (int $w.maxReplicas) }}
{{- fail (printf "modelWorkers.minReplicas (%v) exceeds modelWorkers.maxReplicas (%v)" $w.minReplicas $w.maxReplicas) }}
{{- end }}
{{- if eq $w.kind "gpu" }}
{{- range .Values.layout.models }}
{{- $need := int .gpusPerReplica }}
{{- $per := int $w.gpusPerPod }}
{{- if or (and (le $need $per) (ne (mod $per $need) 0)) (and (gt $need $per) (ne (mod $need $per) 0)) }}
{{- fail (printf "modelWorkers.gpusPerPod is %d but profile %s needs %d GPUs per replica (TP %v x PP %v): replicas would not tile the pods" $per .profile $need .tensorParallel .pipelineParallel) }}
{{- end }}
{{- if gt (int .nodesPerReplica) (int $w.maxReplicas) }}
{{- fail (printf "modelWorkers.maxReplicas is %v but one replica of %s spans %v pods" $w.maxReplicas .profile .nodesPerReplica) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (gt (int .Values.gateway.replicas) 1) (not (include "llmplat.redisUrlSecretName" .)) }}
{{- fail (printf "gateway.replicas is %v: several gateway replicas share quotas through Redis; set redis.enabled=true or externalRedis.url / externalRedis.existingSecret" .Values.gateway.replicas) }}
{{- end }}
{{- if and (eq (include "llmplat.keyStoreNamespace" .) .Release.Namespace) (not .Values.keyStore.allowReleaseNamespace) }}
{{- fail (printf "keyStore.namespace is the release's namespace (%s): the gateway's Role would cover every Secret there (the Ray token, the Redis password, TLS keys), since RBAC cannot grant Secrets by label. Leave keyStore.namespace empty (%s-keys) or name another namespace; set keyStore.allowReleaseNamespace=true to accept it" .Release.Namespace .Release.Namespace) }}
{{- end }}
{{- range $i, $peer := .Values.networkPolicy.gatewayFrom }}
{{- if and (hasKey $peer "namespaceSelector") (not $peer.namespaceSelector) }}
{{- fail (printf "networkPolicy.gatewayFrom[%d] has an empty namespaceSelector (every namespace): name the namespace (matchLabels kubernetes.io/metadata.name)" $i) }}
{{- end }}
{{- end }}
{{- $storage := .Values.model.storage }}
{{- $mount := trimSuffix "/" $storage.mountPath }}
{{- range $app := .Values.serveConfig.applications }}
{{- range $p := $app.args.profiles }}
{{- if not (hasPrefix "builtin:" $p.source) }}
{{- if eq $storage.type "none" }}
{{- fail (printf "model.storage.type is none but profile %s reads its weights from %s: mount them (pvc or hostPath)" $p.name $p.source) }}
{{- else if not (hasPrefix (printf "%s/" $mount) $p.source) }}
{{- fail (printf "profile %s reads its weights from %s, outside model.storage.mountPath %s" $p.name $p.source $mount) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
