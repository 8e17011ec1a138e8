{{/* Chart name, truncated to the DNS label limit. */}}
{{- define "swapstats.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name prefix. Truncated so that "<fullname>-shard-NNN" still
fits the 63-character pod hostname limit.
*/}}
{{- define "swapstats.fullname" -}}
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

{{- define "swapstats.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels shared by every object. */}}
{{- define "swapstats.labels" -}}
helm.sh/chart: {{ include "swapstats.chart" . }}
app.kubernetes.io/name: {{ include "swapstats.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: swapstats
{{- end }}

{{/* Selector labels of one role: include with (dict "ctx" $ "role" "shard"). */}}
{{- define "swapstats.selectorLabels" -}}
app.kubernetes.io/name: {{ include "swapstats.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{- define "swapstats.roleLabels" -}}
{{ include "swapstats.labels" .ctx }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{- define "swapstats.shardName" -}}
{{ include "swapstats.fullname" . }}-shard
{{- end }}

{{- define "swapstats.routerName" -}}
{{ include "swapstats.fullname" . }}-router
{{- end }}

{{- define "swapstats.routerServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "swapstats.routerName" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "swapstats.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Annotations that roll the pods when the configuration changes, plus scrape hints. */}}
{{- define "swapstats.podAnnotations" -}}
checksum/config: {{ include (print .ctx.Template.BasePath "/configmap.yaml") .ctx | sha256sum }}
{{- if .ctx.Values.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .ctx.Values.httpPort | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Pod anti-affinity for one role: include with
(dict "ctx" $ "role" "shard" "mode" "soft" "topologyKey" "..." "extra" .Values.shard.affinity).
*/}}
{{- define "swapstats.affinity" -}}
{{- $term := dict "labelSelector" (dict "matchLabels" (include "swapstats.selectorLabels" (dict "ctx" .ctx "role" .role) | fromYaml)) "topologyKey" .topologyKey -}}
{{- $aff := deepCopy (default (dict) .extra) -}}
{{- if eq .mode "hard" }}
{{- $_ := set $aff "podAntiAffinity" (dict "requiredDuringSchedulingIgnoredDuringExecution" (list $term)) }}
{{- else if eq .mode "soft" }}
{{- $_ := set $aff "podAntiAffinity" (dict "preferredDuringSchedulingIgnoredDuringExecution" (list (dict "weight" 100 "podAffinityTerm" $term))) }}
{{- end }}
{{- if $aff }}
affinity:
{{ toYaml $aff | indent 2 }}
{{- end }}
{{- end }}

{{/* Volumes and mounts of the optional TOML config file, and the writable /tmp. */}}
{{- define "swapstats.volumes" -}}
volumes:
  - name: tmp
    emptyDir: {}
{{- if .Values.configToml }}
  - name: config-file
    configMap:
      name: {{ include "swapstats.fullname" . }}-file
{{- end }}
{{- end }}

{{- define "swapstats.volumeMounts" -}}
volumeMounts:
  - name: tmp
    mountPath: /tmp
{{- if .Values.configToml }}
  - name: config-file
    mountPath: /etc/swapstats
    readOnly: true
{{- end }}
{{- end }}

{{/* Container args: the subcommand, then the optional --config file. */}}
{{- define "swapstats.args" -}}
args:
  - {{ .role | quote }}
{{- if .ctx.Values.configToml }}
  - --config
  - /etc/swapstats/config.toml
{{- end }}
{{- range .extra }}
  - {{ . | quote }}
{{- end }}
{{- end }}

{{- define "swapstats.probe" -}}
httpGet:
  path: {{ .path }}
  port: http
{{- toYaml .probe | nindent 0 }}
{{- end }}
