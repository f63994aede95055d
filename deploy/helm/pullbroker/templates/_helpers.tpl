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
{{- $cfg := dict
  "listen" $listen
  "admin" (dict "addr" ":5001")
  "storage" (dict "driver" "filesystem" "parameters" (dict "rootdirectory" "/var/lib/pullbroker") "maxSizeBytes" .Values.storage.maxSizeBytes)
  "log" .Values.log
  "mode" .Values.registryMode
  "defaultUpstream" .Values.defaultUpstream
  "upstreams" $upstreams
  "access" .Values.access
-}}
{{- mustMergeOverwrite $cfg (deepCopy .Values.extraConfig) | toYaml -}}
{{- end -}}
