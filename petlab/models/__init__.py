"""Model zoo: every architecture petlab trains, behind one registry (ARCHS)."""

from petlab.models.zoo import ARCHS, ArchSpec, build_model, head_parameters, rebuild_trained

__all__ = ["ARCHS", "ArchSpec", "build_model", "head_parameters", "rebuild_trained"]
