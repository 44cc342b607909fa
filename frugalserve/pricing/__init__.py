"""The cost model: GPU-hour prices, live $/1M tokens, tenant charges and margin."""
