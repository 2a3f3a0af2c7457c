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
{{- end -}}

{{- define "voxbus.labels" -}}
{{ include "voxbus.selector" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* The container parts every voxbus process shares: (dict "root" $ "region" ... "role" ...). */}}
{{- define "voxbus.common" -}}
image: "{{ .root.Values.image.repository }}:{{ .root.Values.image.tag }}"
imagePullPolicy: {{ .root.Values.image.pullPolicy }}
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
