"""The one bridge between bayesinv and ArviZ: InferenceData, netCDF files, array wrappers.

No other module of bayesinv imports :mod:`arviz` (or :mod:`xarray`, which comes with it).
Everything version-specific (ArviZ 0.x ``InferenceData`` vs ArviZ 1.x ``xarray.DataTree``) sits
in the small ``_make_idata``/``_write_idata``/``_read_groups`` helpers at the bottom, so that a
move to ArviZ 1.x touches only those.

Layout of a posterior (see DESIGN.md §3):

* ``posterior``: ``x`` with dims ``(chain, draw, channel, row, col)``; ``z`` with dims
  ``(chain, draw, z_dim_0, ...)`` when latent draws exist;
* ``sample_stats``: each per-draw statistic (``diverging``, ``accept_prob``, ``step_size``,
  ``tree_depth``, ...) with dims ``(chain, draw, ...)``;
* ``observed_data``: ``y`` (dims ``y_dim_0, ...``);
* ``constant_data``: ``point_estimate`` and, when known, ``truth`` (dims ``channel, row, col``);
* attrs of the ``posterior`` group: the provenance (``method``, ``kind``, ``settings``,
  ``seed``, ``timings``, ``problem``) as JSON strings, plus a format tag.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

with warnings.catch_warnings():  # ArviZ 0.23 announces its 1.x refactor on import
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

from ..infer.posterior import POSTERIOR_KINDS, Posterior

#: Written into the attrs; checked (softly: missing means "foreign file") on load.
FORMAT_TAG = "bayesinv.posterior"
FORMAT_VERSION = 1

_IMAGE_DIMS = ("channel", "row", "col")
_PROVENANCE = ("method", "kind", "settings", "seed", "timings", "problem")
_TORCH_FROM_NAME = {"float16": torch.float16, "bfloat16": torch.bfloat16}


# ---------------------------------------------------------------------------------------------
# JSON helpers (provenance)
# ---------------------------------------------------------------------------------------------
def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (torch.dtype, torch.device, Path)):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    return repr(obj)


def to_json(value: Any) -> str:
    """JSON text of provenance values; tensors/arrays become lists, unknown objects ``repr``."""
    return json.dumps(value, default=_json_default, sort_keys=True)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return t.numpy()


# ---------------------------------------------------------------------------------------------
# Posterior -> InferenceData
# ---------------------------------------------------------------------------------------------
def _groups(posterior: Posterior) -> tuple[dict[str, dict], dict[str, list[str]], dict[str, str]]:
    """The variables of each group as numpy arrays, their dims, and the provenance attrs."""
    if not isinstance(posterior, Posterior):
        raise TypeError(f"posterior: expected a Posterior, got {type(posterior).__name__}")
    dims: dict[str, list[str]] = {"x": ["chain", "draw", *_IMAGE_DIMS]}
    post = {"x": _to_numpy(posterior.samples)}
    if posterior.latent_samples is not None:
        z = _to_numpy(posterior.latent_samples)
        post["z"] = z
        dims["z"] = ["chain", "draw", *[f"z_dim_{i}" for i in range(z.ndim - 2)]]
    stats = {}
    for key, value in posterior.sample_stats.items():
        arr = _to_numpy(value)
        stats[key] = arr
        dims[key] = ["chain", "draw", *[f"{key}_dim_{i}" for i in range(arr.ndim - 2)]]
    observed = {}
    if posterior.observed is not None:
        y = _to_numpy(posterior.observed)
        observed["y"] = y
        dims["y"] = [f"y_dim_{i}" for i in range(y.ndim)]
    const = {"point_estimate": _to_numpy(posterior.point_estimate)}
    dims["point_estimate"] = list(_IMAGE_DIMS)
    if posterior.truth is not None:
        const["truth"] = _to_numpy(posterior.truth)
        dims["truth"] = list(_IMAGE_DIMS)
    attrs = {name: to_json(getattr(posterior, name)) for name in _PROVENANCE}
    attrs["bayesinv_format"] = FORMAT_TAG
    attrs["bayesinv_format_version"] = str(FORMAT_VERSION)
    # dtypes that netCDF cannot hold (half precision) are restored from this record on load
    attrs["torch_dtypes"] = to_json({
        "x": str(posterior.samples.dtype).removeprefix("torch."),
        **({"z": str(posterior.latent_samples.dtype).removeprefix("torch.")}
           if posterior.latent_samples is not None else {}),
    })
    groups = {"posterior": post, "sample_stats": stats, "observed_data": observed,
              "constant_data": const}
    return {k: v for k, v in groups.items() if v}, dims, attrs


def to_inference_data(posterior: Posterior):
    """ArviZ ``InferenceData`` of a :class:`~bayesinv.infer.posterior.Posterior`.

    Parameters
    ----------
    posterior
        The posterior to convert.

    Returns
    -------
    arviz.InferenceData
        Groups ``posterior`` (``x``, ``z``), ``sample_stats``, ``observed_data`` (``y``) and
        ``constant_data`` (``point_estimate``, ``truth``); provenance as JSON strings in the
        attrs of the ``posterior`` group (see the module docstring).
    """
    groups, dims, attrs = _groups(posterior)
    return _make_idata(groups, dims, attrs)


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------
def save_posterior(posterior: Posterior, path: str | os.PathLike) -> Path:
    """Write ``posterior`` to ``path`` as netCDF (h5netcdf engine), atomically.

    The file is written to a temporary file in the same folder and moved into place with
    :func:`os.replace`, so a reader never sees a half-written file and an interrupted save
    leaves any previous file intact.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a file path, got {type(path).__name__}")
    path = Path(path)
    if not path.parent.exists():
        raise ValueError(f"path: folder {str(path.parent)!r} does not exist")
    idata = to_inference_data(posterior)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        _write_idata(idata, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def load_posterior(path: str | os.PathLike) -> Posterior:
    """Read a posterior written by :func:`save_posterior`.

    Raises
    ------
    ValueError
        Naming the file, when it does not exist, is not netCDF/HDF5, is truncated or corrupt, or
        is a netCDF file without a bayesinv posterior (no ``x`` with dims
        ``(chain, draw, channel, row, col)``, unknown ``kind``, malformed provenance).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a file path, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path: no such file {str(path)!r}")
    try:
        groups, attrs = _read_groups(path)
    except Exception as err:  # h5py/h5netcdf/xarray raise many types for bad files
        raise ValueError(f"path: cannot read {str(path)!r} as a netCDF posterior file "
                         f"(not netCDF/HDF5, truncated or corrupt): {type(err).__name__}: {err}"
                         ) from None
    try:
        return _posterior_from_groups(groups, attrs)
    except (KeyError, ValueError, TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"path: {str(path)!r} is not a compatible bayesinv posterior file: "
                         f"{err}") from None


def _posterior_from_groups(groups: dict[str, dict[str, tuple[tuple[str, ...], np.ndarray]]],
                           attrs: dict[str, Any]) -> Posterior:
    post = groups.get("posterior")
    if not post or "x" not in post:
        raise ValueError("no variable 'x' in a 'posterior' group")
    x_dims, x = post["x"]
    if tuple(x_dims) != ("chain", "draw", *_IMAGE_DIMS):
        raise ValueError(f"variable 'x' has dims {tuple(x_dims)}, expected "
                         f"{('chain', 'draw', *_IMAGE_DIMS)}")
    missing = [k for k in ("method", "kind") if k not in attrs]
    if missing:
        raise ValueError(f"missing provenance attribute(s) {missing}")
    prov = {k: json.loads(attrs[k]) if k in attrs else None for k in _PROVENANCE}
    if prov["kind"] not in POSTERIOR_KINDS:
        raise ValueError(f"unknown kind {prov['kind']!r}")
    dtypes = json.loads(attrs.get("torch_dtypes", "{}"))

    def tensor(arr: np.ndarray, name: str | None = None) -> torch.Tensor:
        t = torch.from_numpy(np.array(arr, copy=True))
        if name is not None and dtypes.get(name) in _TORCH_FROM_NAME:
            t = t.to(_TORCH_FROM_NAME[dtypes[name]])
        return t

    const = groups.get("constant_data", {})
    obs = groups.get("observed_data", {})
    stats = groups.get("sample_stats", {})
    return Posterior(
        samples=tensor(x, "x"),
        method=str(prov["method"]),
        kind=prov["kind"],
        point_estimate=tensor(const["point_estimate"][1]) if "point_estimate" in const else None,
        latent_samples=tensor(post["z"][1], "z") if "z" in post else None,
        sample_stats={k: tensor(v[1]) for k, v in stats.items()},
        observed=tensor(obs["y"][1]) if "y" in obs else None,
        truth=tensor(const["truth"][1]) if "truth" in const else None,
        settings=prov["settings"] or {},
        seed=prov["seed"],
        timings=prov["timings"] or {},
        problem=prov["problem"] or {},
    )


# ---------------------------------------------------------------------------------------------
# array-level wrappers (reference values for the vectorised maps)
# ---------------------------------------------------------------------------------------------
def _as_chain_draw(array: Any, name: str) -> np.ndarray:
    arr = np.asarray(array, dtype=float)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a (chain, draw) array, got shape {arr.shape}")
    return arr


def arviz_rhat(array: Any, method: str = "rank") -> float:
    """``arviz.rhat`` of one scalar quantity given as a ``(chain, draw)`` array."""
    return float(az.rhat(_as_chain_draw(array, "array"), method=method))


def arviz_ess(array: Any, method: str = "bulk") -> float:
    """``arviz.ess`` (``method`` = ``"bulk"``, ``"tail"``, ``"mean"``, ...) of a ``(chain, draw)`` array."""
    return float(az.ess(_as_chain_draw(array, "array"), method=method))


def arviz_mcse(array: Any, method: str = "mean") -> float:
    """``arviz.mcse`` of a ``(chain, draw)`` array."""
    return float(az.mcse(_as_chain_draw(array, "array"), method=method))


def arviz_hdi(array: Any, hdi_prob: float = 0.9) -> tuple[float, float]:
    """``arviz.hdi`` (shortest interval of the pooled draws) of a ``(chain, draw)`` array."""
    lo, hi = np.asarray(az.hdi(_as_chain_draw(array, "array").ravel(), hdi_prob=hdi_prob))
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------------
# version-specific pieces (ArviZ 0.x InferenceData); keep them small
# ---------------------------------------------------------------------------------------------
def _arviz_major() -> int:
    return int(az.__version__.split(".")[0])


def _make_idata(groups: dict[str, dict], dims: dict[str, list[str]], attrs: dict[str, str]):
    idata = az.from_dict(**groups, dims=dims)
    # provenance on the posterior group; from_dict's own attrs (created_at, ...) are kept
    idata.posterior.attrs.update(attrs)
    return idata


def _write_idata(idata, filename: str) -> None:
    # both ArviZ 0.x InferenceData and 1.x DataTree have to_netcdf(filename, engine=...)
    idata.to_netcdf(filename, engine="h5netcdf")


def _read_groups(path: Path) -> tuple[dict[str, dict[str, tuple[tuple[str, ...], np.ndarray]]],
                                      dict[str, Any]]:
    """All groups as ``{group: {var: (dims, values)}}`` and the posterior attrs, read eagerly."""
    if _arviz_major() >= 1:  # pragma: no cover - ArviZ 1.x
        tree = az.from_netcdf(str(path))
        names = [k for k in tree.children]
        get = lambda g: tree[g].to_dataset()  # noqa: E731
    else:
        with az.rc_context({"data.load": "eager"}):
            idata = az.from_netcdf(str(path), engine="h5netcdf")
        names = list(idata.groups())
        get = lambda g: getattr(idata, g)  # noqa: E731
    out: dict[str, dict[str, tuple[tuple[str, ...], np.ndarray]]] = {}
    attrs: dict[str, Any] = {}
    for g in names:
        ds = get(g)
        out[g] = {str(k): (tuple(str(d) for d in v.dims), np.asarray(v.values))
                  for k, v in ds.data_vars.items()}
        if g == "posterior":
            attrs = dict(ds.attrs)
    return out, attrs
