{{/* Names, labels and computed settings shared by the templates. Kubernetes names are at most
63 characters: every name is truncated there, and suffixes are added before truncating. */}}

{{- define "frugalserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "frugalserve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "frugalserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of a component's resources: <fullname>-<component>, at most .max (default 63)
characters. The full name is cut, not the suffix, so two components never share a name. */}}
{{- define "frugalserve.componentName" -}}
{{- $room := sub (default 63 .max) (add 1 (len .component)) | int }}
{{- printf "%s-%s" (include "frugalserve.fullname" .root | trunc $room | trimSuffix "-") .component }}
{{- end }}

{{- define "frugalserve.operatorName" -}}
{{- include "frugalserve.componentName" (dict "root" . "component" "operator") }}
{{- end }}

{{/* 52 characters: the StatefulSet's controller-revision-hash label appends 11 more. */}}
{{- define "frugalserve.redisName" -}}
{{- include "frugalserve.componentName" (dict "root" . "component" "redis" "max" 52) }}
{{- end }}

{{- define "frugalserve.redisHeadlessName" -}}
{{- include "frugalserve.componentName" (dict "root" . "component" "redis-headless") }}
{{- end }}

{{- define "frugalserve.pricingName" -}}
{{- include "frugalserve.componentName" (dict "root" . "component" "pricing") }}
{{- end }}

{{- define "frugalserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "frugalserve.fullname" .) .Values.serviceAccount.name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "frugalserve.labels" -}}
helm.sh/chart: {{ include "frugalserve.chart" . }}
app.kubernetes.io/name: {{ include "frugalserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component (immutable once deployed). */}}
{{- define "frugalserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "frugalserve.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "frugalserve.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* The Secret and key holding the ledger's Redis password; empty name for none. */}}
{{- define "frugalserve.ledgerPasswordSecretName" -}}
{{- if .Values.redis.enabled }}
{{- default (include "frugalserve.redisName" .) .Values.redis.auth.existingSecret }}
{{- else }}
{{- .Values.ledger.external.passwordSecret.name }}
{{- end }}
{{- end }}

{{- define "frugalserve.ledgerPasswordSecretKey" -}}
{{- if .Values.redis.enabled }}
{{- if .Values.redis.auth.existingSecret }}{{ .Values.redis.auth.existingSecretKey }}{{ else }}password{{ end }}
{{- else }}
{{- .Values.ledger.external.passwordSecret.key }}
{{- end }}
{{- end }}

{{/* The ledger URL as the operator and the Ray pods see it. The password is spliced in by the
kubelet from the LEDGER_PASSWORD variable, so it never appears in the Deployment. */}}
{{- define "frugalserve.ledgerURL" -}}
{{- $url := "" }}
{{- if .Values.redis.enabled }}
{{- $url = printf "redis://%s.%s.svc:6379/0" (include "frugalserve.redisName" .) .Release.Namespace }}
{{- else }}
{{- $url = required "ledger.external.url is required when redis.enabled is false" .Values.ledger.external.url }}
{{- end }}
{{- if include "frugalserve.ledgerPasswordSecretName" . }}
{{- $url = regexReplaceAll "^(rediss?://)" $url "${1}:$(LEDGER_PASSWORD)@" }}
{{- end }}
{{- $url }}
{{- end }}

{{/* Where the pricing ConfigMap is mounted in the operator pod. */}}
{{- define "frugalserve.pricingFile" -}}
/etc/frugalserve/pricing/gpu-prices.json
{{- end }}
