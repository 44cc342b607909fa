"""The ModelDeployment and Tenant resources as pydantic models: the one source of truth for the
CRDs, the operator, local mode and the serving config."""
