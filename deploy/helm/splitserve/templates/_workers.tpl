{{/* Pod templates of the prefill and decode pools; call with (dict "root" $ "role" role).
The serving pod: a Deployment's pods, or the leader pod of each LeaderWorkerSet group. */}}
{{- define "splitserve.workerPod" -}}
{{- $root := .root }}
{{- $role := .role }}
{{- $pool := index $root.Values $role }}
{{- $ctx := dict "root" $root "component" $role }}
{{- $lws := $pool.leaderWorkerSet }}
metadata:
  labels:
    {{- include "splitserve.componentSelector" $ctx | nindent 4 }}
    splitserve.io/role: {{ $role }}
    {{- with $root.Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    splitserve.io/tensor-parallel-size: {{ $pool.tensorParallelSize | quote }}
    {{- with $root.Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  {{- include "splitserve.podCommon" $root | nindent 2 }}
  automountServiceAccountToken: false
  # preStop sleep + drain + margin: SIGKILL must never cut a draining worker short.
  terminationGracePeriodSeconds: {{ add $pool.preStopSleepSeconds $pool.drainTimeoutSeconds 15 }}
  {{- include "splitserve.scheduling" $pool | nindent 2 }}
  containers:
    - name: {{ $role }}
      image: {{ include "splitserve.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args:
        - {{ $role }}
        - --model
        - {{ include "splitserve.modelDir" $root }}
        - --kvstore
        - {{ include "splitserve.kvstoreAddress" $root }}
        - --host
        - 0.0.0.0
        - --port
        - {{ $pool.port | quote }}
        - --advertise-host
        - $(POD_IP)
        - --metrics-port
        - {{ $pool.metricsPort | quote }}
        - --kv-events-port
        - {{ $pool.kvEventsPort | quote }}
        - --tensor-parallel-size
        - {{ $pool.tensorParallelSize | quote }}
        - --worker-id
        - $(POD_NAME)
        # the same budget terminationGracePeriodSeconds is computed from
        - --drain-timeout
        - {{ $pool.drainTimeoutSeconds | quote }}
        {{- if eq $role "prefill" }}
        # across pods: `direct` would be refused by every decode worker (another host)
        - --kv-transport
        - {{ $root.Values.kvTransfer.transport }}
        {{- if ne $root.Values.kvTransfer.transport "store" }}
        - --store-write-budget
        - {{ $root.Values.kvTransfer.storeWriteBudget | quote }}
        {{- end }}
        {{- end }}
        {{- if $lws.enabled }}
        # rank 0 of a group spanning the group's pods; they rendezvous at this pod's address
        - --nnodes
        - {{ $lws.size | quote }}
        - --dist-addr
        - $(LWS_LEADER_ADDRESS)
        - --dist-port
        - {{ $lws.distPort | quote }}
        {{- end }}
        {{- range $pool.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      env:
        {{- include "splitserve.env" $root | nindent 8 }}
        {{- if $lws.enabled }}
        {{- include "splitserve.rankTokenEnv" $root | nindent 8 }}
        {{- end }}
      ports:
        - {name: grpc, containerPort: {{ $pool.port }}, protocol: TCP}
        - {name: metrics, containerPort: {{ $pool.metricsPort }}, protocol: TCP}
        - {name: kv-events, containerPort: {{ $pool.kvEventsPort }}, protocol: TCP}
        {{- if $lws.enabled }}
        - {name: dist, containerPort: {{ $lws.distPort }}, protocol: TCP}
        - {name: dist-plan, containerPort: {{ add1 $lws.distPort }}, protocol: TCP}
        {{- end }}
      startupProbe:
        grpc: {port: {{ $pool.port }}}
        periodSeconds: 10
        failureThreshold: {{ max 1 (div $pool.startupTimeoutSeconds 10) }}
      readinessProbe:
        grpc: {port: {{ $pool.port }}}
        periodSeconds: 5
        failureThreshold: 2
      livenessProbe:
        grpc: {port: {{ $pool.port }}}
        periodSeconds: 15
        timeoutSeconds: 5
        failureThreshold: 4
      lifecycle:
        preStop:
          sleep: {seconds: {{ $pool.preStopSleepSeconds }}}
      {{- include "splitserve.workerResources" (dict "root" $root "pool" $pool) | nindent 6 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        {{- include "splitserve.workerMounts" $root | nindent 8 }}
    {{- if and (eq $role "decode") $root.Values.inferencePool.enabled $root.Values.inferencePool.podRouter.enabled }}
    {{- include "splitserve.podRouter" $root | nindent 4 }}
    {{- end }}
  volumes:
    {{- include "splitserve.workerVolumes" (dict "root" $root "pool" $pool) | nindent 4 }}
{{- end }}

{{/* GAIE data path: the gateway sends a request to the decode pod the picker chose; this
pod-local router serves the OpenAI API there, on that pod's own decode worker only. */}}
{{- define "splitserve.podRouter" -}}
{{- $ip := .Values.inferencePool }}
- name: router
  image: {{ include "splitserve.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - router
    - --model
    - {{ include "splitserve.modelDir" . }}
    - --decode
    - {{ printf "127.0.0.1:%d" (int .Values.decode.port) | quote }}
    - --host
    - 0.0.0.0
    - --port
    - {{ $ip.targetPort | quote }}
    {{- if .Values.router.apiKeySecret.name }}
    - --api-key
    - $(SPLITSERVE_API_KEY)
    {{- end }}
  env:
    {{- include "splitserve.env" . | nindent 4 }}
    {{- if .Values.router.apiKeySecret.name }}
    - name: SPLITSERVE_API_KEY
      valueFrom:
        secretKeyRef: {name: {{ .Values.router.apiKeySecret.name }}, key: {{ .Values.router.apiKeySecret.key }}}
    {{- end }}
  ports:
    # "http": scraped like the central routers' (the requests the gateway sends are counted here)
    - {name: http, containerPort: {{ $ip.targetPort }}, protocol: TCP}
  readinessProbe:
    httpGet: {path: /health, port: http}
    periodSeconds: 5
    failureThreshold: 2
  livenessProbe:
    httpGet: {path: /health, port: http}
    periodSeconds: 15
    timeoutSeconds: 5
    failureThreshold: 4
  lifecycle:
    preStop:
      # as long as the worker's: the gateway drops the pod before either stops
      sleep: {seconds: {{ .Values.decode.preStopSleepSeconds }}}
  {{- with $ip.podRouter.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    {{- include "splitserve.modelMount" . | nindent 4 }}
    {{- include "splitserve.scratchMounts" . | nindent 4 }}
{{- end }}

{{/* The other pods of a LeaderWorkerSet group: `splitserve tp-ranks`, this pod's ranks of the leader's engine. */}}
{{- define "splitserve.rankPod" -}}
{{- $root := .root }}
{{- $role := .role }}
{{- $pool := index $root.Values $role }}
{{- $lws := $pool.leaderWorkerSet }}
metadata:
  labels:
    {{- include "splitserve.componentSelector" (dict "root" $root "component" (printf "%s-ranks" $role)) | nindent 4 }}
    splitserve.io/role: {{ $role }}
    {{- with $root.Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $root.Values.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- include "splitserve.podCommon" $root | nindent 2 }}
  automountServiceAccountToken: false
  # the ranks stop when their leader closes the plan channel, which outlives its drain
  terminationGracePeriodSeconds: {{ add $pool.preStopSleepSeconds $pool.drainTimeoutSeconds 15 }}
  {{- include "splitserve.scheduling" $pool | nindent 2 }}
  containers:
    - name: {{ $role }}-ranks
      image: {{ include "splitserve.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args:
        - tp-ranks
        - --dist-addr
        - $(LWS_LEADER_ADDRESS)
        - --dist-port
        - {{ $lws.distPort | quote }}
        - --tensor-parallel-size
        - {{ $pool.tensorParallelSize | quote }}
        - --nnodes
        - {{ $lws.size | quote }}
        - --node-rank
        - $(LWS_WORKER_INDEX)
      env:
        {{- include "splitserve.env" $root | nindent 8 }}
        {{- include "splitserve.rankTokenEnv" $root | nindent 8 }}
      {{- include "splitserve.workerResources" (dict "root" $root "pool" $pool) | nindent 6 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        {{- include "splitserve.workerMounts" $root | nindent 8 }}
  volumes:
    {{- include "splitserve.workerVolumes" (dict "root" $root "pool" $pool) | nindent 4 }}
{{- end }}

{{/* GPUs per pod: the whole tensor-parallel size, or its share of a multi-pod group. */}}
{{- define "splitserve.podGpus" -}}
{{- $lws := .leaderWorkerSet }}
{{- if $lws.enabled }}{{ div (int .tensorParallelSize) (int $lws.size) }}{{ else }}{{ .tensorParallelSize }}{{ end }}
{{- end }}

{{- define "splitserve.workerResources" -}}
{{- $gpus := include "splitserve.podGpus" .pool }}
resources:
  requests:
    {{- with .pool.resources.requests }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{ .root.Values.gpu.resourceName }}: {{ $gpus }}
  limits:
    {{- with .pool.resources.limits }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{ .root.Values.gpu.resourceName }}: {{ $gpus }}
{{- end }}

{{- define "splitserve.workerMounts" -}}
{{ include "splitserve.modelMount" . }}
{{ include "splitserve.scratchMounts" . }}
- name: dshm
  mountPath: /dev/shm
{{- end }}

{{- define "splitserve.workerVolumes" -}}
{{ include "splitserve.modelVolume" .root }}
{{ include "splitserve.scratchVolumes" .root }}
# NCCL between tensor-parallel ranks needs far more than the default 64 MiB of /dev/shm.
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .pool.shmSizeLimit }}
{{- end }}

{{/* The group token of multi-pod tensor-parallel engines (engine/remote_ranks.py). */}}
{{- define "splitserve.rankTokenEnv" -}}
- name: SPLITSERVE_RANK_TOKEN
  valueFrom:
    secretKeyRef:
      {{- if .Values.rankTokenSecret.name }}
      name: {{ .Values.rankTokenSecret.name }}
      key: {{ .Values.rankTokenSecret.key }}
      {{- else if .Values.auth.internalSecret.name }}
      name: {{ .Values.auth.internalSecret.name }}
      key: {{ .Values.auth.internalSecret.key }}
      {{- else }}
      name: {{ printf "%s-rank-token" (include "splitserve.fullname" .) }}
      key: {{ .Values.rankTokenSecret.key }}
      {{- end }}
{{- end }}
