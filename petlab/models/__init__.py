"""Model zoo: every architecture petlab trains, behind one registry (ARCHS)."""

from petlab.models.zoo import ARCHS, ArchSpec, build_model, head_parameters

__all__ = ["ARCHS", "ArchSpec", "build_model", "head_parameters"]
