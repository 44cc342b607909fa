"""frugalserve: a Kubernetes-native model-serving operator that makes every token's cost visible
and bounded. Subpackages: api (CRD models), operator (kopf), serving (Ray Serve app and engine),
ledger (tenant budgets), pricing (cost model)."""

__version__ = "0.1.0"
