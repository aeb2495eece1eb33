"""Forward operators: linear (with exact adjoints) and nonlinear, all differentiable and batched.

=====================  ====================================================================
operator               measurement
=====================  ====================================================================
:class:`Identity`      denoising, :math:`y = x + \\varepsilon`
:class:`Inpainting`    observed pixels (mask), zeros elsewhere
:class:`CompressedSensing`  :math:`m` random projections (dense Gaussian or structured DCT)
:class:`Blur`          circular convolution with a Gaussian/motion/custom kernel (FFT)
:class:`SuperResolution`  blur then stride-``factor`` subsampling
:class:`MRI`           subsampled orthonormal 2-D FFT, k-space as a real trailing axis of 2
:class:`Radon`         parallel-beam CT (full, limited-angle, sparse-view), with FBP
:class:`Eikonal`       first-arrival traveltimes (fast sweeping, adjoint-state gradients)
:class:`MatrixOperator`  any dense matrix
=====================  ====================================================================
"""

from .base import LinearOperator, Operator, adjointness_error, conjugate_gradient
from .blur import Blur, SuperResolution, gaussian_kernel, motion_kernel
from .compressed_sensing import CompressedSensing
from .denoise import Identity
from .eikonal import Eikonal
from .mask import Inpainting
from .matrix import MatrixOperator, random_gaussian_matrix
from .mri import MRI, cartesian_mask, radial_mask, random_mask
from .tomography import Radon

__all__ = [
    "Operator", "LinearOperator", "adjointness_error", "conjugate_gradient",
    "Identity", "Inpainting", "CompressedSensing", "Blur", "SuperResolution", "gaussian_kernel",
    "motion_kernel", "MRI", "cartesian_mask", "radial_mask", "random_mask", "Radon",
    "MatrixOperator", "random_gaussian_matrix", "Eikonal",
]
