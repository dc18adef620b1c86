"""The router: OpenAI gateway, KV-aware scheduler, global prefix index, discovery, failover."""
