{{/* Full name: release-chart, or the release name when it already holds the chart name. */}}
{{- define "ohs.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ohs.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "ohs.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ohs.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "ohs.labels" -}}
{{ include "ohs.selectorLabels" . }}
app.kubernetes.io/part-of: odoo-ha-session
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "ohs.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ohs.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ohs.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "ohs.sidecarImage" -}}
{{- default (printf "ghcr.io/odoo-ha-session/sidecar:%s" .Chart.AppVersion) .Values.defaultImages.sidecar -}}
{{- end -}}

{{/* Names shared by the Deployment's env, the Service, the webhook configuration and RBAC. */}}
{{- define "ohs.webhookService" -}}{{ include "ohs.fullname" . }}-webhook{{- end -}}
{{- define "ohs.webhookConfig" -}}{{ include "ohs.fullname" . }}{{- end -}}
{{- define "ohs.tlsSecret" -}}{{ include "ohs.fullname" . }}-webhook-tls{{- end -}}
{{- define "ohs.lease" -}}{{ include "ohs.fullname" . }}-leader{{- end -}}
{{- define "ohs.certificate" -}}{{ include "ohs.fullname" . }}-webhook{{- end -}}

{{- define "ohs.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) -}}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: two controllers would reconcile at once" -}}
{{- end -}}
{{- end -}}
