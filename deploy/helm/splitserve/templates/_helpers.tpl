{{/* Names, labels and the pieces every splitserve pod shares. */}}

{{- define "splitserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name; leaves room for the longest component suffix ("-kvstore-master"). */}}
{{- define "splitserve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 47 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "splitserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "splitserve.labels" -}}
helm.sh/chart: {{ include "splitserve.chart" . }}
{{ include "splitserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: splitserve
{{- end }}

{{- define "splitserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "splitserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component; call with (dict "root" $ "component" "router"). */}}
{{- define "splitserve.componentLabels" -}}
{{ include "splitserve.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "splitserve.componentSelector" -}}
{{ include "splitserve.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "splitserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "splitserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "splitserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* True when the chart runs its own KV store. */}}
{{- define "splitserve.inChartKvstore" -}}
{{- if not (or .Values.externalKvstore.address .Values.mooncake.enabled) }}true{{ end }}
{{- end }}

{{/* True when the chart runs Mooncake Store (templates/mooncake.yaml) as the KV store. */}}
{{- define "splitserve.inChartMooncake" -}}
{{- if and .Values.mooncake.enabled (not .Values.externalKvstore.address) }}true{{ end }}
{{- end }}

{{/* What workers pass to --kvstore: host:port of our master, or a mooncake:// URL (kvstore/mooncake_url.py). */}}
{{- define "splitserve.kvstoreAddress" -}}
{{- $mc := .Values.mooncake }}
{{- if .Values.externalKvstore.address }}
{{- .Values.externalKvstore.address }}
{{- else if $mc.enabled }}
{{- $opts := printf "protocol=%s&replicas=%d" $mc.protocol (int $mc.replicas) }}
{{- if $mc.rdmaDevices }}{{ $opts = printf "%s&device=%s" $opts $mc.rdmaDevices }}{{ end }}
{{- if $mc.master.ha.enabled }}
{{- printf "mooncake:///?etcd=%s&%s" $mc.master.ha.etcdEndpoints $opts }}
{{- else }}
{{- printf "mooncake://%s-mooncake-master:%d?%s" (include "splitserve.fullname" .) (int $mc.master.rpcPort) $opts }}
{{- end }}
{{- else }}
{{- printf "%s-kvstore-master:%d" (include "splitserve.fullname" .) (int .Values.kvstore.master.port) }}
{{- end }}
{{- end }}

{{- define "splitserve.modelDir" -}}
{{- if .Values.model.path }}
{{- printf "%s/%s" (trimSuffix "/" .Values.model.mountPath) (trimPrefix "/" .Values.model.path) }}
{{- else }}
{{- .Values.model.mountPath }}
{{- end }}
{{- end }}

{{/* Pod-level fields shared by every component. */}}
{{- define "splitserve.podCommon" -}}
serviceAccountName: {{ include "splitserve.serviceAccountName" . }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* Env shared by every container: pod identity (downward API) and writable cache dirs. */}}
{{- define "splitserve.env" -}}
- name: POD_NAME
  valueFrom:
    fieldRef: {fieldPath: metadata.name}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef: {fieldPath: metadata.namespace}
- name: POD_IP
  valueFrom:
    fieldRef: {fieldPath: status.podIP}
- name: HOME
  value: /tmp
- name: XDG_CACHE_HOME
  value: /cache
- name: HF_HOME
  value: /cache/huggingface
- name: TRITON_CACHE_DIR
  value: /cache/triton
- name: TORCHINDUCTOR_CACHE_DIR
  value: /cache/torchinductor
{{- with .Values.auth.internalSecret.name }}
- name: SPLITSERVE_INTERNAL_SECRET
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: {{ $.Values.auth.internalSecret.key }}}
{{- end }}
{{- with .Values.env }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Writable scratch volumes: the root filesystem is read-only. */}}
{{- define "splitserve.scratchVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.scratch.tmpSizeLimit }}
- name: cache
  emptyDir:
    sizeLimit: {{ .Values.scratch.cacheSizeLimit }}
{{- end }}

{{- define "splitserve.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: cache
  mountPath: /cache
{{- end }}

{{- define "splitserve.modelVolume" -}}
- name: model
  {{- if eq .Values.model.source "pvc" }}
  persistentVolumeClaim:
    claimName: {{ .Values.model.pvc.claimName }}
    readOnly: true
  {{- else if eq .Values.model.source "hostPath" }}
  hostPath:
    path: {{ .Values.model.hostPath.path }}
    type: Directory
  {{- else if eq .Values.model.source "image" }}
  image:
    reference: {{ .Values.model.image.reference }}
    pullPolicy: {{ .Values.model.image.pullPolicy }}
  {{- end }}
{{- end }}

{{- define "splitserve.modelMount" -}}
- name: model
  mountPath: {{ .Values.model.mountPath }}
  readOnly: true
{{- end }}

{{/* Scheduling fields; call with the component's values. */}}
{{- define "splitserve.scheduling" -}}
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
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* What an autoscaler scales for a pool; call with (dict "root" $ "component" role). */}}
{{- define "splitserve.poolScaleTarget" -}}
{{- if (index .root.Values .component).leaderWorkerSet.enabled }}
apiVersion: leaderworkerset.x-k8s.io/v1
kind: LeaderWorkerSet
{{- else }}
apiVersion: apps/v1
kind: Deployment
{{- end }}
name: {{ printf "%s-%s" (include "splitserve.fullname" .root) .component }}
{{- end }}

{{/* PromQL of a pool's saturation, restricted to this release's routers. */}}
{{- define "splitserve.saturationQuery" -}}
{{- $selector := .root.Values.autoscaling.seriesSelector }}
{{- if not $selector }}
{{- $selector = printf "namespace=%q,pod=~%q" .root.Release.Namespace (printf "%s-router-.+" (include "splitserve.fullname" .root)) }}
{{- end }}
{{- printf "max(splitserve_router_pool_saturation_ratio{role=%q,%s})" .component $selector }}
{{- end }}

{{/* The port the InferencePool's gateway forwards requests to on a decode pod. */}}
{{- define "splitserve.inferencePoolTargetPort" -}}
{{- .Values.inferencePool.targetPort }}
{{- end }}
