"""Figures and comparison reports built from run records."""
