"""HTTP surfaces: the OpenAI-compatible /v1 API and the admin /api/v1 API."""
