"""Plain dense training: the baseline every other method is measured against."""

from drt.methods.base import METHODS, Method


@METHODS.register("dense", help="train every weight (the baseline)")
class Dense(Method):
    """No hooks: the loop alone."""
