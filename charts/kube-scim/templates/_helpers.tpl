{{/* Chart name. */}}
{{- define "kube-scim.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-kube-scim, or the release name when it contains the chart name. */}}
{{- define "kube-scim.fullname" -}}
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

{{/* chart label value. */}}
{{- define "kube-scim.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels (immutable in a Deployment: never add to these). */}}
{{- define "kube-scim.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kube-scim.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Standard labels. managed-by is Helm: the controller only prunes bindings labelled
app.kubernetes.io/managed-by=kube-scim, so the chart's own RBAC bindings are never its.
*/}}
{{- define "kube-scim.labels" -}}
helm.sh/chart: {{ include "kube-scim.chart" . }}
{{ include "kube-scim.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kube-scim
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* ServiceAccount name. */}}
{{- define "kube-scim.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kube-scim.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- if not .Values.serviceAccount.name }}
{{- fail "serviceAccount.name is required when serviceAccount.create is false" }}
{{- end }}
{{- .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of cluster-scoped objects: unique per release and namespace. */}}
{{- define "kube-scim.clusterName" -}}
{{- printf "%s-%s" (include "kube-scim.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Image reference: digest wins over tag; tag defaults to appVersion. */}}
{{- define "kube-scim.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Public SCIM base URL: scim.baseUrl, else from the ingress host, else empty. */}}
{{- define "kube-scim.baseUrl" -}}
{{- if .Values.scim.baseUrl }}
{{- .Values.scim.baseUrl }}
{{- else if and .Values.ingress.enabled .Values.ingress.host }}
{{- printf "%s://%s%s" (ternary "https" "http" .Values.ingress.tls.enabled) .Values.ingress.host .Values.ingress.path }}
{{- end }}
{{- end }}

{{/* The flag spellings (clap value enums) of the CRD-style values. */}}
{{- define "kube-scim.subjectKindArg" -}}
{{- get (dict "User" "user" "Group" "group" "UserAndGroup" "user-and-group") .Values.controller.subjects.kind }}
{{- end }}
{{- define "kube-scim.userAttributeArg" -}}
{{- get (dict "userName" "user-name" "email" "email" "externalId" "external-id") .Values.controller.subjects.userAttribute }}
{{- end }}
{{- define "kube-scim.groupAttributeArg" -}}
{{- get (dict "externalId" "external-id" "displayName" "display-name") .Values.controller.subjects.groupAttribute }}
{{- end }}

{{/* PodDisruptionBudget API: policy/v1 from Kubernetes 1.21, policy/v1beta1 before. */}}
{{- define "kube-scim.pdbApiVersion" -}}
{{- if semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version }}
{{- print "policy/v1" }}
{{- else }}
{{- print "policy/v1beta1" }}
{{- end }}
{{- end }}
