"""Forward operators: linear (with exact adjoints) and nonlinear, all differentiable and batched."""

from .base import LinearOperator, Operator, adjointness_error, conjugate_gradient

__all__ = ["Operator", "LinearOperator", "adjointness_error", "conjugate_gradient"]
