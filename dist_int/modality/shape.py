"""3D shapes: a mesh (PLY/OBJ/STL/OFF/GLB through trimesh) becomes signed-distance training data as in
the INT paper's shape experiments, stored as a point table in Zarr (rows x, y, z, sdf), not a grid.

Sampling (INT_REFERENCE, "3D shapes", on our [-1, 1] domain, which doubles the paper's [-0.5, 0.5]): the
mesh is scaled into [-0.9, 0.9]^3; half of the points lie on the surface plus Laplace noise of scale 0.2
(the paper's 1e-1), half with scale 0.002 (1e-3). Signed distance: the distance to the nearest triangle
(exact: the candidates are the triangles with the nearest centroids, then trimesh's point-triangle
closest point), signed by the generalized winding number for a watertight mesh (exact inside/outside)
or, for an open scan, by the nearest triangle's normal. The table is sharded like any signal; the
teacher scores table points. Output: the field on a grid (every rank its slabs), IoU of occupancy
against the mesh's on that grid, Chamfer distance of the extracted surface, and reconstruction.ply by
marching cubes in the source mesh's units and position.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import zarr

from ..errors import SignalError
from ..files import replaced_when_done
from ..signal.source import Source, file_sha256
from .base import Modality, Synth, fresh_temp

SHAPE_SUFFIXES = (".ply", ".obj", ".stl", ".off", ".glb", ".gltf")
BOX = 0.9                   # the shape fills [-BOX, BOX]^3 along its longest side
NOISE = (0.2, 0.002)        # Laplace scales of the coarse and fine halves
CANDIDATES = 16             # nearest triangles (by centroid) searched for the exact distance
GRID = 128                  # IoU and marching-cubes resolution
SDF_RANGE = 2.0             # stored sdf values are normalized from [-2, 2]
CHAMFER_SAMPLES = 30000


# What a mesh file starts with, for the formats that say so: a file whose bytes are another format's is
# named wrongly, and trimesh would fail on it with an unrelated message (e.g. about text encodings).
MESH_MAGIC = {".ply": (b"ply",), ".glb": (b"glTF",)}
TEXT_FORMATS = (".obj", ".off", ".gltf")


def _check_format(path: Path) -> None:
    suffix = path.suffix.lower()
    with open(path, "rb") as f:
        head = f.read(4096)
    actual = next((s for s, magics in MESH_MAGIC.items() if head.startswith(magics)), None)
    if actual and actual != suffix:
        raise SignalError(f"{path} holds {actual[1:].upper()} data but is named {suffix}; rename it "
                          f"{path.stem}{actual}")
    if suffix in TEXT_FORMATS:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            if len(head) < 4096 or b"\0" in head:  # binary, not text cut mid-character
                raise SignalError(f"{path} is named {suffix}, a text format, but holds binary data; give it "
                                  f"the suffix of its real format (.ply, .stl, .glb)") from None


def load_mesh(path: Path):
    import trimesh

    _check_format(path)
    try:
        mesh = trimesh.load(str(path), force="mesh", process=True)
    except Exception as e:  # noqa: BLE001 - trimesh's loaders raise many types
        raise SignalError(f"cannot read mesh {path}: {e}. Is it a complete PLY/OBJ/STL/OFF/GLB file?") from None
    if not hasattr(mesh, "faces") or len(mesh.faces) == 0:
        raise SignalError(f"{path} has no faces (a point cloud?); a shape needs a triangle mesh")
    return mesh


def normalized(mesh) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(vertices in [-BOX, BOX]^3, faces, centre, scale): source = normalized / scale + centre."""
    lo, hi = mesh.bounds
    centre = (lo + hi) / 2
    scale = 2 * BOX / float(max(hi - lo))
    return (np.asarray(mesh.vertices) - centre) * scale, np.asarray(mesh.faces), centre, scale


