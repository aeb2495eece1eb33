r"""Eikonal traveltime tomography: first-arrival traveltimes of point sources in a 2-D medium.

The forward operator maps a velocity (or slowness) image to the traveltimes
:math:`T(\mathbf x_r;\mathbf x_s)` of every source–receiver pair, where ``T`` solves the
eikonal equation

.. math:: |\nabla T(\mathbf x)| = s(\mathbf x) = 1/v(\mathbf x), \qquad T(\mathbf x_s) = 0 .

**Discretisation (factored eikonal).** The point-source singularity of ``T`` makes the plain
first-order scheme converge like :math:`O(h\log(1/h))`. We solve instead the multiplicatively
factored equation of Fomel, Luo & Zhao (2009, *J. Comput. Phys.* 228, "Fast sweeping method for
the factored eikonal equation"): :math:`T = T_0\,\tau` with the constant-slowness solution
:math:`T_0 = s_0\,|\mathbf x - \mathbf x_s|`, :math:`s_0 = s(\mathbf x_s)`, so that

.. math:: |T_0\nabla\tau + \tau\nabla T_0|^2 = s^2 ,

discretised with first-order upwind (Godunov) differences for :math:`\nabla\tau` and the exact
:math:`\nabla T_0`. In grid units (:math:`\rho = |\mathbf x-\mathbf x_s|/h`,
:math:`\mathbf q = (\mathbf x-\mathbf x_s)/|\mathbf x-\mathbf x_s|`, upwind neighbour
:math:`\tau_d` in direction ``d`` on side :math:`\sigma_d=\pm1`, :math:`g_d=\rho+\sigma_d q_d`,
:math:`S = s/s_0`) the node equation is

.. math::
    (g_x\tau-\rho\tau_x)^2 + (g_z\tau-\rho\tau_z)^2 = S^2
    \quad\text{(2-D update, valid if } g_d\tau\ge\rho\tau_d\text{)},\qquad
    g_d\tau - \rho\tau_d = S \quad\text{(1-D update)} ,

whose smallest valid root is taken (Zhao 2005's Godunov rule, generalised). The upwind
neighbour in each direction is the one with the smaller :math:`T`. It is exact for a constant
velocity (:math:`\tau\equiv1`) and first-order accurate, without the source log-factor,
otherwise. :math:`\tau(\mathbf x_s) = 1`.

**Fast sweeping (Zhao 2005, *Math. Comp.* 74).** Gauss–Seidel updates
:math:`\tau \leftarrow \min(\tau, \tau^{\text{new}})` in the four alternating orderings
(i↑ j↑), (i↓ j↑), (i↓ j↓), (i↑ j↓), repeated until the largest change of ``τ`` in one cycle is
below ``tol`` (or, by default, the 4 orderings run concurrently on copies merged by ``min``:
Zhao 2007's parallel sweeping). A node in ordering (i↑ j↑) only reads its neighbours on the
previous anti-diagonal ``i + j - 1``, so each anti-diagonal is updated at once, vectorised over
the batch of images and sources — the result is identical to the sequential sweep. The
monotone ``min`` update can leave a few nodes slightly below their own candidate, so once it
has converged the solver checks ``τ = τ^new(τ)`` at all nodes (one Jacobi step) and, where
needed, finishes with plain Gauss–Seidel sweeps ``τ ← τ^new(τ)``: at exit every node satisfies
its discrete equation to ``tol``, which is what the adjoint below differentiates.

**Gradients (adjoint state).** At convergence every node satisfies one fixed upwind equation
:math:`F(\tau, s) = 0` (Leung & Qian 2006, *Commun. Math. Sci.* 4; Taillandier et al. 2009,
*Geophysics* 74). Differentiating it, the gradient of a loss ``L`` of the traveltimes is

.. math:: J^\top\lambda = \partial L/\partial\tau,\qquad
          \nabla_s L = -(\partial F/\partial s)^\top \lambda ,

with :math:`J = \partial F/\partial\tau` sparse (at most 3 entries per row; causal, i.e.
essentially triangular in the order of increasing ``T``). ``J`` is built with vectorised numpy and solved with
``scipy.sparse.linalg.spsolve`` **on the CPU** (tensors are moved to the CPU inside
``backward`` only, in float64); nothing is backpropagated through the sweeps. The dependence of
every equation on :math:`s_0` (through :math:`S` and :math:`T_0`) is included; velocity
parametrisation uses the chain rule through :math:`s = 1/v` (autograd).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._checks import Shape, check_choice, check_int, check_positive
from .base import Operator, _flatten_check

_GEOMETRIES = ("crosswell", "surface")
_PARAMETRIZATIONS = ("velocity", "slowness")
_BIG = 1e10  # "not yet reached": finite so that the update needs no isfinite masks


class Eikonal(Operator):
    r"""First-arrival traveltimes ``(B, 1, H, W) -> (B, n_sources, n_receivers)``.

    Solves :math:`|\nabla T| = s` (factored eikonal, fast sweeping) for each source and reads
    ``T`` at the receiver grid nodes; see the module docstring for the scheme and the
    adjoint-state gradient.

    Parameters
    ----------
    in_shape
        ``(1, H, W)`` with ``H, W >= 3``; row index ``i`` is depth ``z = i h``, column ``j`` is
        ``x = j h``.
    spacing
        Grid spacing ``h`` (same in both directions), in the length unit of the velocity.
    sources, receivers
        Optional explicit positions: integer arrays of shape ``(n, 2)`` holding grid indices
        ``(row, col)``. When given, they override ``geometry``/``n_sources``/``n_receivers``.
    geometry
        ``"crosswell"``: sources on the left edge (column 0), receivers on the right edge
        (column ``W-1``); ``"surface"``: both on the top edge (row 0). Positions are equally
        spaced along the edge, end points included, rounded to grid nodes.
    n_sources, n_receivers
        Number of sources / receivers for the built-in geometries (``n_receivers`` defaults to
        ``n_sources``); must not exceed the number of nodes along the edge.
    parametrization
        ``"velocity"`` (input ``v``, ``s = 1/v``) or ``"slowness"`` (input ``s``).
    max_sweeps
        Maximum number of fast-sweeping iterations, each made of the 4 alternating orderings.
    tol
        Stop when the largest change of the factor ``τ = T/T_0`` (dimensionless, ≈ 1) in one
        iteration is ``<= tol``. Use ~1e-10 in float64 when gradients are checked against
        finite differences.
    sweeps
        ``"parallel"`` (default; Zhao 2007, *J. Comput. Math.* 25): the 4 orderings of one
        iteration run at once on 4 copies of ``τ`` that are then merged by ``min`` — 4x fewer
        sequential steps, a few more iterations, about 2x faster on CPU. ``"alternating"``:
        the classical Gauss–Seidel sweeps one ordering after the other (Zhao 2005). Both
        converge to the same discrete solution.

    Notes
    -----
    ``last_n_sweeps`` holds the number of iterations of the last solve. Cost per iteration is
    ``H + W - 1`` (parallel) or ``4 (H + W - 1)`` (alternating) vectorised anti-diagonal
    updates over all ``B * n_sources`` problems.
    """

    def __init__(self, in_shape: Shape = (1, 64, 64), spacing: float = 1.0, *,
                 sources: object = None, receivers: object = None,
                 geometry: str = "crosswell", n_sources: int = 16, n_receivers: int | None = None,
                 parametrization: str = "velocity", max_sweeps: int = 50,
                 tol: float = 1e-5, sweeps: str = "parallel") -> None:
        shape = _check_in_shape(in_shape)
        _, H, W = shape
        self.spacing = check_positive(spacing, "spacing")
        self.geometry = check_choice(geometry, "geometry", _GEOMETRIES)
        self.parametrization = check_choice(parametrization, "parametrization", _PARAMETRIZATIONS)
        self.max_sweeps = check_int(max_sweeps, "max_sweeps")
        self.sweeps = check_choice(sweeps, "sweeps", ("alternating", "parallel"))
        self.tol = check_positive(tol, "tol", allow_zero=True)
        if sources is None:
            src = _edge_positions(self.geometry, check_int(n_sources, "n_sources"), H, W,
                                  "n_sources", receiver=False)
        else:
            src = _check_positions(sources, "sources", H, W)
        if receivers is None:
            n_rec = src.shape[0] if n_receivers is None else check_int(n_receivers, "n_receivers")
            rec = _edge_positions(self.geometry, n_rec, H, W, "n_receivers", receiver=True)
        else:
            rec = _check_positions(receivers, "receivers", H, W)
        super().__init__(shape, (src.shape[0], rec.shape[0]))
        self.register_buffer("sources", torch.from_numpy(src))
        self.register_buffer("receivers", torch.from_numpy(rec))
        self._geo = _source_geometry(src, H, W)  # float64 numpy statics (grid units)
        self._cache: dict[tuple[torch.device, torch.dtype], _Stencil] = {}
        self.last_n_sweeps = 0

    # -- operator ---------------------------------------------------------------------------
    def _slowness(self, x: Tensor) -> Tensor:
        """Validate a batch ``(B, 1, H, W)`` and return the slowness ``(B, H, W)``."""
        name = "x (velocity)" if self.parametrization == "velocity" else "x (slowness)"
        if not x.is_floating_point():
            raise TypeError(f"{name}: expected a floating tensor, got {x.dtype}")
        if not bool(torch.isfinite(x).all()) or not bool((x > 0).all()):
            raise ValueError(f"{name}: must be finite and > 0 everywhere "
                             f"(min {float(x.min()):.3g})")
        return (1.0 / x if self.parametrization == "velocity" else x)[:, 0]

    def _forward(self, x: Tensor) -> Tensor:
        s = self._slowness(x)  # (B, H, W)
        tau_rec = _EikonalSolve.apply(s, self)  # (B, ns, nr)
        s0 = s[:, self.sources[:, 0], self.sources[:, 1]]  # (B, ns)
        rho_rec = self._stencil(s.device, s.dtype).rho_rec  # |x_r - x_s| / h
        return s0[:, :, None] * self.spacing * rho_rec * tau_rec  # T = s_0 h rho tau

    def traveltime(self, x: Tensor) -> Tensor:
        """Full traveltime fields ``(B, n_sources, H, W)`` (no gradient), for plots and checks."""
        s = self._slowness(_flatten_check(x, self.in_shape, "x"))
        with torch.no_grad():
            tau = self._solve(s)
        s0 = s[:, self.sources[:, 0], self.sources[:, 1]]
        rho = self._stencil(s.device, s.dtype).rho
        return s0[:, :, None, None] * self.spacing * rho * tau

    def _settings(self) -> dict[str, object]:
        return {"spacing": self.spacing, "geometry": self.geometry,
                "parametrization": self.parametrization, "max_sweeps": self.max_sweeps,
                "tol": self.tol, "sweeps": self.sweeps, "sources": self.sources.tolist(),
                "receivers": self.receivers.tolist(), "scheme": "factored FSM (Fomel+ 2009)"}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, spacing={self.spacing}, geometry={self.geometry!r}, "
                f"parametrization={self.parametrization!r}")

    # -- fast sweeping ------------------------------------------------------------------------
    def _stencil(self, device: torch.device, dtype: torch.dtype) -> _Stencil:
        key = (device, dtype)
        if key not in self._cache:
            st = _Stencil(self._geo, self.in_shape[1], self.in_shape[2], device, dtype)
            rec = self.receivers.cpu().numpy()
            st.rho_rec = torch.as_tensor(self._geo["rho"][:, rec[:, 0], rec[:, 1]], dtype=dtype,
                                         device=device)
            st.rho = torch.as_tensor(self._geo["rho"], dtype=dtype, device=device)
            self._cache[key] = st
        return self._cache[key]

    @torch.no_grad()
    def _solve(self, s: Tensor) -> Tensor:
        r"""Converged factor :math:`\tau` of shape ``(B, n_sources, H, W)`` for slowness ``s``."""
        st = self._stencil(s.device, s.dtype)
        B, H, W = s.shape
        ns = self.sources.shape[0]
        s0 = s[:, self.sources[:, 0], self.sources[:, 1]]  # (B, ns)
        spad = torch.nn.functional.pad(s, (1, 1, 1, 1), value=1.0).reshape(B, -1)
        S = spad.T[:, :, None] / s0  # (P, B, ns)
        tau = s.new_full(((H + 2) * (W + 2), B, ns), _BIG)
        tau[st.src_p, :, torch.arange(ns, device=s.device)] = 1.0
        inf = s.new_tensor(math.inf)
        parallel = self.sweeps == "parallel"
        if parallel:
            S_par = [S[nodes] for nodes in st.par_nodes]
            tau4 = tau.repeat(4, 1, 1)  # 4 copies, one per ordering
        S_diag = [[S_f[sl] for sl in slices] for S_f, slices in
                  zip((S[fi] for fi in st.fam_idx), st.fam_slices, strict=True)]
        # Phase 1: monotone updates tau <- min(tau, cand) (robust from the BIG start).
        # Phase 2 ("polish"): plain Gauss-Seidel tau <- cand(tau) in the alternating orderings,
        # so that every node satisfies its upwind equation F = 0 exactly (the min-update can
        # leave a few nodes below their candidate, which the adjoint would not see).
        assign = False
        converged = False
        for n_it in range(1, self.max_sweeps + 1):
            self.last_n_sweeps = n_it
            prev = tau[st.interior]
            if parallel and not assign:
                for k, d in enumerate(st.par_steps):
                    _update_diagonal(tau4, S_par[k], d, inf)
                tau = tau4.view(4, *tau.shape).amin(0)
                tau4.view(4, *tau.shape).copy_(tau.expand(4, *tau.shape))
            else:
                for fam, reverse in ((0, False), (1, True), (0, True), (1, False)):
                    diags, Sd = st.diags[fam], S_diag[fam]
                    order = range(len(diags) - 1, -1, -1) if reverse else range(len(diags))
                    for k in order:
                        _update_diagonal(tau, Sd[k], diags[k], inf, assign)
            if float((prev - tau[st.interior]).abs().max()) <= self.tol:
                # check F = 0 at every node at once (one vectorised Jacobi step)
                if assign or float(_update_diagonal(tau, S[st.interior], st.all_nodes, inf,
                                                    True)) <= self.tol:
                    converged = True
                    break
                assign = True
        if not converged:
            warnings.warn(f"Eikonal: fast sweeping did not reach tol={self.tol} in "
                          f"max_sweeps={self.max_sweeps} iterations", RuntimeWarning,
                          stacklevel=3)
        return tau[st.interior].reshape(H, W, B, ns).permute(2, 3, 0, 1)


def _update_diagonal(tau: Tensor, S: Tensor, d: tuple, inf: Tensor,
                     assign: bool = False) -> Tensor:
    """One Godunov update of all nodes of one anti-diagonal (in place), batched.

    ``tau`` is ``(P, B, ns)`` on the padded grid (unknown nodes hold ``_BIG``); ``S`` is the
    diagonal's ``s / s_0`` ``(L, B, ns)``; the statics in ``d`` broadcast as ``(.., L, 1, ns)``.
    ``assign=False``: ``tau <- min(tau, cand)``; ``True``: ``tau <- cand``. Returns the largest
    change (a 0-d tensor).
    """
    idx, nbi, rho_nb, inv_rho, h0, h1 = d
    L = idx.shape[0]
    t = tau.index_select(0, nbi).view(2, 2, L, *tau.shape[1:])  # (z|x, first|second, L, B, ns)
    t0, t1 = t.unbind(1)
    w0, w1 = (t * rho_nb).unbind(1)  # T / (s_0 h) at the neighbours: upwind = smaller T
    m = w0 <= w1
    ts = torch.where(m, t0, t1)  # (2, L, B, ns): upwind tau_z, tau_x
    hs = torch.where(m, h0, h1)  # sigma_d q_d / rho;  g_d / rho = 1 + hs
    gs = 1.0 + hs
    R = S * inv_rho
    c1 = ((ts + R) / gs).amin(0)  # 1-D updates:  g_d tau - rho tau_d = S
    # 2-D update in the shifted unknown delta = tau - tau_z (no cancellation at large rho):
    # sum_d (gs_d delta - b_d)^2 = R^2,  b_d = tau_d - tau_z - hs_d tau_z.
    tz = ts[0]
    b = ts - tz - hs * tz
    A = (gs * gs).sum(0)
    Bq = (gs * b).sum(0)
    C = (b * b).sum(0) - R * R
    disc = Bq * Bq - A * C
    delta = (Bq + disc.clamp_min(0.0).sqrt()) / A
    ok = (disc >= 0) & (gs * delta >= b).all(0)  # upwind (causal) in both axes
    cand = torch.fmin(c1, torch.where(ok, tz + delta, inf))
    # At a source node inv_rho = inf, so cand = inf and tau keeps its value 1.
    old = tau.index_select(0, idx)
    new = torch.where(torch.isinf(cand), old, cand) if assign else torch.fmin(old, cand)
    tau.index_copy_(0, idx, new)
    return (new - old).abs().max()


class _Stencil:
    """Per-(device, dtype) anti-diagonal index sets and static coefficients of the sweeps."""

    def __init__(self, geo: dict, H: int, W: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        Wp = W + 2
        ii, jj = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
        pidx = (ii + 1) * Wp + (jj + 1)
        rho = geo["rho"]
        ns = rho.shape[0]
        rho_pad = np.ones((ns, H + 2, Wp))
        rho_pad[:, 1:-1, 1:-1] = rho
        rho_pad = rho_pad.reshape(ns, -1)
        safe = np.where(rho > 0, rho, 1.0)
        inv_rho = np.where(rho > 0, 1.0 / safe, np.inf)  # inf pins the source node
        # sigma_d q_d / rho for (z: up, down), (x: left, right), shape (2, 2, ns, H, W)
        hz, hx = geo["qz"] / safe, geo["qx"] / safe
        hh = np.stack([np.stack([hz, -hz]), np.stack([hx, -hx])])

        def T(a: np.ndarray, dt=dtype) -> Tensor:
            return torch.as_tensor(np.ascontiguousarray(a), dtype=dt, device=device)

        P = (H + 2) * Wp

        def raw_nodes(mi: np.ndarray, mj: np.ndarray) -> tuple:
            p = pidx[mi, mj]
            L = p.size
            nb = np.stack([p - Wp, p + Wp, p - 1, p + 1])  # up, down, left, right
            # statics laid out (.., L, 1, ns) to broadcast against (L, B, ns)
            rnb = rho_pad[:, nb.ravel()].reshape(ns, 2, 2, L).transpose(1, 2, 3, 0)[..., None, :]
            ir = inv_rho[:, mi, mj].T[:, None]
            hd = hh[:, :, :, mi, mj].transpose(0, 1, 3, 2)[:, :, :, None]  # (2, 2, L, 1, ns)
            return p, nb, rnb, ir, hd

        p, nb, rnb, ir, hd = raw_nodes(ii.ravel(), jj.ravel())
        self.all_nodes = self._pack(p, nb.ravel(), rnb, ir, hd, T)  # one Jacobi step
        self.diags: list[list[tuple]] = []
        self.fam_idx: list[Tensor] = []
        self.fam_slices: list[list[slice]] = []
        pieces: list[list[tuple]] = []
        for keys in (ii + jj, ii - jj):
            fam, slices, order, raw = [], [], [], []
            start = 0
            for k in range(int(keys.min()), int(keys.max()) + 1):
                mi, mj = np.nonzero(keys == k)
                p, nb, rnb, ir, hd = raw_nodes(mi, mj)
                L = p.size
                raw.append((p, nb, rnb, ir, hd))
                fam.append(self._pack(p, nb.ravel(), rnb, ir, hd, T))
                slices.append(slice(start, start + L))
                order.append(p)
                start += L
            self.diags.append(fam)
            self.fam_slices.append(slices)
            self.fam_idx.append(T(np.concatenate(order), torch.long))
            pieces.append(raw)
        # Parallel variant (Zhao 2007): the 4 orderings run at once on 4 copies of tau (copy c
        # at offset c*P); step k updates diagonal k of each ordering.
        K = len(pieces[0])
        self.par_steps: list[tuple] = []
        self.par_nodes: list[Tensor] = []
        for k in range(K):
            parts = [(0, pieces[0][k]), (1, pieces[1][K - 1 - k]), (2, pieces[0][K - 1 - k]),
                     (3, pieces[1][k])]
            p = np.concatenate([q[0] + c * P for c, q in parts])
            nb = np.concatenate([q[1] + c * P for c, q in parts], axis=1)
            rnb = np.concatenate([q[2] for _, q in parts], axis=2)
            ir = np.concatenate([q[3] for _, q in parts], axis=0)
            hd = np.concatenate([q[4] for _, q in parts], axis=2)
            self.par_steps.append(self._pack(p, nb.ravel(), rnb, ir, hd, T))
            self.par_nodes.append(T(np.concatenate([q[0] for _, q in parts]), torch.long))
        src = geo["src"]
        self.src_p = T((src[:, 0] + 1) * Wp + src[:, 1] + 1, torch.long)
        self.interior = T(pidx.ravel(), torch.long)


    @staticmethod
    def _pack(p, nb, rnb, ir, hd, T) -> tuple:
        return (T(p, torch.long), T(nb, torch.long), T(rnb), T(ir), T(hd[:, 0]), T(hd[:, 1]))


class _EikonalSolve(torch.autograd.Function):
    """``s (B, H, W) -> tau at the receivers (B, ns, nr)``; backward by the adjoint state."""

    @staticmethod
    def forward(ctx, s: Tensor, op: Eikonal) -> Tensor:  # type: ignore[override]
        tau = op._solve(s.detach())
        ctx.op = op
        ctx.save_for_backward(s.detach(), tau)
        rec = op.receivers
        return tau[:, :, rec[:, 0], rec[:, 1]]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        s, tau = ctx.saved_tensors
        op: Eikonal = ctx.op
        g = _adjoint_gradient(s.cpu().double().numpy(), tau.cpu().double().numpy(),
                              grad_out.detach().cpu().double().numpy(), op._geo,
                              op.receivers.cpu().numpy())
        return torch.from_numpy(g).to(device=s.device, dtype=s.dtype), None


def _node_equations(tau: np.ndarray, S: np.ndarray, geo: dict) -> dict[str, np.ndarray]:
    """Re-derive, at the converged ``tau`` ``(N, ns, H, W)``, which upwind equation holds at
    each node (same rule as the sweeps) and its coefficients."""
    N, ns, H, W = tau.shape
    tp = np.full((N, ns, H + 2, W + 2), np.inf)
    tp[..., 1:-1, 1:-1] = tau
    rp = np.ones((ns, H + 2, W + 2))
    rp[:, 1:-1, 1:-1] = geo["rho"]
    wp = tp * rp
    sl = {"u": (slice(0, H), slice(1, W + 1)), "d": (slice(2, H + 2), slice(1, W + 1)),
          "l": (slice(1, H + 1), slice(0, W)), "r": (slice(1, H + 1), slice(2, W + 2))}
    t = {k: tp[..., a, b] for k, (a, b) in sl.items()}
    w = {k: wp[..., a, b] for k, (a, b) in sl.items()}
    rho, qz, qx = geo["rho"], geo["qz"], geo["qx"]
    mz = w["u"] <= w["d"]
    mx = w["l"] <= w["r"]
    tz = np.where(mz, t["u"], t["d"])
    tx = np.where(mx, t["l"], t["r"])
    gz = np.where(mz, rho + qz, rho - qz)
    gx = np.where(mx, rho + qx, rho - qx)
    with np.errstate(divide="ignore", invalid="ignore"):
        c1z = (rho * tz + S) / gz
        c1x = (rho * tx + S) / gx
        c1z = np.where(gz > 0, c1z, np.inf)
        c1x = np.where(gx > 0, c1x, np.inf)
        A = gx * gx + gz * gz
        Bq = rho * (gx * tx + gz * tz)
        C = rho * rho * (tx * tx + tz * tz) - S * S
        disc = Bq * Bq - A * C
        t2 = (Bq + np.sqrt(np.clip(disc, 0, None))) / A
        ok = (np.isfinite(tx) & np.isfinite(tz) & (disc >= 0) & (gx * t2 >= rho * tx)
              & (gz * t2 >= rho * tz))
    t2 = np.where(ok, t2, np.inf)
    kind = np.argmin(np.stack([t2, c1x, c1z]), axis=0)  # 0: 2-D, 1: 1-D x, 2: 1-D z
    return {"kind": kind, "tx": tx, "tz": tz, "gx": gx, "gz": gz, "mx": mx, "mz": mz,
            "resid": tau - np.minimum(np.minimum(t2, c1x), c1z)}


def _adjoint_gradient(s: np.ndarray, tau: np.ndarray, g_rec: np.ndarray, geo: dict,
                      rec: np.ndarray) -> np.ndarray:
    r"""Adjoint-state gradient :math:`\nabla_s L` ``(B, H, W)`` of :math:`L(\tau_{rec})`.

    Solves :math:`J^\top\lambda = \partial L/\partial\tau` for the converged upwind system
    :math:`F(\tau, s) = 0` and returns :math:`-(\partial F/\partial s)^\top\lambda`, including
    every equation's dependence on the source slowness :math:`s_0` (through :math:`S=s/s0`).
    """
    B, H, W = s.shape
    src = geo["src"]
    ns = src.shape[0]
    HW = H * W
    s0 = s[:, src[:, 0], src[:, 1]]  # (B, ns)
    S = s[:, None] / s0[:, :, None, None]  # (B, ns, H, W)
    eq = _node_equations(tau, S, geo)
    kind = eq["kind"]
    rho = np.broadcast_to(geo["rho"], tau.shape)
    n_tot = B * ns * HW
    node = np.arange(n_tot).reshape(B, ns, H, W)
    is_src = np.zeros((B, ns, H, W), bool)
    is_src[:, np.arange(ns), src[:, 0], src[:, 1]] = True
    # Neighbour global indices of the chosen upwind nodes.
    nz = node + np.where(eq["mz"], -W, W)
    nx = node + np.where(eq["mx"], -1, 1)
    ex = eq["gx"] * tau - rho * eq["tx"]
    ez = eq["gz"] * tau - rho * eq["tz"]
    two = kind == 0
    k1x = kind == 1
    k1z = kind == 2
    # dF/dtau_self, dF/dtau_x, dF/dtau_z for the three equation kinds.
    diag = np.where(two, 2 * (eq["gx"] * ex + eq["gz"] * ez),
                    np.where(k1x, eq["gx"], eq["gz"]))
    cx = np.where(two, -2 * rho * ex, np.where(k1x, -rho, 0.0))
    cz = np.where(two, -2 * rho * ez, np.where(k1z, -rho, 0.0))
    s0b = s0[:, :, None, None]
    dFds = np.where(two, -2 * S / s0b, -1.0 / s0b)  # d/ds at the node itself
    dFds0 = np.where(two, 2 * S * S / s0b, S / s0b)  # d/ds_0 (through S = s/s_0)
    diag = np.where(is_src, 1.0, diag)
    cx = np.where(is_src, 0.0, cx)
    cz = np.where(is_src, 0.0, cz)
    dFds = np.where(is_src, 0.0, dFds)
    dFds0 = np.where(is_src, 0.0, dFds0)
    rows = np.concatenate([node.ravel()] * 3)
    cols = np.concatenate([node.ravel(), np.where(cx != 0, nx, node).ravel(),
                           np.where(cz != 0, nz, node).ravel()])
    vals = np.concatenate([diag.ravel(), cx.ravel(), cz.ravel()])
    J = sp.csr_matrix((vals, (rows, cols)), shape=(n_tot, n_tot))
    rhs = np.zeros((B, ns, H, W))
    np.add.at(rhs, (slice(None), slice(None), rec[:, 0], rec[:, 1]), g_rec)
    lam = spla.spsolve(J.T.tocsc(), rhs.ravel()).reshape(B, ns, H, W)
    grad = -(lam * dFds).sum(axis=1)  # (B, H, W)
    g0 = -(lam * dFds0).sum(axis=(2, 3))  # (B, ns)
    np.add.at(grad, (slice(None), src[:, 0], src[:, 1]), g0)
    return grad


# -- geometry and validation --------------------------------------------------------------------
def _source_geometry(src: np.ndarray, H: int, W: int) -> dict[str, np.ndarray]:
    """Grid-unit distance ``rho`` and unit direction ``(qz, qx)`` from each source, float64."""
    ii, jj = np.meshgrid(np.arange(H, dtype=float), np.arange(W, dtype=float), indexing="ij")
    dz = ii[None] - src[:, 0, None, None]
    dx = jj[None] - src[:, 1, None, None]
    rho = np.hypot(dz, dx)
    safe = np.where(rho > 0, rho, 1.0)
    return {"rho": rho, "qz": np.where(rho > 0, dz / safe, 0.0),
            "qx": np.where(rho > 0, dx / safe, 0.0), "src": src}


def _check_in_shape(in_shape: object) -> Shape:
    try:
        shape = tuple(int(v) for v in in_shape)  # type: ignore[union-attr]
    except TypeError:
        raise TypeError(f"in_shape: expected a tuple (1, H, W), got {in_shape!r}") from None
    if len(shape) != 3 or shape[0] != 1:
        raise ValueError(f"in_shape: expected (1, H, W) (one velocity channel), got {in_shape}")
    if shape[1] < 3 or shape[2] < 3:
        raise ValueError(f"in_shape: H and W must be >= 3, got H={shape[1]}, W={shape[2]}")
    return shape


def _edge_positions(geometry: str, n: int, H: int, W: int, name: str, *,
                    receiver: bool) -> np.ndarray:
    length = W if geometry == "surface" else H
    if n > length:
        raise ValueError(f"{name}: at most {length} positions fit on the edge of a {H}x{W} "
                         f"grid for geometry={geometry!r}, got {n}")
    along = np.round(np.linspace(0, length - 1, n)).astype(np.int64) if n > 1 else \
        np.array([(length - 1) // 2], dtype=np.int64)
    if geometry == "surface":
        return np.stack([np.zeros_like(along), along], axis=1)
    col = np.full_like(along, W - 1 if receiver else 0)
    return np.stack([along, col], axis=1)


def _check_positions(value: object, name: str, H: int, W: int) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, (np.ndarray, Sequence)):
        raise TypeError(f"{name}: expected an integer array of (row, col) grid indices of "
                        f"shape (n, 2), got {type(value).__name__}")
    arr = np.asarray(value)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 1:
        raise ValueError(f"{name}: expected shape (n, 2) of (row, col) indices, got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise TypeError(f"{name}: expected integer (row, col) grid indices")
    arr = arr.astype(np.int64)
    bad = (arr[:, 0] < 0) | (arr[:, 0] >= H) | (arr[:, 1] < 0) | (arr[:, 1] >= W)
    if bad.any():
        raise ValueError(f"{name}: position {arr[bad][0].tolist()} is outside the {H}x{W} grid "
                         f"(rows 0..{H - 1}, cols 0..{W - 1})")
    return np.ascontiguousarray(arr)
