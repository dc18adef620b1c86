"""Which prefix cache a request may share: its cache salt, from the request and the API key.

The salt enters the root of every block key (kvstore/block_key.py), so requests with
different salts never share a cached block, on any worker or in the store. A client sets
``cache_salt`` (vLLM's extension) to keep its prompts apart; with ``--salt-per-api-key``
the router also salts by API key, so tenants never share a cache whatever they send.
The key enters only as a digest: block keys and KV events must not reveal it.
"""

from __future__ import annotations

import hashlib


def cache_salt_for(request_salt: str | None, api_key: str | None, per_api_key: bool) -> str:
    """The salt the router sends to the workers ("" = the shared cache)."""
    parts = []
    if per_api_key and api_key:
        parts.append("key:" + hashlib.sha256(api_key.encode()).hexdigest()[:32])
    if request_salt:
        parts.append("req:" + request_salt)
    return "|".join(parts)


def bearer_key(authorization: str | None) -> str | None:
    if authorization and authorization.startswith("Bearer "):
        return authorization[7:]
    return None
