"""Video (T, H, W, C): MP4/MKV/WebM/AVI through PyAV, decoded frame by frame (only the frames of one
slab of chunks are in memory), coordinates (t, y, x) in [-1, 1]. Metrics: PSNR overall (exact, from the
render) and per frame, and the mean SSIM over frames, each frame's share computed by the rank t mod N.
Export: reconstruction.mp4 (H.264 at the source's frame rate) and a PNG strip of frames, input above
and reconstruction below."""

from __future__ import annotations

from fractions import Fraction
import math
import os
from pathlib import Path

import numpy as np

from ..errors import SignalError
from ..files import replaced_when_done
from ..signal.source import Source, file_sha256
from .base import Modality, Synth, fresh_temp, unit

STRIP_FRAMES = 6


def video_pix_fmt(height: int, width: int) -> str:
    """H.264's common 4:2:0 layout halves the chroma planes, so it needs even sides; odd ones keep their
    size with 4:4:4 (FFmpeg-based players and PyAV read it)."""
    return "yuv420p" if height % 2 == 0 and width % 2 == 0 else "yuv444p"


class _Frames:
    """Sequential reads of frames [t0:t1] as (n, H, W, 3) uint8 (ingest reads slabs in order)."""

    def __init__(self, path: Path):
        import av

        self.container = av.open(str(path))
        self.frames = self.container.decode(video=0)
        self.next = 0

    def __getitem__(self, rows: slice) -> np.ndarray:
        if rows.start != self.next:
            raise RuntimeError("video frames are read in order")
        out = []
        for _ in range(rows.stop - rows.start):
            try:
                out.append(next(self.frames).to_ndarray(format="rgb24"))
            except StopIteration:
                break
        self.next = rows.start + len(out)
        return np.stack(out)

    def close(self):
        self.container.close()


def open_video(path: Path) -> Source:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise SignalError(f"{path} has no video stream (audio only?); give a video file, or the audio "
                                  f"as a WAV/FLAC file")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            count, size = 0, None
            for frame in container.decode(video=0):  # counted by decoding: containers' counts are unreliable
                count += 1
                size = (frame.height, frame.width)
    except SignalError:
        raise
    except Exception as e:  # noqa: BLE001 - FFmpeg's errors for damaged files
        raise SignalError(f"cannot read video {path}: {e}. Is the file complete?") from None
    if count < 2:
        raise SignalError(f"{path} holds {count} frame(s); a video needs at least 2")
    frames = _Frames(path)
    meta = {"fps": float(rate), "fps_fraction": f"{rate.numerator}/{rate.denominator}"}
    return Source(frames, (count, *size, 3), np.dtype(np.uint8), "video", path.name, file_sha256(path), False,
                  frames.close, None, meta)


