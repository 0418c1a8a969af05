{{- define "openelb.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains "openelb" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (default "openelb" .Values.nameOverride) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "openelb.labels" -}}
app.kubernetes.io/name: openelb
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "openelb.controller.selector" -}}
app: openelb
component: controller
{{- end -}}

{{- define "openelb.speaker.selector" -}}
app: openelb
component: speaker
{{- end -}}

{{- define "openelb.image" -}}
{{- $tag := .image.tag | default .root.Values.global.tag | default .root.Chart.AppVersion -}}
{{- printf "%s/%s:%s" .root.Values.global.imageRegistry .image.repository $tag -}}
{{- end -}}

{{- define "openelb.controller.sa" -}}
{{- default (printf "%s-controller" (include "openelb.fullname" .)) .Values.controller.serviceAccountName -}}
{{- end -}}

{{- define "openelb.speaker.sa" -}}
{{- default (printf "%s-speaker" (include "openelb.fullname" .)) .Values.speaker.serviceAccountName -}}
{{- end -}}
