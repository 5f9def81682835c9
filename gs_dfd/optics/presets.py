"""Camera presets of the data sets the field reports on.

Each preset fixes the physical lens and sensor; the pixel pitch is given at a
reference image width and scales when images are resized (same sensor, fewer
pixels), so ``fx = f / pitch`` stays consistent with the stored images.
"""

from __future__ import annotations

from dataclasses import dataclass

from gs_dfd.optics.thin_lens import ThinLens


@dataclass(frozen=True)
class CameraPreset:
    name: str
    focal_length_m: float
    f_number: float
    pixel_pitch_m: float  # at reference_width_px
    reference_width_px: int
    reference_height_px: int
    focus_distances_m: tuple[float, ...]
    source: str

    def pixel_pitch_at(self, width_px: int) -> float:
        """Pixel pitch for images resized to ``width_px`` (same sensor)."""
        return self.pixel_pitch_m * self.reference_width_px / width_px

    def intrinsics(self, width_px: int, height_px: int) -> dict[str, float]:
        """Pinhole intrinsics (pixels) with the principal point at the image centre."""
        pitch = self.pixel_pitch_at(width_px)
        fx = self.focal_length_m / pitch
        return {"fx": fx, "fy": fx, "cx": width_px / 2.0, "cy": height_px / 2.0}

    def lens(self, focus_distance_m: float, f_number: float | None = None, width_px: int | None = None) -> ThinLens:
        """The preset's lens focused at ``focus_distance_m`` (``f_number`` None: the preset's), with the pixel
        pitch of images ``width_px`` wide (None: the reference width). Raises ``LensError`` on bad values."""
        pitch = self.pixel_pitch_m if width_px is None else self.pixel_pitch_at(width_px)
        return ThinLens(self.focal_length_m, self.f_number if f_number is None else f_number, focus_distance_m, pitch)


PRESETS: dict[str, CameraPreset] = {
    p.name: p
    for p in (
        CameraPreset(
            name="nyu",
            focal_length_m=0.050,
            f_number=8.0,
            pixel_pitch_m=12e-6,
            reference_width_px=640,
            reference_height_px=480,
            focus_distances_m=(1.0, 1.5, 2.5, 4.0, 6.0),
            source="synthetic NYUv2 focal stacks of DefocusNet / DEReD",
        ),
        CameraPreset(
            name="defocusnet",
            focal_length_m=0.0029,
            f_number=1.0,
            # DEReD's camera model: 3.1 mm sensor width over 256 pixels.
            pixel_pitch_m=3.1e-3 / 256,
            reference_width_px=256,
            reference_height_px=256,
            focus_distances_m=(0.1, 0.15, 0.3, 0.7, 1.5),
            source="DefocusNet synthetic data (Maximov et al., CVPR 2020)",
        ),
        CameraPreset(
            name="d3net",
            focal_length_m=0.035,
            f_number=2.8,
            pixel_pitch_m=36e-6,
            reference_width_px=645,
            reference_height_px=432,
            focus_distances_m=(1.7,),
            source="D3Net indoor DSLR set (Carvalho et al., ECCV-W 2018), Nikon D200 downsampled 6x",
        ),
    )
}

for _p in PRESETS.values():
    for _s in _p.focus_distances_m:
        _p.lens(_s)  # every preset focus distance is a valid lens


def get_preset(name: str) -> CameraPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown camera preset {name!r}; choose one of {', '.join(sorted(PRESETS))}") from None
