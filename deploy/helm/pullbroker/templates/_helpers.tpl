{{/* Labels of every object; selectors use only name and component. */}}
{{- define "pullbroker.labels" -}}
app.kubernetes.io/name: pullbroker
app.kubernetes.io/component: {{ .component }}
{{ include "pullbroker.commonLabels" .root }}
{{- end -}}

{{- define "pullbroker.commonLabels" -}}
app.kubernetes.io/part-of: pullbroker
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "pullbroker.selector" -}}
app.kubernetes.io/name: pullbroker
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "pullbroker.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* The cache in a bucket that every replica shares. */}}
{{- define "pullbroker.shared" -}}
{{- if eq .Values.storage.driver "s3" -}}true{{- end -}}
{{- end -}}

{{- define "pullbroker.tlsEnabled" -}}
{{- if and .Values.tls.enabled (ne .Values.mode "daemonset") -}}true{{- end -}}
{{- end -}}

{{/* config.yaml: the values rendered into pullbroker's config, extraConfig over them. */}}
{{- define "pullbroker.config" -}}
{{- $upstreams := list -}}
{{- range .Values.upstreams -}}
{{- $u := omit . "existingSecret" -}}
{{- if .existingSecret -}}
{{- $_ := set $u "credentials" (dict "kubernetesSecret" (dict "name" (printf "%s/%s" $.Release.Namespace .existingSecret))) -}}
{{- end -}}
{{- $upstreams = append $upstreams $u -}}
{{- end -}}
{{- $listen := dict "addr" ":5000" "drainTimeout" "30s" -}}
{{- if include "pullbroker.tlsEnabled" . -}}
{{- $_ := set $listen "tlsCertFile" "/etc/pullbroker/tls/tls.crt" -}}
{{- $_ := set $listen "tlsKeyFile" "/etc/pullbroker/tls/tls.key" -}}
{{- end -}}
{{- $storage := dict "driver" "filesystem" "parameters" (dict "rootdirectory" "/var/lib/pullbroker") "maxSizeBytes" .Values.storage.maxSizeBytes -}}
{{- if include "pullbroker.shared" . -}}
{{- $s3 := .Values.storage.s3 -}}
{{- $params := dict "bucket" $s3.bucket "forcepathstyle" $s3.forcepathstyle -}}
{{- range $k := list "region" "regionendpoint" "rootdirectory" -}}
{{- with get $s3 $k -}}{{- $_ := set $params $k . -}}{{- end -}}
{{- end -}}
{{- $storage = dict "driver" "s3" "parameters" $params "spoolDir" "/var/spool/pullbroker" "maxSizeBytes" .Values.storage.maxSizeBytes -}}
{{- end -}}
{{- with .Values.storage.recordCacheTTL -}}
{{- $_ := set $storage "recordCacheTTL" . -}}
{{- end -}}
{{- $cfg := dict
  "listen" $listen
  "admin" (dict "addr" ":5001")
  "storage" $storage
  "log" .Values.log
  "mode" .Values.registryMode
  "defaultUpstream" .Values.defaultUpstream
  "upstreams" $upstreams
  "access" .Values.access
-}}
{{- $cluster := dict -}}
{{- if eq .Values.leaderElection.backend "kubernetes" -}}
{{- $_ := set $cluster "leaderElection" (dict "backend" "kubernetes") -}}
{{- end -}}
{{- if .Values.peers.enabled -}}
{{- $_ := set $cluster "peerService" (printf "%s/pullbroker-peers" .Release.Namespace) -}}
{{- $_ := set $cluster "peerListen" ":5002" -}}
{{- $_ := set $cluster "peerTokenFile" "/etc/pullbroker/peer/token" -}}
{{- end -}}
{{- with $cluster -}}
{{- $_ := set $cfg "cluster" . -}}
{{- end -}}
{{- if .Values.keepRunningImages -}}
{{- $_ := set $cfg "cache" (dict "keepRunningImages" true) -}}
{{- end -}}
{{- mustMergeOverwrite $cfg (deepCopy .Values.extraConfig) | toYaml -}}
{{- end -}}
