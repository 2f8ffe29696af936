"""The local model registry (versions, statuses, model cards) and promotion into it."""

from petlab.registry.store import STATUSES, Registry, RegistryError, model_name, registry_root

__all__ = ["STATUSES", "Registry", "RegistryError", "model_name", "registry_root"]
