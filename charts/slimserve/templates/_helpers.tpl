{{/* Names and labels shared by every template. */}}
{{- define "slimserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "slimserve.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "slimserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "slimserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "slimserve.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "slimserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: slimserve
{{- end -}}

{{- define "slimserve.labels" -}}
{{ include "slimserve.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "slimserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "slimserve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "slimserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "slimserve.workerImage" -}}
{{- printf "%s:%s" .Values.worker.image.repository (default .Chart.AppVersion .Values.worker.image.tag) -}}
{{- end -}}

{{/* The operator's rules: read/patch its CRs, create-or-patch the children it builds, remove the
     ones a decision or a new generation supersedes, read pods (Job results, failure reasons) and Gateways. */}}
{{- define "slimserve.operatorRules" -}}
- apiGroups: ["slimserve.dev"]
  resources: ["compressedmodels"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["slimserve.dev"]
  resources: ["compressedmodels/status"]
  verbs: ["get", "patch", "update"]
# Children set blockOwnerDeletion: OwnerReferencesPermissionEnforcement (OpenShift) checks this.
- apiGroups: ["slimserve.dev"]
  resources: ["compressedmodels/finalizers"]
  verbs: ["update"]
# Jobs and PVCs are created once and never changed; every other child is written with server-side apply
# (the patch verb; create too, for an apply that creates). API discovery is system:discovery's.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "create", "delete"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "create"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["gateways"]
  verbs: ["get"]
{{- end -}}

{{/* kopf peering (one active replica, the others on standby): asked for, or implied by replicaCount > 1. */}}
{{- define "slimserve.peering" -}}
{{- or .Values.peering.enabled (gt (int .Values.replicaCount) 1) -}}
{{- end -}}

{{- define "slimserve.peeringName" -}}
{{- default (include "slimserve.fullname" .) .Values.peering.name -}}
{{- end -}}
