"""Video (T, H, W, C): MP4/MKV/WebM/AVI through PyAV, decoded frame by frame (only the frames of one
slab of chunks are in memory), coordinates (t, y, x) in [-1, 1]. Metrics: PSNR overall (exact, from the
render) and per frame, and the mean SSIM over frames, each frame's share computed by the rank t mod N.
Export: reconstruction.mp4 (H.264 at the source's frame rate) and a PNG strip of frames, input above
and reconstruction below."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import SignalError
from ..files import replaced_when_done
from ..signal.source import Source, file_sha256
from .base import Modality, unit

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


class Video(Modality):
    kind = "video"
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
            stream.width, stream.height = w, h  # the source's size, odd sides too (synth.video_pix_fmt)
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
