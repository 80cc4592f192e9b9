"""Who is calling: API keys → a Principal; teams and keys in a key store."""

from llmplat.auth.base import Authenticator, Principal
from llmplat.auth.registry_auth import RegistryAuthenticator

__all__ = ["Authenticator", "Principal", "RegistryAuthenticator"]
