"""The kopf operator: thin handlers over pure render/diff functions. Nothing imports it."""
