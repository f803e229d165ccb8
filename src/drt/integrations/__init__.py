"""Integrations with other trainers (optional dependencies): ``drt.integrations.lightning.DrtCallback``."""
