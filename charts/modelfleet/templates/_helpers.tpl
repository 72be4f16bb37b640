{{- define "modelfleet.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{ else }}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{ end }}
{{- end }}

{{- define "modelfleet.labels" -}}
app.kubernetes.io/name: modelfleet-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "modelfleet.selectorLabels" -}}
app.kubernetes.io/name: modelfleet-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "modelfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}{{ default (include "modelfleet.fullname" .) .Values.serviceAccount.name }}{{ else }}{{ default "default" .Values.serviceAccount.name }}{{ end }}
{{- end }}

{{- define "modelfleet.router.fullname" -}}
{{- printf "%s-router" (include "modelfleet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "modelfleet.router.labels" -}}
app.kubernetes.io/name: modelfleet-router
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: router
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "modelfleet.router.selectorLabels" -}}
app.kubernetes.io/name: modelfleet-router
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "modelfleet.router.serviceAccountName" -}}
{{- if .Values.router.serviceAccount.create }}{{ default (include "modelfleet.router.fullname" .) .Values.router.serviceAccount.name }}{{ else }}{{ default "default" .Values.router.serviceAccount.name }}{{ end }}
{{- end }}
