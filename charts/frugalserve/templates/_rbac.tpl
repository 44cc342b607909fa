{{/* The API access the operator uses: exactly the (apiGroup, resource, verb) set its tests
recorded (tests/fixtures/operator-rbac.json, compared by tests/chart/test_rbac.py). No
wildcards, nothing cluster-scoped: a Role per watched namespace, or the same rules in a
ClusterRole when the operator watches the whole cluster (kopf then watches each resource
cluster-wide and needs no access to Namespace objects). kopf can also watch CRDs to notice
resources appearing at run time; it works without (it warns and scans at start), so that is not
granted. */}}

{{- define "frugalserve.rules" -}}
# ModelDeployments and Tenants: listed and watched by kopf, which patches its progress annotations.
- apiGroups: ["frugalserve.io"]
  resources: ["modeldeployments", "tenants"]
  verbs: ["list", "patch", "watch"]
# Conditions, replicas, live cost, spend.
- apiGroups: ["frugalserve.io"]
  resources: ["modeldeployments/status", "tenants/status"]
  verbs: ["patch"]
# The rendered RayServices (owned by their ModelDeployment), watched for their status; read
# one by one when a create meets one that the watch has not delivered yet (409).
- apiGroups: ["ray.io"]
  resources: ["rayservices"]
  verbs: ["create", "get", "list", "patch", "watch"]
# Tenants' API keys: read one by one to hash them; the key itself never leaves the Secret.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Events about invalid specs and handler outcomes (kopf posts them).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}
