{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "oauth-token-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's resources: the release name, plus the chart name unless the release
name already contains it.
*/}}
{{- define "oauth-token-operator.fullname" -}}
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

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "oauth-token-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every resource.
*/}}
{{- define "oauth-token-operator.labels" -}}
helm.sh/chart: {{ include "oauth-token-operator.chart" . }}
{{ include "oauth-token-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels selecting the operator pods.
*/}}
{{- define "oauth-token-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "oauth-token-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the ServiceAccount the operator runs as.
*/}}
{{- define "oauth-token-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "oauth-token-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the leader-election Lease: the full name, so two releases in one namespace never share it.
*/}}
{{- define "oauth-token-operator.leaseName" -}}
{{- include "oauth-token-operator.fullname" . }}
{{- end }}

{{/*
Image reference: repository@digest when image.digest is set (the tag is then ignored), else
repository:tag, the tag defaulting to the chart's appVersion.
*/}}
{{- define "oauth-token-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The watched namespaces, without duplicates (a Role per namespace must be unique).
*/}}
{{- define "oauth-token-operator.watchNamespaces" -}}
{{- .Values.watchNamespaces | uniq | toJson }}
{{- end }}

{{/*
Rules the operator needs wherever it watches OAuthTokens: a ClusterRole by default, a Role in each
watched namespace otherwise. Secrets get no `delete`: the Secrets the operator creates are owned
by their OAuthToken and garbage-collected through owner references. Leader election is granted
separately (templates/leader-election-rbac.yaml), in the release namespace only.
*/}}
{{- define "oauth-token-operator.rules" -}}
- apiGroups: ["oauth-token-operator.io"]
  resources: ["oauthtokens"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["oauth-token-operator.io"]
  resources: ["oauthtokens/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "update", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
Flag names (without `=value`) in extraArgs, as a JSON list.
*/}}
{{- define "oauth-token-operator.extraFlags" -}}
{{- $flags := list }}
{{- range .Values.extraArgs }}
{{- $flags = append $flags (regexReplaceAll "=.*$" . "") }}
{{- end }}
{{- toJson $flags }}
{{- end }}

{{/*
Checks of combinations the schema cannot express; rendered from the Deployment template.
*/}}
{{- define "oauth-token-operator.validate" -}}
{{- $extra := include "oauth-token-operator.extraFlags" . | fromJsonArray }}
{{- $owned := dict "--namespace" "watchNamespaces" "--http-addr" "httpPort" "--allow-insecure-http" "allowInsecureHttp" "--no-leader-election" "leaderElection.enabled" "--leader-election-namespace" "leaderElection.enabled (the Lease is in the release namespace)" "--leader-election-lease-name" "fullnameOverride (the Lease is named after the release)" }}
{{- range $flag := $extra }}
{{- if hasKey $owned $flag }}
{{- fail (printf "extraArgs must not set %s: the chart's RBAC, probes or Service depend on it; use %s" $flag (get $owned $flag)) }}
{{- end }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled: without it every replica refreshes the same tokens, and a provider that rotates refresh tokens revokes the grant" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled (the ServiceMonitor scrapes the metrics Service)" }}
{{- end }}
{{- end }}
