{{/* The API access the operator uses: exactly the (apiGroup, resource, verb) set its tests
recorded (tests/fixtures/operator-rbac.json, compared by tests/chart/test_rbac.py). No
wildcards. "namespacedRules" go to a Role per watched namespace, or with "clusterWideRules" to the
ClusterRole when the operator watches the whole cluster; "clusterRules" (cluster-scoped
resources) are always in the ClusterRole. */}}

{{- define "frugalserve.namespacedRules" -}}
# ModelDeployments and Tenants: listed and watched by kopf, which patches its progress annotations.
- apiGroups: ["frugalserve.io"]
  resources: ["modeldeployments", "tenants"]
  verbs: ["list", "patch", "watch"]
# Conditions, replicas, live cost, spend.
- apiGroups: ["frugalserve.io"]
  resources: ["modeldeployments/status", "tenants/status"]
  verbs: ["patch"]
# The rendered RayServices (owned by their ModelDeployment) and their status.
- apiGroups: ["ray.io"]
  resources: ["rayservices"]
  verbs: ["create", "get", "list", "patch", "watch"]
# Tenants' API keys: read one by one to hash them; the key itself never leaves the Secret.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# kopf posts events about handlers and invalid specs.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{- define "frugalserve.clusterRules" -}}
# kopf watches CRDs to notice resources appearing and going.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end }}

{{- define "frugalserve.clusterWideRules" -}}
# kopf discovers the namespaces to serve when watching the whole cluster.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
