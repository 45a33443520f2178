"""Boring models and data for tests."""

from tests.helpers.models import BoringModel, RandomRegression, regression_loader

__all__ = ["BoringModel", "RandomRegression", "regression_loader"]
