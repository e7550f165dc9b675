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

{{/* Labels naming the release's pods, both components (never add to these). */}}
{{- define "kube-scim.instanceLabels" -}}
app.kubernetes.io/name: {{ include "kube-scim.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Selector labels of one component's pods (immutable in a Deployment: never add to these).
Called with (dict "ctx" $ "component" "scim"|"controller").
*/}}
{{- define "kube-scim.selectorLabels" -}}
{{ include "kube-scim.instanceLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Standard labels of objects shared by the release. managed-by is Helm: the controller only
prunes bindings labelled app.kubernetes.io/managed-by=kube-scim, so the chart's own RBAC
bindings are never its.
*/}}
{{- define "kube-scim.labels" -}}
helm.sh/chart: {{ include "kube-scim.chart" . }}
{{ include "kube-scim.instanceLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kube-scim
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Standard labels of one component's objects: (dict "ctx" $ "component" ...). */}}
{{- define "kube-scim.componentLabels" -}}
{{ include "kube-scim.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* `<fullname>-<component>`, at most 63 characters (a Service name is a DNS label). */}}
{{- define "kube-scim.componentName" -}}
{{- $max := sub 62 (len .component) | int }}
{{- printf "%s-%s" (include "kube-scim.fullname" .ctx | trunc $max | trimSuffix "-") .component }}
{{- end }}

{{/* ServiceAccount of a component: (dict "ctx" $ "component" ...). */}}
{{- define "kube-scim.serviceAccountName" -}}
{{- $sa := (index .ctx.Values .component).serviceAccount }}
{{- if $sa.create }}
{{- default (include "kube-scim.componentName" .) $sa.name }}
{{- else }}
{{- if not $sa.name }}
{{- fail (printf "%s.serviceAccount.name is required when %s.serviceAccount.create is false" .component .component) }}
{{- end }}
{{- $sa.name }}
{{- end }}
{{- end }}

{{/* Name of cluster-scoped objects: unique per release and namespace. */}}
{{- define "kube-scim.clusterName" -}}
{{- printf "%s-%s" (include "kube-scim.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Cluster-scoped objects of one component: (dict "ctx" $ "component" ...). */}}
{{- define "kube-scim.componentClusterName" -}}
{{- printf "%s-%s" (include "kube-scim.clusterName" .ctx) .component }}
{{- end }}

{{/* Whether the admission webhook is rendered: it is served by the controller pods. */}}
{{- define "kube-scim.webhookEnabled" -}}
{{- if and .Values.webhook.enabled .Values.controller.enabled }}true{{ end }}
{{- end }}

{{/*
Where the API server is, for the NetworkPolicies' egress (JSON: {cidrs, ports, auto}).
NetworkPolicy cannot select the API server by name, so: networkPolicy.apiServer.cidrs
and .ports when set; else the addresses the cluster publishes for it (the Endpoints of
the `kubernetes` Service in `default`, plus the Service's IP for CNIs that match before
translating it), looked up at install and upgrade; else, when there are none to look up
(`helm template`, an API server that publishes no Endpoints), any address on 443 and 6443.
*/}}
{{- define "kube-scim.apiServer" -}}
{{- $cidrs := list }}
{{- $ports := list }}
{{- $auto := false }}
{{- range .Values.networkPolicy.apiServer.cidrs }}
{{- $cidrs = append $cidrs . }}
{{- end }}
{{- range .Values.networkPolicy.apiServer.ports }}
{{- $ports = append $ports (int .) }}
{{- end }}
{{- if not $cidrs }}
{{- $auto = true }}
{{- $ep := lookup "v1" "Endpoints" "default" "kubernetes" }}
{{- $ips := list }}
{{- $epPorts := list }}
{{- if $ep }}
{{- range ($ep.subsets | default list) }}
{{- range (.addresses | default list) }}
{{- $ips = append $ips .ip }}
{{- end }}
{{- range (.ports | default list) }}
{{- $epPorts = append $epPorts (int .port) }}
{{- end }}
{{- end }}
{{- end }}
{{- if $ips }}
{{- $svc := lookup "v1" "Service" "default" "kubernetes" }}
{{- if and $svc $svc.spec $svc.spec.clusterIP }}
{{- $ips = prepend $ips $svc.spec.clusterIP }}
{{- end }}
{{- range (uniq $ips) }}
{{- $cidrs = append $cidrs (printf "%s/%s" . (ternary "128" "32" (contains ":" .))) }}
{{- end }}
{{- if not $ports }}
{{- $ports = uniq (concat (list 443) $epPorts) }}
{{- end }}
{{- else }}
{{- $cidrs = list "0.0.0.0/0" "::/0" }}
{{- end }}
{{- end }}
{{- if not $ports }}
{{- $ports = list 443 6443 }}
{{- end }}
{{- dict "cidrs" $cidrs "ports" $ports "auto" $auto | toJson }}
{{- end }}

{{/* Image reference: digest wins over tag; tag defaults to appVersion. */}}
{{- define "kube-scim.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Public SCIM base URL: scim.baseUrl, else from the ingress host or the HTTPRoute's
first hostname (served by the Gateway's HTTPS listener), else empty. */}}
{{- define "kube-scim.baseUrl" -}}
{{- if .Values.scim.baseUrl }}
{{- .Values.scim.baseUrl }}
{{- else if and .Values.ingress.enabled .Values.ingress.host }}
{{- printf "%s://%s%s" (ternary "https" "http" .Values.ingress.tls.enabled) .Values.ingress.host .Values.ingress.path }}
{{- else if and .Values.httpRoute.enabled .Values.httpRoute.hostnames }}
{{- printf "https://%s%s" (first .Values.httpRoute.hostnames) .Values.httpRoute.path }}
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

{{/*
NetworkPolicy egress of both components, called with (dict "api" <kube-scim.apiServer>
"np" .Values.networkPolicy): the API server (NetworkPolicy cannot name it, so its
addresses: networkPolicy.apiServer, or what the cluster publishes for it), and DNS when
the API server is reached by name (e.g. AKS sets KUBERNETES_SERVICE_HOST to an FQDN).
*/}}
{{- define "kube-scim.networkPolicyEgress" -}}
{{- $api := .api }}
{{- $np := .np }}
- to:
    {{- range $api.cidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    {{- range $api.ports }}
    - port: {{ int . }}
      protocol: TCP
    {{- end }}
{{- if $np.dns.enabled }}
- to:
    - namespaceSelector:
        {{- toYaml $np.dns.namespaceSelector | nindent 8 }}
      {{- with $np.dns.podSelector }}
      podSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end }}
{{- end }}
