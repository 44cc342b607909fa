"""The Ray Serve application: OpenAI-compatible gateway, model deployments and their config."""
