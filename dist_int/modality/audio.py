"""Audio (samples, channels): WAV/FLAC/OGG/AIFF through soundfile, read in blocks (never whole), stored
1-D with the source's sample type. Time is one axis in [-1, 1]; hours of audio exceed float32's
resolution there, so the shard makes those coordinates float64 (signal/store.py, LONG_AXIS).
Metrics: PSNR on the [-1, 1] waveform with data range 2 (the INT paper's audio metric: the store maps
[-1, 1] to [0, 1], where PSNR uses data range 1, which is the same number) and SNR in dB.
Export: reconstruction.wav at the source's rate, channels and (where WAV holds it) subtype."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import zarr

from ..errors import SignalError
from ..files import replaced_when_done
from ..signal.ingest import dtype_range
from ..signal.source import Source, file_sha256
from .base import Modality, unit

# libsndfile's sample types -> what we read and store losslessly (24-bit PCM arrives scaled to int32).
_READ_AS = {"PCM_S8": "int16", "PCM_U8": "int16", "PCM_16": "int16", "PCM_24": "int32", "PCM_32": "int32"}
_WAV_SUBTYPES = ("PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE")


class _Blocks:
    """Reads samples [i0:i1] of an open SoundFile as (n, channels)."""

    def __init__(self, f, dtype: str):
        self.f, self.dtype = f, dtype

    def __getitem__(self, rows: slice) -> np.ndarray:
        self.f.seek(rows.start)
        return self.f.read(rows.stop - rows.start, dtype=self.dtype, always_2d=True)


def open_audio(path: Path) -> Source:
    import soundfile as sf

    try:
        f = sf.SoundFile(str(path))
    except Exception as e:  # noqa: BLE001 - libsndfile's errors for damaged or unknown files
        raise SignalError(f"cannot read audio file {path}: {e}. Is it a complete WAV/FLAC/OGG/AIFF file?") from None
    if f.frames < 2:
        f.close()
        raise SignalError(f"{path} holds {f.frames} samples; audio needs at least 2")
    dtype = _READ_AS.get(f.subtype, "float32")
    meta = {"samplerate": int(f.samplerate), "subtype": f.subtype, "format": f.format}
    return Source(_Blocks(f, dtype), (int(f.frames), int(f.channels)), np.dtype(dtype), "audio", path.name,
                  file_sha256(path), True, f.close, None, meta)


class Audio(Modality):
    kind = "audio"
    spatial_dims = 1
    default_chunk = (65536,)
    suffixes = (".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff")

    def natural_range(self, dtype, data_min, data_max):
        """Audio keeps its full scale: the dtype's range for PCM, [-1, 1] for float data, widened to the
        peak when louder."""
        if dtype_range(dtype) is not None:
            return dtype_range(dtype)
        peak = max(1.0, abs(data_min), abs(data_max))
        return [-peak, peak]

    def open(self, path: Path, options: dict) -> Source:
        return open_audio(path)

    def psnr_range(self, store) -> tuple[float, float]:
        """The INT paper's audio PSNR: data range 2 on the [-1, 1] waveform, which is the full scale of PCM
        data and [-1, 1] for float data (also when a float file is louder and is normalized by its peak)."""
        return store.value_range if store.meta.get("dtype_range") else (-1.0, 1.0)

    def buffer_bytes(self, store, fmt: str) -> int:
        """The export's blocks of 2^20 samples (and the metrics' chunks), float64 with a few temporaries."""
        return 4 * 8 * store.channels * max(1 << 20, store.chunk_shape[0])

    def metric_sums(self, path: Path, store, rank: int, world_size: int) -> np.ndarray:
        """[sum of x^2, sum of (x - x_hat)^2] over this rank's share of chunks, x on [-1, 1]."""
        out = zarr.open_array(path, mode="r")
        sums = np.zeros(2)
        for cid in range(rank, store.num_chunks, world_size):
            sl = store.chunk_slices(cid)
            x = 2 * unit(store.array[sl], store) - 1
            y = 2 * unit(np.asarray(out[sl]), store) - 1
            sums += [np.square(x).sum(), np.square(x - y).sum()]
        return sums

    def metrics(self, sums, store) -> dict:
        power, noise = float(sums[0]), float(sums[1])
        snr = math.inf if noise == 0 else 10 * math.log10(max(power, 1e-300) / noise)
        return {"snr_db": round(snr, 4)}

    def export(self, path: Path, stem: Path, fmt: str, store) -> Path:
        import soundfile as sf

        out = zarr.open_array(path, mode="r")
        subtype = store.meta.get("subtype", "FLOAT")
        subtype = subtype if subtype in _WAV_SUBTYPES else "FLOAT"  # e.g. an OGG source: float WAV
        dest = stem.with_suffix(".wav")
        with replaced_when_done(dest) as tmp, sf.SoundFile(
                str(tmp), "w", samplerate=store.meta["samplerate"], channels=store.channels, subtype=subtype,
                format="WAV") as f:
            block = 1 << 20
            for i in range(0, store.shape[0], block):
                f.write(np.asarray(out[i:i + block]))
        return dest