def synth_video(dest: str | Path, frames: int = 16, size: int = 64, fps: int = 12, seed: int = 0,
                height: int | None = None) -> Path:
    """An H.264 clip of size x height (height: size when not given): coloured discs drifting over a moving
    colour gradient, written frame by frame."""
    import av

    dest = Path(dest)
    tmp = fresh_temp(dest)
    rng = np.random.default_rng([seed, 0x71DE0])
    height = height or size
    yy, xx = np.mgrid[0:height, 0:size] / size
    discs = rng.uniform(0, 1, (4, 6))  # y, x, vy, vx, radius, hue
    try:
        with av.open(str(tmp), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = size, height
            stream.pix_fmt = video_pix_fmt(height, size)  # odd sizes too
            stream.options = {"crf": "10"}
            for f in range(frames):
                s = f / max(frames - 1, 1)
                img = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (xx + s) + c) * np.cos(np.pi * yy) for c in (0, 2, 4)], -1)
                for y, x, vy, vx, r, hue in discs:
                    cy, cx = (y + (vy - 0.5) * s) % 1, (x + (vx - 0.5) * s) % 1
                    mask = (yy - cy) ** 2 + (xx - cx) ** 2 < (0.08 + 0.12 * r) ** 2
                    img[mask] = [0.5 + 0.5 * np.cos(2 * np.pi * (hue + c / 3)) for c in range(3)]
                frame = av.VideoFrame.from_ndarray((img * 255).clip(0, 255).astype(np.uint8), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


class Video(Modality):
    kind = "video"
    synth = Synth("video", (".mp4", ".mkv", ".mov", ".avi"),
                  lambda dest, size, frames, seed, **_: synth_video(dest, frames, size, seed=seed),
                  size=("the frame edge", 64), frames=16, about="a clip of moving shapes")
    ome_axes = (("t", "time", 0), ("c", "channel", 3), ("y", "space", 1), ("x", "space", 2))
    spatial_dims = 3
    default_chunk = (8, 128, 128)
    suffixes = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")

    def open(self, path: Path, options: dict) -> Source:
        return open_video(path)

    def metric_sums(self, path: Path, store, rank: int, world_size: int) -> np.ndarray:
        """[per-frame SSE on [0, 1]..., per-frame SSIM...] for this rank's frames (zeros elsewhere)."""
        from skimage.metrics import structural_similarity

        out = self.open_output(path)
        t = store.shape[0]
        sums = np.zeros(2 * t)
        for i in range(rank, t, world_size):
            x, y = unit(store.array[i], store), unit(np.asarray(out[i]), store)
            sums[i] = np.square(x - y).sum()
            win = min(7, min(x.shape[:2]) // 2 * 2 - 1)
            sums[t + i] = structural_similarity(x, y, data_range=1.0, channel_axis=-1, win_size=win) \
                if win >= 3 else np.nan
        return sums

    def metrics(self, sums, store) -> dict:
        t = store.shape[0]
        per_value = np.prod(store.shape[1:])
        mse = sums[:t] / per_value
        with np.errstate(divide="ignore"):
            frame_psnr = np.where(mse > 0, 10 * np.log10(1 / np.maximum(mse, 1e-300)), np.inf)
        return {"ssim": round(float(np.mean(sums[t:])), 5),
                "psnr_per_frame_db": [round(float(v), 3) for v in frame_psnr]}

    def export(self, path: Path, stem: Path, fmt: str, store) -> Path:
        import av
        from PIL import Image

        out = self.open_output(path)
        t, h, w, _ = out.shape
        dest = stem.with_suffix(".mp4")
        rate = Fraction(store.meta.get("fps_fraction", "25/1"))
        with replaced_when_done(dest, ".tmp.mp4") as tmp, av.open(str(tmp), "w") as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height = w, h  # the source's size, odd sides too (video_pix_fmt)
            stream.pix_fmt = video_pix_fmt(h, w)
            stream.options = {"crf": "12"}
            for i in range(t):
                img = np.ascontiguousarray(np.asarray(out[i]))
                container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            container.mux(stream.encode())
        picks = np.linspace(0, t - 1, min(STRIP_FRAMES, t)).round().astype(int)
        top = np.concatenate([store.array[i] for i in picks], axis=1)
        bottom = np.concatenate([np.asarray(out[i]) for i in picks], axis=1)
        with replaced_when_done(stem.with_name(stem.name + "-frames.png"), ".tmp.png") as tmp:
            Image.fromarray(np.concatenate([top, bottom], axis=0)).save(tmp)
        return dest

    def figure(self, plt, run):
        """Target, reconstruction and error (report/figures.py)."""
        from .draw import triptych

        store = run.store
        field = self.open_output(run.reconstruction)  # indexed (t, y, x, c) as the store
        frames = np.unique(np.linspace(0, store.spatial[0] - 1, 4).round().astype(int))
        h, w = store.spatial[1:]
        s = max(1, math.ceil(max(h, w) / 384))
        fig, axes = plt.subplots(len(frames), 3, figsize=(11, 3.4 * len(frames)), squeeze=False)
        for row, t in zip(axes, frames):
            target = unit(np.asarray(store.array[t, ::s, ::s]), store)
            recon = unit(np.asarray(field[t, ::s, ::s]), store)
            triptych(row, target, recon, f"frame {t}")
        return fig
