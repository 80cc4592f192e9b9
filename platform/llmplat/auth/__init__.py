"""Who is calling: API keys → a Principal. Team keys and stores plug in here."""

from llmplat.auth.base import Authenticator, Principal
from llmplat.auth.dev import DevKeyAuthenticator

__all__ = ["Authenticator", "DevKeyAuthenticator", "Principal"]
