"""Open the configured key store and quota store (one place for the backend choice)."""

from __future__ import annotations

from pathlib import Path

from llmplat.auth.store import KeyStore
from llmplat.quotas.model import QuotaStore
from llmplat.settings import KeyStoreSettings, QuotaSettings


def open_key_store(settings: KeyStoreSettings, default_path: Path) -> KeyStore:
    if settings.backend == "kubernetes":
        from llmplat.auth.kube_store import KubernetesKeyStore

        return KubernetesKeyStore.from_environment(
            settings.namespace, str(settings.kubeconfig) if settings.kubeconfig else None
        )
    from llmplat.auth.file_store import FileKeyStore

    return FileKeyStore(settings.path or default_path)


def open_quota_store(settings: QuotaSettings) -> QuotaStore:
    if settings.backend == "redis":
        from llmplat.quotas.redis_store import RedisQuotaStore

        settings.check()
        assert settings.redis_url is not None
        return RedisQuotaStore(
            settings.redis_url.get_secret_value(), key_prefix=settings.key_prefix
        )
    from llmplat.quotas.memory import MemoryQuotaStore

    return MemoryQuotaStore()
