{{/* Name of the controller's objects. */}}
{{- define "waypoint-controller.name" -}}
{{- .Values.resourceName | default "waypoint-controller" -}}
{{- end }}

{{/* Labels of every object of the chart. */}}
{{- define "waypoint-controller.labels" -}}
app.kubernetes.io/name: {{ include "waypoint-controller.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ambient
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* Image of the controller. */}}
{{- define "waypoint-controller.image" -}}
{{- $hub := required "hub: the image registry (e.g. registry.example.com/ambient) is required" .Values.hub -}}
{{- printf "%s/%s:%s" $hub .Values.image (.Values.tag | default .Chart.AppVersion | toString) -}}
{{- end }}

{{/* Where the waypoints read their L7 configuration: namespace or cluster (waypoint.configScope). */}}
{{- define "waypoint-controller.configScope" -}}
{{- $scope := .Values.waypoint.configScope | default "namespace" | toString -}}
{{- if not (has $scope (list "namespace" "cluster")) -}}
{{- fail (printf "waypoint.configScope must be namespace or cluster, got %v" $scope) -}}
{{- end -}}
{{- $scope -}}
{{- end }}

{{/*
The controller's configuration file (config.yaml of the ConfigMap): its GatewayClass and what
goes into every waypoint it creates. `waypoint.env` is the waypoint container's environment
besides what the controller sets per Gateway (WAYPOINT_NAME, SERVICE_ACCOUNT, POD_NAMESPACE,
INSTANCE_IP).
*/}}
{{- define "waypoint-controller.config" -}}
{{- $w := .Values.waypoint -}}
{{- if not (regexMatch "^[1-9][0-9]*$" (toString $w.terminationGracePeriodSeconds)) -}}
{{- fail (printf "waypoint.terminationGracePeriodSeconds must be a positive whole number of seconds, got %v" $w.terminationGracePeriodSeconds) -}}
{{- end -}}
{{- $grace := int $w.terminationGracePeriodSeconds -}}
{{- $drain := ternary (max (sub $grace 5) 1) (max (sub $grace 1) 1) (gt $grace 10) -}}
{{- $hub := $w.hub | default .Values.hub -}}
{{- $tag := $w.tag | default .Values.tag | default .Chart.AppVersion | toString -}}
{{- $env := dict
  "RUST_LOG" (toString $w.logLevel)
  "TRUST_DOMAIN" (toString $w.trustDomain)
  "CLUSTER_DOMAIN" (toString $w.clusterDomain)
  "ACCESS_LOG_ENCODING" (toString $w.accessLog.encoding)
  "ACCESS_LOG_FILE" (toString $w.accessLog.file)
  "TERMINATION_DRAIN_DURATION_SECONDS" (toString $drain)
-}}
{{- range $name, $value := $w.env -}}
{{- $_ := set $env $name (toString $value) -}}
{{- end -}}
{{- $waypoint := dict
  "image" (printf "%s/%s:%s" (required "waypoint.hub or hub is required" $hub) $w.image $tag)
  "imagePullPolicy" $w.imagePullPolicy
  "imagePullSecrets" $w.imagePullSecrets
  "replicas" $w.replicas
  "terminationGracePeriodSeconds" $grace
  "env" $env
  "resources" $w.resources
  "podLabels" $w.podLabels
  "podAnnotations" $w.podAnnotations
  "nodeSelector" $w.nodeSelector
  "tolerations" $w.tolerations
  "affinity" $w.affinity
  "topologySpreadConstraints" $w.topologySpreadConstraints
  "configScope" (include "waypoint-controller.configScope" .)
  "configClusterRole" (printf "%s-waypoint-config" (include "waypoint-controller.name" .))
-}}
{{- toYaml (dict
  "gatewayClassName" .Values.gatewayClass.name
  "controllerName" .Values.gatewayClass.controllerName
  "watchNamespaces" .Values.watchNamespaces
  "meshConfig" (dict "namespace" .Values.meshConfig.namespace "name" .Values.meshConfig.name)
  "waypoint" $waypoint
) -}}
{{- end }}
