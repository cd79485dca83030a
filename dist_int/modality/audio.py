"""Audio (samples, channels): WAV/FLAC/OGG/AIFF through soundfile, read in blocks (never whole), stored
1-D with the source's sample type. Time is one axis in [-1, 1]; hours of audio exceed float32's
resolution there, so the shard makes those coordinates float64 (signal/store.py, LONG_AXIS).
Metrics: PSNR on the [-1, 1] waveform with data range 2 (the INT paper's audio metric: the store maps
[-1, 1] to [0, 1], where PSNR uses data range 1, which is the same number) and SNR in dB.
Export: reconstruction.wav at the source's rate, channels and (where WAV holds it) subtype."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import zarr

from ..errors import SignalError
from ..files import replaced_when_done
from ..signal.ingest import dtype_range
from ..signal.source import Source, file_sha256
from .base import Modality, Synth, fresh_temp, unit

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


def synth_speech(dest: str | Path, seconds: float = 2.0, rate: int = 16000, seed: int = 0, channels: int = 1) -> Path:
    """A voiced, speech-like int16 WAV (or FLAC): a glottal pulse train (pitch gliding around 90-220 Hz with
    vibrato) shaped by three formants that move from syllable to syllable, under a syllable envelope,
    peaking at 0.8 of full scale. Made in blocks of a minute (one pass for the peak, one to write), so
    hours of audio never sit in memory; extra channels are the first delayed by 0.7 ms each (a pair of
    microphones)."""
    import soundfile as sf

    dest = Path(dest)
    tmp = fresh_temp(dest)
    rng = np.random.default_rng([seed, 0x5EEC])
    n = max(2, int(seconds * rate))
    syllable = 0.25
    count = int(np.ceil(seconds / syllable)) + 1
    formants = rng.uniform([300, 900, 2200], [800, 2200, 3200], (count, 3))
    pitch0 = rng.uniform(90, 220, count)
    voiced = 0.2 + 0.8 * (rng.random(count) > 0.15)
    lag = [int(0.0007 * c * rate) for c in range(channels)]

    def blocks():
        """The mono wave in blocks, the phase carried from block to block."""
        phase0 = 0.0
        for start in range(0, n, 60 * rate):
            t = np.arange(start, min(start + 60 * rate, n)) / rate
            k = np.minimum((t / syllable).astype(int), count - 1)
            frac = t / syllable - k
            pitch = pitch0[k] * (1 + 0.15 * frac) * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))
            phase = phase0 + 2 * np.pi * np.cumsum(pitch) / rate
            phase0 = phase[-1]
            wave = np.zeros(len(t))
            for h in range(1, 30):  # harmonics of the pitch, weighted by the formant envelope
                f = h * pitch
                gain = sum(np.exp(-0.5 * ((f - formants[k, j]) / (80 + 40 * j)) ** 2) for j in range(3)) / h ** 0.5
                wave += gain * np.sin(h * phase)
            yield wave * np.sin(np.pi * frac) ** 2 * voiced[k]

    peak = max(max(np.abs(w).max() for w in blocks()), 1e-9)
    fmt = "FLAC" if dest.suffix.lower() == ".flac" else "WAV"
    try:
        with sf.SoundFile(str(tmp), "w", samplerate=rate, channels=channels, subtype="PCM_16", format=fmt) as f:
            tail = np.zeros(max(lag))
            for wave in blocks():
                wave = np.concatenate([tail, 0.8 * wave / peak])
                out = np.stack([wave[max(lag) - d:len(wave) - d] for d in lag], 1)
                tail = wave[len(wave) - max(lag):] if max(lag) else tail
                f.write((out * 32767).round().astype(np.int16))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


class Audio(Modality):
    kind = "audio"
    synth = Synth("speech", (".wav", ".flac"),
                  lambda dest, seconds, seed, **_: synth_speech(dest, seconds, seed=seed),
                  seconds=2.0, about="speech-like audio at 16 kHz")
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

    def figure(self, plt, run):
        """Target, reconstruction and error (report/figures.py)."""
        from scipy.signal import spectrogram

        store = run.store
        n = store.spatial[0]
        rate = float(store.meta.get("samplerate", 1))
        field = zarr.open_array(run.reconstruction, mode="r")
        # A window in the middle, at full resolution, and spectrograms of up to 30 s around it.
        mid, half = n // 2, min(n // 2, int(0.02 * rate) or 512)
        t = (np.arange(mid - half, mid + half)) / rate
        target = 2 * unit(np.asarray(store.array[mid - half:mid + half, 0]), store) - 1
        recon = 2 * unit(np.asarray(field[mid - half:mid + half, 0]), store) - 1
        span = min(n // 2, int(15 * rate))
        fig, axes = plt.subplots(3, 1, figsize=(11, 9))
        axes[0].plot(t, target, lw=1, label="target")
        axes[0].plot(t, recon, lw=1, ls="--", label="reconstruction")
        axes[0].plot(t, recon - target, lw=0.8, color="red", label="error")
        axes[0].set_xlabel("time (s)")
        axes[0].legend(fontsize=8)
        axes[0].set_title(f"waveform, channel 0, {2 * half} samples at the middle", fontsize=9)
        for ax, values, name in ((axes[1], store.array, "target"), (axes[2], field, "reconstruction")):
            x = 2 * unit(np.asarray(values[mid - span:mid + span, 0]), store) - 1
            f, tt, sxx = spectrogram(x, fs=rate, nperseg=min(512, len(x)))
            ax.pcolormesh(tt + (mid - span) / rate, f, 10 * np.log10(sxx + 1e-12), shading="auto", cmap="magma")
            ax.set_ylabel("Hz")
            ax.set_title(f"spectrogram of the {name} (dB)", fontsize=9)
        axes[2].set_xlabel("time (s)")
        return fig
