{{/* A region as it appears in stream names: "eu-west" -> "EU_WEST" (contracts.streams). */}}
{{- define "voxbus.token" -}}
{{- . | upper | replace "-" "_" -}}
{{- end -}}

{{/* "{region}" and "{role}" filled in: (dict "text" ... "region" ... "role" ...). */}}
{{- define "voxbus.fill" -}}
{{- .text | replace "{region}" .region | replace "{role}" (default "" .role) -}}
{{- end -}}

{{- define "voxbus.selector" -}}
app.kubernetes.io/name: voxbus
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
voxbus.dev/region: {{ .region }}
{{- with .tools }}
voxbus.dev/tools: {{ . }}
{{- end }}
{{- end -}}

{{- define "voxbus.labels" -}}
{{ include "voxbus.selector" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* The container parts every voxbus process shares: (dict "root" $ "region" ... "role" ...
     ["image" <repository, tag, pullPolicy>: the tools workers' own image]). */}}
{{- define "voxbus.common" -}}
{{- $image := default .root.Values.image .image -}}
image: "{{ $image.repository }}:{{ $image.tag }}"
imagePullPolicy: {{ $image.pullPolicy }}
ports:
  - name: health
    containerPort: {{ .root.Values.health.port }}
  - name: metrics
    containerPort: {{ .root.Values.metrics.port }}
readinessProbe:
  httpGet:
    path: /readyz
    port: health
  periodSeconds: 2
  failureThreshold: 2
livenessProbe:
  httpGet:
    path: /livez
    port: health
  initialDelaySeconds: 5
  periodSeconds: 10
  failureThreshold: 3
{{- if .root.Values.credentials.enabled }}
volumeMounts:
  - name: identity
    mountPath: /var/run/voxbus
    readOnly: true
{{- end }}
{{- end -}}

{{- define "voxbus.identityVolume" -}}
{{- if .root.Values.credentials.enabled }}
volumes:
  - name: identity
    secret:
      secretName: {{ include "voxbus.fill" (dict "text" .root.Values.credentials.secretName "region" .region "role" .role) }}
      defaultMode: 0400
{{- end }}
{{- end -}}

{{/* One stage's ScaledObject: (dict "ctx" <labels' context> "name" <its Deployment>
     "stage" <consumer prefix> "s" <its values> "min" <minReplicaCount>). */}}
{{- define "voxbus.scaledObject" -}}
{{- $root := .ctx.root }}
{{- $region := .ctx.region }}
{{- $s := .s }}
{{- $stage := .stage }}
{{- $names := list }}
---
# KEDA scales {{ .name }} on its consumer lag (messages waiting plus
# taken and not yet acked, as KEDA's nats-jetstream scaler reads them from the monitoring
# endpoint): one trigger per consumer ({{ $stage }}-p<n>), summed into one metric, one replica per
# lagThreshold; at or below activationLagThreshold the stage has nothing to do and goes down to
# minReplicaCount ({{ .min }}).
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {{ .name }}
  labels:
    {{- include "voxbus.labels" .ctx | nindent 4 }}
spec:
  scaleTargetRef:
    name: {{ .name }}
  pollingInterval: {{ $root.Values.keda.pollingInterval }}
  cooldownPeriod: {{ $root.Values.keda.cooldownPeriod }}
  minReplicaCount: {{ .min }}
  maxReplicaCount: {{ $s.maxReplicas }}
  triggers:
    {{- range $stream := $s.streams }}
    {{- range $p := until (int $root.Values.partitions) }}
    {{- $name := printf "%s_p%d" (lower $stream) $p }}
    {{- $names = append $names $name }}
    - type: nats-jetstream
      name: {{ $name }}
      metadata:
        natsServerMonitoringEndpoint: {{ include "voxbus.fill" (dict "text" $root.Values.nats.monitoring "region" $region) | quote }}
        account: {{ $root.Values.nats.account | quote }}
        stream: VOXBUS_{{ include "voxbus.token" $region }}_{{ $stream }}
        consumer: {{ $stage }}-p{{ $p }}
        lagThreshold: {{ $s.lagThreshold | quote }}
        activationLagThreshold: {{ $s.activationLagThreshold | quote }}
    {{- end }}
    {{- end }}
  advanced:
    scalingModifiers:
      formula: {{ join " + " $names | quote }}
      target: {{ $s.lagThreshold | quote }}
      activationTarget: {{ $s.activationLagThreshold | quote }}
      metricType: AverageValue
{{- end -}}

{{/* One entry of tools.modules with the shared tools values under it, checked, as YAML:
     (dict "root" $ "module" <entry>). */}}
{{- define "voxbus.toolsModule" -}}
{{- $t := deepCopy (omit .root.Values.tools "modules") }}
{{- range $k, $v := .module }}
{{- /* set, not merge: merge would take a shared value over a module's 0 or "" */}}
{{- if and (kindIs "map" $v) (kindIs "map" (get $t $k)) }}
{{- $_ := set $t $k (merge (deepCopy $v) (get $t $k)) }}
{{- else }}
{{- $_ := set $t $k $v }}
{{- end }}
{{- end }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?$" (toString (default "" $t.name))) }}
{{- fail (printf "tools.modules: name %q must be a short DNS label (a-z, 0-9, '-'; it names voxbus-tools-<name>-<region>)" (toString (default "" $t.name))) }}
{{- end }}
{{- if not $t.module }}
{{- fail (printf "tools.modules[%s]: module is required (what `voxbus tools MODULE` runs)" $t.name) }}
{{- end }}
{{- if or (lt (int $t.replicas) 1) (gt (int $t.replicas) (int $t.maxReplicas)) }}
{{- fail (printf "tools.modules[%s]: replicas must be 1 to maxReplicas (%d): a tool call cannot wait for a pod to start" $t.name (int $t.maxReplicas)) }}
{{- end }}
{{- toYaml $t }}
{{- end -}}
