"""Config-driven assembly of the synthesis: scene catalogue, scene preparation, pairs.

``build_*`` functions read config objects; the rest take plain arguments. Files are only
read through :mod:`udcguard.io` (scene loaders).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from udcguard.config import DatasetParams, FormationParams, SceneParams
from udcguard.degradation.formation import PSFKernel
from udcguard.degradation.scenes import panorama_views, prepare_scene
from udcguard.degradation.synth import PairPlan, scene_seed, synthesize_pair
from udcguard.errors import ImageError
from udcguard.io.images import Image
from udcguard.io.sources import SceneSource, folder_scenes, packaged_photos, panoramas, wallpapers

SPLITS = ("train", "val", "test")


def _package_scenes(mode: str, directory: Path, find: Callable[[str | Path], list[SceneSource]], key: str,
                    what: str, package: str) -> list[SceneSource]:
    """Scenes of a Debian package's folder: none when ``mode`` is 'off'; 'required' refuses an empty folder."""
    if mode == "off":
        return []
    found = find(directory)
    if not found and mode == "required":
        raise ImageError(f"{directory}: no {what} (scenes.{key} is 'required'; "
                         f"install Debian's {package} or set it to 'auto')")
    return found


def build_scene_sources(p: SceneParams, base_dir: Path = Path(".")) -> dict[str, SceneSource]:
    """All scene sources the params enable, by unique name."""
    sources: list[SceneSource] = []
    if p.photos:
        sources += packaged_photos()
    sources += _package_scenes(p.wallpapers, p.wallpaper_dir, wallpapers, "wallpapers",
                               "wallpaper photographs", "mate-backgrounds")
    sources += _package_scenes(p.panoramas, p.panorama_dir, panoramas, "panoramas", ".exr panoramas", "blender-data")
    if p.folder is not None:
        folder = p.folder if p.folder.is_absolute() else base_dir / p.folder
        sources += folder_scenes(folder)
    return {s.name: s for s in sources}


def check_scene(source: SceneSource, p: SceneParams, crop_px: int) -> None:
    """Decode a scene once and check that it can give ``crop_px`` crops (fail before work)."""
    image = source.loader()
    if source.kind == "panorama":
        return  # views are p.view_px, checked against the crop in the params
    h, w = image.pixels.shape[:2]
    scale = min(1.0, p.max_side_px / max(h, w))
    if min(h, w) * scale < crop_px:
        raise ImageError(
            f"{image.source}: {w}x{h} px scene (x{scale:.2f} to scenes.max_side_px={p.max_side_px}) "
            f"is smaller than dataset.crop_px={crop_px}"
        )


def scene_views(source: SceneSource, rng: np.random.Generator, p: SceneParams) -> list[tuple[np.ndarray, dict[str, Any]]]:
    """Prepared linear HDR images of one source: one for a photo, several views of a panorama.

    Light sources are not added here but per pair (inside each crop's region), so every
    crop can carry flare.
    """
    image = source.loader()
    common = dict(
        max_side_px=p.max_side_px,
        exposure_median=p.exposure_median,
        highlights=dict(threshold=p.highlights.threshold, alpha_min=p.highlights.alpha_min, alpha_max=p.highlights.alpha_max),
        lights=None,  # added per pair, see synthesize_pair
    )
    if source.kind != "panorama":
        hdr, info = prepare_scene(image, rng, **common)
        return [(hdr, info)]
    out = []
    for yaw, pitch, view in panorama_views(image, rng, count=p.views_per_panorama, fov_deg=p.fov_deg, size=p.view_px):
        hdr, info = prepare_scene(Image(pixels=view, linear=True, source=image.source), rng, **common)
        out.append((hdr, {**info, "yaw_deg": float(yaw), "pitch_deg": float(pitch)}))
    return out


def scene_pairs(
    source: SceneSource,
    plans: Sequence[PairPlan],
    psfs: Sequence[tuple[str, np.ndarray]],
    *,
    seed: int,
    scenes: SceneParams,
    dataset: DatasetParams,
    formation: FormationParams,
) -> Iterator[tuple[PairPlan, np.ndarray, np.ndarray, dict[str, Any]]]:
    """Yield (plan, gt, lq, record) for the planned pairs of one scene.

    The scene's stream is spawned into one child for preparation and one per pair, so a
    pair's content does not depend on how many pairs came before it.
    """
    entropy = scene_seed(seed, source.name)
    root = np.random.SeedSequence(entropy)
    prep_seq, *pair_seqs = root.spawn(1 + max(p.index for p in plans) + 1)
    views = scene_views(source, np.random.default_rng(prep_seq), scenes)
    kernels = [(name, k if isinstance(k, PSFKernel) else PSFKernel(k)) for name, k in psfs]
    dtype = np.dtype(dataset.dtype)
    for plan in plans:
        if plan.scene != source.name:
            raise ValueError(f"plan {plan.id} is for scene {plan.scene!r}, not {source.name!r}")
        view_idx = plan.index % len(views)
        hdr, info = views[view_idx]
        if min(hdr.shape[:2]) < dataset.crop_px:
            raise ImageError(
                f"{source.name}: prepared scene {hdr.shape[0]}x{hdr.shape[1]} is smaller than "
                f"dataset.crop_px={dataset.crop_px} (raise scenes.max_side_px or lower the crop)"
            )
        rng = np.random.default_rng(pair_seqs[plan.index])
        gt, lq, rec = synthesize_pair(
            hdr,
            kernels,
            rng,
            crop_px=dataset.crop_px,
            clip_max=formation.clip_max,
            lights=dict(
                max_count=scenes.lights.max_count,
                radius_px=scenes.lights.radius_px,
                intensity=scenes.lights.intensity,
            ),
            noise_log_a_range=formation.noise.log_a_range if formation.noise.enabled else None,
        )
        record = {
            **rec,
            "id": plan.id,
            "scene": source.name,
            "group": source.group,
            "scene_kind": source.kind,
            "view": view_idx,
            "scene_info": info,
            "seed": [*entropy, plan.index],
        }
        yield plan, gt.astype(dtype), lq.astype(dtype), record
