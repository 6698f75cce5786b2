{{/* The release's objects' name: fleetwatch, or <release>-fleetwatch when the release is named otherwise */}}
{{- define "fleetwatch.fullname" -}}
{{- if contains "fleetwatch" .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-fleetwatch" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "fleetwatch.labels" -}}
app.kubernetes.io/name: fleetwatch
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "fleetwatch.selectorLabels" -}}
app.kubernetes.io/name: fleetwatch
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The fleet config's text: the value, or the chart's default */}}
{{- define "fleetwatch.configText" -}}
{{- if .Values.config -}}{{ .Values.config }}{{- else -}}{{ .Files.Get "files/fleet.yaml" }}{{- end -}}
{{- end -}}

{{/* The fleet config parsed, for the checks and the choices below (discovery, source) */}}
{{- define "fleetwatch.config" -}}
{{- $cfg := include "fleetwatch.configText" . | fromYaml -}}
{{- if hasKey $cfg "Error" -}}
{{- fail (printf "config: not YAML: %s" $cfg.Error) -}}
{{- end -}}
{{- toJson $cfg -}}
{{- end -}}

{{/* Plan files: the value, or with the default config the chart's own */}}
{{- define "fleetwatch.plans" -}}
{{- if .Values.config -}}{{ toJson .Values.plans }}
{{- else -}}{{ toJson (merge (dict "h100-plan.yaml" (.Files.Get "files/h100-plan.yaml") "a100-plan.yaml" (.Files.Get "files/a100-plan.yaml")) .Values.plans) }}
{{- end -}}
{{- end -}}

{{- define "fleetwatch.image" -}}
{{- if .Values.image.digest -}}{{ printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else -}}{{ printf "%s:%s" .Values.image.repository .Values.image.tag }}{{- end -}}
{{- end -}}

{{/* Labels kube-prometheus-stack selects a monitor by, and the monitors' own */}}
{{- define "fleetwatch.monitorLabels" -}}
{{- $l := merge (dict) .Values.monitors.labels .Values.prometheusSelectorLabels -}}
{{- if $l }}{{ toYaml $l }}{{ end -}}
{{- end -}}

{{- define "fleetwatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.name -}}{{ .Values.serviceAccount.name }}{{- else -}}{{ include "fleetwatch.fullname" . }}{{- end -}}
{{- end -}}

{{/* The pod labels of the chosen GPU install's dcgm-exporter */}}
{{- define "fleetwatch.dcgmPodLabels" -}}
{{- if eq .Values.gpu.install "gpu-operator" -}}app: nvidia-dcgm-exporter
{{- else -}}app.kubernetes.io/name: dcgm-exporter{{- end -}}
{{- end -}}

{{/* Whether this mode runs a fleetwatch Deployment */}}
{{- define "fleetwatch.evaluator" -}}
{{- if ne .Values.mode "sidecar" -}}true{{- end -}}
{{- end -}}