def winding_number(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray, block: int = 1 << 22) -> np.ndarray:
    """Generalized winding number (Jacobson et al. 2013): the solid angles of all triangles seen from each
    point, over 4 pi; 1 inside a closed mesh, 0 outside. Van Oosterom and Strackee's formula."""
    tri = vertices[faces]                                   # (F, 3, 3)
    out = np.empty(len(points))
    step = max(1, block // len(faces))
    for i in range(0, len(points), step):
        p = points[i:i + step, None, None, :]
        a, b, c = (tri[None, :, k, :] - p[:, :, 0, :] for k in range(3))
        la, lb, lc = (np.linalg.norm(v, axis=-1) for v in (a, b, c))
        num = np.einsum("pfi,pfi->pf", a, np.cross(b, c))
        den = la * lb * lc + np.einsum("pfi,pfi->pf", a, b) * lc + np.einsum("pfi,pfi->pf", a, c) * lb \
            + np.einsum("pfi,pfi->pf", b, c) * la
        out[i:i + step] = 2 * np.arctan2(num, den).sum(axis=1) / (4 * math.pi)
    return out


def occupancy_grid(vertices: np.ndarray, faces: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Inside/outside of a closed mesh at every point of grid^3 ([z, y, x]), by the parity of crossings
    along x-lines: each triangle adds a crossing to the lines through its (y, z) shadow. Cost follows the
    surface, not the grid times the triangles (winding numbers at 2 M points would take minutes)."""
    n = len(grid)
    count = np.zeros((n, n, n + 1), np.int32)
    step = grid[1] - grid[0]
    eps = np.array([1e-9, 3.1e-9])  # nudges the lines off edges and vertices shared by two triangles
    for t in vertices[faces]:
        yz = t[:, 1:]
        lo = np.searchsorted(grid, yz.min(0) - eps)
        hi = np.searchsorted(grid, yz.max(0) - eps, side="right")
        if np.any(hi <= lo):
            continue
        yy, zz = np.meshgrid(grid[lo[0]:hi[0]] + eps[0], grid[lo[1]:hi[1]] + eps[1], indexing="ij")
        (y0, z0), (y1, z1), (y2, z2) = yz
        det = (y1 - y0) * (z2 - z0) - (y2 - y0) * (z1 - z0)
        if abs(det) < 1e-15:
            continue  # seen edge-on from the lines: no crossing
        a = ((y1 - yy) * (z2 - zz) - (y2 - yy) * (z1 - zz)) / det
        b = ((y2 - yy) * (z0 - zz) - (y0 - yy) * (z2 - zz)) / det
        c = 1 - a - b
        hit = (a >= 0) & (b >= 0) & (c >= 0)
        if not hit.any():
            continue
        x = a * t[0, 0] + b * t[1, 0] + c * t[2, 0]
        jy, jz = np.nonzero(hit)
        ix = np.clip(np.ceil((x[hit] - grid[0]) / step).astype(int), 0, n)  # first grid x beyond the crossing
        np.add.at(count, (jz + lo[1], jy + lo[0], ix), 1)
    return (np.cumsum(count, axis=2)[:, :, :n] % 2) == 1


def signed_distance(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray, watertight: bool) -> np.ndarray:
    import trimesh
    from scipy.spatial import cKDTree

    tri = vertices[faces]
    k = min(CANDIDATES, len(faces))
    _, cand = cKDTree(tri.mean(axis=1)).query(points, k=k)
    cand = cand.reshape(len(points), k)
    closest = trimesh.triangles.closest_point(tri[cand.ravel()], np.repeat(points, k, axis=0)).reshape(-1, k, 3)
    dist = np.linalg.norm(closest - points[:, None, :], axis=-1)
    best = dist.argmin(axis=1)
    d = dist[np.arange(len(points)), best]
    if watertight:
        inside = winding_number(vertices, faces, points) > 0.5
    else:  # an open scan: the side of the nearest triangle
        normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        n = normals[cand[np.arange(len(points)), best]]
        inside = np.einsum("pi,pi->p", points - closest[np.arange(len(points)), best], n) < 0
    return np.where(inside, -d, d)


def sample_table(vertices: np.ndarray, faces: np.ndarray, count: int, watertight: bool, seed: int = 0) -> np.ndarray:
    """(count, 4) float32 rows x, y, z, sdf: surface samples with coarse and fine Laplace noise."""
    import trimesh

    mesh = trimesh.Trimesh(vertices, faces, process=False)
    rng = np.random.default_rng([seed, 0x5DF])
    surface, _ = trimesh.sample.sample_surface(mesh, count, seed=int(rng.integers(2**31)))
    scales = np.where(np.arange(count) < count // 2, NOISE[0], NOISE[1])[:, None]
    points = np.clip(surface + rng.laplace(0, 1, (count, 3)) * scales, -1, 1)
    return np.concatenate([points, signed_distance(vertices, faces, points, watertight)[:, None]], 1).astype(np.float32)


def open_shape(path: Path, points: int = 100000, require_watertight: bool = False) -> Source:
    mesh = load_mesh(path)
    watertight = bool(mesh.is_watertight)
    if require_watertight and not watertight:
        raise SignalError(f"{path} is not watertight (open or non-manifold edges), and signal.sdf = "
                          f"\"watertight\" asks for exact inside/outside; repair the mesh or use "
                          f"signal.sdf = \"auto\" (signs from the nearest triangle's normal)")
    vertices, faces, centre, scale = normalized(mesh)
    table = sample_table(vertices, faces, points, watertight)
    meta = {"watertight": watertight, "centre": centre.tolist(), "scale": scale,
            "vertices": vertices.round(7).tolist(), "faces": faces.tolist()}
    return Source(table, table.shape, np.dtype(np.float32), "shape", path.name, file_sha256(path), False, None,
                  None, meta)


def synth_shape(dest: str | Path) -> Path:
    """A watertight CAD-like part: a washer (a ring of outer radius 0.4, inner 0.2, height 0.3) from trimesh."""
    import trimesh

    dest = Path(dest)
    tmp = fresh_temp(dest)
    try:
        trimesh.creation.annulus(0.2, 0.4, 0.3).export(str(tmp))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


class Shape(Modality):
    kind = "shape"
    synth = Synth("shape", (".ply", ".obj", ".stl", ".off", ".glb"),
                  lambda dest, **_: synth_shape(dest),
                  about="a washer mesh, of fixed shape: scale it in a mesh editor")
    table = True
    spatial_dims = 1
    default_chunk = (16384,)
    suffixes = SHAPE_SUFFIXES

    def natural_range(self, dtype, data_min, data_max):
        """Signed distances keep their scale on the [-1, 1] domain: [-2, 2]."""
        return [-SDF_RANGE, SDF_RANGE]

    def open(self, path: Path, options: dict) -> Source:
        return open_shape(path, options.get("points", 100000), options.get("sdf") == "watertight")

    def buffer_bytes(self, store, fmt: str) -> int:
        """The GRID^3 field, its occupancy and marching cubes' temporaries, and the Chamfer samples."""
        return 16 * 4 * GRID ** 3

    def create_output(self, path: Path, store) -> None:
        arr = zarr.create_array(path, shape=(GRID,) * 3, chunks=(8, GRID, GRID), dtype="float32", fill_value=0)
        arr.attrs["dist_int"] = {"kind": "shape", "grid": GRID, "domain": [-1.0, 1.0]}

    def writer(self, path: Path, store):
        return lambda cid, values: None  # the table's predictions are only summed into the PSNR

    @torch.no_grad()
    def render_extra(self, predict, path: Path, store, rank: int, world_size: int, device, target_range) -> None:
        """The field on the GRID^3 grid over [-1, 1]^3, slabs of 8 z-planes dealt over the ranks."""
        out = zarr.open_array(path, mode="r+")
        g = torch.linspace(-1, 1, GRID, device=device)
        for z0 in range(rank * 8, GRID, world_size * 8):
            zz, yy, xx = torch.meshgrid(g[z0:z0 + 8], g, g, indexing="ij")
            coords = torch.stack([xx.ravel(), yy.ravel(), zz.ravel()], 1)
            pred = target_range.decode(predict(coords).float())[:, 0]   # [0, 1] of the stored sdf range
            sdf = (pred * 2 * SDF_RANGE - SDF_RANGE).reshape(-1, GRID, GRID)
            out[z0:z0 + 8] = sdf.cpu().numpy()

    def metric_sums(self, path: Path, store, rank: int, world_size: int) -> np.ndarray:
        """[intersection, union, Chamfer distance (rank 0 only)] of occupancy (sdf <= 0) on the grid."""
        field = zarr.open_array(path, mode="r")
        vertices, faces = np.asarray(store.meta["vertices"]), np.asarray(store.meta["faces"])
        g = np.linspace(-1, 1, GRID)
        sums = np.zeros(3)
        whole = np.asarray(field[...]) if rank == 0 else None  # rank 0: IoU (watertight) and Chamfer
        if store.meta["watertight"]:
            if rank == 0:  # ray parity is cheap: one rank does the whole grid
                truth, pred = occupancy_grid(vertices, faces, g), whole <= 0
                sums[0], sums[1] = np.sum(truth & pred), np.sum(truth | pred)
        else:  # an open scan: the nearest triangle's side, on every other grid point, slabs over the ranks
            sub = g[::2]
            for z0 in range(rank * 8, len(sub), world_size * 8):
                zz, yy, xx = np.meshgrid(sub[z0:z0 + 8], sub, sub, indexing="ij")
                pts = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], 1)
                truth = signed_distance(vertices, faces, pts, False) <= 0
                pred = np.asarray(field[2 * z0:2 * z0 + 16:2, ::2, ::2]).ravel() <= 0
                sums[0] += np.sum(truth & pred)
                sums[1] += np.sum(truth | pred)
        if rank == 0:
            sums[2] = self._chamfer(whole, vertices, faces)
        return sums

    @staticmethod
    def _surface(field: np.ndarray):
        from skimage.measure import marching_cubes

        if field.min() > 0 or field.max() < 0:
            return None
        verts, faces, _, _ = marching_cubes(field, level=0.0)
        verts = verts / (GRID - 1) * 2 - 1          # (z, y, x) grid indices -> [-1, 1]
        return verts[:, ::-1].copy(), faces         # -> (x, y, z)

    def _chamfer(self, field, vertices, faces) -> float:
        import trimesh
        from scipy.spatial import cKDTree

        surface = self._surface(field)
        if surface is None:
            return float("nan")
        a = trimesh.sample.sample_surface(trimesh.Trimesh(*surface, process=False), CHAMFER_SAMPLES, seed=0)[0]
        b = trimesh.sample.sample_surface(trimesh.Trimesh(vertices, faces, process=False), CHAMFER_SAMPLES, seed=1)[0]
        return float(cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean()) / 2

    def metrics(self, sums, store) -> dict:
        out = {"iou": round(float(sums[0] / max(sums[1], 1)), 5), "grid": GRID}
        if math.isfinite(sums[2]):
            out.update(chamfer=round(float(sums[2]), 6), chamfer_is="mean of both directions, on the [-1, 1] "
                       "domain (the shape spans 1.8 along its longest side)")
        else:  # no surface: nothing to measure a distance to, and no reconstruction.ply (export)
            out["warnings"] = [f"the fitted field has no zero level set on the {GRID}^3 grid, so there is no "
                               f"surface: no Chamfer distance and no reconstruction.ply (train longer, or "
                               f"check the learning rate)"]
        return out

    def export(self, path: Path, stem: Path, fmt: str, store) -> Path:
        import trimesh

        surface = self._surface(np.asarray(zarr.open_array(path, mode="r")[...]))
        dest = stem.with_suffix(".ply")
        if surface is None:
            return None  # no surface (the metrics' warning says so); reconstruction.zarr holds the field
        verts, faces = surface
        verts = verts / store.meta["scale"] + np.asarray(store.meta["centre"])  # back to the source's units
        with replaced_when_done(dest, ".tmp.ply") as tmp:
            trimesh.Trimesh(verts, faces[:, ::-1], process=False).export(str(tmp))
        return dest

    def figure(self, plt, run):
        """Target, reconstruction and error (report/figures.py)."""

        store = run.store
        field = np.asarray(zarr.open_array(run.reconstruction, mode="r")[...])
        grid = field.shape[0]
        g = np.linspace(-1, 1, grid)
        vertices, faces = np.asarray(store.meta["vertices"]), np.asarray(store.meta["faces"])
        fig, axes = plt.subplots(3, 3, figsize=(11, 11))
        for axis, row in enumerate(axes):  # the middle slice across z, y and x
            a, b = np.meshgrid(g, g, indexing="ij")
            mid = np.full_like(a, g[grid // 2])  # where the fitted field's middle slice lies
            xyz = {0: (b, a, mid), 1: (b, mid, a), 2: (mid, b, a)}[axis]  # the field is stored [z, y, x]
            pts = np.stack([c.ravel() for c in xyz], 1)
            truth = signed_distance(vertices, faces, pts, bool(store.meta["watertight"])).reshape(grid, grid)
            idx = [slice(None)] * 3
            idx[axis] = grid // 2
            pred = field[tuple(idx)]
            lim = float(np.abs(truth).max())
            for ax, img, title in ((row[0], truth, "target signed distance"), (row[1], pred, "fitted field")):
                ax.imshow(img, cmap="RdBu", vmin=-lim, vmax=lim, origin="lower")
                ax.contour(img, levels=[0], colors="k", linewidths=1)
                ax.set_title(f"{title}, {'zyx'[axis]} = {g[grid // 2]:.3f}", fontsize=9)
                ax.axis("off")
            err = np.abs(pred - truth)
            row[2].imshow(err, cmap="inferno", origin="lower")
            row[2].set_title(f"|error| (max {err.max():.3f})", fontsize=9)
            row[2].axis("off")
        return fig
