{{/* Name of every object of the chart. */}}
{{- define "ztunnel.name" -}}
{{- .Values.resourceName | default "ztunnel" -}}
{{- end }}

{{/* Labels of every object of the chart. */}}
{{- define "ztunnel.labels" -}}
app.kubernetes.io/name: {{ include "ztunnel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ambient
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* Container image. */}}
{{- define "ztunnel.image" -}}
{{- $hub := required "hub: the image registry (e.g. registry.example.com/ambient) is required" .Values.hub -}}
{{- printf "%s/%s:%s" $hub .Values.image (.Values.tag | default .Chart.AppVersion | toString) -}}
{{- end }}

{{/* istiod's address: istiod[-<revision>].<istioNamespace>.svc:15012. */}}
{{- define "ztunnel.istiod" -}}
{{- $name := ternary "istiod" (printf "istiod-%s" .Values.revision) (empty .Values.revision) -}}
{{- printf "%s.%s.svc:15012" $name .Values.istioNamespace -}}
{{- end }}
