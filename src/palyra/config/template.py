"""The commented configuration `palyra init` writes: the embedded default, spelled out."""

TEMPLATE = """\
# Palyra configuration. Every key is documented in docs/CONFIG.md.
# Environment variables override this file: PALYRA_HOST, PALYRA_PORT, PALYRA_STATE_DIR,
# PALYRA_DATABASE_URL, PALYRA_REDIS_URL, PALYRA_ADMIN_TOKEN, PALYRA_VAULT_KEY, PALYRA_ROUTING_MODE.
# Credentials never go in this file.

[server]
host = "127.0.0.1"
port = 8080
state_dir = "{state_dir}"        # sqlite db, admin token, vault key live here
database_url = ""                # empty: SQLite in state_dir; or postgresql://user@host/db
redis_url = ""                   # empty: in-process state; or redis://127.0.0.1:6379/0

[model_provider]
default_chat_model_id = "deterministic"
default_embeddings_model_id = "hash-embedding-v1"
default_audio_transcription_model_id = "deterministic-transcribe"
failover_enabled = true

# The deterministic provider runs offline: same input, same output. Good for tests and demos.
[[model_provider.providers]]
provider_id = "deterministic"
kind = "deterministic"

[[model_provider.models]]
model_id = "deterministic"
provider_id = "deterministic"
role = "chat"

[[model_provider.models]]
model_id = "hash-embedding-v1"
provider_id = "deterministic"
role = "embeddings"

[[model_provider.models]]
model_id = "deterministic-transcribe"
provider_id = "deterministic"
role = "audio_transcription"

# An OpenAI-compatible upstream (OpenAI, Groq, Together, Ollama, vLLM). The key stays in the
# environment variable named here:
#
# [[model_provider.providers]]
# provider_id = "openai"
# kind = "openai_compatible"
# base_url = "https://api.openai.com/v1"
# api_key_env = "OPENAI_API_KEY"
#
# [[model_provider.models]]
# model_id = "gpt-4o-mini"
# provider_id = "openai"
# role = "chat"
# capabilities = {{ tools = true, vision = true, json_mode = true, max_context_tokens = 128000 }}

[routing]
mode = "suggest"                 # off | suggest | dry_run | enforced

[cron]
memory_maintenance_interval_s = 300
embeddings_backfill_interval_s = 600
embeddings_backfill_batch_size = 64
skill_reaudit_interval_s = 21600

[memory]
ttl_days = 0                     # 0: keep forever
max_entries = 0                  # 0: unlimited
max_bytes = 0
"""
